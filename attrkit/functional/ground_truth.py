"""Checking the ground truth handed to a metric, with errors that name keys and shapes.

Metrics read ground truth as a mapping of named entries (tensors, or callables that
retrain a model). These helpers raise one error type for every problem, naming the
metric, the entry, what was given and what is expected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from attrkit.errors import GroundTruthError, MissingGroundTruthError

__all__ = [
    "GroundTruthError",
    "MissingGroundTruthError",
    "check_groups",
    "require_entries",
    "shape_mismatch",
]


def require_entries(metric: str, needs: Iterable[str], ground_truth: Mapping[str, Any]) -> None:
    """Check that ``ground_truth`` holds every entry in ``needs``.

    Args:
        metric: the metric's name, for the message.
        needs: entry names the metric reads.
        ground_truth: what the caller passed.

    Raises:
        MissingGroundTruthError: listing every missing entry and the keys given.
    """
    missing = sorted(set(needs) - set(ground_truth))
    if missing:
        raise MissingGroundTruthError(
            f"{metric} needs ground truth {missing}; got keys {sorted(ground_truth)}. "
            f"Pass a mapping with all of {sorted(needs)}."
        )


def shape_mismatch(metric: str, **parts: tuple[torch.Tensor, str]) -> GroundTruthError:
    """The error for shapes that do not line up, listing each tensor's shape and layout.

    Args:
        metric: the metric's name.
        **parts: ``name=(tensor, layout)``, e.g. ``scores=(s, "[n_test, n_train]")``.

    Returns:
        A :class:`GroundTruthError` to raise, e.g. ``loo shapes do not line up: scores
        (4, 20) [n_test, n_train], values (5, 3) [m, n_test]``.
    """
    listed = ", ".join(f"{name} {tuple(t.shape)} {layout}" for name, (t, layout) in parts.items())
    return GroundTruthError(f"{metric} shapes do not line up: {listed}")


def check_groups(metric: str, groups: Any) -> torch.Tensor:
    """Validate a ground-truth ``groups`` entry: ``LongTensor[n_train]`` numbering groups ``0..G-1``.

    Args:
        metric: the metric's name.
        groups: group index of each training example.

    Returns:
        ``LongTensor[n_train]``, on the CPU.

    Raises:
        GroundTruthError: not a 1-d integer tensor, or group indices not exactly ``0..G-1``.
    """
    groups = torch.as_tensor(groups).cpu()
    if groups.dim() != 1 or groups.dtype != torch.long:
        raise GroundTruthError(
            f"{metric}: ground truth 'groups' must be a LongTensor[n_train], got {groups.dtype} {tuple(groups.shape)}"
        )
    if groups.numel() and (groups.min() < 0 or torch.unique(groups).numel() != int(groups.max()) + 1):
        raise GroundTruthError(f"{metric}: ground truth 'groups' must number groups 0..G-1 with every index used")
    return groups
