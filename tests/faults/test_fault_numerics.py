"""Trustworthy scores: solvers and cosine normalisation against closed forms where numerics used to fail silently.

Each test pins a fault that returned a wrong (or non-finite) answer without a word:
gauss-newton's Cholesky on a numerically singular ``ΦᵀΦ``, CG stopping at ``max_iter``,
the default arnoldi solver/projector on models with fewer parameters than its rank,
explicit and K-FAC dividing by round-off, and grad-cos overflowing in float32.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

import attrkit
from attrkit.context import FitContext
from attrkit.errors import ConvergenceWarning, CurvatureError, NonFiniteError
from attrkit.functional import (
    arnoldi_ihvp_at,
    cg_ihvp_at,
    datainf_ihvp_at,
    ekfac_ihvp_at,
    explicit_ihvp_at,
    kfac_ihvp_at,
    lissa_ihvp_at,
)
from attrkit.functional.ihvp_cg import cg_solve
from attrkit.functional.ihvp_explicit import explicit_solve
from attrkit.functional.ihvp_kfac import ekfac_solve, kfac_solve
from attrkit.functional.kfac_factors import fit_ekfac, fit_kfac
from attrkit.functional.scoring import normalize_rows
from attrkit.targets import cross_entropy, negated_margin
from attrkit.testing import autograd_gradients, toy_problem

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _scores(spec, toy, train_batch=7, test_batch=3):
    return attrkit.compose(spec, toy.task).fit(toy.train_loader(train_batch)).attribute(toy.test_loader(test_batch))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double().flatten(), b.double().flatten()]))[0, 1])


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.named_parameters()}


# -- 1. gauss-newton at λ = 0: the rank from the spectrum, not from Cholesky's luck ----------------


# (seed, n_train, dim) of float32 softmax logistic regressions whose float64 ΦᵀΦ of margin
# gradients (rank (classes - 1)(dim + 1) < k = classes (dim + 1)) Cholesky factorises without
# complaint with some BLAS builds (OpenBLAS on AMD; MKL on Intel flags it): the old code, trusting
# Cholesky, inverted the round-off there: correlations 0.15, 0.13, 0.45 with the closed form below.
# Whether Cholesky accepts it here or not, the scores must be the closed form's.
_SINGULAR_BUT_FACTORISABLE = [(4, 20, 5), (0, 30, 3), (1, 30, 3)]


@pytest.mark.parametrize(("seed", "n_train", "dim"), _SINGULAR_BUT_FACTORISABLE)
def test_trak_identity_at_zero_damping_is_the_pseudo_inverse_closed_form(seed, n_train, dim):
    toy = toy_problem(n_train=n_train, n_test=5, dim=dim, hidden=0, seed=seed)  # float32, 3 classes
    model = toy.task.model
    phi = autograd_gradients(model, negated_margin, toy.x_train, toy.y_train).double()
    phi_t = autograd_gradients(model, negated_margin, toy.x_test, toy.y_test).double()
    k = phi.shape[1]
    assert torch.linalg.matrix_rank(phi, rtol=1e-5) == 2 * (dim + 1) < k  # the margin's null directions
    with torch.no_grad():
        q = 1 - torch.softmax(model(toy.x_train).double(), 1).gather(1, toy.y_train[:, None]).squeeze(1)
    expected = phi_t @ torch.linalg.pinv(phi.T @ phi) @ phi.T * q[None, :]
    got = _scores({"method": "trak", "projector": "identity"}, toy)
    assert _corr(got, expected) > 1 - 1e-9
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def _gauss_newton(features: torch.Tensor, **params):
    entry = attrkit.default_registry().get("solver", "gauss-newton")
    solver = entry.cls(entry.cls.Config(**params))
    toy = toy_problem()
    solver.fit(FitContext(task=toy.task, member=toy.task.members()[0], train=toy.train_loader(), gradients=None,
                          dimension=features.shape[1], n_train=features.shape[0], features=features))
    return solver


def test_gauss_newton_at_zero_damping_keeps_cholesky_on_full_rank_and_pinv_on_rank_deficient_features():
    gen = torch.Generator().manual_seed(0)
    full = torch.randn(30, 6, generator=gen)  # float32, condition ~ 3
    v = torch.randn(4, 6, generator=gen)
    solver = _gauss_newton(full)
    assert solver._factor is not None  # the O(k²) solve path
    expected = torch.linalg.solve(full.double().T @ full.double(), v.double().T).T
    torch.testing.assert_close(solver.solve(v).double(), expected, rtol=1e-5, atol=1e-6)
    # rank 4 of 6, with k <= n: the round-off rank deficiency a Cholesky happily factorises
    deficient = (torch.randn(30, 4, generator=gen, dtype=F64) @ torch.randn(4, 6, generator=gen, dtype=F64)).float()
    assert torch.linalg.cholesky_ex(deficient.double().T @ deficient.double()).info == 0
    solver = _gauss_newton(deficient)
    assert solver._factor is None and solver._basis.shape == (6, 4)
    q = deficient[:3]  # queries in the row space: the scores' case
    expected = q.double() @ torch.linalg.pinv(deficient.double().T @ deficient.double(), hermitian=True, rtol=1e-6)
    torch.testing.assert_close(solver.solve(q).double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


@pytest.mark.parametrize("spread", [10.0, 2e4, 1e6])
def test_gauss_newton_decides_cholesky_from_its_certificate_only_where_the_spectrum_agrees(spread, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    n, k = 200, 8
    left = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=F64)).Q
    right = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=F64)).Q
    values = torch.full((k,), 1.0 / spread, dtype=F64)
    values[0] = 1.0  # k - 1 equal small directions: the certificate's bound on e_min is k - 1 times loose
    features = (left * values @ right.T).float()
    energies = torch.linalg.eigvalsh(features.double().T @ features.double())
    tau = max((n * torch.finfo(torch.float32).eps) ** 2, n * torch.finfo(F64).eps)
    full_rank = bool(energies[0] > tau * energies[-1])  # the spectrum's test, computed here
    calls = []
    eigh = torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "eigh", lambda m: calls.append(m) or eigh(m))
    solver = _gauss_newton(features)
    assert (solver._factor is not None) == full_rank
    if spread == 10.0:
        assert not calls  # well conditioned: the certificate settles it without the spectrum
    if spread == 2e4:
        assert full_rank and calls  # inside the limit, beyond the certificate's slack: the spectrum decides
    if solver._factor is not None:
        q = torch.randn(3, k, generator=gen)
        expected = torch.linalg.solve(features.double().T @ features.double(), q.double().T).T
        torch.testing.assert_close(solver.solve(q).double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_gauss_newton_pseudo_inverse_of_float32_features_from_the_gram_equals_the_svd_one():
    gen = torch.Generator().manual_seed(3)
    deficient = (torch.randn(200, 5, generator=gen, dtype=F64) @ torch.randn(5, 12, generator=gen, dtype=F64)).float()
    solver = _gauss_newton(deficient)  # float32: the cut lies far above the float64 gram's round-off
    assert solver._basis.shape == (12, 5)
    pinv = torch.linalg.pinv(deficient.double(), rtol=200 * torch.finfo(torch.float32).eps)  # the SVD of Φ, same cut
    q = deficient[:4]
    expected = q.double() @ pinv @ pinv.T
    torch.testing.assert_close(solver.solve(q).double(), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_gauss_newton_refuses_non_finite_features_by_name():
    bad = torch.tensor([[1.0, float("inf")], [0.0, 1.0]], dtype=F64)
    with pytest.raises(NonFiniteError, match="gauss-newton.*not finite|gauss-newton.*NaN or infinite"):
        _gauss_newton(bad)


# -- 2. CG says when it stops short --------------------------------------------------------------


def _ill_conditioned(p: int = 40, condition: float = 1e6):
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(p, p, dtype=F64, generator=gen))[0]
    spectrum = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), p, dtype=F64)
    matrix = basis @ torch.diag(spectrum) @ basis.T
    vectors = torch.randn(3, p, dtype=F64, generator=gen)
    return matrix, vectors


def test_cg_solve_warns_with_the_residual_when_it_stops_at_max_iter():
    matrix, vectors = _ill_conditioned()
    exact = torch.linalg.solve(matrix, vectors.T).T
    with pytest.warns(ConvergenceWarning, match=r"max_iter=5 .*tol=1e-06.*relative residual .* = \d") as caught:
        out = cg_solve(lambda rows: rows @ matrix, vectors, max_iter=5, tol=1e-6)
    (message,) = [str(w.message) for w in caught if w.category is ConvergenceWarning]
    assert "raise max_iter" in message.lower() and "regularization" in message and "explicit" in message
    reached = float((vectors - out @ matrix).norm(dim=1).div(vectors.norm(dim=1)).max())
    assert f"{reached:.3g}" in message and reached > 1e-3  # the true residual, far above tol
    assert _corr(out, exact) < 0.99  # the warning is deserved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cg_solve(lambda rows: rows @ matrix, vectors, max_iter=5, tol=1e-6, warn=False)
        converged = cg_solve(lambda rows: rows @ matrix, vectors, max_iter=400, tol=1e-6)
    assert float((converged - exact).norm() / exact.norm()) < 1e-3


def test_cg_ihvp_at_warns_once_per_fitted_solver_and_keeps_counting():
    toy = toy_problem(n_train=24, n_test=4, dim=5, hidden=6, dtype=F64)
    model = toy.task.model
    state, names = dict(model.state_dict()), [n for n, _ in model.named_parameters()]
    p = sum(state[n].numel() for n in names)
    vectors = torch.randn(4, p, dtype=F64, generator=torch.Generator().manual_seed(1))
    solve = cg_ihvp_at(model, cross_entropy, state, names, toy.train_loader(), regularization=1e-4, max_iter=3,
                       curvature="gauss-newton")
    with pytest.warns(ConvergenceWarning, match=r"solver cg stopped at max_iter=3 .*relative residual") as caught:
        solve(vectors)
    (warning,) = [w for w in caught if w.category is ConvergenceWarning]
    assert f"{solve.stats.info['max_relative_residual']:.3g}" in str(warning.message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solve(vectors[:2])
    assert solve.stats.info["unconverged_solves"] == 2 and solve.stats.info["iterations"] == 3
    converged = cg_ihvp_at(model, cross_entropy, state, names, toy.train_loader(), regularization=0.1, max_iter=500,
                           tol=1e-8, curvature="gauss-newton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        converged(vectors)
    assert converged.stats.info["unconverged_solves"] == 0


def test_cg_solver_in_an_attributor_warns_once_not_per_batch():
    toy = toy_problem(n_train=16, n_test=9, dim=4, hidden=4)
    spec = {"method": "if", "solver": {"name": "cg", "max_iter": 2, "regularization": 1e-4}}
    attributor = attrkit.compose(spec, toy.task).fit(toy.train_loader())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attributor.attribute(toy.test_loader(3))  # three test batches, three solves
    convergence = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(convergence) == 1 and "max_iter=2" in str(convergence[0].message)


def test_lissa_reports_its_last_step_and_still_raises_on_divergence():
    toy = toy_problem(n_train=20, dim=3, hidden=0, dtype=F64)
    model = toy.task.model
    state, names = dict(model.state_dict()), [n for n, _ in model.named_parameters()]
    p = sum(state[n].numel() for n in names)
    vectors = torch.randn(2, p, dtype=F64, generator=torch.Generator().manual_seed(2))

    def at(**kw):
        return lissa_ihvp_at(model, cross_entropy, state, names, toy.train_loader(), regularization=0.1,
                             batch_size=20, **kw)

    short, long = at(depth=5, scale=5.0), at(depth=200, scale=5.0)
    short(vectors), long(vectors)
    assert short.stats.info["last_relative_step"] > 10 * long.stats.info["last_relative_step"]
    with pytest.raises(CurvatureError, match="LiSSA diverged"):
        at(depth=300, scale=0.05)(vectors)


# -- 3. the default arnoldi solver and projector on models smaller than their rank -----------------


def test_default_arnoldi_solver_runs_on_a_tiny_model_and_is_the_explicit_inverse():
    toy = toy_problem(n_train=20, n_test=5, dim=5, hidden=0)  # p = 18 < rank 50
    assert sum(q.numel() for q in toy.task.model.parameters()) < 50
    got = _scores({"method": "if", "solver": "arnoldi"}, toy)
    expected = _scores({"method": "if", "solver": {"name": "explicit", "regularization": 1e-3,
                                                   "curvature": "gauss-newton"}}, toy)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()))


def test_arnoldi_functions_clamp_rank_to_p():
    toy = toy_problem(n_train=20, dim=3, hidden=0, dtype=F64)  # p = 12
    model = toy.task.model
    state, names = dict(model.state_dict()), [n for n, _ in model.named_parameters()]
    vectors = torch.randn(3, 12, dtype=F64, generator=torch.Generator().manual_seed(0))
    arnoldi = arnoldi_ihvp_at(model, cross_entropy, state, names, toy.train_loader(), regularization=0.01)
    explicit = explicit_ihvp_at(model, cross_entropy, state, names, toy.train_loader(), regularization=0.01)
    assert arnoldi.stats.info["rank"] == 12 and arnoldi.stats.build.passes == 12
    torch.testing.assert_close(arnoldi(vectors), explicit(vectors), rtol=1e-8, atol=1e-10)
    matrix = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=F64))
    quadratic, loss = _quadratic(matrix)  # mean loss 0.5 tᵀ M t: H = M, p = 3 < the default rank 50
    solve = arnoldi_ihvp_at(quadratic, loss, _state(quadratic), ["t"], [(torch.zeros(2, 1, dtype=F64),)])
    assert solve.stats.info["rank"] == 3
    torch.testing.assert_close(solve(torch.eye(3, dtype=F64)), torch.linalg.inv(matrix))


def _quadratic(matrix: torch.Tensor) -> tuple[nn.Module, object]:
    """A model with one parameter ``t`` (zeros) and a loss whose every example is ``0.5 tᵀ M t``."""

    class Quadratic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.t = nn.Parameter(torch.zeros(len(matrix), dtype=matrix.dtype))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (0.5 * self.t @ matrix @ self.t).expand(len(x))

    return Quadratic(), lambda model, batch: model(batch[0])


def test_arnoldi_at_zero_damping_drops_the_null_space_instead_of_inverting_round_off():
    toy = toy_problem(n_train=20, dim=3, hidden=0, dtype=F64)  # softmax LR: H has a 4-dim null space
    model = toy.task.model
    state, names = dict(model.state_dict()), [n for n, _ in model.named_parameters()]
    grads = autograd_gradients(model, cross_entropy, toy.x_test, toy.y_test)  # in the range of H
    solve = arnoldi_ihvp_at(model, cross_entropy, state, names, toy.train_loader(), regularization=0.0,
                            curvature="gauss-newton", rank=12, max_iter=12)
    theta = torch.cat([state[n].reshape(-1) for n in names])
    sizes = [state[n].numel() for n in names]

    def logits(t):
        params = {n: c.view_as(state[n]) for n, c in zip(names, t.split(sizes))}
        return functional_call(model, params, (toy.x_train,))

    jac = jacrev(logits)(theta)  # [n, 3, p]
    probs = torch.softmax(logits(theta), 1)
    h_z = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    g_n = torch.einsum("nap,nab,nbq->pq", jac, h_z, jac) / len(toy.y_train)
    pinv = torch.linalg.pinv(g_n, hermitian=True, rtol=1e-10)
    expected = grads @ pinv
    out = solve(grads)
    assert out.isfinite().all()
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6 * float(expected.abs().max()))
    # the scaled arnoldi projector at λ = 0 (its default): projected to 0 on the null space, not 1/sqrt(round-off)
    spec = {"method": "grad-dot", "projector": {"name": "arnoldi", "dim": 12, "curvature": "gauss-newton"}}
    scores = _scores(spec, toy)
    closed = grads @ pinv @ autograd_gradients(model, cross_entropy, toy.x_train, toy.y_train).T
    torch.testing.assert_close(scores.double(), closed, rtol=1e-5, atol=1e-5 * float(closed.abs().max()))


def test_default_arnoldi_projector_with_dim_above_p_is_the_explicit_influence():
    toy = toy_problem(n_train=20, n_test=5, dim=5, hidden=0, dtype=F64)  # p = 18 < dim 64
    p = sum(q.numel() for q in toy.task.model.parameters())
    spec = {"method": "grad-dot", "projector": {"name": "arnoldi", "regularization": 0.1, "curvature": "gauss-newton"}}
    attributor = attrkit.compose(spec, toy.task).fit(toy.train_loader(7))
    got = attributor.attribute(toy.test_loader(3))
    assert attributor.fitted.members[0].projector.basis.shape == (p, p)
    assert attributor.fitted.members[0].train.width == p
    expected = _scores({"method": "if", "solver": {"name": "explicit", "regularization": 0.1,
                                                   "curvature": "gauss-newton"}}, toy)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-8 * float(expected.abs().max()))


# -- 4. the other solvers: no division by round-off, no silent inf --------------------------------


def test_explicit_refuses_a_numerically_singular_matrix_that_cholesky_may_accept():
    b = torch.randn(8, 5, dtype=F64, generator=torch.Generator().manual_seed(13))
    matrix = b @ b.T  # rank 5 of 8: some BLAS builds' Cholesky factorises it (the trap), others flag it
    vectors = torch.randn(2, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(CurvatureError, match=r"explicit solver.*numerically singular.*set regularization > "):
        explicit_solve(matrix, vectors, 0.0)
    top = float(torch.linalg.eigvalsh(matrix)[-1])
    damped = explicit_solve(matrix, vectors, 1e-3 * top)
    expected = torch.linalg.solve(matrix + 1e-3 * top * torch.eye(8, dtype=F64), vectors.T).T
    torch.testing.assert_close(damped, expected)


def test_explicit_solver_at_zero_damping_on_softmax_regression_raises_instead_of_garbage():
    # softmax LR: its Gauss-Newton matrix has a 4-dim null space, which Cholesky factorises
    # here; the old code then returned inverse-HVPs of size 3e17
    toy = toy_problem(n_train=20, dim=3, hidden=0, seed=0, dtype=F64)
    model = toy.task.model
    state, names = dict(model.state_dict()), [n for n, _ in model.named_parameters()]
    with pytest.raises(CurvatureError, match="explicit solver.*numerically singular.*set regularization > "):
        explicit_ihvp_at(model, cross_entropy, state, names, toy.train_loader(), regularization=0.0,
                         curvature="gauss-newton")
    damped = explicit_ihvp_at(model, cross_entropy, state, names, toy.train_loader(), regularization=1e-3,
                              curvature="gauss-newton")
    assert damped.solve(torch.ones(1, 12, dtype=F64)).abs().max() < 1e4


def _rank_deficient_linear():
    """A bias-free Linear(3, 2) fed inputs in a 2-dim subspace: ``A`` is singular, and its
    eigh returns the null eigenvalue as +1e-17 (not 0): the trap of a positive round-off."""
    gen = torch.Generator().manual_seed(1)
    linear = nn.Linear(3, 2, bias=False).double()
    basis = torch.randn(2, 3, dtype=F64, generator=gen)
    x = torch.randn(6, 2, dtype=F64, generator=gen) @ basis
    y = torch.randn(6, 2, dtype=F64, generator=gen)

    def squared(model, batch):
        return 0.5 * (model(batch[0]) - batch[1]).square().sum(1)

    return linear, squared, [(x, y)]


@pytest.mark.parametrize(("fit", "solve", "build"),
                         [(fit_kfac, kfac_solve, kfac_ihvp_at), (fit_ekfac, ekfac_solve, ekfac_ihvp_at)])
def test_kronecker_solvers_refuse_round_off_eigenvalues_at_zero_damping(fit, solve, build):
    linear, loss, batches = _rank_deficient_linear()
    factors = fit(linear, loss, _state(linear), ["weight"], batches)
    layer = (factors.kfac if hasattr(factors, "kfac") else factors).layers[0]
    assert float(layer.input_eigenvalues.min()) > 0  # not an exact 0: the old check let it through
    v = torch.randn(2, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(CurvatureError, match=r"layer '<root>' is singular.*regularization >"):
        solve(factors, v, 0.0)
    out = solve(factors, v, 1e-3)
    assert out.isfinite().all() and float(out.abs().max()) < 1e6
    with pytest.raises(CurvatureError, match=r"layer '<root>' is singular.*regularization >"):
        build(linear, loss, _state(linear), ["weight"], batches)(v)  # the public form, at its default λ = 0
    torch.testing.assert_close(build(linear, loss, _state(linear), ["weight"], batches, regularization=1e-3)(v), out,
                               rtol=0, atol=0)


def test_datainf_overflow_raises_instead_of_returning_inf():
    toy = toy_problem(n_train=12, dim=3, hidden=0, dtype=F64)
    model = toy.task.model
    state, names = dict(model.state_dict()), [n for n, _ in model.named_parameters()]
    solve = datainf_ihvp_at(model, cross_entropy, state, names, toy.train_loader(), regularization=1e-320)
    with pytest.raises(NonFiniteError, match="solver 'datainf'.*raise regularization"):
        solve(torch.ones(1, 12, dtype=F64))


def test_every_parameter_solver_default_spec_gives_finite_scores_on_a_tiny_model():
    toy = toy_problem(n_train=12, n_test=3, dim=3, hidden=0)  # p = 12: below arnoldi's default rank
    for solver in ("explicit", "cg", "arnoldi", "lissa", "kfac", "ekfac", "datainf"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            scores = _scores({"method": "if", "solver": solver}, toy)
        assert scores.shape == (3, 12) and scores.isfinite().all(), solver


# -- 5. grad-cos does not depend on the loss scale -----------------------------------------------


def test_normalize_rows_is_scale_invariant_and_keeps_zero_and_non_finite_rows():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [float("inf"), 1.0], [float("nan"), 1.0], [1e-40, 0.0]])
    out = normalize_rows(x)
    torch.testing.assert_close(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], torch.zeros(2)) and not out[2].isfinite().all() and not out[3].isfinite().all()
    torch.testing.assert_close(out[4], torch.tensor([1.0, 0.0]))
    for scale in (1e-30, 1e20, 1e30, 1e35):
        torch.testing.assert_close(normalize_rows(x[:2] * scale), out[:2])
    for scale in (1.0, 1e20, 1e30):  # a subnormal row, up to huge: still a unit vector
        torch.testing.assert_close(normalize_rows(x[4:] * scale), out[4:])


@pytest.mark.parametrize("scale", [1e20, 1e30])
def test_grad_cos_does_not_change_with_the_loss_scale(scale):
    toy = toy_problem(n_train=16, n_test=4, dim=4, hidden=5)  # float32

    def scaled(model, batch):
        return scale * cross_entropy(model, batch)

    reference = attrkit.compose({"method": "grad-cos"}, toy.task).fit(toy.train_loader(5))
    task = attrkit.AttributionTask(model=toy.task.model, loss_fn=scaled)
    attributor = attrkit.compose({"method": "grad-cos"}, task).fit(toy.train_loader(5))
    expected = reference.attribute(toy.test_loader())
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(attributor.attribute(toy.test_loader()), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attributor.self_influence(toy.train_loader(5)), torch.ones(16), rtol=1e-5, atol=1e-6)
