"""Result value objects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

__all__ = ["MetricResult"]


@attrs.frozen(kw_only=True)
class MetricResult:
    """What a metric returns.

    Attributes:
        value: the headline number (e.g. mean Spearman correlation over targets).
        per_target: ``Tensor[n_test]`` of per-target values, when the metric has them.
        details: anything else worth recording (counts, settings), JSON-able.
    """

    value: float
    per_target: torch.Tensor | None = attrs.field(default=None, repr=False)
    details: Mapping[str, Any] = attrs.field(factory=dict)
