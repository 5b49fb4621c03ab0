"""Loaders never lose or scramble examples silently: every pass yields the same batches in the same order."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Sampler, TensorDataset

import attrkit
from attrkit.testing import toy_problem

TOY = toy_problem()
DATA = TensorDataset(TOY.x_train, TOY.y_train)
GRAD_DOT = {"method": "grad-dot"}
TRAK = {"method": "trak", "projector": {"name": "gaussian", "dim": 8}}


class RandomOrder(Sampler):
    """A custom sampler (not one torch marks as random) that shuffles on every pass."""

    def __init__(self, n, seed=0):
        self.n, self.gen = n, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.gen).tolist())

    def __len__(self):
        return self.n


class ReIterable:
    """Batches in a new random order at every iteration (no DataLoader involved)."""

    def __init__(self, seed=0):
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(24, generator=self.gen)
        for start in range(0, 24, 8):
            rows = order[start : start + 8]
            yield TOY.x_train[rows], TOY.y_train[rows]


class Augmenting:
    """The same order, with random noise added on every pass (random augmentation)."""

    def __init__(self):
        self.gen = torch.Generator().manual_seed(0)

    def __iter__(self):
        for start in range(0, 24, 8):
            noise = 0.1 * torch.randn(8, 5, generator=self.gen)
            yield TOY.x_train[start : start + 8] + noise, TOY.y_train[start : start + 8]


def _fit(spec, train):
    return attrkit.compose(spec, TOY.task).fit(train)


@pytest.mark.parametrize("role", ["train", "test"])
def test_drop_last_that_drops_examples_is_refused(role):
    loader = DataLoader(DATA, batch_size=5, drop_last=True)
    with pytest.raises(attrkit.DataLoaderError, match=rf"{role} loader has drop_last=True, which drops the last 4 of 24"):
        if role == "train":
            _fit(GRAD_DOT, loader)
        else:
            _fit(GRAD_DOT, TOY.train_loader()).attribute(loader)


def test_drop_last_that_drops_nothing_is_accepted():
    scores = _fit(GRAD_DOT, DataLoader(DATA, batch_size=8, drop_last=True)).attribute(TOY.test_loader())
    assert scores.shape == (6, 24)


@pytest.mark.parametrize("spec", [GRAD_DOT, TRAK], ids=["grad-dot", "trak"])
def test_a_custom_random_sampler_is_refused(spec):
    with pytest.raises(attrkit.DataLoaderError, match=r"sampler \(RandomOrder\) yields another order on every pass"):
        _fit(spec, DataLoader(DATA, batch_size=5, sampler=RandomOrder(24)))


@pytest.mark.parametrize("spec", [GRAD_DOT, TRAK], ids=["grad-dot", "trak"])
def test_a_re_iterable_in_random_order_is_refused(spec):
    with pytest.raises(attrkit.DataLoaderError, match="yields another first batch each time it is iterated"):
        _fit(spec, ReIterable())


def test_random_augmentation_is_refused():
    with pytest.raises(attrkit.DataLoaderError, match="another first batch|other values in batch"):
        _fit(TRAK, Augmenting())


def test_a_random_test_order_is_refused():
    fitted = _fit(GRAD_DOT, TOY.train_loader())
    with pytest.raises(attrkit.DataLoaderError, match="test loader"):
        fitted.attribute(DataLoader(TensorDataset(TOY.x_test, TOY.y_test), batch_size=2, sampler=RandomOrder(6)))


def _generator():
    for start in range(0, 24, 8):
        yield TOY.x_train[start : start + 8], TOY.y_train[start : start + 8]


def test_a_generator_for_a_multi_pass_method_is_named():
    with pytest.raises(attrkit.DataLoaderError, match=r"one-shot iterator \(a generator\?\), exhausted after its first pass"):
        _fit(TRAK, _generator())


def test_a_generator_for_a_one_pass_method_works():
    scores = _fit(GRAD_DOT, _generator()).attribute(TOY.test_loader())
    assert torch.equal(scores, _fit(GRAD_DOT, TOY.train_loader()).attribute(TOY.test_loader()))


@pytest.mark.parametrize(
    "data, kind",
    [(DATA, "TensorDataset"), (TOY.x_train, "Tensor"), (None, "None"), ({"x": TOY.x_train}, "dict")],
    ids=["dataset", "tensor", "none", "dict"],
)
def test_a_dataset_or_tensor_where_a_loader_belongs_is_named(data, kind):
    with pytest.raises(attrkit.DataLoaderError, match=rf"{kind}.*pass a DataLoader\(dataset, batch_size=..., shuffle=False\)"):
        _fit(GRAD_DOT, data)


def test_self_influence_with_the_fitted_loader_checks_it_against_fit():
    loader = Augmenting()
    with pytest.raises(attrkit.DataLoaderError):
        _fit(GRAD_DOT, loader).self_influence(loader)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.sampled_from([3, 5, 8]), spec=st.sampled_from([GRAD_DOT, TRAK]))
def test_random_orders_are_always_refused(seed, batch, spec):
    with pytest.raises(attrkit.DataLoaderError):
        _fit(spec, DataLoader(DATA, batch_size=batch, sampler=RandomOrder(24, seed)))


class CountingLoader(DataLoader):
    """A DataLoader that counts the times it is iterated."""

    iterations = 0

    def __iter__(self):
        type(self).iterations += 1
        return super().__iter__()


def _counted_fit(spec, loss_fn=None):
    CountingLoader.iterations = 0
    task = TOY.task if loss_fn is None else attrkit.AttributionTask(model=TOY.task.model, loss_fn=loss_fn)
    loader = CountingLoader(DATA, batch_size=5)
    fitted = attrkit.compose(spec, task).fit(loader)
    return fitted, CountingLoader.iterations, fitted.attribute(TOY.test_loader())


def test_a_small_training_set_is_read_once_and_replayed_to_later_passes(monkeypatch):
    """TRAK reads the training set twice (Q, features): the loader is read once (and once more for the first-batch
    order probe); with nothing kept, once per pass. Same scores. EK-FAC reads it once: its solver fits from the
    packed factor rows of the training gradients (a layer at one position each)."""
    for spec, passes in [(TRAK, 2), ({"method": "if", "solver": {"name": "ekfac", "regularization": 0.1}}, 1)]:
        fitted, reads, replayed = _counted_fit(spec)
        assert reads == 2, spec
        assert not fitted.fitted.train.replaying  # dropped when the fit ends
        monkeypatch.setattr("attrkit.loaders.KEEP_BYTES", 0)
        _, reads, read = _counted_fit(spec)
        monkeypatch.undo()
        assert reads == 1 + passes, spec
        assert torch.equal(replayed, read)
    assert not _counted_fit(GRAD_DOT)[0].fitted.train.keep  # one member, no solver: a single pass, nothing kept


def test_a_batch_changed_in_place_is_not_replayed():
    """A loss that writes into its inputs (a version counter moves): later passes read the loader again."""
    from attrkit.targets import cross_entropy

    def writes_into_inputs(model, batch):
        batch[0].mul_(1.0)
        return cross_entropy(model, batch)

    dense = {"name": "per-example", "products": "dense"}  # the solver's pass reads the loader (not held factors)
    fitted, reads, _ = _counted_fit({"method": "if", "gradients": dense,
                                     "solver": {"name": "ekfac", "regularization": 0.1}}, writes_into_inputs)
    assert reads == 3


def test_a_plain_tensor_dataset_loader_is_sliced_into_the_batches_it_would_yield(monkeypatch):
    """An in-order DataLoader over a TensorDataset is read by slicing its tensors: the same list of batches,
    value for value, dtype, shape and (contiguous) strides, with no per-example indexing; the copies leave the
    dataset unchanged when a batch is written into. Any other loader is read as it is."""
    from attrkit.loaders import _sliced, checked

    data = TensorDataset(torch.randn(3, 10, 2).transpose(0, 1), torch.arange(10), torch.randn(10))
    loader = DataLoader(data, batch_size=4)
    expected = list(loader)
    monkeypatch.setattr(TensorDataset, "__getitem__", lambda self, i: pytest.fail("indexed per example"))
    got = list(checked(loader, "test"))
    assert [type(b) for b in got] == [list] * 3
    for want, have in zip(expected, got, strict=True):
        for a, b in zip(want, have, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)
    got[0][0].zero_()
    assert torch.equal(data.tensors[0][:4], expected[0][0])
    monkeypatch.undo()
    for other in (DataLoader(data, batch_size=4, collate_fn=lambda b: b), DataLoader(data, batch_size=None),
                  DataLoader(data, batch_size=4, sampler=list(range(10)))):
        assert _sliced(other) is None


def test_a_loader_whose_collation_is_reset_after_the_first_pass_is_read_as_it_is_then():
    """The slicing is decided again at each pass: a collate_fn set after the first pass is honoured, and a
    changed batch is refused as ever."""
    from attrkit.errors import DataLoaderError
    from attrkit.loaders import checked

    loader = DataLoader(TensorDataset(torch.arange(8.0)), batch_size=4)
    wrapped = checked(loader, "test")
    assert [b[0].tolist() for b in wrapped] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    loader.collate_fn = lambda items: [torch.stack([x for (x,) in items]) + 1]
    with pytest.raises(DataLoaderError, match="other values in batch 0"):
        list(wrapped)
