"""Tiny problems with brute-force answers, for checking components."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, TensorDataset

from attrkit.targets import cross_entropy
from attrkit.task import AttributionTask

__all__ = ["ToyProblem", "autograd_gradients", "toy_problem"]


@attrs.frozen
class ToyProblem:
    """A small classifier with its data.

    Attributes:
        task: ``AttributionTask`` with per-example cross-entropy.
        x_train, y_train: ``Tensor[n_train, d]``, ``LongTensor[n_train]``.
        x_test, y_test: ``Tensor[n_test, d]``, ``LongTensor[n_test]``.
    """

    task: AttributionTask
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def train_loader(self, batch_size: int = 8, order: torch.Tensor | None = None) -> DataLoader:
        """Fixed-order loader over the training set (optionally permuted by ``order``)."""
        idx = torch.arange(len(self.y_train)) if order is None else order
        return DataLoader(TensorDataset(self.x_train[idx], self.y_train[idx]), batch_size=batch_size)

    def test_loader(self, batch_size: int = 8) -> DataLoader:
        """Fixed-order loader over the test set."""
        return DataLoader(TensorDataset(self.x_test, self.y_test), batch_size=batch_size)


def toy_problem(
    n_train: int = 24,
    n_test: int = 6,
    dim: int = 5,
    classes: int = 3,
    hidden: int = 6,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ToyProblem:
    """A seeded two-layer tanh MLP (``hidden=0``: logistic regression) on Gaussian blobs."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen, dtype=dtype) * 2
    n = n_train + n_test
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + torch.randn(n, dim, generator=gen, dtype=dtype)
    torch.manual_seed(seed)
    if hidden:
        model = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, classes))
    else:
        model = torch.nn.Sequential(torch.nn.Linear(dim, classes))
    model = model.to(dtype)
    task = AttributionTask(model=model, loss_fn=cross_entropy)
    return ToyProblem(task, x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def autograd_gradients(
    model: torch.nn.Module, fn: Callable[[torch.nn.Module, Any], torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """``Tensor[n, p]``: per-example gradients by a plain ``backward`` loop (the brute force)."""
    rows = []
    params = [p for p in model.parameters()]
    for i in range(len(y)):
        value = fn(model, (x[i : i + 1], y[i : i + 1])).sum()
        grads = torch.autograd.grad(value, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)
