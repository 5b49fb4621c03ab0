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


def test_gauss_newton_says_how_much_damping_a_singular_kernel_needs():
    phi = torch.randn(3, 8, dtype=torch.float64)
    try:
        _fit("gauss-newton", phi)
    except ValueError as exc:
        assert "set solver.regularization >" in str(exc)
    else:
        raise AssertionError("a rank-3 kernel in 8 dimensions must be refused without damping")
