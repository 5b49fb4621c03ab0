"""NaN and infinity never spread silently: an error names the example, or ``nonfinite="skip"`` leaves it out."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit.testing import toy_problem

TOY = toy_problem()
GAUSS = {"name": "gaussian", "dim": 8}
SPECS = {
    "grad-dot": {"method": "grad-dot"},
    "grad-cos": {"method": "grad-cos"},
    "trak": {"method": "trak", "projector": GAUSS},
    "if-cg": {"method": "if", "solver": {"name": "cg", "max_iter": 50}},
    "if-explicit": {"method": "if", "solver": "explicit"},
    "if-ekfac": {"method": "if", "solver": "ekfac", "gradients": "factored"},
    "arnoldi-projector": {"method": "grad-dot", "projector": {"name": "arnoldi", "dim": 4}},
}


def _train(x=None, y=None, batch=8):
    return DataLoader(TensorDataset(TOY.x_train if x is None else x, TOY.y_train if y is None else y), batch_size=batch)


def _with(value, row=5, col=1, test=False):
    x = (TOY.x_test if test else TOY.x_train).clone()
    x[row, col] = value
    return x


@pytest.mark.parametrize("name", list(SPECS))
def test_a_nan_training_input_is_named(name):
    attributor = attrkit.compose(SPECS[name], TOY.task)
    with pytest.raises(attrkit.NonFiniteError, match=r"training example 5 .*non-finite input") as info:
        attributor.fit(_train(_with(float("nan"))))
    assert "nonfinite='skip'" in str(info.value)


@pytest.mark.parametrize("name", ["grad-dot", "trak", "if-cg"])
def test_an_infinite_test_input_is_named(name):
    attributor = attrkit.compose(SPECS[name], TOY.task).fit(_train())
    test = DataLoader(TensorDataset(_with(float("inf"), row=2, test=True), TOY.y_test), batch_size=8)
    with pytest.raises(attrkit.NonFiniteError, match=r"test example 2 \(batch 0, row 2\).*non-finite input"):
        attributor.attribute(test)


def test_a_nan_loss_is_named():
    def loss(model, batch):
        value = attrkit.cross_entropy(model, batch)
        return value / (batch[1] != 0).to(value)  # infinite for the examples of class 0

    task = attrkit.AttributionTask(model=TOY.task.model, loss_fn=loss)
    with pytest.raises(attrkit.NonFiniteError, match=r"training example 1 \(batch 0, row 1\).*\(2 examples of this batch: 1, 3\): its loss is inf although its input is finite"):
        attrkit.compose({"method": "grad-dot"}, task).fit(_train())


def test_a_nan_checkpoint_weight_is_named():
    state = {k: v.clone() for k, v in TOY.task.model.state_dict().items()}
    state["2.weight"][1, 1] = float("nan")
    with pytest.raises(attrkit.NonFiniteError, match=r"checkpoints\[1\] has non-finite weights: 2.weight \(1 NaN"):
        attrkit.AttributionTask(model=TOY.task.model, loss_fn=attrkit.cross_entropy,
                                checkpoints=[TOY.task.model.state_dict(), state])


def test_a_nan_in_the_model_itself_is_named():
    model = toy_problem().task.model
    with torch.no_grad():
        model[0].bias[0] = float("inf")
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    with pytest.raises(attrkit.NonFiniteError, match=r"the model has non-finite weights: 0.bias \(0 NaN, 1 infinite"):
        attrkit.compose({"method": "grad-dot"}, task).fit(_train())


def test_scores_that_overflow_float32_are_refused():
    task = attrkit.AttributionTask(model=TOY.task.model, loss_fn=lambda m, b: attrkit.cross_entropy(m, b) * 1e30)
    attributor = attrkit.compose({"method": "grad-dot"}, task).fit(_train())
    with pytest.raises(attrkit.NonFiniteError, match="exceed the float32 range"):
        attributor.attribute(TOY.test_loader())


@pytest.mark.parametrize("name", ["grad-dot", "trak", "if-cg", "if-explicit"])
def test_skip_leaves_the_example_out_everywhere(name):
    bad = _train(_with(float("nan")))
    with pytest.warns(attrkit.NonFiniteWarning, match=r"1 of 24 training examples .*: 5"):
        attributor = attrkit.compose(SPECS[name], TOY.task).fit(bad, nonfinite="skip")
    scores = attributor.attribute(TOY.test_loader())
    assert torch.isfinite(scores).all() and torch.equal(scores[:, 5], torch.zeros(6))
    assert attributor.skipped.tolist() == [5]
    top = attributor.top_k(TOY.test_loader(), k=23)
    assert not (top.proponents == 5).any() and not (top.opponents == 5).any()
    # the others' scores are those of a fit without the example (the curvature never saw it)
    keep = torch.arange(24) != 5
    without = attrkit.compose(SPECS[name], TOY.task).fit(_train(TOY.x_train[keep], TOY.y_train[keep]))
    torch.testing.assert_close(scores[:, keep], without.attribute(TOY.test_loader()), rtol=1e-3, atol=1e-4)  # CG: round-off


def test_skip_gives_a_nan_row_for_a_non_finite_test_example():
    attributor = attrkit.compose({"method": "grad-dot"}, TOY.task).fit(_train(), nonfinite="skip")
    test = DataLoader(TensorDataset(_with(float("nan"), row=4, test=True), TOY.y_test), batch_size=8)
    with pytest.warns(attrkit.NonFiniteWarning, match="score rows are NaN: 4"):
        scores = attributor.attribute(test)
    assert torch.isnan(scores[4]).all() and torch.isfinite(scores[torch.arange(6) != 4]).all()


@settings(max_examples=20, deadline=None)
@given(row=st.integers(0, 23), value=st.sampled_from([float("nan"), float("inf"), float("-inf")]),
       batch=st.sampled_from([3, 5, 8, 24]), name=st.sampled_from(["grad-dot", "grad-cos", "trak"]))
def test_any_non_finite_training_input_is_named_or_skipped(row, value, batch, name):
    train = _train(_with(value, row=row), batch=batch)
    with pytest.raises(attrkit.NonFiniteError, match=rf"training example {row} \(batch {row // batch}, row {row % batch}\)"):
        attrkit.compose(SPECS[name], TOY.task).fit(train)
    with pytest.warns(attrkit.NonFiniteWarning):
        scores = attrkit.compose(SPECS[name], TOY.task).fit(train, nonfinite="skip").attribute(TOY.test_loader())
    assert torch.isfinite(scores).all() and (scores[:, row] == 0).all()
