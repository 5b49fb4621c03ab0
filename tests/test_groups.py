"""Groupers, k-means and group attribution (GGDA) through the score engine."""

import functools
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit.functional.kmeans import kmeans, standardize
from attrkit.testing import check_component, toy_problem
from attrkit_plugins.cheap_gradients import GroupGradients

TOY = toy_problem(n_train=20, n_test=4, dtype=torch.float64)
N = len(TOY.y_train)
GROUPERS = [
    {"name": "given"},
    {"name": "random", "n_groups": 4},
    {"name": "kmeans", "group_size": 5},
    {"name": "repr-kmeans", "n_groups": 3},
    {"name": "grad-kmeans", "n_groups": 4},
]
IF_SOLVER = {"name": "explicit", "regularization": 0.1}


def _fit(spec, order=None, batch=6, toy=TOY):
    return attrkit.compose(spec, toy.task).fit(toy.train_loader(batch, order))


def _groups(grouper, toy=TOY):
    """The grouper's partition of ``toy``'s training set, called directly (no gradients)."""
    params = dict(grouper)
    cls = attrkit.components()["grouper"][params.pop("name")].cls
    context = attrkit.FitContext(
        task=toy.task, member=toy.task.members()[0], train=toy.train_loader(6), gradients=None, dimension=0, n_train=N
    )
    return cls(cls.Config(**params)).assign(context)


def _summed(scores, groups):
    """Pointwise score columns summed per group: ``[n_test, n_groups]``."""
    out = torch.zeros(scores.shape[0], int(groups.max()) + 1, dtype=scores.dtype)
    return out.index_add_(1, groups, scores)


def _same_partition(a, b):
    """Whether two labelings define one partition; returns the map ``b-label -> a-label``."""
    pairs = torch.unique(torch.stack([b, a]), dim=1)
    assert pairs.shape[1] == int(a.max()) + 1 == int(b.max()) + 1, "not the same partition"
    mapping = torch.empty(pairs.shape[1], dtype=torch.long)
    mapping[pairs[0]] = pairs[1]
    return mapping


# -- k-means ------------------------------------------------------------------------


def _blobs(n_per=30, k=4, dim=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, dim, generator=gen) * 20
    y = torch.arange(k).repeat_interleave(n_per)
    return centers[y] + torch.randn(len(y), dim, generator=gen), y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_recovers_well_separated_blobs(seed):
    x, y = _blobs(seed=seed)
    result = kmeans(x, 4, seed=seed)
    _same_partition(y, result.labels)
    assert result.centers.shape == (4, 3) and result.n_iter >= 1 and result.inertia >= 0


def test_kmeans_is_seeded_and_ignores_the_row_order():
    x, _ = _blobs(n_per=25, k=6, seed=3)
    first = kmeans(x, 5, seed=7)
    assert torch.equal(kmeans(x, 5, seed=7).labels, first.labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    assert torch.equal(kmeans(x[order], 5, seed=7).labels, first.labels[order])


def test_kmeans_merges_duplicates_and_uses_every_label():
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0], [5.0, 5.0], [0.0, 1.0]])
    result = kmeans(x, 3)
    assert result.labels.tolist() in ([0, 0, 1, 0], [1, 1, 0, 1])  # two distinct rows: two clusters
    assert kmeans(torch.zeros(6, 2), 4).labels.tolist() == [0] * 6
    assert kmeans(torch.arange(5), 5).labels.unique().numel() == 5  # integer inputs, n_clusters = n


def test_standardize_whitens_and_zeroes_constant_features():
    x = torch.tensor([[1.0, 3.0, 7.0], [2.0, 3.0, 9.0], [6.0, 3.0, 2.0]])
    z = standardize(x)
    torch.testing.assert_close(z[:, [0, 2]].mean(0), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(z[:, [0, 2]].var(0, unbiased=False), torch.ones(2))
    assert torch.equal(z[:, 1], torch.zeros(3))


def test_kmeans_errors():
    with pytest.raises(ValueError, match="n_clusters >= 1"):
        kmeans(torch.randn(4, 2), 0)
    with pytest.raises(ValueError, match="at least one row"):
        kmeans(torch.randn(0, 2), 2)
    with pytest.raises(ValueError, match="finite"):
        kmeans(torch.tensor([[float("nan")], [1.0]]), 1)


# -- groupers -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["singleton", "given", "random", "kmeans", "repr-kmeans", "grad-kmeans"])
def test_every_grouper_passes_conformance(registry, name):
    check_component(registry.get("grouper", name))


def test_given_groups_are_the_labels_in_order_of_first_appearance():
    groups = _fit({"method": "grad-dot", "grouper": "given"}).groups
    first = {}
    expected = [first.setdefault(int(label), len(first)) for label in TOY.y_train]
    assert groups.tolist() == expected
    batches = [{"x": torch.randn(2, 5), "lab": torch.tensor([2, 0])}, {"x": torch.randn(2, 5), "lab": torch.tensor([2, 1])}]
    grouper = attrkit.components()["grouper"]["given"].cls
    context = attrkit.FitContext(task=TOY.task, member=TOY.task.members()[0], train=batches, gradients=None, dimension=1, n_train=4)
    assert grouper(grouper.Config(key="lab")).assign(context).tolist() == [0, 1, 0, 2]
    with pytest.raises(ValueError, match="key='y' is not in the batch"):
        grouper(grouper.Config(key="y")).assign(context)


@pytest.mark.parametrize("name", ["random", "kmeans", "repr-kmeans", "grad-kmeans"])
def test_sized_groupers_form_the_requested_number_of_groups_of_the_requested_size(name):
    for n_groups in (2, 5):
        groups = _groups({"name": name, "n_groups": n_groups})
        assert torch.unique(groups).numel() == int(groups.max()) + 1 == n_groups
    for group_size in (3, 7):
        groups = _groups({"name": name, "group_size": group_size})
        count = math.ceil(N / group_size)
        sizes = torch.bincount(groups)
        assert sizes.numel() == count and int(sizes.sum()) == N  # mean size N / ceil(N / group_size)
        if name == "random":  # balanced: sizes differ by at most one
            assert set(sizes.tolist()) <= {N // count, -(-N // count)}


def test_sized_grouper_config_errors():
    for params, match in [({}, "got neither"), ({"n_groups": 2, "group_size": 3}, "got both"), ({"n_groups": 0}, "n_groups")]:
        with pytest.raises(attrkit.SpecError, match=match):
            attrkit.compose({"method": "grad-dot", "grouper": {"name": "random", **params}}, TOY.task)
    with pytest.raises(attrkit.SpecError, match=f"30 groups asked for from {N} training examples"):
        _fit({"method": "grad-dot", "grouper": {"name": "kmeans", "n_groups": 30}})


@pytest.mark.parametrize("grouper", GROUPERS, ids=lambda g: g["name"])
def test_groupers_are_seeded(grouper):
    assert torch.equal(_groups(grouper), _groups(grouper))


def test_random_groups_change_with_the_seed():
    draws = {tuple(_groups({"name": "random", "n_groups": 4, "seed": s}).tolist()) for s in range(4)}
    assert len(draws) > 1


@pytest.mark.parametrize(
    ("grouper", "gradients"),
    [(GROUPERS[0], "per-example"), (GROUPERS[2], "group"), (GROUPERS[3], "per-example"), (GROUPERS[4], "group")],
    ids=lambda v: v if isinstance(v, str) else v["name"],
)
def test_groups_and_group_scores_do_not_depend_on_the_training_order(grouper, gradients):
    spec = {"method": "grad-dot", "gradients": gradients, "grouper": grouper}
    order = torch.randperm(N, generator=torch.Generator().manual_seed(5))
    base, permuted = _fit(spec), _fit(spec, order, batch=7)
    mapping = _same_partition(base.groups[order], permuted.groups)
    torch.testing.assert_close(permuted.attribute(TOY.test_loader()), base.attribute(TOY.test_loader())[:, mapping])


# -- group attribution --------------------------------------------------------------


def _indexed_loader(batch):
    return DataLoader(TensorDataset(TOY.x_train, TOY.y_train, torch.arange(N)), batch_size=batch)


@pytest.mark.parametrize("gradients", ["per-example", "group"])
def test_singleton_groups_reproduce_pointwise_scores_exactly(gradients):
    pointwise = attrkit.compose({"method": "grad-dot"}, TOY.task).fit(_indexed_loader(6)).attribute(TOY.test_loader())
    for grouper in ("singleton", {"name": "given", "key": 2}):
        spec = {"method": "grad-dot", "gradients": gradients, "grouper": grouper}
        attributor = attrkit.compose(spec, TOY.task).fit(_indexed_loader(6))
        assert torch.equal(attributor.groups, torch.arange(N))
        assert torch.equal(attributor.attribute(TOY.test_loader()), pointwise)


@functools.cache
def _pointwise(method):
    solver = {"solver": IF_SOLVER} if method == "if" else {}
    return _fit({"method": method, **solver}).attribute(TOY.test_loader())


@pytest.mark.parametrize(
    ("method", "gradients", "grouper"),
    [("grad-dot", source, g) for source in ("per-example", "group") for g in GROUPERS]
    + [("if", "per-example", g) for g in GROUPERS[1::3]],
    ids=lambda v: v if isinstance(v, str) else v["name"],
)
def test_a_group_score_is_the_sum_of_its_members_scores(method, gradients, grouper):
    """Additive methods: grad-dot on either gradient source, and ``if`` with a fixed
    parameter-space solver (``group`` does not provide the HVPs ``explicit`` needs)."""
    solver = {"solver": IF_SOLVER} if method == "if" else {}
    pointwise = _pointwise(method)
    grouped = _fit({"method": method, "gradients": gradients, "grouper": grouper, **solver})
    scores = grouped.attribute(TOY.test_loader())
    assert scores.shape == (len(TOY.y_test), int(grouped.groups.max()) + 1)
    torch.testing.assert_close(scores, _summed(pointwise.double(), grouped.groups).float(), rtol=1e-5, atol=1e-6)


def test_group_gradients_replace_per_example_training_gradients(monkeypatch):
    """On the GGDA path the training side comes from ``group_gradients`` alone."""
    calls = []
    original = GroupGradients.group_gradients

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    def refuse(self, *args, **kwargs):
        raise AssertionError("per-example training gradients computed on the group path")

    monkeypatch.setattr(GroupGradients, "group_gradients", counted)
    monkeypatch.setattr(GroupGradients, "loss_gradients", refuse)
    attributor = _fit({"method": "grad-dot", "gradients": "group", "grouper": {"name": "grad-kmeans", "group_size": 4}})
    assert len(calls) == 1 and attributor.attribute(TOY.test_loader()).shape == (len(TOY.y_test), 5)


@pytest.mark.parametrize("reweight", [True, False])
def test_trak_on_group_gradients_equals_trak_on_summed_per_example_gradients(reweight):
    toy = toy_problem(n_train=20, n_test=4, dtype=torch.float64, checkpoints=2)
    spec = {"method": {"name": "trak", "reweight": reweight}, "projector": {"name": "gaussian", "dim": 16},
            "solver": {"name": "gauss-newton", "regularization": 0.1}, "grouper": {"name": "random", "n_groups": 6}}
    per_example = _fit(spec, toy=toy).attribute(toy.test_loader())
    grouped = _fit({**spec, "gradients": "group"}, toy=toy).attribute(toy.test_loader())
    torch.testing.assert_close(grouped, per_example, rtol=1e-5, atol=1e-6)


def test_group_features_resume_from_a_disk_store(tmp_path):
    spec = {"method": "trak", "gradients": "group", "grouper": {"name": "random", "n_groups": 5}}
    first = attrkit.compose(spec, TOY.task).fit(TOY.train_loader(), store=tmp_path).attribute(TOY.test_loader())
    assert sorted(p.name for p in (tmp_path / "member-0").glob("*.npy")) == ["chunk-0000000.npy", "chunk-0000001.npy"]
    again = attrkit.compose(spec, TOY.task).fit(TOY.train_loader(), store=tmp_path).attribute(TOY.test_loader())
    assert torch.equal(first, again)


def test_group_scores_sum_member_scores_over_a_dropout_ensemble():
    toy = toy_problem(n_train=20, dtype=torch.float64, dropout=0.5)
    spec = {"method": "grad-dot", "gradients": "group", "grouper": {"name": "repr-kmeans", "n_groups": 3},
            "ensemble": {"name": "dropout", "members": 2}}
    attributor = _fit(spec, toy=toy)
    pointwise = _fit({k: v for k, v in spec.items() if k != "grouper"} | {"gradients": "per-example"}, toy=toy)
    torch.testing.assert_close(
        attributor.attribute(toy.test_loader()),
        _summed(pointwise.attribute(toy.test_loader()).double(), attributor.groups).float(), rtol=1e-5, atol=1e-6,
    )
