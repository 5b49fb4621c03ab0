"""Type aliases shared across layers (a leaf module: it imports nothing from attrkit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["LossFn"]

#: ``loss_fn(model, batch) -> Tensor[b]``: one loss-like value per example.
LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
