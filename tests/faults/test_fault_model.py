"""The model cannot change under a fitted attributor: scores describe the weights fitted at, or an error names the change."""

import copy

import pytest
import torch

import attrkit
from attrkit.testing import toy_problem

TOY = toy_problem()


def _task():
    return attrkit.AttributionTask(model=copy.deepcopy(TOY.task.model), loss_fn=attrkit.cross_entropy)


@pytest.mark.parametrize(
    "change",
    [
        lambda m: [p.data.add_(0.1) for p in m.parameters()],  # a classic SGD loop through .data
        lambda m: m[0].weight.data.mul_(2.0),
        lambda m: m.load_state_dict({k: v + 1 for k, v in m.state_dict().items()}),
    ],
    ids=["data-add", "data-mul", "load-state-dict"],
)
@pytest.mark.parametrize("call", ["attribute", "top_k", "self_influence"])
def test_training_the_model_further_after_fit_is_named(change, call):
    task = _task()
    fitted = attrkit.compose({"method": "grad-dot"}, task).fit(TOY.train_loader())
    with torch.no_grad():
        change(task.model)
    with pytest.raises(attrkit.ModelChangedError, match=r"changed since fit \(.*0.weight.*\).*fit again"):
        if call == "attribute":
            fitted.attribute(TOY.test_loader())
        elif call == "top_k":
            fitted.top_k(TOY.test_loader(), k=3)
        else:
            fitted.self_influence(TOY.train_loader())


def test_an_optimizer_step_after_fit_is_named():
    task = _task()
    fitted = attrkit.compose({"method": "trak", "projector": {"name": "gaussian", "dim": 8}}, task).fit(TOY.train_loader())
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.1)
    x, y = TOY.x_train, TOY.y_train
    torch.nn.functional.cross_entropy(task.model(x), y).backward()
    optimizer.step()
    with pytest.raises(attrkit.ModelChangedError, match="changed since fit"):
        fitted.attribute(TOY.test_loader())


def test_the_model_restored_after_fit_is_accepted():
    task = _task()
    fitted = attrkit.compose({"method": "grad-dot"}, task).fit(TOY.train_loader())
    before = fitted.attribute(TOY.test_loader())
    saved = copy.deepcopy(task.model.state_dict())
    with torch.no_grad():
        task.model[0].weight.add_(1.0)
    task.model.load_state_dict(saved)
    assert torch.equal(fitted.attribute(TOY.test_loader()), before)


def test_a_loss_fn_that_changes_the_weights_during_fit_is_named():
    model = copy.deepcopy(TOY.task.model)

    def loss(m, batch):
        with torch.no_grad():
            model[0].weight.data.mul_(1.01)
        return attrkit.cross_entropy(m, batch)

    task = attrkit.AttributionTask(model=model, loss_fn=loss)
    with pytest.raises(attrkit.ModelChangedError, match=r"changed during fit \(model: 0.weight\)"):
        attrkit.compose({"method": "grad-dot"}, task).fit(TOY.train_loader())


def test_a_checkpoint_state_dict_changed_after_fit_does_not_reach_the_fitted_member():
    state = copy.deepcopy(TOY.task.model.state_dict())
    task = attrkit.AttributionTask(model=copy.deepcopy(TOY.task.model), loss_fn=attrkit.cross_entropy,
                                   checkpoints=[state])
    fitted = attrkit.compose({"method": "grad-dot"}, task).fit(TOY.train_loader())
    before = fitted.attribute(TOY.test_loader())
    state["0.weight"].mul_(3.0)  # the caller keeps using its dict
    assert torch.equal(fitted.attribute(TOY.test_loader()), before)
