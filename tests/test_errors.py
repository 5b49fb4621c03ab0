"""Bad input gets a clear error that names the problem and the fix."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit


def test_shuffled_train_loader_is_refused(toy):
    loader = DataLoader(TensorDataset(toy.x_train, toy.y_train), batch_size=4, shuffle=True)
    attributor = attrkit.compose({"method": "grad-dot"}, toy.task)
    with pytest.raises(attrkit.DataLoaderError, match="shuffle=False"):
        attributor.fit(loader)


def test_shuffled_test_loader_is_refused(toy):
    attributor = attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader())
    loader = DataLoader(TensorDataset(toy.x_test, toy.y_test), shuffle=True)
    with pytest.raises(attrkit.DataLoaderError, match="test loader shuffles"):
        attributor.attribute(loader)


@pytest.mark.parametrize(
    "loss_fn, shape",
    [
        (lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1]), r"\(\)"),
        (lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")[:, None], r"\(1, 1\)"),
    ],
    ids=["mean-reduced", "column"],
)
def test_loss_of_the_wrong_shape(toy, loss_fn, shape):
    task = attrkit.AttributionTask(model=toy.task.model, loss_fn=loss_fn)
    with pytest.raises(attrkit.LossShapeError, match=rf"returned shape {shape}\. Use reduction='none'"):
        attrkit.compose({"method": "grad-dot"}, task).fit(toy.train_loader())


def test_checkpoint_that_does_not_fit_the_model(toy):
    state = toy.task.model.state_dict()
    bad = dict(state)
    bad["0.weight"] = torch.zeros(2, 2)
    del bad["2.bias"]
    bad["head.weight"] = torch.zeros(1)
    with pytest.raises(attrkit.CheckpointError) as info:
        attrkit.AttributionTask(model=toy.task.model, loss_fn=toy.task.loss_fn, checkpoints=[state, bad])
    message = str(info.value)
    assert "checkpoints[1] does not fit the model" in message
    assert "missing keys ['2.bias']" in message
    assert "unexpected keys ['head.weight']" in message
    assert "0.weight: checkpoint (2, 2) vs model (6, 5)" in message


def test_checkpoint_file_paths_are_loaded_and_checked(toy, tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(toy.task.model.state_dict(), path)
    task = attrkit.AttributionTask(model=toy.task.model, loss_fn=toy.task.loss_fn, checkpoints=[path])
    assert torch.equal(task.members()[0].state["0.weight"], toy.task.model[0].weight)
    with pytest.raises(attrkit.CheckpointError, match="cannot load"):
        attrkit.AttributionTask(model=toy.task.model, loss_fn=toy.task.loss_fn, checkpoints=[tmp_path / "missing.pt"])


def test_attribute_before_fit(toy):
    with pytest.raises(attrkit.NotFittedError, match=r"fit\(train_loader\)"):
        attrkit.compose({"method": "grad-dot"}, toy.task).attribute(toy.test_loader())


def test_parameter_patterns_that_match_nothing(toy):
    with pytest.raises(ValueError, match=r"match no parameter of the model; it has: 0.weight, 0.bias"):
        attrkit.compose({"method": "grad-dot", "gradients": {"name": "per-example", "params": ["fc.*"]}}, toy.task)


def test_ragged_batch(toy):
    attributor = attrkit.compose({"method": "grad-dot"}, toy.task)
    with pytest.raises(attrkit.DataLoaderError, match="share its first"):
        attributor.fit([(toy.x_train[:4], toy.y_train[:3])])
