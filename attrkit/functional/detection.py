"""Noisy-label detection statistics: exact ROC AUC by ranks, the detection curve, and
group-level labels.

Items (training examples or groups) are ranked by a suspicion score, highest first —
for attribution, each item's self-influence.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from attrkit.errors import ArgumentError
from attrkit.functional.removal import top_count

__all__ = ["detection_curve", "group_labels", "roc_auc"]


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC of ranking by ``scores`` (high = positive), by the Mann–Whitney U statistic.

    ``AUC = (R₊ − n₊(n₊ + 1)/2) / (n₊ n₋)`` where ``R₊`` is the sum of the positives'
    average ranks (1 = lowest score). A tied (positive, negative) pair counts one half,
    as in scikit-learn's ``roc_auc_score``. It is the probability that a random positive
    outscores a random negative.

    Args:
        scores: ``Tensor[n]`` finite suspicion scores.
        labels: ``BoolTensor[n]``, ``True`` for positives.

    Returns:
        A float in ``[0, 1]``; ``nan`` when ``labels`` are all of one class.
    """
    labels = labels.detach().cpu().bool()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = torch.from_numpy(np.asarray(rankdata(np.asarray(scores.detach().cpu().double())), dtype=np.float64))
    u = float(ranks[labels].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def detection_curve(scores: torch.Tensor, labels: torch.Tensor, fractions: Sequence[float]) -> torch.Tensor:
    """Fraction of the positives found by inspecting the top ``fractions`` of the ranking.

    Inspecting a fraction ``f`` means looking at the ``ceil(f · n)`` highest-scored items.
    Items tied with the last one inspected are inspected in proportion, so the result is
    the expected recall when ties are broken at random (and never favours a method whose
    scores tie).

    Args:
        scores: ``Tensor[n]`` suspicion scores, high = inspect first.
        labels: ``BoolTensor[n]``, ``True`` for positives (at least one).
        fractions: each in ``[0, 1]``.

    Returns:
        ``Tensor[len(fractions)]`` float64 recalls in ``[0, 1]``.

    Raises:
        ValueError: ``labels`` has no positive.
    """
    scores = scores.detach().cpu().double()
    labels = labels.detach().cpu().bool()
    n_pos = int(labels.sum())
    if n_pos == 0:
        raise ArgumentError("detection_curve needs at least one positive label")
    ordered = torch.sort(scores, descending=True).values
    found = []
    for fraction in fractions:
        k = top_count(fraction, scores.numel())
        if k == 0:
            found.append(0.0)
            continue
        cut = ordered[k - 1]
        above, tied = scores > cut, scores == cut
        share = (k - int(above.sum())) / int(tied.sum())
        found.append(float(labels[above].sum()) + share * float(labels[tied].sum()))
    return torch.tensor(found, dtype=torch.float64) / n_pos


def group_labels(flags: torch.Tensor, groups: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Which groups count as positive, from per-example flags.

    Args:
        flags: ``BoolTensor[n_train]``, e.g. which training labels were flipped.
        groups: ``LongTensor[n_train]``, group indices ``0..G-1``.
        threshold: ``None``: a group is positive when any member is flagged; a number in
            ``(0, 1]``: when at least that fraction of its members is flagged.

    Returns:
        ``BoolTensor[G]``.
    """
    flagged = torch.bincount(groups, weights=flags.double())
    if threshold is None:
        return flagged > 0
    sizes = torch.bincount(groups).double()
    return flagged / sizes >= threshold
