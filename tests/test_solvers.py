"""Solvers against exact linear algebra."""

import torch

import attrkit
from attrkit.context import FitContext
from attrkit.testing import toy_problem


def _fit(name, features=None, **params):
    entry = attrkit.default_registry().get("solver", name)
    solver = entry.cls(entry.cls.Config(**params))
    toy = toy_problem()
    member = toy.task.members()[0]
    dim = features.shape[1] if features is not None else 0
    solver.fit(FitContext(task=toy.task, member=member, train=toy.train_loader(), gradients=None, dimension=dim,
                          n_train=len(toy.y_train), features=features))
    return solver


def test_gauss_newton_is_the_damped_feature_kernel_inverse():
    gen = torch.Generator().manual_seed(0)
    phi = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    v = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    out = _fit("gauss-newton", phi, regularization=0.5).solve(v)
    expected = torch.linalg.solve(phi.T @ phi + 0.5 * torch.eye(6, dtype=torch.float64), v.T).T
    torch.testing.assert_close(out, expected)


def test_gauss_newton_without_damping_is_the_limit_of_small_damping_on_a_singular_kernel():
    gen = torch.Generator().manual_seed(1)
    phi = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    query = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    exact = _fit("gauss-newton", phi).solve(query) @ phi.T
    damped = _fit("gauss-newton", phi, regularization=1e-9).solve(query) @ phi.T
    torch.testing.assert_close(exact, damped, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(exact, query @ torch.linalg.pinv(phi.T @ phi) @ phi.T)
