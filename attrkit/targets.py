"""Ready-made loss-like targets (lower is better, per the sign convention).

Both take ``batch`` as ``(x, y, ...)`` with ``model(x) -> logits [b, C]``, or as a
dict whose ``"labels"`` entry holds ``y`` and whose other entries are passed to the
model as keywords (Hugging Face style).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["cross_entropy", "negated_margin"]


def _logits_and_labels(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, dict):
        return model(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"]
    return model(batch[0]), batch[1]


def negated_margin(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``Tensor[b]``: ``logsumexp_{c != y} z_c - z_y``, the negated correct-class margin.

    The margin is the log-odds of the true class (the target TRAK uses); negating it
    makes the target loss-like, so a positive score still means a proponent.
    """
    logits, y = _logits_and_labels(model, batch)
    correct = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return torch.logsumexp(others, dim=1) - correct


def cross_entropy(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``Tensor[b]``: per-example cross-entropy of the logits against ``y`` (nats)."""
    logits, y = _logits_and_labels(model, batch)
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")
