"""The ``last-layer`` and ``group`` gradient sources and their functional cores."""

from importlib import metadata

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit import capabilities
from attrkit.functional.gradients import per_example_gradients
from attrkit.functional.group_gradients import group_gradients, group_rows
from attrkit.functional.last_layer import last_layer_features, last_layer_gradients, resolve_linear_layer
from attrkit.plugins import load_plugins
from attrkit.registry import Registry
from attrkit.testing import check_component, toy_problem
from attrkit_plugins import cheap_gradients
from attrkit_plugins.cheap_gradients import GroupConfig, GroupGradients, LastLayerConfig, LastLayerGradients

MODULE = "attrkit_plugins.cheap_gradients"


@pytest.fixture(scope="module")
def cheap_registry():
    """The installed plugins plus this module (registered directly, once)."""
    eps = [ep for ep in metadata.entry_points(group="attrkit") if ep.value != MODULE]
    return Registry(*load_plugins(entry_points=eps, extra=[("attrkit-cheap-gradients", cheap_gradients)]))


@pytest.fixture(scope="module")
def toy64():
    return toy_problem(n_train=23, dtype=torch.float64)


def _state(task):
    return task.members()[0].state


# -- last-layer ---------------------------------------------------------------------


@pytest.mark.parametrize("target", [False, True])
def test_last_layer_equals_per_example_on_the_last_layer(target):
    toy = toy_problem()
    task = attrkit.AttributionTask(model=toy.task.model, loss_fn=attrkit.cross_entropy, target_fn=attrkit.negated_margin)
    member, batch = task.members()[0], (toy.x_train, toy.y_train)
    source = LastLayerGradients(LastLayerConfig())
    fn = source.target_gradients if target else source.loss_gradients
    expected = per_example_gradients(task.model, task.target if target else task.loss_fn, member.state, batch, ["2.weight", "2.bias"])
    assert source.dimension(task) == expected.shape[1] == 3 * 6 + 3
    torch.testing.assert_close(fn(task, member, batch), expected, rtol=1e-5, atol=1e-5)


def test_last_layer_uses_the_members_weights_not_the_models():
    toy = toy_problem()
    state = {k: v + 0.3 for k, v in _state(toy.task).items()}
    member = attrkit.Member(state=state)
    batch = (toy.x_train, toy.y_train)
    got = LastLayerGradients(LastLayerConfig(layer="2")).loss_gradients(toy.task, member, batch)
    expected = per_example_gradients(toy.task.model, toy.task.loss_fn, state, batch, ["2.weight", "2.bias"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_features_are_the_penultimate_activations_and_logit_gradients(toy):
    model = toy.task.model
    h, dz = last_layer_features(model, toy.task.loss_fn, _state(toy.task), (toy.x_train, toy.y_train), "2")
    with torch.no_grad():
        hidden = model[1](model[0](toy.x_train))
        probs = model[2](hidden).softmax(1)
    torch.testing.assert_close(h, hidden)
    torch.testing.assert_close(dz, probs - torch.nn.functional.one_hot(toy.y_train, 3).float())


def test_layer_without_bias_and_dict_batches():
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Dropout(0.5))
            self.head = torch.nn.Linear(5, 3, bias=False)

        def forward(self, inputs):
            return self.head(self.body(inputs))

    model = Net().train()
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    batch = {"inputs": torch.randn(7, 4), "labels": torch.randint(0, 3, (7,))}
    source = LastLayerGradients(LastLayerConfig())
    assert source.layer(task) == "head" and source.dimension(task) == 15
    got = source.loss_gradients(task, task.members()[0], batch)
    expected = per_example_gradients(model, attrkit.cross_entropy, _state(task), batch, ["head.weight"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert model.training and model.body[2].training  # eval mode was restored


def test_last_layer_gradients_layout():
    h, dz = torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 5.0, 7.0]])
    assert last_layer_gradients(h, dz).tolist() == [[3.0, 6.0, 5.0, 10.0, 7.0, 14.0, 3.0, 5.0, 7.0]]
    assert last_layer_gradients(h, dz, bias=False).shape == (1, 6)


def test_last_layer_errors(toy, cheap_registry):
    with pytest.raises(ValueError, match="has none; use the 'per-example'"):
        resolve_linear_layer(torch.nn.Sequential(torch.nn.Tanh()))
    with pytest.raises(ValueError, match=r"'1' is not an nn.Linear.*layers are: 0, 2"):
        resolve_linear_layer(toy.task.model, "1")
    state, batch = _state(toy.task), (toy.x_train, toy.y_train)
    with pytest.raises(attrkit.LossShapeError, match=r"Tensor\[24\]"):
        last_layer_features(toy.task.model, lambda m, b: attrkit.cross_entropy(m, b).mean(), state, batch, "2")
    with pytest.raises(ValueError, match="called 0 times"):
        last_layer_features(toy.task.model, lambda m, b: m[0](b[0]).sum(1), state, batch, "2")
    with pytest.raises(ValueError, match="does not depend on the output"):
        last_layer_features(toy.task.model, lambda m, b: m(b[0]).sum(1).detach(), state, batch, "2")
    seq = torch.nn.Linear(5, 3)
    with pytest.raises(ValueError, match=r"input has shape \(24, 2, 5\)"):
        last_layer_features(seq, lambda m, b: m(b[0].unsqueeze(1).expand(-1, 2, -1)).sum((1, 2)), dict(seq.named_parameters()), batch, "")
    with pytest.raises(attrkit.SpecError, match="gradients.layer"):
        attrkit.compose({"method": "grad-dot", "gradients": {"name": "last-layer", "layer": ""}}, toy.task, cheap_registry)


def test_grad_dot_with_last_layer_equals_grad_dot_on_the_last_layers_params(toy, cheap_registry):
    scores = {}
    for gradients in ("last-layer", {"name": "per-example", "params": ["2.*"]}):
        attributor = attrkit.compose({"method": "grad-dot", "gradients": gradients}, toy.task, cheap_registry)
        scores[str(gradients)] = attributor.fit(toy.train_loader(5)).attribute(toy.test_loader(4))
    first, second = scores.values()
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-5)


# -- group --------------------------------------------------------------------------

#: Unequal groups, each spread over several loader batches (23 examples, 5 groups).
LABELS = torch.tensor([0, 1, 1, 2, 0, 3, 3, 3, 3, 1, 0, 4, 2, 2, 0, 3, 1, 1, 3, 0, 4, 3, 2])


def _loader(toy, batch_size, order=None):
    idx = torch.arange(len(toy.y_train)) if order is None else order
    return DataLoader(TensorDataset(toy.x_train[idx], toy.y_train[idx]), batch_size=batch_size)


def _summed_per_example(toy, labels, names, n_groups):
    rows = per_example_gradients(toy.task.model, toy.task.loss_fn, _state(toy.task), (toy.x_train, toy.y_train), names)
    return torch.zeros(n_groups, rows.shape[1], dtype=rows.dtype).index_add_(0, labels, rows)


@pytest.mark.parametrize("batch_size", [1, 4, 7, 23])
def test_group_gradient_is_the_sum_of_its_members_gradients(toy64, batch_size):
    names = [n for n, _ in toy64.task.model.named_parameters()]
    got = group_gradients(toy64.task.model, toy64.task.loss_fn, _state(toy64.task), names, _loader(toy64, batch_size), LABELS, 5)
    torch.testing.assert_close(got, _summed_per_example(toy64, LABELS, names, 5), rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float64


def test_a_large_group_in_one_batch_is_split_into_rows(toy64):
    labels = torch.tensor([0] * 8 + [1] + [0] * 6 + [2, 3] + [0] * 5 + [4])  # group 0: 19 of 23
    index, weight, row_group = group_rows(labels)
    assert index.shape == (6, 10) and row_group.tolist() == [0, 0, 1, 2, 3, 4]
    assert sorted(index[weight].tolist()) == list(range(23))
    assert (index == index[:, :1]).logical_or(weight).all()  # padding repeats the row's first example
    names = ["0.weight", "2.weight"]
    got = group_gradients(toy64.task.model, toy64.task.loss_fn, _state(toy64.task), names, _loader(toy64, 23), labels, 5)
    torch.testing.assert_close(got, _summed_per_example(toy64, labels, names, 5), rtol=1e-5, atol=1e-5)


def test_group_gradients_follow_a_permutation_of_the_labels(toy64):
    gen = torch.Generator().manual_seed(3)
    relabel = torch.randperm(5, generator=gen)
    order = torch.randperm(len(LABELS), generator=gen)
    source = GroupGradients(GroupConfig(params=["0.*"]))
    member = toy64.task.members()[0]
    base = source.group_gradients(toy64.task, member, _loader(toy64, 6), LABELS)
    permuted_groups = source.group_gradients(toy64.task, member, _loader(toy64, 6), relabel[LABELS])
    torch.testing.assert_close(permuted_groups[relabel], base, rtol=1e-5, atol=1e-5)
    shuffled = source.group_gradients(toy64.task, member, _loader(toy64, 6, order), LABELS[order])
    torch.testing.assert_close(shuffled, base, rtol=1e-5, atol=1e-5)
    assert base.shape == (5, source.dimension(toy64.task)) == (5, 5 * 6 + 6)
    torch.testing.assert_close(base, _summed_per_example(toy64, LABELS, ["0.weight", "0.bias"], 5), rtol=1e-5, atol=1e-5)


def test_singleton_groups_are_per_example_gradients(toy64):
    source = GroupGradients(GroupConfig())
    member, n = toy64.task.members()[0], len(toy64.y_train)
    got = source.group_gradients(toy64.task, member, _loader(toy64, 5), torch.arange(n))
    torch.testing.assert_close(got, source.loss_gradients(toy64.task, member, (toy64.x_train, toy64.y_train)))


def test_group_gradient_errors(toy64):
    model, fn, state = toy64.task.model, toy64.task.loss_fn, _state(toy64.task)
    names = ["2.bias"]
    with pytest.raises(attrkit.DataLoaderError, match="hold 23 examples but groups has 24"):
        group_gradients(model, fn, state, names, _loader(toy64, 5), torch.zeros(24, dtype=torch.long), 1)
    with pytest.raises(attrkit.DataLoaderError, match="more examples than groups"):
        group_gradients(model, fn, state, names, _loader(toy64, 5), torch.zeros(20, dtype=torch.long), 1)
    with pytest.raises(ValueError, match=r"indices in 0..4 \(n_groups=5\), got values in 0..5"):
        group_gradients(model, fn, state, names, _loader(toy64, 5), torch.arange(23) % 6, 5)
    with pytest.raises(ValueError, match="LongTensor"):
        group_gradients(model, fn, state, names, _loader(toy64, 5), LABELS.float(), 5)
    with pytest.raises(attrkit.LossShapeError, match="one value per example"):
        group_gradients(model, lambda m, b: fn(m, b).sum(), state, names, _loader(toy64, 5), LABELS, 5)


# -- conformance --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["last-layer", "group"])
def test_conformance(cheap_registry, name):
    entry = cheap_registry.get("gradients", name)
    assert entry.kind == "gradients"
    check_component(entry)


def test_declared_capabilities():
    assert LastLayerGradients.provides == {capabilities.PER_EXAMPLE, capabilities.LAST_LAYER}
    assert GroupGradients.provides == {capabilities.PER_EXAMPLE, capabilities.HVP, "group-gradients"}
