"""TRAK, TracIn and RPS against their closed forms on tiny models."""

from __future__ import annotations

import pytest
import torch

import attrkit
from attrkit.targets import cross_entropy, negated_margin
from attrkit.testing import autograd_gradients, toy_problem

TOY = toy_problem(n_train=20, n_test=5, dtype=torch.float64)


def _scores(spec, toy=TOY, train_batch=7, test_batch=3):
    return attrkit.compose(spec, toy.task).fit(toy.train_loader(train_batch)).attribute(toy.test_loader(test_batch))


@pytest.mark.parametrize("lam", [1e-3, 0.5])
def test_trak_one_member_identity_projector_is_its_closed_form(lam: float) -> None:
    model = TOY.task.model
    phi = autograd_gradients(model, negated_margin, TOY.x_train, TOY.y_train)
    phi_t = autograd_gradients(model, negated_margin, TOY.x_test, TOY.y_test)
    with torch.no_grad():
        p = torch.softmax(model(TOY.x_train), 1).gather(1, TOY.y_train[:, None]).squeeze(1)
    kernel = phi.T @ phi + lam * torch.eye(phi.shape[1], dtype=phi.dtype)
    expected = phi_t @ torch.linalg.solve(kernel, phi.T) * (1 - p)[None, :]
    spec = {"method": "trak", "projector": "identity", "solver": {"name": "gauss-newton", "regularization": lam}}
    torch.testing.assert_close(_scores(spec), expected.float(), rtol=1e-4, atol=1e-5)
    unweighted = {**spec, "method": {"name": "trak", "reweight": False}}
    torch.testing.assert_close(_scores(unweighted), (phi_t @ torch.linalg.solve(kernel, phi.T)).float(), rtol=1e-4,
                               atol=1e-5)


def test_trak_averages_kernels_and_q_over_members() -> None:
    toy = toy_problem(n_train=16, n_test=4, dtype=torch.float64, checkpoints=2)
    spec = {"method": "trak", "projector": "identity", "solver": {"name": "gauss-newton", "regularization": 0.1}}
    kernels, qs = [], []
    for i in range(2):
        model = toy.task.model
        original = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(toy.task.checkpoint_state(i))
        phi = autograd_gradients(model, negated_margin, toy.x_train, toy.y_train)
        phi_t = autograd_gradients(model, negated_margin, toy.x_test, toy.y_test)
        with torch.no_grad():
            qs.append(1 - torch.softmax(model(toy.x_train), 1).gather(1, toy.y_train[:, None]).squeeze(1))
        model.load_state_dict(original)
        kernels.append(phi_t @ torch.linalg.solve(phi.T @ phi + 0.1 * torch.eye(phi.shape[1], dtype=phi.dtype), phi.T))
    expected = (kernels[0] + kernels[1]) / 2 * ((qs[0] + qs[1]) / 2)[None, :]
    torch.testing.assert_close(_scores(spec, toy), expected.float(), rtol=1e-4, atol=1e-5)


def test_trak_uses_the_task_target_when_set() -> None:
    task = attrkit.AttributionTask(model=TOY.task.model, loss_fn=cross_entropy, target_fn=cross_entropy)
    spec = {"method": {"name": "trak", "reweight": False}, "projector": "identity",
            "solver": {"name": "gauss-newton", "regularization": 0.1}}
    got = attrkit.compose(spec, task).fit(TOY.train_loader()).attribute(TOY.test_loader())
    g = autograd_gradients(TOY.task.model, cross_entropy, TOY.x_train, TOY.y_train)
    g_t = autograd_gradients(TOY.task.model, cross_entropy, TOY.x_test, TOY.y_test)
    expected = g_t @ torch.linalg.solve(g.T @ g + 0.1 * torch.eye(g.shape[1], dtype=g.dtype), g.T)
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-5)


def test_tracin_one_checkpoint_lr_one_is_grad_dot() -> None:
    tracin = _scores({"method": {"name": "tracin", "learning_rates": [1.0]}})
    torch.testing.assert_close(tracin, _scores({"method": "grad-dot"}), rtol=0, atol=0)


def test_tracin_weights_checkpoints_by_learning_rate() -> None:
    toy = toy_problem(n_train=12, n_test=3, dtype=torch.float64, checkpoints=3)
    rates = [0.5, 0.2, 0.1]
    got = _scores({"method": {"name": "tracin", "learning_rates": rates}}, toy)
    expected = 0.0
    for i, rate in enumerate(rates):
        single = attrkit.AttributionTask(model=toy.task.model, loss_fn=cross_entropy,
                                         checkpoints=[toy.task.checkpoint_state(i)])
        expected = expected + rate * attrkit.compose({"method": "grad-dot"}, single).fit(
            toy.train_loader()).attribute(toy.test_loader())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(attrkit.SpecError, match="2 learning rates for 3 checkpoints"):
        _scores({"method": {"name": "tracin", "learning_rates": [0.1, 0.2]}}, toy)
    with pytest.raises(attrkit.SpecError, match="learning rates must be positive"):
        attrkit.compose({"method": {"name": "tracin", "learning_rates": [0.1, -1]}}, toy.task)


def _train_to_stationarity(features: torch.Tensor, y: torch.Tensor, classes: int, lam: float) -> torch.nn.Module:
    """A linear classifier minimising mean CE + λ‖[W, b]‖² (L-BFGS to a tiny gradient)."""
    layer = torch.nn.Linear(features.shape[1], classes).double()
    optimizer = torch.optim.LBFGS(layer.parameters(), max_iter=2000, tolerance_grad=1e-12, tolerance_change=0,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(features), y) + lam * sum((p * p).sum() for p in layer.parameters())
        loss.backward()
        return loss

    optimizer.step(closure)
    return layer


def test_rps_representer_values_reproduce_the_logits_at_a_stationary_point() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (30,), generator=gen)
    lam = 0.01
    head = _train_to_stationarity(torch.tanh(x), y, 3, lam)
    model = torch.nn.Sequential(torch.nn.Tanh(), head)
    task = attrkit.AttributionTask(model=model, loss_fn=cross_entropy)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    rps = attrkit.compose({"method": {"name": "rps", "regularization": lam}}, task).fit(loader)
    assert rps.gradient_norms[0] < 1e-8
    values = rps.representer_values(loader)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(values.sum(1), logits, rtol=1e-6, atol=1e-6)  # Σ_i α_i k(x_i, x_t) = z_t

    # scores contract the representer values with -∂CE/∂z = onehot(y) - softmax(z)
    push = torch.nn.functional.one_hot(y, 3).double() - torch.softmax(logits, 1)
    expected = (values * push[:, None, :]).sum(2)
    torch.testing.assert_close(rps.attribute(loader), expected.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rps.self_influence(loader), expected.diagonal().float(), rtol=1e-5, atol=1e-6)


def test_rps_refits_the_layer_and_normalizes_features() -> None:
    spec = {"method": {"name": "rps", "regularization": 0.05, "normalize": True}}
    rps = attrkit.compose(spec, TOY.task).fit(TOY.train_loader())
    assert rps.gradient_norms[0] < 1e-6
    values = rps.representer_values(TOY.test_loader())
    head = rps.heads[0]
    with torch.no_grad():
        h = torch.tanh(TOY.task.model[0](TOY.x_test))
    h = torch.cat([h / h.norm(dim=1, keepdim=True), torch.ones(len(h), 1, dtype=h.dtype)], 1)
    torch.testing.assert_close(values.sum(1), h @ head.weight.T, rtol=1e-6, atol=1e-6)
    assert _scores(spec).shape == (5, 20)


def test_rps_refit_in_closed_form_for_cross_entropy_equals_the_autograd_refit() -> None:
    """The closed-form objective and gradient of :func:`attrkit.targets.cross_entropy` are autograd's, and the
    refit they drive reaches the same head and scores as the autograd refit of the same loss (another function)."""
    from attrkit_plugins.representer import _cross_entropy_objective

    gen = torch.Generator().manual_seed(2)
    feats, w = torch.randn(40, 6, generator=gen, dtype=torch.float64), torch.randn(3, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=gen)
    labels = (torch.empty(40, 0), y)
    value, grad = _cross_entropy_objective(cross_entropy, feats, labels, 0.1, 3)(w)
    w_ = w.clone().requires_grad_(True)
    expected = torch.nn.functional.cross_entropy(feats @ w_.T, y) + 0.1 * (w_ * w_).sum()
    expected.backward()
    torch.testing.assert_close(value, expected.detach(), rtol=1e-13, atol=0)
    torch.testing.assert_close(grad, w_.grad, rtol=1e-12, atol=1e-14)
    assert _cross_entropy_objective(negated_margin, feats, labels, 0.1, 3) is None
    assert _cross_entropy_objective(cross_entropy, feats, (labels[0], y + 3), 0.1, 3) is None  # refused by the loss

    spec = {"method": {"name": "rps", "regularization": 0.05}}
    closed = attrkit.compose(spec, TOY.task).fit(TOY.train_loader(7))
    task = attrkit.AttributionTask(model=TOY.task.model, loss_fn=lambda m, b: cross_entropy(m, b))
    autograd = attrkit.compose(spec, task).fit(TOY.train_loader(7))
    assert closed.gradient_norms[0] < 1e-6 and autograd.gradient_norms[0] < 1e-6
    torch.testing.assert_close(closed.heads[0].weight, autograd.heads[0].weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(closed.attribute(TOY.test_loader(3)), autograd.attribute(TOY.test_loader(3)),
                               rtol=1e-5, atol=1e-6)


def test_rps_stops_where_the_objective_changes_at_round_off() -> None:
    """The default ``tol_change`` ends the refit where the objective's changes reach its float64 round-off:
    ``α`` within 1e-5 relative of the refit run on until its line search stalls (``tol_change=0``)."""
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(400, 30, generator=gen), torch.randint(0, 5, (400,), generator=gen)
    task = attrkit.AttributionTask(model=torch.nn.Linear(30, 5), loss_fn=cross_entropy)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100)
    heads = [attrkit.compose({"method": {"name": "rps", "regularization": 0.003, "tol_change": tol}}, task)
             .fit(loader).heads[0] for tol in (1e-14, 0.0)]
    assert heads[0].gradient_norm < 1e-6 and heads[1].gradient_norm < 1e-7
    assert float((heads[0].alpha - heads[1].alpha).norm() / heads[1].alpha.norm()) < 1e-5


def test_rps_scores_in_row_tiles_equal_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scores are produced in tiles of at most ``_TILE_ELEMENTS`` entries, never a whole batch at once:
    tiles of 2 rows (not dividing the test batch of 5) give the scores of tiles as large as a batch, bit for bit."""
    from attrkit_plugins import representer

    rps = attrkit.compose({"method": {"name": "rps", "regularization": 0.01}}, TOY.task).fit(TOY.train_loader())
    whole = rps.attribute(TOY.test_loader())
    n = whole.shape[1]
    monkeypatch.setattr(representer, "_TILE_ELEMENTS", 2 * n)
    tiles = list(rps._score_rows(rps.heads, attrkit.loaders.checked(TOY.test_loader(), "test")))
    assert max(t.shape[0] for t in tiles) == 2
    assert torch.equal(torch.cat(tiles), whole)


def test_rps_refuses_unlabelled_batches() -> None:
    task = attrkit.AttributionTask(model=TOY.task.model, loss_fn=lambda m, b: m(b).sum(1))
    with pytest.raises(attrkit.errors.DataLoaderError, match="rps needs batches"):
        attrkit.compose({"method": "rps"}, task).fit([TOY.x_train])
