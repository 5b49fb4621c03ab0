"""Stacking blocks of rows as they come, into one buffer: ``torch.cat`` without holding every block.

``torch.cat(blocks)`` needs every block alive until it copies them, so its peak is twice the
result. :func:`stack_rows` copies each block into a buffer sized from the expected row count
(``CheckedLoader.estimated_examples``) as the block arrives and lets it go: the peak is the result
and one block. Freed blocks also leave no holes in the heap for the next allocation to reuse, so
the saving shows in the process's resident memory, not only in torch's accounting.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["stack_rows"]


def stack_rows(blocks: Iterable[torch.Tensor], expected: int | None, width: int | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """The blocks (each ``Tensor[b, k]``) stacked: ``Tensor[Σ b, width]``.

    Args:
        blocks: the blocks, read once, in order; each is cast to ``dtype`` as it is copied.
        expected: rows expected in all (the buffer's first size; more rows grow it, fewer give a
            view of the rows written), or ``None`` (the first block's rows).
        width: columns of the result (default: the first block's); a narrower block fills its first columns
            and leaves the rest uninitialised, for the caller to fill.
        dtype: the result's dtype (default: the first block's).

    Raises:
        ValueError: no block.
    """
    out, n = None, 0
    for block in blocks:
        rows = block.shape[0]
        if out is None:
            out = torch.empty(max(expected or 0, rows), block.shape[1] if width is None else width,
                              dtype=block.dtype if dtype is None else dtype, device=block.device)
        if n + rows > out.shape[0]:  # more rows than expected: grow (amortised doubling)
            out = torch.cat([out[:n], out.new_empty(max(n + rows, 2 * n) - n, out.shape[1])])
        out[n : n + rows, : block.shape[1]] = block
        n += rows
        del block
    if out is None:
        raise ValueError("stack_rows: no block to stack")
    return out[:n]
