"""Curvature maths (HVP, GNVP, Lanczos) against explicit Hessians, and the ``arnoldi`` projector."""

from types import SimpleNamespace

import attrs
import pytest
import torch
from torch.func import functional_call, hessian, jacrev

import attrkit
from attrkit import capabilities
from attrkit.context import FitContext
from attrkit.functional.curvature import dataset_gnvp, dataset_hvp, hvp, lanczos
from attrkit.plugins import load_plugins
from attrkit.registry import Registry
from attrkit.targets import cross_entropy
from attrkit.testing import autograd_gradients, toy_problem
from attrkit_plugins import arnoldi

REGISTRY = Registry(*load_plugins(block=["attrkit-arnoldi"], extra=[("test-arnoldi", arnoldi)]))


class _Flat:
    """A toy problem in float64 with its loss as a function of the flat parameter vector."""

    def __init__(self, hidden, dim=5, n_train=20):
        self.toy = toy_problem(n_train=n_train, dim=dim, hidden=hidden, dtype=torch.float64)
        self.model = self.toy.task.model
        self.state = self.toy.task.current_state()
        self.names = [n for n, _ in self.model.named_parameters()]
        self.sizes = [self.state[n].numel() for n in self.names]
        self.theta = torch.cat([self.state[n].reshape(-1) for n in self.names])
        self.p = self.theta.numel()

    def params(self, theta):
        return {n: c.view_as(self.state[n]) for n, c in zip(self.names, theta.split(self.sizes))}

    def logits(self, theta):
        return functional_call(self.model, self.params(theta), (self.toy.x_train,))

    def mean_loss(self, theta):
        return torch.nn.functional.cross_entropy(self.logits(theta), self.toy.y_train)

    def hessian(self):
        return hessian(self.mean_loss)(self.theta)

    def gauss_newton(self):
        jac = jacrev(self.logits)(self.theta).reshape(-1, self.p)
        z = self.logits(self.theta)
        h_z = hessian(lambda z: torch.nn.functional.cross_entropy(z, self.toy.y_train))(z).reshape(z.numel(), -1)
        return jac.T @ h_z @ jac


@pytest.fixture(scope="module")
def mlp():
    return _Flat(hidden=4)


def test_hvp_matches_the_explicit_hessian(mlp):
    h = mlp.hessian()
    v = torch.randn(mlp.p, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hvp(mlp.mean_loss, mlp.theta, v), h @ v)
    matvec = dataset_hvp(mlp.model, cross_entropy, mlp.state, mlp.names, mlp.toy.train_loader(6))  # batches 6,6,6,2
    torch.testing.assert_close(matvec(v), h @ v)
    block = torch.randn(3, mlp.p, dtype=torch.float64)
    torch.testing.assert_close(matvec(block), block @ h)
    assert matvec(v.float()).dtype == torch.float32


def test_gauss_newton_product_matches_jt_h_j(mlp):
    g = mlp.gauss_newton()
    v = torch.randn(2, mlp.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    matvec = dataset_gnvp(mlp.model, cross_entropy, mlp.state, mlp.names, mlp.toy.train_loader(7))
    torch.testing.assert_close(matvec(v), v @ g)
    assert torch.linalg.eigvalsh(g).min() > -1e-12  # PSD for cross-entropy


def test_gauss_newton_needs_exactly_one_model_call(mlp):
    def twice(model, batch):
        return cross_entropy(model, batch) + 0 * model(batch[0]).sum(1)

    matvec = dataset_gnvp(mlp.model, twice, mlp.state, mlp.names, mlp.toy.train_loader())
    with pytest.raises(ValueError, match="exactly once"):
        matvec(torch.zeros(mlp.p, dtype=torch.float64))


def test_lanczos_top_eigenpairs_match_eigh():
    problem = _Flat(hidden=10, dim=4, n_train=32)  # p = 83
    values, vectors = torch.linalg.eigh(problem.hessian())
    values, vectors = values.flip(0), vectors.flip(1)
    k = 5
    matvec = dataset_hvp(problem.model, cross_entropy, problem.state, problem.names, problem.toy.train_loader(16))
    top, found = lanczos(matvec, problem.p, k, max_iter=2 * k + 20, seed=0)
    assert top.shape == (k,) and found.shape == (problem.p, k)
    assert ((top - values[:k]).abs() / values[:k].abs()).max() < 1e-6
    assert (found.T @ vectors[:, :k]).diag().abs().min() > 0.999
    torch.testing.assert_close(found.T @ found, torch.eye(k, dtype=torch.float64))


def test_lanczos_with_p_iterations_is_exact_even_with_repeated_eigenvalues():
    spectrum = torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, 0.5, -2.0], dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))[0]
    matrix = basis @ torch.diag(spectrum) @ basis.T
    values, vectors = lanczos(lambda v: matrix @ v, 7, 7, max_iter=7, seed=4)
    torch.testing.assert_close(values, spectrum)
    torch.testing.assert_close(vectors @ torch.diag(values) @ vectors.T, matrix)
    with pytest.raises(ValueError, match="k <= min"):
        lanczos(lambda v: v, 7, 8, max_iter=20)


def _grad_dot(toy, projector, train_batch=7):
    spec = {"method": "grad-dot", "projector": {"name": "arnoldi", **projector}}
    return attrkit.compose(spec, toy.task, REGISTRY).fit(toy.train_loader(train_batch)).attribute(toy.test_loader())


@pytest.mark.parametrize("curvature", ["hessian", "gauss-newton"])
def test_full_rank_scaled_projection_gives_the_damped_influence(curvature):
    """With dim = p, scale and λ > 0: <Pg, Pg'> = gᵀ (H + λI)⁻¹ g' (convex logistic regression, H PSD)."""
    problem, lam = _Flat(hidden=0), 0.1
    toy = problem.toy
    scores = _grad_dot(toy, {"dim": problem.p, "max_iter": problem.p, "regularization": lam, "curvature": curvature})
    test = autograd_gradients(problem.model, cross_entropy, toy.x_test, toy.y_test)
    train = autograd_gradients(problem.model, cross_entropy, toy.x_train, toy.y_train)
    damped = problem.hessian() + lam * torch.eye(problem.p, dtype=torch.float64)
    expected = test @ torch.linalg.solve(damped, train.T)
    torch.testing.assert_close(scores.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_full_rank_unscaled_projection_is_orthogonal_and_changes_nothing():
    toy = toy_problem(n_train=12, n_test=4, hidden=0)
    p = sum(q.numel() for q in toy.task.model.parameters())
    plain = attrkit.compose({"method": "grad-dot"}, toy.task, REGISTRY).fit(toy.train_loader())
    plain = plain.attribute(toy.test_loader())
    torch.testing.assert_close(_grad_dot(toy, {"dim": p, "max_iter": p, "scale": False}), plain, rtol=1e-4, atol=1e-5)


def _fitted(toy, train_batch=8, **params):
    projector = arnoldi.ArnoldiProjector(arnoldi.ArnoldiConfig(**params))
    p = sum(q.numel() for q in toy.task.model.parameters())
    projector.fit(FitContext(task=toy.task, member=toy.task.members()[0], train=toy.train_loader(train_batch),
                             gradients=None, dimension=p, n_train=0))
    return projector


def test_projector_is_linear_seeded_and_independent_of_batching():
    toy = toy_problem(n_train=12)
    params = {"dim": 4, "max_iter": 8, "curvature": "gauss-newton"}
    first, again = _fitted(toy, **params), _fitted(toy, **params)
    rebatched = _fitted(toy, train_batch=5, **params)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, first.basis.shape[0], generator=gen), torch.randn(6, first.basis.shape[0], generator=gen)
    out = first.project(x)
    assert out.shape == (6, 4) and out.dtype == torch.float32
    assert torch.equal(again.project(x), out)
    torch.testing.assert_close(first.project(2 * x - 3 * y), 2 * out - 3 * first.project(y), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.cat([first.project(x[:2]), first.project(x[2:])]), out)
    kernel = out @ first.project(y).T  # basis signs may differ: compare U Uᵀ through inner products
    torch.testing.assert_close(rebatched.project(x) @ rebatched.project(y).T, kernel, rtol=1e-4, atol=1e-5)
    assert (first.eigenvalues[:-1] >= first.eigenvalues[1:]).all()


def test_parameter_selection_follows_the_gradient_source():
    toy = toy_problem(n_train=12)
    gradients = {"name": "per-example", "params": ["2.*"]}
    spec = {"method": "grad-dot", "gradients": gradients, "projector": {"name": "arnoldi", "dim": 3}}
    attributor = attrkit.compose(spec, toy.task, REGISTRY).fit(toy.train_loader())
    assert attributor.fitted.members[0].projector.basis.shape == (6 * 3 + 3, 3)


def test_requires_hvps_and_refuses_a_source_without_them():
    assert arnoldi.ArnoldiProjector.requires == frozenset({capabilities.HVP})
    source = REGISTRY.get("gradients", "per-example").cls
    no_hvp = type("NoHVP", (source,), {"name": "no-hvp", "provides": frozenset({capabilities.PER_EXAMPLE})})
    plugin = SimpleNamespace(attrkit_components=attrkit.hookimpl(lambda: [no_hvp]))
    registry = Registry(*load_plugins(block=["attrkit-arnoldi"], extra=[("test-arnoldi", arnoldi), ("no-hvp", plugin)]))
    spec = {"method": "grad-dot", "gradients": "no-hvp", "projector": {"name": "arnoldi", "dim": 2}}
    with pytest.raises(attrkit.SpecError, match="requires 'hvp'"):
        attrkit.compose(spec, toy_problem().task, registry)


def test_clear_errors():
    toy = toy_problem(n_train=12)
    with pytest.raises(attrkit.SpecError, match="max_iter must be >= dim"):
        _grad_dot(toy, {"dim": 8, "max_iter": 4})
    p = sum(q.numel() for q in toy.task.model.parameters())
    assert _grad_dot(toy, {"dim": 100, "curvature": "gauss-newton", "regularization": 0.1}).isfinite().all()
    assert _fitted(toy, dim=100, curvature="gauss-newton").basis.shape == (p, p)  # dim > p is clamped to p: exact
    linear = toy_problem(n_train=12, hidden=0)
    concave = attrs.evolve(linear.task, loss_fn=lambda model, batch: -(model(batch[0]) ** 2).sum(1))  # H < 0
    with pytest.raises(attrkit.SpecError, match="raise regularization above"):
        _grad_dot(attrs.evolve(linear, task=concave), {"dim": 2})
    with pytest.raises(attrkit.NotFittedError):
        arnoldi.ArnoldiProjector(arnoldi.ArnoldiConfig()).project(torch.zeros(1, 3))
