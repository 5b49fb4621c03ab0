"""The ``factored`` gradient source and the ``kronecker`` projector (LoGra-style)."""

import warnings

import pytest
import torch
from torch import nn

import attrkit
from attrkit.context import FitContext
import attrkit_plugins.factored as factored
from attrkit.functional.factored import FactorisationError, factored_gradients, plan_factors
from attrkit.functional.gradient_factors import FactoredGradients
from attrkit.functional.gradients import per_example_gradients, select_parameters
from attrkit.functional.projection import SeededMatrix, block_generator, gaussian_sampler
from attrkit.testing import autograd_gradients, toy_problem

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture
def registry():
    """The default registry with this module registered directly (its entry point, if
    installed, is blocked so that it is not registered twice); restored afterwards."""
    yield attrkit.reset_registry(block=["attrkit-factored"], extra=[("attrkit-factored-test", factored)])
    attrkit.reset_registry()


def _ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def _state(model):
    return {**{n: p.detach() for n, p in model.named_parameters()}, **dict(model.named_buffers())}


def _both(model, batch, patterns=("*",), fn=_ce):
    """``(factored, exact)`` per-example gradients of ``fn`` in float64."""
    names = select_parameters(model, patterns)
    state = _state(model)
    return factored_gradients(model, fn, state, batch, plan_factors(model, names)), per_example_gradients(
        model, fn, state, batch, names
    )


class _Tiny(nn.Module):
    """Embedding + LayerNorm + single-head self-attention of nn.Linear q/k/v, mean-pooled."""

    def __init__(self, vocab=7, d=4, tie=False):
        super().__init__()
        self.emb, self.norm = nn.Embedding(vocab, d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, vocab)
        if tie:
            self.out.weight = self.emb.weight

    def forward(self, tokens):
        h = self.norm(self.emb(tokens))
        attention = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2) / 2.0, dim=-1)
        return self.out(h + attention @ self.v(h)).mean(1)


def _seeded_tiny(seed=0, **kwargs):
    torch.manual_seed(seed)
    return _Tiny(**kwargs).double()


def _tokens(n=5, seq=3, vocab=7):
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n, seq), generator=gen), torch.randint(0, vocab, (n,), generator=gen)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(inplace=True), nn.Linear(5, 3, bias=False)).double()


def _data(*shape, classes=3):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(*shape, generator=gen, dtype=torch.float64), torch.randint(0, classes, shape[:1], generator=gen)


# -- the factored source equals exact per-example gradients ----------------------------------


@pytest.mark.parametrize("patterns", [("*",), ("0.bias", "2.*"), ("0.weight",)])
def test_mlp_factors_materialize_to_per_example_gradients(patterns):
    fg, exact = _both(_mlp(), _data(6, 4), patterns)
    assert fg.shape == tuple(exact.shape) and not fg.dense_names
    torch.testing.assert_close(fg.materialize(), exact, **TOL)


@pytest.mark.parametrize(
    "conv, flat",
    [
        (nn.Conv2d(1, 2, 3, padding=1), 72),
        (nn.Conv2d(1, 2, (2, 3), stride=2, padding="valid", dilation=(1, 2), padding_mode="reflect"), 6),
        (nn.Conv2d(1, 2, 4, padding="same", padding_mode="circular"), 72),
    ],
)
def test_conv2d_net_factors_materialize_to_per_example_gradients(conv, flat):
    torch.manual_seed(0)
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(flat, 3)).double()
    fg, exact = _both(model, _data(5, 1, 6, 6))
    assert [layer.module for layer in fg.layers] == ["0", "3"]
    torch.testing.assert_close(fg.materialize(), exact, **TOL)


def test_conv1d_factors_materialize_to_per_example_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 3, 3, stride=2, padding=2, padding_mode="replicate"),
        nn.Tanh(),
        nn.Conv1d(3, 2, 3, padding="same"),
        nn.Flatten(),
        nn.Linear(12, 3),
    ).double()
    fg, exact = _both(model, _data(5, 2, 10))
    assert len(fg.layers) == 3
    torch.testing.assert_close(fg.materialize(), exact, **TOL)


def test_embedding_layernorm_attention_falls_back_once_with_one_warning():
    model = _seeded_tiny()
    task = attrkit.AttributionTask(model=model, loss_fn=_ce)
    member, batch = task.members()[0], _tokens()
    source = factored.FactoredGradientSource(factored.FactoredConfig())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fg = source.loss_gradients(task, member, batch)
        source.target_gradients(task, member, batch)
        source.loss_gradients(task, member, batch)
    ours = [w for w in caught if "gradient source 'factored'" in str(w.message)]
    assert len(ours) == 1
    # the LayerNorm's gradients come from the factors' own pass: only the embedding is named
    assert "emb (Embedding)" in str(ours[0].message) and "LayerNorm" not in str(ours[0].message)
    assert [layer.module for layer in fg.layers] == ["q", "k", "v", "out"]
    assert fg.dense_names == ("emb.weight", "norm.weight", "norm.bias")
    exact = per_example_gradients(model, _ce, member.state, batch, select_parameters(model, ("*",)))
    torch.testing.assert_close(fg.materialize(), exact, **TOL)


def test_weights_shared_between_modules_fall_back():
    model = _seeded_tiny(tie=True)
    fg, exact = _both(model, _tokens())
    assert ("out", None, "out.bias") in plan_factors(model, select_parameters(model, ("*",))).layers
    assert "emb.weight" in fg.dense_names
    torch.testing.assert_close(fg.materialize(), exact, **TOL)


def test_linear_on_a_sequence_keeps_positions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, _ = _data(6, 7, 4)
    fg, exact = _both(model, x, fn=lambda m, x: (m(x) ** 2).sum((1, 2)))
    assert fg.layers[0].inputs.shape == (6, 7, 4) and fg.layers[0].output_grads.shape == (6, 7, 5)
    torch.testing.assert_close(fg.materialize(), exact, **TOL)


@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
def test_sequence_first_layout_and_reused_module_are_per_example():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(4, 1, 8, dropout=0.0, batch_first=False)
    model = nn.ModuleDict({"enc": layer, "head": nn.Linear(4, 3)}).double()

    def loss(m, batch):  # [b, T, d] -> [T, b, d]; the head is applied twice
        hidden = m["enc"](batch[0].transpose(0, 1)).mean(0)
        return nn.functional.cross_entropy(m["head"](hidden) + m["head"](-hidden), batch[1], reduction="none")

    fg, exact = _both(model, _data(5, 3, 4), fn=loss)
    assert "enc.linear1" in [layer.module for layer in fg.layers]
    torch.testing.assert_close(fg.materialize(), exact, **TOL)


def _forbid_vmap(monkeypatch):
    import attrkit.functional.factored as module

    def refuse(*args, **kwargs):
        raise AssertionError("the one-example-at-a-time path ran")

    monkeypatch.setattr(module, "vmap_factors", refuse)


def test_one_hooked_pass_gives_factors_and_layernorm_gradients(monkeypatch):
    _forbid_vmap(monkeypatch)
    model = _seeded_tiny(0)
    plan = plan_factors(model, select_parameters(model, ("*",)))
    assert plan.norms == (("norm", "norm.weight", "norm.bias"),)
    fg, exact = _both(model, _tokens())
    torch.testing.assert_close(fg.materialize(), exact, **TOL)


def test_examples_that_interact_fall_back_to_one_at_a_time():
    class Centred(nn.Module):  # subtracts the batch mean: a hooked pass would mix examples
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Linear(4, 5), nn.Linear(5, 3)

        def forward(self, x):
            h = torch.tanh(self.a(x))
            return self.c(h + 0.1 * (h.sum(0, keepdim=True) - h))

    torch.manual_seed(0)
    model = Centred().double()
    names = select_parameters(model, ("*",))
    batch = _data(6, 4)
    fg = factored_gradients(model, _ce, _state(model), batch, plan_factors(model, names))
    rows = [per_example_gradients(model, _ce, _state(model), (batch[0][i:i + 1], batch[1][i:i + 1]), names)
            for i in range(6)]
    # alone, an example sees no others; the factored source must give exactly that, not the batch's mix
    torch.testing.assert_close(fg.materialize(), torch.cat(rows), **TOL)


def test_a_weight_used_outside_its_module_is_refused():
    class Misuse(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            return self.c(torch.tanh(self.a(x)) + nn.functional.linear(x, self.a.weight))

    with pytest.raises(FactorisationError, match="'a.weight' gets gradient from outside"):
        _both(Misuse().double(), _data(5, 4))


def test_source_matches_autograd_and_batching_in_float32():
    toy = toy_problem()
    source = factored.FactoredGradientSource(factored.FactoredConfig())
    member = toy.task.members()[0]
    grads = source.loss_gradients(toy.task, member, (toy.x_train, toy.y_train))
    assert grads.shape == (len(toy.y_train), source.dimension(toy.task))
    brute = autograd_gradients(toy.task.model, toy.task.loss_fn, toy.x_train, toy.y_train)
    torch.testing.assert_close(grads.materialize(), brute, rtol=1e-4, atol=1e-5)
    halves = [source.loss_gradients(toy.task, member, (toy.x_train[s], toy.y_train[s])) for s in (slice(5), slice(5, 24))]
    torch.testing.assert_close(torch.cat([h.materialize() for h in halves]), grads.materialize(), rtol=1e-4, atol=1e-5)


def test_factored_gradients_form_a_vector_space():
    x, y = _both(_seeded_tiny(0), _tokens())[0], _both(_seeded_tiny(1), _tokens(seq=4))[0]
    dense_x, dense_y = x.materialize(), y.materialize()
    torch.testing.assert_close((2 * x - y * 3).materialize(), 2 * dense_x - 3 * dense_y, **TOL)
    torch.testing.assert_close(x[1:3].materialize(), dense_x[1:3], **TOL)
    torch.testing.assert_close(x[torch.tensor([4, 0])].materialize(), dense_x[[4, 0]], **TOL)


# -- the kronecker projector ------------------------------------------------------------------


def _explicit_matrix(fg: FactoredGradients, config) -> torch.Tensor:
    """``[p, k]``: ``kron(P_out, P_in)`` per layer (rows moved to each parameter's place in the
    flattened gradient) and the seeded Gaussian for the fallback rows, from the documented seeds."""
    offsets, p = {}, 0
    for name in fg.names:
        offsets[name], p = p, p + fg.sizes[name]
    blocks = []

    def seeded(rows, k, index):
        seed = block_generator(config.seed, index, torch.device("cpu")).initial_seed()
        return SeededMatrix(rows, k, seed, gaussian_sampler).matrix(torch.device("cpu")).double()

    for index, layer in enumerate(fg.layers):
        d_in, d_out = layer.inputs.shape[-1], layer.output_grads.shape[-1]
        p_in = seeded(layer.in_features, config.dim_in, 2 * index + 1)
        p_out = seeded(d_out, config.dim_out, 2 * index + 2)
        kron = torch.kron(p_out, p_in).reshape(d_out, layer.in_features, -1)  # rows (o, i), bias as i = d_in
        block = torch.zeros(p, kron.shape[-1], dtype=torch.float64)
        if layer.weight:
            at = offsets[layer.weight]
            block[at : at + d_out * d_in] = kron[:, :d_in].reshape(d_out * d_in, -1)
        if layer.bias:
            at = offsets[layer.bias]
            block[at : at + d_out] = kron[:, d_in]
        blocks.append(block)
    if fg.dense_names:
        q = fg.dense.shape[1]
        gauss = seeded(q, config.fallback_dim or config.dim_in * config.dim_out, 0)
        rows = torch.cat([torch.arange(offsets[n], offsets[n] + fg.sizes[n]) for n in fg.dense_names])
        block = torch.zeros(p, gauss.shape[1], dtype=torch.float64)
        block[rows] = gauss
        blocks.append(block)
    return torch.cat(blocks, dim=1)


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3)).double()


_PROBLEMS = {"mlp": lambda: (_mlp(), _data(6, 4)), "cnn": lambda: (_cnn(), _data(5, 1, 6, 6)),
             "attention-with-fallback": lambda: (_seeded_tiny(), _tokens())}


@pytest.mark.parametrize(
    "problem, config",
    [
        ("mlp", factored.KroneckerConfig(dim_in=3, dim_out=2, seed=5)),
        ("cnn", factored.KroneckerConfig(dim_in=4, dim_out=2, seed=3)),
        ("attention-with-fallback", factored.KroneckerConfig(dim_in=2, dim_out=3, fallback_dim=4, seed=1)),
    ],
)
def test_kronecker_equals_the_explicit_kronecker_matrix(problem, config):
    fg, exact = _both(*_PROBLEMS[problem]())
    projector = factored.KroneckerProjector(config)
    out = projector.project(fg)
    k = len(fg.layers) * config.dim_in * config.dim_out + (config.fallback_dim or 0)
    assert out.shape == (exact.shape[0], k) and out.dtype == torch.float64
    torch.testing.assert_close(out, exact @ _explicit_matrix(fg, config), **TOL)


def test_kronecker_is_linear_seeded_and_batch_independent():
    x, y = _both(_seeded_tiny(0), _tokens())[0], _both(_seeded_tiny(1), _tokens(seq=2))[0]
    config = factored.KroneckerConfig(dim_in=2, dim_out=2)
    first, second = factored.KroneckerProjector(config), factored.KroneckerProjector(config)
    out = first.project(x)
    torch.testing.assert_close(second.project(x), out)
    torch.testing.assert_close(first.project(2 * x - 3 * y), 2 * out - 3 * first.project(y), **TOL)
    torch.testing.assert_close(torch.cat([first.project(x[:2]), first.project(x[2:])]), out, **TOL)
    other = factored.KroneckerProjector(factored.KroneckerConfig(dim_in=2, dim_out=2, seed=1)).project(x)
    assert not torch.allclose(other, out)


def test_kronecker_refuses_dense_gradients_with_a_hint():
    with pytest.raises(TypeError, match="'factored' gradient source"):
        factored.KroneckerProjector(factored.KroneckerConfig()).project(torch.zeros(2, 5))


def test_kronecker_projects_dense_gradients_like_their_factors_once_fitted():
    """A parameter-space solver hands the projector a dense vector: same features as factors."""
    toy = toy_problem(dtype=torch.float64)
    source = factored.FactoredGradientSource(factored.FactoredConfig())
    member = toy.task.members()[0]
    fg = source.loss_gradients(toy.task, member, (toy.x_train, toy.y_train))
    projector = factored.KroneckerProjector(factored.KroneckerConfig(dim_in=3, dim_out=2))
    projector.fit(FitContext(task=toy.task, member=member, train=[], gradients=source, dimension=fg.shape[1], n_train=0))
    torch.testing.assert_close(projector.project(fg.materialize()), projector.project(fg), **TOL)


# -- through the composer ---------------------------------------------------------------------


def test_grad_dot_with_factored_kronecker_runs_end_to_end(registry):
    toy = toy_problem()
    projector = {"name": "kronecker", "dim_in": 4, "dim_out": 3}
    spec = {"method": "grad-dot", "gradients": "factored", "projector": projector}
    attributor = attrkit.compose(spec, toy.task)
    scores = attributor.fit(toy.train_loader(8)).attribute(toy.test_loader(4))
    assert scores.shape == (len(toy.y_test), len(toy.y_train)) and scores.dtype == torch.float32
    assert attributor.resolved.provenance()["projector"]["plugin"] == "attrkit-factored-test"
    rebatched = attrkit.compose(spec, toy.task).fit(toy.train_loader(5)).attribute(toy.test_loader(6))
    torch.testing.assert_close(rebatched, scores, rtol=1e-4, atol=1e-5)


def test_factored_with_identity_equals_per_example(registry):
    toy = toy_problem()

    def scores(gradients):
        attributor = attrkit.compose({"method": "grad-dot", "gradients": gradients}, toy.task)
        return attributor.fit(toy.train_loader()).attribute(toy.test_loader())

    torch.testing.assert_close(scores("factored"), scores("per-example"), rtol=1e-4, atol=1e-5)


def test_kronecker_with_the_per_example_source_is_refused(registry):
    with pytest.raises(attrkit.SpecError, match="requires 'factored', which no part of this spec provides") as info:
        attrkit.compose({"method": "grad-dot", "projector": "kronecker"}, toy_problem().task)
    assert "gradients 'factored'" in str(info.value)
