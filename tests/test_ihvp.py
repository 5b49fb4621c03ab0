"""Inverse-HVP solvers (explicit, CG, LiSSA, Arnoldi) against dense solves of explicit Hessians, float64."""

import pytest
import torch
from torch.func import functional_call, hessian, jacrev

from attrkit.errors import DataLoaderError
from attrkit.functional import arnoldi_ihvp_at, cg_ihvp_at, explicit_ihvp_at, lissa_ihvp_at
from attrkit.functional.ihvp import CurvatureError, function_matvec
from attrkit.functional.ihvp_cg import cg_solve
from attrkit.functional.ihvp_explicit import explicit_solve
from attrkit.functional.ihvp_lissa import lissa_solve
from attrkit.targets import cross_entropy
from attrkit.testing import toy_problem

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


class Problem:
    """A float64 toy classifier, its explicit Hessian and Gauss-Newton matrix of the mean loss."""

    def __init__(self, hidden, dim, n=40):
        self.toy = toy_problem(n_train=n, dim=dim, hidden=hidden, dtype=F64)
        self.n, self.model = n, self.toy.task.model
        self.state = dict(self.model.state_dict())
        self.names = [name for name, _ in self.model.named_parameters()]
        self.sizes = [self.state[name].numel() for name in self.names]
        self.theta = torch.cat([self.state[name].reshape(-1) for name in self.names])
        self.p = self.theta.numel()
        self.hessian = hessian(self.mean_loss)(self.theta)
        jac = jacrev(self.logits)(self.theta).reshape(-1, self.p)
        z = self.logits(self.theta)
        h_z = hessian(lambda z: torch.nn.functional.cross_entropy(z, self.toy.y_train))(z).reshape(z.numel(), -1)
        self.gauss_newton = jac.T @ h_z @ jac
        # damping making H + λI positive definite with margin 0.1 (the MLP's Hessian is indefinite)
        self.lam = max(0.0, -float(torch.linalg.eigvalsh(self.hessian)[0])) + 0.1
        self.vectors = torch.randn(4, self.p, dtype=F64, generator=torch.Generator().manual_seed(1))

    def params(self, theta):
        return {name: c.view_as(self.state[name]) for name, c in zip(self.names, theta.split(self.sizes))}

    def logits(self, theta):
        return functional_call(self.model, self.params(theta), (self.toy.x_train,))

    def mean_loss(self, theta):
        return torch.nn.functional.cross_entropy(self.logits(theta), self.toy.y_train)

    def exact(self, lam, matrix=None):
        matrix = self.hessian if matrix is None else matrix
        return torch.linalg.solve(matrix + lam * torch.eye(self.p, dtype=F64), self.vectors.T).T

    def at(self, builder, batch=8, **kw):
        return builder(self.model, cross_entropy, self.state, self.names, self.toy.train_loader(batch), **kw)


@pytest.fixture(scope="module")
def lr():
    return Problem(hidden=0, dim=5)  # p = 18, H PSD with a 6-dimensional null space


@pytest.fixture(scope="module")
def mlp():
    return Problem(hidden=4, dim=4)  # p = 35, H indefinite


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def _converged(problem):
    """Keyword arguments making every solver (near-)exact on ``problem``."""
    return {
        explicit_ihvp_at: {},
        cg_ihvp_at: {"max_iter": 3 * problem.p, "tol": 1e-12},
        arnoldi_ihvp_at: {"rank": problem.p, "max_iter": problem.p},
    }


@pytest.mark.parametrize("build", [explicit_ihvp_at, cg_ihvp_at, arnoldi_ihvp_at])
@pytest.mark.parametrize("name", ["lr", "mlp"])
def test_converged_solvers_match_the_dense_solve(build, name, request):
    problem = request.getfixturevalue(name)
    solve = problem.at(build, regularization=problem.lam, **_converged(problem)[build])
    out = solve(problem.vectors)
    assert out.shape == problem.vectors.shape and out.dtype == F64
    assert _relative(out, problem.exact(problem.lam)) < (1e-6 if build is arnoldi_ihvp_at else 1e-4)


@pytest.mark.parametrize("build", [explicit_ihvp_at, cg_ihvp_at, arnoldi_ihvp_at, lissa_ihvp_at])
def test_gauss_newton_variants_match_jt_h_j(build, mlp):
    lam = 0.1
    kw = _converged(mlp).get(build, {"depth": 100, "batch_size": mlp.n})
    if build is lissa_ihvp_at:  # deterministic with full batches: error <= (1 - μ/scale)^depth
        values = torch.linalg.eigvalsh(mlp.gauss_newton) + lam
        kw["scale"] = float(values[-1]) * 1.01
        tolerance = (1 - float(values[0]) / kw["scale"]) ** kw["depth"]
    else:
        tolerance = 1e-6 if build is arnoldi_ihvp_at else 1e-4
    out = mlp.at(build, regularization=lam, curvature="gauss-newton", **kw)(mlp.vectors)
    assert _relative(out, mlp.exact(lam, mlp.gauss_newton)) <= tolerance


def test_full_batch_lissa_error_follows_its_convergence_bound(lr):
    lam, depth = 0.1, 150
    values = torch.linalg.eigvalsh(lr.hessian) + lam
    scale = float(values[-1]) * 1.05
    bound = (1 - float(values[0]) / scale) ** depth  # μ = λ_min(H) + λ
    assert bound < 0.05
    solve = lr.at(lissa_ihvp_at, regularization=lam, depth=depth, scale=scale, batch_size=lr.n)
    error = _relative(solve(lr.vectors), lr.exact(lam))
    assert error <= bound and error > bound / 10  # the bound is the rate actually seen
    assert solve.stats.solve.example_hvps == depth * lr.n * 4 and solve.stats.build.passes == 1


def test_sampled_lissa_is_seeded(lr):
    kw = {"regularization": 0.1, "depth": 20, "scale": 10.0, "batch_size": 5, "repeat": 2}
    first = lr.at(lissa_ihvp_at, seed=3, **kw)
    out = first(lr.vectors)
    torch.testing.assert_close(first(lr.vectors), out, rtol=0, atol=0)
    torch.testing.assert_close(lr.at(lissa_ihvp_at, batch=3, seed=3, **kw)(lr.vectors), out, rtol=0, atol=0)
    assert not torch.allclose(lr.at(lissa_ihvp_at, seed=4, **kw)(lr.vectors), out)
    assert first.stats.solves == 2 and first.stats.solve.example_hvps == 2 * 20 * 2 * 5 * 4


_TRUNCATED = [
    (explicit_ihvp_at, {"chunk_size": 5}),
    (cg_ihvp_at, {"max_iter": 4}),
    (arnoldi_ihvp_at, {"rank": 6, "max_iter": 12}),
    (lissa_ihvp_at, {"depth": 10, "batch_size": 6, "scale": 10.0}),
]


@pytest.mark.parametrize(("build", "kw"), _TRUNCATED, ids=lambda x: getattr(x, "__name__", ""))
def test_results_do_not_depend_on_the_loader_batch_size_nor_on_the_block(build, kw, lr):
    solves = {batch: lr.at(build, batch=batch, regularization=0.1, **kw) for batch in (1, 7, lr.n)}
    reference = solves[lr.n](lr.vectors)
    for batch in (1, 7):
        torch.testing.assert_close(solves[batch](lr.vectors), reference, rtol=1e-9, atol=1e-12)
    one_by_one = torch.cat([solves[7](lr.vectors[i : i + 1]) for i in range(len(lr.vectors))])
    torch.testing.assert_close(one_by_one, reference, rtol=1e-9, atol=1e-12)


def test_stats_count_passes_and_example_hvps(lr):
    explicit = lr.at(explicit_ihvp_at, regularization=0.1, chunk_size=5, build="hvp")
    assert (explicit.stats.build.passes, explicit.stats.build.example_hvps) == (4, lr.n * lr.p)
    explicit(lr.vectors)
    assert explicit.stats.solve.passes == 0 and explicit.stats.solves == 1
    structured = lr.at(explicit_ihvp_at, regularization=0.1, chunk_size=5)  # auto: p = 18 > 5, H = G
    # one structured pass (no HVPs); the Hessian probe: H v and G v of 2 vectors on the first batch (8 examples),
    # which decides alone: logistic regression's outputs are affine in its parameters (B_i = I)
    assert (structured.stats.build.passes, structured.stats.build.example_hvps) == (1, 2 * 2 * 8)
    assert structured.stats.info["outputs_affine"] == 1.0
    assert structured.stats.info["structured"] == 1.0 and explicit.stats.info["structured"] == 0.0
    cg = lr.at(cg_ihvp_at, regularization=0.1, max_iter=50, tol=1e-8)
    cg(lr.vectors)
    iterations = cg.stats.info["iterations"]
    assert cg.stats.build.passes == 0 and cg.stats.solve.passes == iterations <= 50
    assert cg.stats.info["max_relative_residual"] <= 1e-8
    assert lr.n * 4 <= cg.stats.solve.example_hvps <= iterations * lr.n * 4
    arnoldi = lr.at(arnoldi_ihvp_at, regularization=0.1, rank=3, max_iter=7)
    assert arnoldi.stats.build.passes == 7 and arnoldi.stats.build.example_hvps == 7 * lr.n


def test_matvec_helpers_on_a_function_of_a_pytree_of_parameters(lr):
    def fn(params):
        return torch.nn.functional.cross_entropy(functional_call(lr.model, params, (lr.toy.x_train,)), lr.toy.y_train)

    params, lam = lr.params(lr.theta), 0.1
    exact = lr.exact(lam)
    matvec, theta = function_matvec(fn, params)
    assert torch.equal(theta, lr.theta)  # tree_flatten order of the dict: the names' order
    hessian = matvec(torch.eye(lr.p, dtype=F64))
    assert _relative(explicit_solve(hessian, lr.vectors, lam), exact) < 1e-10
    assert _relative(cg_solve(matvec, lr.vectors, regularization=lam, max_iter=100, tol=1e-12), exact) < 1e-8
    arnoldi = lr.at(arnoldi_ihvp_at, regularization=lam, rank=lr.p, max_iter=lr.p)
    assert _relative(arnoldi(lr.vectors), exact) < 1e-8
    assert _relative(explicit_solve(lr.hessian, lr.vectors, lam), exact) < 1e-10


def test_matvec_forms_and_per_row_stopping_of_cg():
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(6, 6, dtype=F64, generator=gen))[0]
    spectrum = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5, 0.25], dtype=F64)
    matrix = basis @ torch.diag(spectrum) @ basis.T
    vectors = torch.stack([basis[:, 0], torch.randn(6, dtype=F64, generator=gen), torch.zeros(6, dtype=F64)])
    calls = []

    def matvec(rows):
        calls.append(len(rows))
        return rows @ matrix

    exact = torch.linalg.solve(matrix + 0.5 * torch.eye(6, dtype=F64), vectors.T).T
    torch.testing.assert_close(cg_solve(matvec, vectors, regularization=0.5, max_iter=20, tol=1e-12), exact)
    assert calls[0] == 2 and calls[1:] == [1] * (len(calls) - 1)  # the eigenvector converges at once, 0 never runs
    scale, depth = 5.0, 80
    bound = (1 - 0.75 / scale) ** depth
    out = lissa_solve(lambda rows: rows @ matrix, vectors[:2], regularization=0.5, depth=depth, scale=scale)
    assert _relative(out, exact[:2]) <= bound
    torch.testing.assert_close(explicit_solve(matrix, vectors, 0.5), exact)


def _concave(problem):
    """The LR problem with a loss whose Hessian is negative definite."""

    def loss(model, batch):
        return -(model(batch[0]) ** 2).sum(1)

    return lambda build, **kw: build(problem.model, loss, problem.state, problem.names, problem.toy.train_loader(),
                                     **kw)


def test_clear_errors(lr):
    concave = _concave(lr)
    with pytest.raises(CurvatureError, match=r"smallest eigenvalue of the curvature H is -.*set regularization > "):
        concave(explicit_ihvp_at, regularization=0.1)
    with pytest.raises(CurvatureError, match=r"set regularization > 2"):
        explicit_solve(torch.diag(torch.tensor([1.0, -2.0], dtype=F64)), torch.ones(1, 2, dtype=F64), 1.0)
    with pytest.raises(CurvatureError, match="not positive definite"):
        concave(cg_ihvp_at, regularization=0.1)(lr.vectors)
    with pytest.raises(CurvatureError, match="set regularization >"):
        concave(arnoldi_ihvp_at, rank=2, max_iter=6)
    with pytest.raises(CurvatureError, match="p=18 exceeds max_dim=10"):
        lr.at(explicit_ihvp_at, max_dim=10)
    top = float(torch.linalg.eigvalsh(lr.hessian)[-1])
    with pytest.raises(CurvatureError, match="LiSSA diverged.*scale=0.4.* is too small"):
        lr.at(lissa_ihvp_at, depth=200, scale=0.1 * top, batch_size=lr.n)(lr.vectors)
    with pytest.raises(ValueError, match=r"between 1 and n=40"):
        lr.at(lissa_ihvp_at, batch_size=41)
    with pytest.raises(ValueError, match=r"v\[None\]"):
        lr.at(explicit_ihvp_at, regularization=0.1)(lr.vectors[0])
    with pytest.raises(ValueError, match="curvature must be one of"):
        lr.at(cg_ihvp_at, curvature="fisher")
    with pytest.raises(ValueError, match="regularization .* >= 0"):
        lr.at(cg_ihvp_at, regularization=-1.0)
    for build in (explicit_ihvp_at, cg_ihvp_at, lissa_ihvp_at, arnoldi_ihvp_at):
        with pytest.raises(DataLoaderError, match="empty"):
            build(lr.model, cross_entropy, lr.state, lr.names, [])
        with pytest.raises(DataLoaderError, match="re-iterable"):
            build(lr.model, cross_entropy, lr.state, lr.names, (b for b in lr.toy.train_loader()))
    shuffled = torch.utils.data.DataLoader(lr.toy.train_loader().dataset, batch_size=8, shuffle=True)
    with pytest.raises(DataLoaderError, match="shuffle=False"):
        cg_ihvp_at(lr.model, cross_entropy, lr.state, lr.names, shuffled)


def test_dict_batches_are_gathered_and_streamed(lr):
    def loss(model, batch):
        return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"], reduction="none")

    batches = [{"x": x, "y": y} for x, y in lr.toy.train_loader(9)]
    for build, kw in [(lissa_ihvp_at, {"depth": 5, "batch_size": 7}), (explicit_ihvp_at, {})]:
        as_dicts = build(lr.model, loss, lr.state, lr.names, batches, regularization=0.1, **kw)
        as_tuples = lr.at(build, regularization=0.1, **kw)
        torch.testing.assert_close(as_dicts(lr.vectors), as_tuples(lr.vectors))
