"""Ensembles (checkpoints, dropout masks, LoRA adapters) and their helpers."""

from __future__ import annotations

import copy

import pytest
import torch

import attrkit
from attrkit.functional import (
    LoRAConv2d,
    LoRALinear,
    add_lora,
    dropout_mask,
    eval_mode,
    fixed_dropout_masks,
    lora_parameter_names,
    train_lora_adapters,
)
from attrkit.targets import cross_entropy
from attrkit.engine.sides import gradients
from attrkit.testing import autograd_gradients, toy_problem

TOY = toy_problem(n_train=16, n_test=4, dtype=torch.float64, dropout=0.3, lora_rank=2, checkpoints=3)


def _scores(spec, toy=TOY, train_batch=5, test_batch=3):
    return attrkit.compose(spec, toy.task).fit(toy.train_loader(train_batch)).attribute(toy.test_loader(test_batch))


def test_dropout_mask_is_seeded_deterministic_and_has_the_right_rate() -> None:
    mask = dropout_mask((200, 50), 0.25, seed=3)
    assert torch.equal(mask, dropout_mask((200, 50), 0.25, seed=3))
    assert not torch.equal(mask, dropout_mask((200, 50), 0.25, seed=4))
    assert not torch.equal(mask, dropout_mask((200, 50), 0.25, seed=3, stream=1))
    assert abs(float((mask == 0).double().mean()) - 0.25) < 0.02
    assert mask.unique().tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert torch.equal(dropout_mask((7,), 0.0, seed=1), torch.ones(7))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        dropout_mask((3,), 1.0, seed=0)


def test_fixed_masks_act_in_eval_mode_and_are_removed_on_exit() -> None:
    model, x = TOY.task.model, TOY.x_test
    with torch.no_grad(), eval_mode(model):
        plain = model(x)
        with fixed_dropout_masks(model, seed=5):
            masked = model(x)
            again = model(x[:2])
        after = model(x)
    was = model.training
    with torch.no_grad(), fixed_dropout_masks(model, seed=5):  # outside eval_mode, which refuses a switch to training
        model.train()  # training mode: the fixed mask replaces the random one
        assert torch.equal(model(x), masked)
    model.train(was)
    hidden = torch.tanh(model[0](x))
    expected = model[3](hidden * dropout_mask((6,), 0.3, seed=5).double())
    torch.testing.assert_close(masked, expected)
    torch.testing.assert_close(again, masked[:2])  # the same mask for every example and batch size
    torch.testing.assert_close(after, plain)
    with pytest.raises(ValueError, match="no nn.Dropout"):
        with fixed_dropout_masks(torch.nn.Linear(2, 2), seed=0):
            pass


def test_dropout_member_gradients_are_those_of_the_masked_model() -> None:
    members = attrkit.compose({"method": "grad-dot", "ensemble": {"name": "dropout", "members": 2, "seed": 7}},
                              TOY.task)
    member = members.members()[1]
    with member.applied(TOY.task.model):
        got = gradients(members, member, (TOY.x_train, TOY.y_train), target=False)
    masked = copy.deepcopy(TOY.task.model)
    masked[2] = _Scale(dropout_mask((6,), 0.3, seed=8).double())
    names = members.gradients.names(TOY.task)
    brute = autograd_gradients(masked, cross_entropy, TOY.x_train, TOY.y_train)
    wanted = [i for i, (n, _) in enumerate(TOY.task.model.named_parameters()) if n in names]
    sizes = [p.numel() for p in TOY.task.model.parameters()]
    columns = torch.cat([torch.arange(sum(sizes[:i]), sum(sizes[: i + 1])) for i in wanted])
    torch.testing.assert_close(got, brute[:, columns])


class _Scale(torch.nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def test_dropout_ensemble_with_p_zero_is_the_single_model() -> None:
    single = attrkit.AttributionTask(model=TOY.task.model, loss_fn=cross_entropy)
    for method in ("grad-dot", "trak"):
        base = {"method": method, "projector": "identity"}
        if method == "trak":
            base["solver"] = {"name": "gauss-newton", "regularization": 1e-2}
        one = attrkit.compose(base, single).fit(TOY.train_loader()).attribute(TOY.test_loader())
        ensemble = {**base, "ensemble": {"name": "dropout", "members": 3, "p": 0.0}}
        many = attrkit.compose(ensemble, single).fit(TOY.train_loader()).attribute(TOY.test_loader())
        torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-6)


def test_members_get_independent_projections() -> None:
    spec = {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 8, "seed": 3}, "ensemble": "checkpoints"}
    attributor = attrkit.compose(spec, TOY.task).fit(TOY.train_loader())
    seeds = [f.projector.config.seed for f in attributor.fitted.members]
    assert seeds == [3, 4, 5]
    first = attrkit.compose(spec, TOY.task).fit(TOY.train_loader()).attribute(TOY.test_loader())
    torch.testing.assert_close(first, attributor.attribute(TOY.test_loader()), rtol=0, atol=0)


def test_an_ensemble_scores_groups_of_test_batches_member_by_member(monkeypatch) -> None:
    """Queries are computed member-outer over a group of test batches (each member's projection matrix
    drawn once per group when the cache holds one), with scores and top-k equal bit for bit to
    one batch at a time, and a nonfinite="skip" row NaN in its own batch."""
    from attrkit.engine import scoring
    from attrkit.functional.projection import CACHE, SeededMatrix

    toy = toy_problem(n_train=16, n_test=7, checkpoints=3)
    spec = {"method": "trak", "projector": {"name": "gaussian", "dim": 8, "seed": 3, "cache_mb": 0.003},
            "ensemble": "checkpoints"}
    draws, original = [], SeededMatrix._raw
    monkeypatch.setattr(SeededMatrix, "_raw", lambda self, *a: draws.append(self.seed) or original(self, *a))
    attributor = attrkit.compose(spec, toy.task).fit(toy.train_loader())
    size = 4 * 8 * attributor.fitted.members[0].projector.matrix.p
    assert size <= 0.003 * 2**20 < 2 * size  # the cache holds one matrix
    results = {}
    for grouped in (True, False):
        monkeypatch.setattr(scoring, "QUERY_GROUP_BYTES", 2**30 if grouped else 0)
        CACHE.clear()
        draws.clear()
        results[grouped] = (attributor.attribute(toy.test_loader(3)), attributor.top_k(toy.test_loader(3), k=2))
        # three test batches: grouped, each member's matrix is drawn once per call; one batch at a time, three times
        assert draws == ([3, 4, 5] * 2 if grouped else [3, 4, 5] * 6)
    assert torch.equal(results[True][0], results[False][0])
    for name in ("proponent_scores", "proponents", "opponent_scores", "opponents"):
        assert torch.equal(getattr(results[True][1], name), getattr(results[False][1], name))
    bad = toy.x_test.clone()
    bad[4, 0] = float("nan")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(bad, toy.y_test), batch_size=3)
    monkeypatch.setattr(scoring, "QUERY_GROUP_BYTES", 2**30)
    skipping = attrkit.compose(spec, toy.task).fit(toy.train_loader(), nonfinite="skip")
    with pytest.warns(attrkit.NonFiniteWarning, match="score rows are NaN: 4"):
        scores = skipping.attribute(loader)
    assert scores[4].isnan().all() and not scores[[0, 1, 2, 3, 5, 6]].isnan().any()


def test_dropout_ensembles_are_seeded() -> None:
    spec = {"method": "grad-dot", "ensemble": {"name": "dropout", "members": 3, "seed": 1}}
    first, second = _scores(spec), _scores(spec)
    assert torch.equal(first, second)
    other = _scores({**spec, "ensemble": {"name": "dropout", "members": 3, "seed": 2}})
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, _scores({"method": "grad-dot"}))


def test_dropout_ensemble_is_the_mean_over_its_masks() -> None:
    spec = {"method": "grad-dot", "ensemble": {"name": "dropout", "members": 2, "seed": 4}}
    both = _scores(spec)
    parts = [_scores({"method": "grad-dot", "ensemble": {"name": "dropout", "members": 1, "seed": s}}) for s in (4, 5)]
    torch.testing.assert_close(both, (parts[0] + parts[1]) / 2)


def test_checkpoint_ensemble_weights_and_errors() -> None:
    weighted = _scores({"method": "grad-dot", "ensemble": {"name": "checkpoints", "weights": [1, 0.5, 2]}})
    single = [
        attrkit.compose({"method": "grad-dot"}, attrkit.AttributionTask(
            model=TOY.task.model, loss_fn=cross_entropy, checkpoints=[TOY.task.checkpoint_state(i)]
        )).fit(TOY.train_loader()).attribute(TOY.test_loader())
        for i in range(3)
    ]
    torch.testing.assert_close(weighted, single[0] + 0.5 * single[1] + 2 * single[2], rtol=1e-5, atol=1e-6)
    with pytest.raises(attrkit.SpecError, match="2 weights for 3 checkpoints"):
        _scores({"method": "grad-dot", "ensemble": {"name": "checkpoints", "weights": [1, 2]}})
    plain = toy_problem(n_train=8, n_test=2)
    with pytest.raises(attrkit.SpecError, match="the task has none"):
        _scores({"method": "grad-dot", "ensemble": "checkpoints"}, plain)
    with pytest.raises(attrkit.SpecError, match="needs nn.Dropout"):
        _scores({"method": "grad-dot", "ensemble": "dropout"}, plain)
    with pytest.raises(attrkit.SpecError, match="the model needs LoRA layers"):
        _scores({"method": "grad-dot", "ensemble": "lora"}, plain)


def test_add_lora_keeps_the_function_and_freezes_the_base() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(64, 3))
    x = torch.randn(5, 2, 4, 4)
    before = model(x)
    add_lora(model, rank=2, seed=0)
    assert isinstance(model[0], LoRAConv2d) and isinstance(model[2], LoRALinear)
    torch.testing.assert_close(model(x), before)
    assert lora_parameter_names(model) == ["0.lora_A.weight", "0.lora_B.weight", "2.lora_A.weight", "2.lora_B.weight"]
    assert [n for n, p in model.named_parameters() if p.requires_grad] == lora_parameter_names(model)
    with pytest.raises(ValueError, match="nn.Linear/nn.Conv2d modules are"):
        add_lora(torch.nn.Sequential(torch.nn.Linear(2, 2)), targets=["nope"])


def test_train_lora_adapters_trains_only_the_adapters_and_lora_ensemble_differentiates_them() -> None:
    toy = toy_problem(n_train=16, n_test=4, dtype=torch.float64)
    base = toy.task.model

    def train(model, seed):
        torch.manual_seed(seed)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for _ in range(5):
            optimizer.zero_grad()
            cross_entropy(model, (toy.x_train, toy.y_train)).mean().backward()
            optimizer.step()

    template, adapters = train_lora_adapters(base, 3, train, rank=2, targets=["2"], seed=0)
    assert len(adapters) == 3 and not any(n.startswith("2.") and "lora" in n for n, _ in base.named_parameters())
    for state in adapters:
        torch.testing.assert_close(state["0.weight"], base.state_dict()["0.weight"])  # the base is frozen
        assert state["2.lora_B.weight"].abs().sum() > 0
    assert not torch.equal(adapters[0]["2.lora_B.weight"], adapters[1]["2.lora_B.weight"])

    task = attrkit.AttributionTask(model=template, loss_fn=cross_entropy, checkpoints=adapters)
    attributor = attrkit.compose({"method": "grad-dot", "ensemble": "lora"}, task)
    assert attributor.dimension == 2 * 6 + 3 * 2  # lora_A [2, 6] and lora_B [3, 2]
    got = attributor.fit(toy.train_loader()).attribute(toy.test_loader())
    expected = 0.0
    for state in adapters:
        model = copy.deepcopy(template)
        model.load_state_dict(state)
        g = autograd_gradients(model, cross_entropy, toy.x_train, toy.y_train)[:, -18:]
        g_t = autograd_gradients(model, cross_entropy, toy.x_test, toy.y_test)[:, -18:]
        expected = expected + g_t @ g.T / 3
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)
    with pytest.raises(attrkit.SpecError, match="selects parameters by name"):
        attrkit.compose({"method": "grad-dot", "gradients": "last-layer", "ensemble": "lora"}, task)
