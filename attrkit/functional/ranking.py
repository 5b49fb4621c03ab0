"""Rank correlations used by metrics (columnwise, ties averaged)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata

__all__ = ["pearson_columns", "spearman_columns"]


def pearson_columns(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Tensor[m]``: Pearson correlation of ``a[:, j]`` with ``b[:, j]`` (``[n, m]`` each).

    A constant column gives ``nan`` (correlation undefined).
    """
    a = a.double() - a.double().mean(0)
    b = b.double() - b.double().mean(0)
    denom = a.norm(dim=0) * b.norm(dim=0)
    return torch.where(denom > 0, (a * b).sum(0) / denom, torch.full_like(denom, float("nan")))


def spearman_columns(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Tensor[m]``: Spearman correlation of matching columns (average ranks for ties)."""
    ra = torch.from_numpy(rankdata(np.asarray(a.detach().cpu().double()), axis=0))
    rb = torch.from_numpy(rankdata(np.asarray(b.detach().cpu().double()), axis=0))
    return pearson_columns(ra, rb)
