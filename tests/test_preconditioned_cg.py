"""CG preconditioned by K-FAC / EK-FAC (attrkit.functional.ihvp_cg), the structured curvature's float32
products for a float32 model evaluated in float64 (attrkit.functional.structured_factors.gemm_dtype), and
Arnoldi influence in its projected form on those products."""

import warnings

import pytest
import torch

import attrkit
from attrkit.errors import ArgumentError, ConvergenceWarning
from attrkit.functional import cg_ihvp_at, explicit_ihvp_at, select_parameters
from attrkit.functional.ihvp import prepare_at
from attrkit.functional.structured_factors import gemm_dtype
from attrkit.functional.structured_matvec import structured_matvec
from attrkit.targets import cross_entropy
from attrkit.testing import toy_problem

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def _data(n=96, dim=30, classes=4, dtype=F64):
    """Correlated, badly scaled inputs: an ill-conditioned curvature that plain CG is slow on."""
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(dim, dim, generator=gen) * torch.logspace(0, -2, dim)
    x = (torch.randn(n, dim, generator=gen) @ mix).to(dtype)
    y = torch.randint(0, classes, (n,), generator=gen)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _mlp(dtype=F64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(30, 12), torch.nn.Tanh(), torch.nn.Linear(12, 4)).to(dtype)


def _logistic(dtype=F64):
    torch.manual_seed(0)
    return torch.nn.Linear(30, 4).to(dtype)


def _solve(preconditioner, max_iter, make=_mlp, tol=1e-10, lam=1e-3, **kw):
    model, data = make(), _data()
    names = select_parameters(model, ("*",))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        inverse = cg_ihvp_at(model, cross_entropy, dict(model.state_dict()), names, data, regularization=lam,
                             curvature="gauss-newton", max_iter=max_iter, tol=tol, preconditioner=preconditioner,
                             matvec="hvp", **kw)
        vectors = torch.randn(3, inverse.p, dtype=F64, generator=torch.Generator().manual_seed(1))
        return inverse(vectors), inverse.stats.info, vectors, (model, names, data, lam)


@pytest.mark.parametrize("preconditioner", ["kfac", "ekfac"])
@pytest.mark.parametrize("make", [_logistic, _mlp])
def test_preconditioned_cg_reaches_the_exact_solve(make, preconditioner):
    plain, plain_info, vectors, (model, names, data, lam) = _solve("none", 400, make)
    found, info, _, _ = _solve(preconditioner, 400, make)
    exact = explicit_ihvp_at(model, cross_entropy, dict(model.state_dict()), names, data, regularization=lam,
                             curvature="gauss-newton")(vectors)
    for x in (plain, found):
        assert float((x - exact).norm() / exact.norm()) < 1e-6
    assert info["max_relative_residual"] <= 1e-10 and info["unconverged_solves"] == 0
    assert info["iterations"] < plain_info["iterations"]
    if make is _logistic:  # one layer: the Kronecker factors are near the curvature (measured 26-29 against 292)
        assert info["iterations"] < plain_info["iterations"] / 5


@pytest.mark.parametrize("preconditioner", ["kfac", "ekfac"])
@pytest.mark.parametrize("make", [_logistic, _mlp])
def test_at_equal_iterations_the_preconditioned_residual_is_smaller(make, preconditioner):
    _, plain, _, _ = _solve("none", 5, make)
    _, found, _, _ = _solve(preconditioner, 5, make)
    assert found["iterations"] == plain["iterations"] == 5
    assert found["max_relative_residual"] < plain["max_relative_residual"] / 3  # measured 5-40x smaller


def test_unknown_preconditioner_is_refused_at_the_call_and_at_compose():
    with pytest.raises(ArgumentError, match=r"preconditioner must be one of 'none', 'kfac', 'ekfac', got 'jacobi'"):
        _solve("jacobi", 3)
    toy = toy_problem(n_train=8)
    with pytest.raises(attrkit.SpecError, match=r"solver.preconditioner: 'preconditioner' must be in "
                                                r"\('none', 'kfac', 'ekfac'\)"):
        attrkit.compose({"method": "if", "solver": {"name": "cg", "preconditioner": "jacobi"}}, toy.task)


def test_the_cg_spec_takes_the_preconditioner_and_solves_alike():
    toy = toy_problem(n_train=24, dim=5, hidden=6)
    spec = {"method": "if", "solver": {"name": "cg", "regularization": 0.1, "max_iter": 200, "tol": 1e-10}}
    with_kfac = {"method": "if", "solver": {**spec["solver"], "preconditioner": "kfac"}}
    plain = attrkit.compose(spec, toy.task).fit(toy.train_loader(8)).attribute(toy.test_loader(4))
    found = attrkit.compose(with_kfac, toy.task).fit(toy.train_loader(8)).attribute(toy.test_loader(4))
    torch.testing.assert_close(found, plain, rtol=1e-5, atol=1e-6)


def test_a_float32_model_gets_float32_structured_products_within_round_off_of_float64():
    model, data = _mlp(torch.float32), _data()  # float64 batches and state: what the parameter solvers pass
    names = select_parameters(model, ("*",))
    state = {k: v.double() for k, v in model.state_dict().items()}
    assert gemm_dtype(model, state, names) == torch.float32
    assert gemm_dtype(model.double(), state, names) == F64
    operators = {}
    for kind, m in (("float32", _mlp(torch.float32)), ("float64", _mlp(F64))):
        meter, p = prepare_at(state, names, data, 0.0, "gauss-newton")
        operators[kind], reason, _ = structured_matvec(meter, m, cross_entropy, state, names, "gauss-newton")
        assert reason == ""
    assert operators["float32"].dtype == torch.float32 and operators["float64"].dtype == F64
    assert operators["float32"].nbytes * 2 == operators["float64"].nbytes
    vectors = torch.randn(4, p, dtype=F64, generator=torch.Generator().manual_seed(2))
    low, high = operators["float32"](vectors), operators["float64"](vectors)
    assert low.dtype == F64
    error = float((low - high).norm() / high.norm())
    assert 0 < error < 1e-6  # measured: float32 GEMMs summed in float64 over chunks


def test_arnoldi_projected_form_on_structured_products_equals_the_arnoldi_solver():
    """``if`` + scaled ``arnoldi`` projector + identity solver is ``gᵀ U (Λ + λI)⁻¹ Uᵀ g'``, what the
    ``arnoldi`` solver computes; with p > 256 the projector takes the structured products."""
    torch.manual_seed(0)
    toy = toy_problem(n_train=48, dim=30, hidden=0, classes=10)  # logistic regression, p = 310
    solver = {"method": "if", "solver": {"name": "arnoldi", "curvature": "gauss-newton", "rank": 12, "max_iter": 40,
                                         "regularization": 0.1}}
    projected = {"method": "if", "solver": "identity", "projector": {
        "name": "arnoldi", "curvature": "gauss-newton", "dim": 12, "max_iter": 40, "regularization": 0.1}}
    scores = {}
    for name, spec in (("solver", solver), ("projected", projected), ("hvp", projected)):
        if name == "hvp":
            spec = {**spec, "projector": {**spec["projector"], "matvec": "hvp"}}
        attributor = attrkit.compose(spec, toy.task).fit(toy.train_loader(16))
        scores[name] = attributor.attribute(toy.test_loader(8))
    scale = float(scores["solver"].abs().max())
    torch.testing.assert_close(scores["projected"], scores["solver"], rtol=1e-3, atol=1e-4 * scale)
    torch.testing.assert_close(scores["projected"], scores["hvp"], rtol=1e-3, atol=1e-4 * scale)
