"""``fn(model, batch)`` as a module (:class:`BoundLoss`), and :func:`eval_mode`: how every
functional pass calls the user's model and loss."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

from attrkit.errors import LossFunctionError

__all__ = ["BoundLoss", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (dropout off, batch-norm running statistics) and restore it.

    Raises:
        LossFunctionError: the block switched a module back to training mode (``model.train()``
            inside ``loss_fn``), which would make gradients random (dropout) and update
            batch-norm statistics in place.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
        training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
        if training:
            raise LossFunctionError(
                f"loss_fn switched the model to training mode (modules {', '.join(training[:5])}): do not call "
                "model.train() inside loss_fn; attrkit evaluates the model in eval mode (dropout off, batch-norm "
                "running statistics), and training mode would update batch-norm statistics in place"
            )
    finally:
        for module, training in modes:
            module.training = training


class BoundLoss(torch.nn.Module):
    """``fn(model, batch)`` as a module, so ``functional_call`` can swap its weights."""

    def __init__(self, model: torch.nn.Module, fn: Callable[[torch.nn.Module, Any], torch.Tensor]):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.model, batch)
