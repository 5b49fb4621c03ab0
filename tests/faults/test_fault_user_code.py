"""Mistakes in the user's data, loss function or checkpoints get an attrkit error with the batch and the fix,
never a raw torch or functorch traceback."""

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit.testing import toy_problem

TOY = toy_problem()


def _fit(train=None, loss_fn=attrkit.cross_entropy, model=None, spec=None):
    task = attrkit.AttributionTask(model=model or TOY.task.model, loss_fn=loss_fn)
    return attrkit.compose(spec or {"method": "grad-dot"}, task).fit(train or TOY.train_loader())


def _loader(x=TOY.x_train, y=TOY.y_train):
    return DataLoader(TensorDataset(x, y), batch_size=8)


@pytest.mark.parametrize(
    "x, shown",
    [(TOY.x_train.long(), "int64"), (TOY.x_train.half(), "float16"), (TOY.x_train.double(), "float64")],
    ids=["int", "half", "double"],
)
@pytest.mark.parametrize("gradients", ["per-example", "last-layer", "factored"])
def test_inputs_of_another_dtype_are_explained(x, shown, gradients):
    with pytest.raises(attrkit.LossFunctionError) as info:
        _fit(_loader(x=x), spec={"method": "grad-dot", "gradients": gradients})
    message = str(info.value)
    assert "training batch 0" in message and f"batch[0]: {shown} [8, 5]" in message
    assert "model parameters: float32" in message and "dtype does not match" in message


def test_a_label_out_of_range_is_explained():
    y = TOY.y_train.clone()
    y[3] = 7
    with pytest.raises(attrkit.LossFunctionError, match=r"(?s)Target 7 is out of bounds.*values 0..7.*labels must lie in"):
        _fit(_loader(y=y))


def test_a_test_batch_with_the_wrong_feature_count_is_explained():
    fitted = _fit()
    test = DataLoader(TensorDataset(TOY.x_test[:, :4], TOY.y_test), batch_size=8)
    with pytest.raises(attrkit.LossFunctionError, match=r"(?s)test batch 0.*shapes cannot be multiplied.*\[6, 4\].*"
                                                        r"does not fit the model"):
        fitted.attribute(test)


def _item_loss(model, batch):
    return attrkit.cross_entropy(model, batch) * float(batch[0].sum().item() > -1e9)


def _branching_loss(model, batch):
    loss = attrkit.cross_entropy(model, batch)
    return loss if loss.sum() > 0 else -loss


@pytest.mark.parametrize("loss_fn", [_item_loss, _branching_loss], ids=["item", "data-dependent-if"])
def test_a_loss_that_vmap_cannot_trace_runs_one_example_at_a_time_and_says_so(loss_fn, monkeypatch):
    from attrkit.functional import gradients

    monkeypatch.setattr(gradients, "_WARNED", set())  # said once per process
    monkeypatch.setattr(gradients, "hooked_gradients", lambda *args: None)  # as for a model beyond Linear/LayerNorm
    dense = {"method": "grad-dot", "gradients": {"name": "per-example", "products": "dense"}}  # per-example gradients
    with pytest.warns(attrkit.UntraceableWarning, match="one example at a time with plain autograd"):
        scores = _fit(loss_fn=loss_fn, spec=dense).attribute(TOY.test_loader())
    # per example, both losses are the plain cross-entropy: the same scores as a traceable loss
    torch.testing.assert_close(scores, _fit().attribute(TOY.test_loader()))


@pytest.mark.parametrize("loss_fn", [_item_loss, _branching_loss], ids=["item", "data-dependent-if"])
def test_a_loss_that_vmap_cannot_trace_takes_one_hooked_pass_over_linear_layers(loss_fn, monkeypatch):
    from attrkit.functional import gradients

    monkeypatch.setattr(gradients, "_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", attrkit.UntraceableWarning)  # no loop, so nothing to say
        scores = _fit(loss_fn=loss_fn).attribute(TOY.test_loader())
    torch.testing.assert_close(scores, _fit().attribute(TOY.test_loader()))


def test_a_loss_that_fails_plainly_on_one_example_is_explained():
    def failing(model, batch):
        if batch[0].shape[0] == 1:  # only the one-example runs of the fallback fail
            raise RuntimeError("boom")
        return _item_loss(model, batch)

    with pytest.raises(attrkit.LossFunctionError, match="boom"):
        _fit(loss_fn=failing)


def test_a_loss_that_mixes_examples_is_explained():
    def mixing(model, batch):
        return attrkit.cross_entropy(model, batch) - attrkit.cross_entropy(model, batch)[3]

    with pytest.raises(attrkit.LossFunctionError, match="reads other examples of the batch"):
        _fit(loss_fn=mixing)


@pytest.mark.parametrize("norm", [True, False], ids=["batch-norm", "no-batch-norm"])
def test_model_train_inside_the_loss_is_explained(norm):
    torch.manual_seed(0)
    middle = [torch.nn.BatchNorm1d(6)] if norm else [torch.nn.Dropout(0.5)]
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), *middle, torch.nn.Linear(6, 3)).eval()

    def training_loss(m, batch):
        m.train()
        return attrkit.cross_entropy(m, batch)

    with pytest.raises(attrkit.LossFunctionError, match=r"switched the model to training mode.*do not call model.train"):
        _fit(loss_fn=training_loss, model=model)


def test_a_pickled_model_checkpoint_is_refused_without_running_it(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(TOY.task.model, path)  # the whole module, pickled
    with pytest.raises(attrkit.CheckpointError, match=r"not a plain state_dict file.*never runs code") as info:
        attrkit.AttributionTask(model=TOY.task.model, loss_fn=attrkit.cross_entropy, checkpoints=[path])
    assert "weights_only=False" not in str(info.value)


@pytest.mark.parametrize("value, message", [([1, 2], "is a list"), (3.0, "is a float")], ids=["list", "float"])
def test_a_checkpoint_that_is_not_a_state_dict_is_named(value, message):
    with pytest.raises(attrkit.CheckpointError, match=rf"checkpoints\[0\] {message}; expected a state_dict"):
        attrkit.AttributionTask(model=TOY.task.model, loss_fn=attrkit.cross_entropy, checkpoints=[value])


def test_a_checkpoint_file_holding_a_list_is_named(tmp_path):
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(attrkit.CheckpointError, match=r"holds a list, expected a state_dict"):
        attrkit.AttributionTask(model=TOY.task.model, loss_fn=attrkit.cross_entropy, checkpoints=[tmp_path / "list.pt"])


def test_a_nested_state_dict_gets_the_fix():
    nested = {"state_dict": TOY.task.model.state_dict(), "epoch": 3}
    with pytest.raises(attrkit.CheckpointError, match=r"nests a state dict under 'state_dict'"):
        attrkit.AttributionTask(model=TOY.task.model, loss_fn=attrkit.cross_entropy, checkpoints=[nested])


def test_a_checkpoint_with_a_non_tensor_value_is_named():
    state = dict(TOY.task.model.state_dict())
    state["0.bias"] = [0.0] * 6
    with pytest.raises(attrkit.CheckpointError, match=r"0.bias: checkpoint a list, not a tensor"):
        attrkit.AttributionTask(model=TOY.task.model, loss_fn=attrkit.cross_entropy, checkpoints=[state])


def test_a_projection_too_large_for_memory_is_refused_before_allocating():
    spec = {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 10**9}}
    with pytest.raises(attrkit.InsufficientMemoryError, match=r"dim=1000000000.*more than the .* available.*lower"):
        _fit(spec=spec)
