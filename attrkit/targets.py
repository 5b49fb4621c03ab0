"""Ready-made loss-like targets (lower is better, per the sign convention).

Both take ``batch`` as ``(x, y, ...)`` with ``model(x) -> logits [b, C]``, or as a
dict whose ``"labels"`` entry holds ``y`` and whose other entries are passed to the
model as keywords (Hugging Face style).
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["cross_entropy", "negated_margin"]


def _logits_and_labels(model: torch.nn.Module, batch: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits ``[b, C]`` and the labels ``[b]``; a clear error for other shapes."""
    if isinstance(batch, dict):
        logits, y = model(**{k: v for k, v in batch.items() if k != "labels"}), batch["labels"]
    else:
        logits, y = model(batch[0]), batch[1]
    if logits.dim() != 2 or y.shape != logits.shape[:1]:
        raise ValueError(
            f"attrkit.{name} needs logits [b, C] and labels [b] (one class per example), got logits "
            f"{tuple(logits.shape)} and labels {tuple(y.shape)}; for sequence outputs write a per-example loss_fn "
            "(e.g. the mean token cross-entropy) and use it as the target (TRAK: target 'task', reweight false)"
        )
    return logits, y


def negated_margin(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``Tensor[b]``: ``logsumexp_{c != y} z_c - z_y``, the negated correct-class margin.

    The margin is the log-odds of the true class (the target TRAK uses); negating it
    makes the target loss-like, so a positive score still means a proponent.
    """
    logits, y = _logits_and_labels(model, batch, "negated_margin")
    correct = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return torch.logsumexp(others, dim=1) - correct


def cross_entropy(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``Tensor[b]``: per-example cross-entropy of the logits against ``y`` (nats)."""
    logits, y = _logits_and_labels(model, batch, "cross_entropy")
    return torch.nn.functional.cross_entropy(logits, y, reduction="none")
