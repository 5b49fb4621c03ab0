"""Removal-based evaluation maths: ranking training data by importance, turning removals
into keep masks, and correlating scores with the measured effect of removing points.

Sign convention: ``scores[t, i] > 0`` means training example (or group) ``i`` is a
proponent of target ``t`` — removing it *raises* the (loss-like) target.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import rankdata

from attrkit.errors import ArgumentError
from attrkit.functional.ranking import pearson_columns, spearman_columns

__all__ = ["AGGREGATES", "importance", "importance_order", "keep_mask", "loo_correlation", "top_count"]

#: How :func:`importance` folds the targets' scores into one number per column.
AGGREGATES = ("sum", "rank")


def top_count(fraction: float, n: int) -> int:
    """How many of ``n`` items a ``fraction`` covers: ``ceil(fraction * n)``.

    The product is rounded to 9 decimals first, so that ``0.1 * 30`` gives 3, not 4.

    Args:
        fraction: in ``[0, 1]``.
        n: number of items.

    Returns:
        An ``int`` in ``[0, n]``; at least 1 whenever ``fraction > 0`` and ``n > 0``.
    """
    return min(n, math.ceil(round(fraction * n, 9)))


def importance(scores: torch.Tensor, aggregate: str = "sum") -> torch.Tensor:
    """One importance per training example (or group) over all targets; high = helps the targets.

    Args:
        scores: ``Tensor[n_test, n]`` attribution scores.
        aggregate: ``"sum"``: ``Σ_t scores[t, i]`` (the mean over targets orders the
            columns identically); ``"rank"``: the mean over targets of column ``i``'s
            average rank within the target's row (1 = least, ``n`` = most helpful), so
            that every target weighs the same whatever the scale of its scores.

    Returns:
        ``Tensor[n]`` float64.

    Raises:
        ValueError: ``aggregate`` not in :data:`AGGREGATES`.
    """
    if aggregate == "sum":
        return scores.double().sum(0)
    if aggregate == "rank":
        ranks = rankdata(np.asarray(scores.detach().cpu().double()), axis=1)
        return torch.from_numpy(np.asarray(ranks, dtype=np.float64)).mean(0)
    raise ArgumentError(f"aggregate must be one of {list(AGGREGATES)}, got {aggregate!r}")


def importance_order(values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Indices of ``values`` from the largest to the smallest, ties in a seeded random order.

    Breaking ties at random (rather than by index) keeps a method whose scores tie — a
    zero gradient, a coarse projection — from removing low-index examples first.

    Args:
        values: ``Tensor[n]``.
        seed: seeds the tie-breaking permutation.

    Returns:
        ``LongTensor[n]``, a permutation of ``0..n-1``; the same for the same ``seed``.
    """
    values = values.detach().cpu()
    perm = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(seed))
    return perm[torch.argsort(values[perm], descending=True, stable=True)]


def keep_mask(removed: torch.Tensor, n_train: int, groups: torch.Tensor | None = None) -> torch.Tensor:
    """The training examples left after removing some examples (or whole groups).

    Args:
        removed: ``LongTensor[r]`` of removed columns: training indices, or group indices
            when ``groups`` is given.
        n_train: training set size.
        groups: optional ``LongTensor[n_train]``, the group of each training example.

    Returns:
        ``BoolTensor[n_train]``, ``True`` for each example kept.
    """
    if groups is None:
        keep = torch.ones(n_train, dtype=torch.bool)
        keep[removed] = False
        return keep
    return ~torch.isin(groups, removed)


def loo_correlation(
    scores: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    base: torch.Tensor,
    correlation: str = "pearson",
) -> torch.Tensor:
    """Per target, the correlation of predicted and actual leave-one-out effects.

    The actual effect of removing training example ``indices[j]`` on target ``t`` is
    ``values[j, t] - base[t]`` (positive when it was a proponent); the predicted effect is
    ``scores[t, indices[j]]``.

    Args:
        scores: ``Tensor[n_test, n_train]``.
        indices: ``LongTensor[m]``, the training examples removed one at a time.
        values: ``Tensor[m, n_test]``, the target of the model retrained without each one.
        base: ``Tensor[n_test]``, the target of the model trained on everything.
        correlation: ``"pearson"`` or ``"spearman"`` (average ranks for ties).

    Returns:
        ``Tensor[n_test]`` float64; ``nan`` where either side is constant.

    Raises:
        ValueError: ``correlation`` is neither ``"pearson"`` nor ``"spearman"``.
    """
    columns = {"pearson": pearson_columns, "spearman": spearman_columns}
    if correlation not in columns:
        raise ArgumentError(f"correlation must be one of {list(columns)}, got {correlation!r}")
    predicted = scores.double()[:, indices].T
    actual = values.double() - base.double()
    return columns[correlation](predicted, actual)
