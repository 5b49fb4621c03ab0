"""Ready-made loss-like targets (lower is better, per the sign convention).

Both take ``batch`` as ``(x, y, ...)`` with ``model(x) -> logits [b, C]``, or as a
dict whose ``"labels"`` entry holds ``y`` and whose other entries are passed to the
model as keywords (Hugging Face style). The model may return the logits, or an output
with ``.logits`` (Hugging Face), a dict with ``"logits"``, or a tuple whose first element
they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from attrkit.errors import LossShapeError

__all__ = ["cross_entropy", "negated_margin"]


def _logits(output: Any, name: str) -> torch.Tensor:
    """The logits in a model's output: a tensor, or the ``logits`` of a Hugging Face output or dict,
    or the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise LossShapeError(f"attrkit.{name} needs the model to return logits (a tensor, or an output with .logits), "
                         f"got {type(output).__name__}; write a loss_fn that extracts them")


def _logits_and_labels(model: torch.nn.Module, batch: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits ``[b, C]`` and the labels ``[b]``; a clear error for other shapes and dtypes."""
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise LossShapeError(f"attrkit.{name} needs a 'labels' entry in dict batches; got keys {sorted(batch)}")
        logits, y = _logits(model(**{k: v for k, v in batch.items() if k != "labels"}), name), batch["labels"]
    else:
        logits, y = _logits(model(batch[0]), name), batch[1]
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise LossShapeError(f"attrkit.{name} needs integer class labels (int64), got {y.dtype}; convert them in the "
                             "dataset or collate_fn (y.long())")
    if logits.dim() != 2 or y.shape != logits.shape[:1]:
        raise LossShapeError(
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
