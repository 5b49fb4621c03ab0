"""Tiny problems with brute-force answers, for checking components."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, TensorDataset

from attrkit.functional.lora import add_lora, lora_parameter_names
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
    dropout: float | None = None,
    lora_rank: int = 0,
    checkpoints: int = 0,
) -> ToyProblem:
    """A seeded two-layer tanh MLP (``hidden=0``: logistic regression) on Gaussian blobs.

    Args:
        dropout: add an ``nn.Dropout(dropout)`` after the hidden layer (needs ``hidden``).
        lora_rank: wrap the output layer in a LoRA layer of this rank (0: none). Every
            parameter stays trainable (the ``lora`` ensemble restricts gradients to the adapters).
        checkpoints: give the task this many checkpoints: the weights (with LoRA, the
            adapters only) perturbed by seeded noise of scale 0.3.
    """
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen, dtype=dtype) * 2
    n = n_train + n_test
    y = torch.randint(0, classes, (n,), generator=gen)
    x = centers[y] + torch.randn(n, dim, generator=gen, dtype=dtype)
    torch.manual_seed(seed)
    if hidden:
        layers = [torch.nn.Linear(dim, hidden), torch.nn.Tanh()]
        layers += [torch.nn.Dropout(dropout)] if dropout is not None else []
        model = torch.nn.Sequential(*layers, torch.nn.Linear(hidden, classes))
    else:
        model = torch.nn.Sequential(torch.nn.Linear(dim, classes))
    model = model.to(dtype)
    if lora_rank:
        add_lora(model, rank=lora_rank, targets=[str(len(model) - 1)], seed=seed)
        model.requires_grad_(True)  # add_lora freezes the base; the toy keeps every parameter trainable
        with torch.no_grad():  # as if trained: a zero lora_B would zero every lora_A gradient
            model[-1].lora_B.weight.normal_(0.0, 0.3, generator=gen)
    states = []
    for _ in range(checkpoints):
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for name in lora_parameter_names(model) or [k for k, v in state.items() if v.is_floating_point()]:
            state[name] += 0.3 * torch.randn(state[name].shape, generator=gen, dtype=dtype)
        states.append(state)
    task = AttributionTask(model=model, loss_fn=cross_entropy, checkpoints=states or None)
    return ToyProblem(task, x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def autograd_gradients(
    model: torch.nn.Module,
    fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    frozen: bool = True,
) -> torch.Tensor:
    """``Tensor[n, p]``: per-example gradients by a plain ``backward`` loop (the brute force).

    By default every parameter is differentiated, frozen ones (``requires_grad=False``)
    too — switched on for the loop and off again — in ``model.parameters()`` order: what
    a gradient source gives with ``frozen=True``. With ``frozen=False`` only the trainable
    parameters are, as a gradient source does by default.
    """
    rows = []
    params = [p for p in model.parameters() if frozen or p.requires_grad]
    switched = [p for p in params if not p.requires_grad]
    try:
        for p in switched:
            p.requires_grad_(True)
        for i in range(len(y)):
            value = fn(model, (x[i : i + 1], y[i : i + 1])).sum()
            grads = torch.autograd.grad(value, params)
            rows.append(torch.cat([g.reshape(-1) for g in grads]))
    finally:
        for p in switched:
            p.requires_grad_(False)
    return torch.stack(rows)
