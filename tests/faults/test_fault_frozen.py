"""Frozen parameters (``requires_grad=False``) are not differentiated by default.

A fine-tuned head on a frozen backbone is attributed through the head only; a fully
frozen model is refused; ``frozen: true`` brings the old behaviour (every parameter) back.
The toy model is ``Sequential(Linear(5, 6), Tanh, Linear(6, 3))``: columns ``[:36]`` of a
full gradient are the backbone's ``0.weight, 0.bias``, ``[36:]`` the head's ``2.weight, 2.bias``.
"""

import pytest
import torch

import attrkit
from attrkit.functional.gradients import select_parameters
from attrkit.testing import autograd_gradients, toy_problem

HEAD = slice(36, None)
BIAS = slice(36 + 18, None)  # 2.bias, after 2.weight [3, 6]


@pytest.fixture
def frozen_backbone():
    toy = toy_problem()
    toy.task.model[0].requires_grad_(False)
    return toy


def _scores(spec, toy):
    return attrkit.compose(spec, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())


def _brute(toy, columns=slice(None)):
    model, fn = toy.task.model, toy.task.loss_fn
    test = autograd_gradients(model, fn, toy.x_test, toy.y_test)[:, columns]
    train = autograd_gradients(model, fn, toy.x_train, toy.y_train)[:, columns]
    return test, train


def test_frozen_backbone_is_attributed_through_the_head_only(frozen_backbone):
    test, train = _brute(frozen_backbone, HEAD)
    scores = _scores({"method": "grad-dot"}, frozen_backbone)
    torch.testing.assert_close(scores, test @ train.T, rtol=1e-4, atol=1e-5)
    head_only = _scores({"method": "grad-dot", "gradients": {"name": "per-example", "params": ["2.*"]}}, frozen_backbone)
    torch.testing.assert_close(scores, head_only)


@pytest.mark.parametrize("source", ["per-example", "factored", "group"])
def test_every_parameter_source_selects_the_trainable_parameters(frozen_backbone, source):
    attributor = attrkit.compose({"method": "grad-dot", "gradients": source}, frozen_backbone.task)
    gradients = attributor.resolved.entries["gradients"].cls(attributor.resolved.configs["gradients"])
    assert gradients.names(frozen_backbone.task) == ["2.weight", "2.bias"]
    assert gradients.dimension(frozen_backbone.task) == 3 * 6 + 3


def test_frozen_true_differentiates_frozen_parameters_too(frozen_backbone):
    test, train = _brute(frozen_backbone)
    spec = {"method": "grad-dot", "gradients": {"name": "per-example", "frozen": True}}
    torch.testing.assert_close(_scores(spec, frozen_backbone), test @ train.T, rtol=1e-4, atol=1e-5)


def test_a_fully_frozen_model_is_refused(toy):
    toy.task.model.requires_grad_(False)
    with pytest.raises(attrkit.SpecError) as info:
        _scores({"method": "grad-dot"}, toy)
    message = str(info.value)
    assert "the model has no trainable parameter: all 4 have requires_grad=False (frozen)" in message
    assert "set gradients.frozen=true" in message


def test_patterns_matching_only_frozen_parameters_are_refused(frozen_backbone):
    with pytest.raises(attrkit.SpecError) as info:
        _scores({"method": "grad-dot", "gradients": {"name": "per-example", "params": ["0.*"]}}, frozen_backbone)
    message = str(info.value)
    assert "patterns ['0.*'] match only parameters with requires_grad=False (frozen): 0.weight, 0.bias" in message
    assert "set gradients.frozen=true to include frozen ones, or unfreeze them" in message
    assert "the trainable parameters are: 2.weight, 2.bias" in message


def test_patterns_matching_nothing_still_list_the_parameters(frozen_backbone):
    with pytest.raises(attrkit.SpecError, match=r"match no parameter of the model; it has: 0.weight, 0.bias, 2.weight"):
        select_parameters(frozen_backbone.task.model, ["9.*"])


def test_select_parameters_takes_a_frozen_option(frozen_backbone):
    model = frozen_backbone.task.model
    assert select_parameters(model, ["*"]) == ["2.weight", "2.bias"]
    assert select_parameters(model, ["*"], frozen=True) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_a_frozen_last_layer_is_refused_by_the_last_layer_source(toy):
    toy.task.model[2].requires_grad_(False)
    with pytest.raises(attrkit.SpecError, match=r"'last-layer' differentiates layer '2' \(2.weight, 2.bias\), whose "
                                                r"parameters all have requires_grad=False \(frozen\)"):
        _scores({"method": "grad-dot", "gradients": "last-layer"}, toy)
    test, train = _brute(toy, HEAD)
    scores = _scores({"method": "grad-dot", "gradients": {"name": "last-layer", "frozen": True}}, toy)
    torch.testing.assert_close(scores, test @ train.T, rtol=1e-4, atol=1e-5)


def test_last_layer_leaves_a_frozen_weight_out(toy):
    toy.task.model[2].weight.requires_grad_(False)
    test, train = _brute(toy, BIAS)
    scores = _scores({"method": "grad-dot", "gradients": "last-layer"}, toy)
    torch.testing.assert_close(scores, test @ train.T, rtol=1e-4, atol=1e-5)


def test_parameter_space_solver_uses_the_trainable_parameters(frozen_backbone):
    solver = {"name": "explicit", "regularization": 0.1}
    default = _scores({"method": "if", "solver": solver}, frozen_backbone)
    head = _scores({"method": "if", "solver": solver, "gradients": {"name": "per-example", "params": ["2.*"]}},
                   frozen_backbone)
    torch.testing.assert_close(default, head)
    every = _scores({"method": "if", "solver": solver, "gradients": {"name": "per-example", "frozen": True}},
                    frozen_backbone)
    assert not torch.allclose(every, head, rtol=1e-3, atol=1e-5)
