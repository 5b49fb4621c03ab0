"""Inner products between feature blocks, and row normalisation."""

from __future__ import annotations

import torch

__all__ = ["normalize_rows", "row_dots"]


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each row of ``x`` (``[b, k]``) divided by its Euclidean norm (zero rows stay zero)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(eps)


def row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Tensor[n]``: ``<a[i], b[i]>`` for matching rows of ``a`` and ``b`` (``[n, k]``)."""
    return (a * b).sum(dim=1)
