"""Influence functions: exact IF against real leave-one-out retraining, and the invariants."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit.testing import toy_problem

L2 = 0.05


def _l2_loss(model, batch):
    """Per-example cross-entropy plus the L2 penalty (each example carries it, so the mean keeps it)."""
    penalty = 0.5 * L2 * sum((p**2).sum() for p in model.parameters())
    return attrkit.cross_entropy(model, batch) + penalty


def _train(model, x, y):
    """Full-batch L-BFGS to convergence on the mean regularised loss."""
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _l2_loss(model, (x, y)).mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return model


def test_explicit_if_predicts_leave_one_out_retraining():
    toy = toy_problem(n_train=60, n_test=3, dim=4, classes=3, hidden=0, seed=2, dtype=torch.float64)
    x, y = toy.x_train, toy.y_train
    model = _train(toy.task.model, x, y)
    task = attrkit.AttributionTask(model=model, loss_fn=_l2_loss, target_fn=attrkit.cross_entropy)
    spec = {"method": "if", "solver": {"name": "explicit", "regularization": 0.0, "curvature": "hessian"}}
    scores = attrkit.compose(spec, task).fit(DataLoader(TensorDataset(x, y), batch_size=16)).attribute(
        DataLoader(TensorDataset(toy.x_test, toy.y_test), batch_size=3)
    )
    base = attrkit.cross_entropy(model, (toy.x_test, toy.y_test)).detach()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    changes = []
    for i in range(len(y)):
        keep = torch.arange(len(y)) != i
        retrained = torch.nn.Sequential(torch.nn.Linear(4, 3)).double()
        retrained.load_state_dict(state)
        _train(retrained, x[keep], y[keep])
        changes.append(attrkit.cross_entropy(retrained, (toy.x_test, toy.y_test)).detach() - base)
    changes = torch.stack(changes, dim=1)  # [n_test, n_train]: removing i raises the loss by ~score/n
    for t in range(len(toy.y_test)):
        r = torch.corrcoef(torch.stack([scores[t].double(), changes[t]]))[0, 1]
        assert r > 0.95, (t, r)


def test_identity_solver_makes_if_equal_grad_dot(toy):
    dot = attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())
    inf = attrkit.compose({"method": "if", "solver": "identity"}, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())
    assert torch.equal(inf, dot)


@pytest.mark.parametrize("solver", ["explicit", "cg"])
def test_large_damping_makes_if_proportional_to_grad_dot(toy, solver):
    big = 1e6
    dot = attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())
    spec = {"method": "if", "solver": {"name": solver, "regularization": big}}
    inf = attrkit.compose(spec, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())
    torch.testing.assert_close(inf * big, dot, rtol=1e-3, atol=1e-6)


def test_relatif_divides_by_the_square_root_of_self_influence(toy):
    spec = {"method": "if", "solver": {"name": "explicit", "regularization": 0.1, "curvature": "gauss-newton"}}
    base = attrkit.compose(spec, toy.task).fit(toy.train_loader())
    relative = attrkit.compose({**spec, "method": "relatif"}, toy.task).fit(toy.train_loader())
    self_inf = base.self_influence(toy.train_loader())
    expected = base.attribute(toy.test_loader()) / self_inf.sqrt()
    torch.testing.assert_close(relative.attribute(toy.test_loader()), expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(relative.self_influence(toy.train_loader()), self_inf.sqrt(), rtol=1e-4, atol=1e-6)
    assert (self_inf > 0).all()
