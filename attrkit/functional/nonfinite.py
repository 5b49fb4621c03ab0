"""Finding NaN and infinite entries quickly: one read of the data, no boolean temporary of its size."""

from __future__ import annotations

import torch

__all__ = ["nonfinite_rows"]


def nonfinite_rows(values: torch.Tensor) -> torch.Tensor:
    """``LongTensor[r]``: the rows of ``values`` (``[b, ...]``) holding any NaN or infinite entry.

    Fast path: a row's sum is finite when all its entries are (NaN and infinities
    propagate), one read of ``values`` and no ``[b, ...]`` boolean temporary; rows whose sum
    is not finite are confirmed entry by entry (a sum of finite values can overflow).
    """
    rows = values.reshape(values.shape[0], -1) if values.dim() != 1 else values[:, None]
    candidates = (~torch.isfinite(rows.sum(1))).nonzero().squeeze(1)
    if not len(candidates):
        return candidates.cpu()
    confirmed = (~torch.isfinite(rows[candidates])).any(1)
    return candidates[confirmed].cpu()
