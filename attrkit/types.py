"""Type aliases shared across layers (a leaf module: it imports nothing from attrkit)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import torch

__all__ = ["LossFn", "PartState", "StateValue"]

#: ``loss_fn(model, batch) -> Tensor[b]``: one loss-like value per example.
LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]

#: One value of a fitted part's saved state: a tensor, a number, a string or ``None`` — what
#: ``torch.load(weights_only=True)`` reads back without running code.
StateValue = Union[torch.Tensor, int, float, str, None]

#: ``Projector.state_dict()`` / ``HessianSolver.state_dict()``: a flat ``{key: StateValue}``.
PartState = dict[str, StateValue]
