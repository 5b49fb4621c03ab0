"""Inner products between feature blocks, and row normalisation."""

from __future__ import annotations

import torch

__all__ = ["normalize_rows", "row_dots"]


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each row of ``x`` divided by its Euclidean norm, whatever its scale.

    Each row is first divided by its largest absolute entry, then by the norm of the
    result (which lies in ``[1, sqrt(k)]``), so squaring never overflows nor underflows:
    the result does not change when ``x`` is multiplied by any finite non-zero number,
    e.g. gradients of a loss scaled by ``1e30`` in float32 (whose squared norms would be
    infinite). Rows of zeros stay zero; a row holding a NaN or an infinity comes out
    non-finite (NaN), so that a later finiteness check reports it rather than a silent 0.

    Args:
        x: ``Tensor[b, k]``, floating point.
        eps: floor of the rescaled norm; every non-zero finite row's is at least 1, so it
            only keeps zero rows at zero (kept for compatibility; any value in ``(0, 1]``
            gives the same result).

    Returns:
        ``Tensor[b, k]`` in the dtype of ``x``, rows of unit norm (up to round-off) or zero.
    """
    if x.shape[1] == 0:
        return x.clone()
    peak = x.abs().amax(dim=1, keepdim=True)
    scaled = x / torch.where(peak > 0, peak, torch.ones_like(peak))  # NaN/inf rows: peak NaN/inf -> NaN entries
    return scaled / scaled.norm(dim=1, keepdim=True).clamp_min(eps)


def row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Tensor[n]``: ``<a[i], b[i]>`` for matching rows of ``a`` and ``b`` (``[n, k]``)."""
    return (a * b).sum(dim=1)
