"""A feature store is reused only for the same spec, weights, functions and data, and only intact."""

import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit.testing import toy_problem

TOY = toy_problem()
SPEC = {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 8}}


def _fit(store, task=TOY.task, train=None, **kwargs):
    return attrkit.compose(SPEC, task).fit(train or TOY.train_loader(), store=store, **kwargs)


@pytest.fixture
def store(tmp_path):
    folder = tmp_path / "store"
    _fit(folder)
    return folder


def _chunk(store, j, ext="npy"):
    return store / "member-0" / f"chunk-{j:07d}.{ext}"


@pytest.mark.parametrize(
    "train",
    [
        toy_problem(seed=1).train_loader(),  # other data of the same size
        DataLoader(TensorDataset(TOY.x_train, (TOY.y_train + 1) % 3), batch_size=8),  # other labels
        toy_problem(n_train=16, seed=3).train_loader(),  # a smaller other set
        TOY.train_loader(order=torch.arange(23, -1, -1)),  # the same examples in another order
    ],
    ids=["other-data", "other-labels", "smaller-set", "other-order"],
)
def test_a_store_of_other_data_is_refused(store, train):
    with pytest.raises(attrkit.StoreMismatchError, match=r"chunk-0000000.npy was computed from another training batch"):
        _fit(store, train=train)


@pytest.mark.parametrize(
    "loss_fn",
    [attrkit.negated_margin, lambda model, batch: 2.0 * attrkit.cross_entropy(model, batch)],
    ids=["another-loss", "scaled-loss"],
)
def test_a_store_of_another_loss_is_refused(store, loss_fn):
    task = attrkit.AttributionTask(model=TOY.task.model, loss_fn=loss_fn)
    with pytest.raises(attrkit.StoreMismatchError, match="another spec, model or loss function"):
        _fit(store, task=task)


def _flip(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: _flip(_chunk(s, 1)), r"chunk-0000001.npy does not match its checksum"),
        (lambda s: shutil.copy(_chunk(s, 1), _chunk(s, 0)), r"chunk-0000000.npy does not match its checksum"),
        (lambda s: [shutil.copy(_chunk(s, 1, e), _chunk(s, 0, e)) for e in ("npy", "json")],
         r"chunk-0000000.json does not describe chunk 0 of member 0"),
        (lambda s: _chunk(s, 0).write_bytes(_chunk(s, 0).read_bytes()[:100]), r"chunk-0000000.npy is not a readable"),
        (lambda s: np.save(_chunk(s, 0), np.load(_chunk(s, 0)).astype(np.float64)),
         r"holds a float64 array of shape \(8, 8\), but was written as float32"),
        (lambda s: (s / "store.json").write_text("{not json"), r"store.json is not a readable attrkit store file"),
    ],
    ids=["flipped-bytes", "chunk-copied-over-another", "chunk-and-sidecar-copied", "truncated", "float64", "store-json"],
)
def test_a_damaged_store_is_refused_naming_the_file(store, damage, message):
    damage(store)
    with pytest.raises(attrkit.StoreCorruptError, match=message) as info:
        _fit(store)
    assert "on_mismatch='recompute'" in str(info.value)


def test_recompute_replaces_what_does_not_match(store):
    _flip(_chunk(store, 1))
    other = toy_problem(seed=1)
    recomputed = _fit(store, train=other.train_loader(), on_mismatch="recompute").attribute(other.test_loader())
    fresh = attrkit.compose(SPEC, TOY.task).fit(other.train_loader()).attribute(other.test_loader())
    assert torch.equal(recomputed, fresh)
    again = _fit(store, train=other.train_loader()).attribute(other.test_loader())  # now a match
    assert torch.equal(again, fresh)


def test_a_store_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(attrkit.StoreMismatchError, match="is a file, not a folder"):
        _fit(path)


@pytest.mark.parametrize("damage", ["delete", "flip"])
def test_a_chunk_changed_between_fit_and_attribute_is_refused(tmp_path, damage):
    fitted = _fit(tmp_path, memory_budget=200)  # streamed: chunks are read at scoring
    path = _chunk(tmp_path, 1)
    path.unlink() if damage == "delete" else _flip(path)
    with pytest.raises(attrkit.StoreCorruptError, match="chunk-0000001.npy (is missing|does not match its checksum)"):
        fitted.attribute(TOY.test_loader())


def test_a_model_with_batch_norm_can_use_a_store(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.BatchNorm1d(6), torch.nn.Linear(6, 3)).eval()
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    stored = _fit(tmp_path, task=task).attribute(TOY.test_loader())
    assert torch.equal(stored, attrkit.compose(SPEC, task).fit(TOY.train_loader()).attribute(TOY.test_loader()))


def test_the_same_data_reuses_the_store_bit_identically(store):
    assert torch.equal(_fit(store).attribute(TOY.test_loader()),
                       attrkit.compose(SPEC, TOY.task).fit(TOY.train_loader()).attribute(TOY.test_loader()))
