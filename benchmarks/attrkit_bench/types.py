"""Type aliases shared by the benchmark's modules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["LossFn"]

#: ``loss_fn(model, batch) -> Tensor[b]``: a per-example loss, as :class:`attrkit.AttributionTask` takes it.
LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
