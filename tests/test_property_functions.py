"""Property functions g(θ): values, gradients and attribution through the score engine."""

import copy

import pytest
import torch

import attrkit
from attrkit.properties import Property, accuracy_surrogate, loss_gap, mean_loss, property_gradient
from attrkit.testing import toy_problem
from attrkit.testing.toy import autograd_gradients

TOY = toy_problem(n_train=16, n_test=6, dtype=torch.float64, checkpoints=2)
MODEL = TOY.task.model


def _task(*properties, checkpoints=None):
    return attrkit.AttributionTask(
        model=MODEL, loss_fn=attrkit.cross_entropy, checkpoints=checkpoints, properties=list(properties) or None
    )


def _brute_gradient(prop, state=None):
    """``∇θ g`` by ``backward`` on a copy of the model holding ``state``."""
    model = copy.deepcopy(MODEL)
    if state is not None:
        model.load_state_dict(state)
    model.eval()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(prop(model), list(model.parameters()))])


def _halves():
    return TOY.test_loader(2), torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(TOY.x_train[:5], TOY.y_train[:5]), batch_size=3
    )


def test_property_values():
    x, y = TOY.x_test, TOY.y_test
    with torch.no_grad():
        logits = MODEL(x)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        error = 1 - logits.softmax(1).gather(1, y[:, None]).squeeze(1)
        a, b = _halves()
        gap = loss.mean() - attrkit.cross_entropy(MODEL, (TOY.x_train[:5], TOY.y_train[:5])).mean()
        torch.testing.assert_close(mean_loss(TOY.test_loader(4), attrkit.cross_entropy)(MODEL), loss.mean())
        torch.testing.assert_close(accuracy_surrogate(TOY.test_loader(4))(MODEL), error.mean())
        torch.testing.assert_close(loss_gap(a, b, attrkit.cross_entropy)(MODEL), gap)


def test_property_gradient_equals_autograd():
    prop = accuracy_surrogate(TOY.test_loader(4))
    names = [n for n, _ in MODEL.named_parameters()]
    for member in TOY.task.members():
        got = property_gradient(MODEL, prop, member.state, names)
        torch.testing.assert_close(got, _brute_gradient(prop, member.state))


@pytest.mark.parametrize("gradients", ["per-example", "last-layer"])
def test_grad_dot_property_scores_equal_brute_force(gradients):
    prop = accuracy_surrogate(TOY.test_loader(4))
    scores = attrkit.compose({"method": "grad-dot", "gradients": gradients}, _task(prop)).fit(TOY.train_loader(5)).attribute()
    train = autograd_gradients(MODEL, attrkit.cross_entropy, TOY.x_train, TOY.y_train)
    g = _brute_gradient(prop)
    if gradients == "last-layer":  # the output layer's weight and bias: the last 6*3 + 3 entries
        train, g = train[:, -21:], g[-21:]
    assert scores.shape == (1, len(TOY.y_train))
    torch.testing.assert_close(scores, (train @ g)[None].float(), rtol=1e-5, atol=1e-6)


def test_property_scores_sum_over_checkpoints():
    prop = mean_loss(TOY.test_loader(4), attrkit.cross_entropy)
    task = _task(prop, checkpoints=TOY.task.checkpoints)
    scores = attrkit.compose({"method": "grad-dot"}, task).fit(TOY.train_loader(5)).attribute()
    expected = 0
    for state in TOY.task.checkpoints:
        model = copy.deepcopy(MODEL)
        model.load_state_dict(state)
        expected = expected + autograd_gradients(model, attrkit.cross_entropy, TOY.x_train, TOY.y_train) @ _brute_gradient(prop, state)
    torch.testing.assert_close(scores, expected[None].float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "spec",
    [
        {"method": "grad-dot"},
        {"method": "if", "solver": {"name": "explicit", "regularization": 0.1}},
        {"method": "grad-dot", "gradients": "group", "grouper": {"name": "random", "n_groups": 4}},
    ],
    ids=["grad-dot", "if", "grad-dot-groups"],
)
def test_mean_loss_scores_are_the_mean_of_per_test_scores(spec):
    """By linearity: the property mean_loss(test) scores as the mean of the per-test rows."""
    a, b = _halves()
    props = [mean_loss(TOY.test_loader(4), attrkit.cross_entropy), loss_gap(a, b, attrkit.cross_entropy)]
    attributor = attrkit.compose(spec, _task(*props)).fit(TOY.train_loader(5))
    scores = attributor.attribute()
    assert scores.shape == (2, int(attributor.groups.max()) + 1)
    per_test = attributor.attribute(TOY.test_loader(4)).double()
    torch.testing.assert_close(scores[0], per_test.mean(0).float(), rtol=1e-5, atol=1e-6)
    subset = attributor.attribute(b).double()
    torch.testing.assert_close(scores[1], (per_test.mean(0) - subset.mean(0)).float(), rtol=1e-5, atol=1e-6)


def test_property_errors():
    with pytest.raises(attrkit.DataLoaderError, match="needs test batches, or properties declared on the task"):
        attrkit.compose({"method": "grad-dot"}, _task()).fit(TOY.train_loader()).attribute()
    with pytest.raises(ValueError, match="non-empty list"):
        attrkit.AttributionTask(model=MODEL, loss_fn=attrkit.cross_entropy, properties=mean_loss(TOY.test_loader(), attrkit.cross_entropy))
    with pytest.raises(ValueError, match="hold attrkit.properties.Property values, got function"):
        attrkit.AttributionTask(model=MODEL, loss_fn=attrkit.cross_entropy, properties=[lambda m: m[0].weight.sum()])
    vector = Property(name="logits", fn=lambda model: model(TOY.x_test).mean(0))
    attributor = attrkit.compose({"method": "grad-dot"}, _task(vector)).fit(TOY.train_loader())
    with pytest.raises(attrkit.LossShapeError, match="property 'logits' must return a scalar"):
        attributor.attribute()
