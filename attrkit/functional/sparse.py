"""Sparse Johnson–Lindenstrauss transforms (SJLT), hashed in fixed blocks of coordinates.

The sketch ``S`` (``[p, k]``) has exactly ``s`` nonzeros per input coordinate (row),
each ``±1/sqrt(s)`` (Kane & Nelson, 2014, block construction): the ``k`` outputs are
cut into ``s`` contiguous segments and row ``j`` picks one bucket in each segment, so
its ``s`` buckets are distinct and ``||e_j S|| = 1`` exactly. Signs are independent
and fair, hence ``E[<xS, yS>] = <x, y>``.

Rows ``[i*B, (i+1)*B)`` (``B`` = :data:`~attrkit.functional.projection.BLOCK_ROWS`) are
hashed from a CPU generator seeded by ``(seed, i)``: ``S`` does not depend on batch
size, chunk size or device. Cost of ``x @ S``: ``b * p * s`` multiply-adds instead of
``b * p * k`` for a dense projection; nothing of size ``p * k`` is ever formed.

Accuracy: for dense inputs (gradients) the inner-product error is like a dense
projection's, about ``sqrt(2/k)`` for unit vectors. For very sparse inputs, two
coordinates sharing a bucket (probability about ``s²/k``) add an error of order
``1/s``; raise ``s`` when inputs are spiky.
"""

from __future__ import annotations

import math

import torch

from attrkit.errors import ArgumentError
from attrkit.functional.projection import BLOCK_ROWS, block_generator

__all__ = ["sjlt_hashes", "sjlt_matrix", "sjlt_project"]

_CPU = torch.device("cpu")


def _segments(k: int, nnz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(offsets, sizes)``, ``LongTensor[nnz]`` each: ``k`` outputs cut into ``nnz`` near-equal segments."""
    sizes = torch.full((nnz,), k // nnz, dtype=torch.long)
    sizes[: k % nnz] += 1
    return torch.cumsum(sizes, 0) - sizes, sizes


def sjlt_hashes(seed: int, start: int, stop: int, k: int, nnz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Buckets and signs of rows ``start..stop-1`` of the sketch.

    Args:
        seed: fixes the sketch.
        start, stop: input coordinates ``[start, stop)``, any ``0 <= start <= stop``.
        k: output dimension.
        nnz: nonzeros per row, ``1 <= nnz <= k``.

    Returns:
        ``(buckets, signs)``: ``LongTensor[stop-start, nnz]`` of distinct output indices
        per row, and ``Tensor[stop-start, nnz]`` float32 of ``±1`` (unscaled), on the CPU.

    Raises:
        ValueError: ``nnz`` outside ``[1, k]``.
    """
    if not 1 <= nnz <= k:
        raise ArgumentError(f"sjlt nnz must be in [1, k={k}], got {nnz}")
    if stop <= start:
        return torch.empty(0, nnz, dtype=torch.long), torch.empty(0, nnz)
    offsets, sizes = _segments(k, nnz)
    buckets, signs = [], []
    for block in range(start // BLOCK_ROWS, math.ceil(stop / BLOCK_ROWS)):
        gen = block_generator(seed, block, _CPU)
        raw = torch.randint(0, 2**62, (BLOCK_ROWS, nnz), generator=gen)
        coin = torch.randint(0, 2, (BLOCK_ROWS, nnz), generator=gen)
        buckets.append(offsets + raw % sizes)
        signs.append(coin.float().mul_(2).sub_(1))
    first = start - (start // BLOCK_ROWS) * BLOCK_ROWS
    rows = slice(first, first + stop - start)
    return torch.cat(buckets)[rows], torch.cat(signs)[rows]


def sjlt_matrix(p: int, k: int, seed: int, nnz: int) -> torch.Tensor:
    """The whole sketch as a sparse COO ``Tensor[p, k]`` float32 (``p * nnz`` entries ``±1/sqrt(nnz)``).

    Meant for inspection and tests; :func:`sjlt_project` applies it without forming it.
    """
    buckets, signs = sjlt_hashes(seed, 0, p, k, nnz)
    rows = torch.arange(p).repeat_interleave(nnz)
    indices = torch.stack([rows, buckets.reshape(-1)])
    values = signs.reshape(-1) / math.sqrt(nnz)
    return torch.sparse_coo_tensor(indices, values, (p, k), check_invariants=True).coalesce()


def sjlt_project(x: torch.Tensor, k: int, seed: int, nnz: int, chunk_rows: int = 8 * BLOCK_ROWS,
                 hashes: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """``x @ S`` for the sketch ``S[p, k]`` of ``seed`` and ``nnz``, chunked over input coordinates.

    Each chunk of ``S`` is built as a sparse COO matrix (transposed, ``[k, n]``) and
    applied with ``torch.sparse.addmm`` on ``x``'s device (hashes are drawn on the CPU,
    so results agree across devices up to summation order).

    Args:
        x: ``Tensor[b, p]`` floating point.
        k: output dimension.
        seed: fixes the sketch.
        nnz: nonzeros per input coordinate.
        chunk_rows: input coordinates per chunk, rounded up to a multiple of
            ``BLOCK_ROWS``; peak extra memory is about ``chunk_rows * nnz * 20`` bytes
            of indices and values plus the ``[k, b]`` output. Never changes ``S``.
        hashes: the whole sketch's :func:`sjlt_hashes` ``(seed, 0, p, k, nnz)``, sliced per chunk
            instead of drawn again (a caller projecting many batches keeps them; the same result
            bit for bit).

    Returns:
        ``Tensor[b, k]`` in ``x``'s dtype and device.

    Raises:
        ValueError: ``x`` is not 2-D or ``chunk_rows < 1``.
    """
    if x.dim() != 2:
        raise ArgumentError(f"sjlt expects vectors of shape [b, p], got {tuple(x.shape)}")
    if chunk_rows < 1:
        raise ArgumentError(f"sjlt chunk_rows must be >= 1, got {chunk_rows}")
    b, p = x.shape
    chunk = math.ceil(chunk_rows / BLOCK_ROWS) * BLOCK_ROWS
    out_t = torch.zeros(k, b, dtype=x.dtype, device=x.device)
    for start in range(0, p, chunk):
        stop = min(p, start + chunk)
        buckets, signs = (sjlt_hashes(seed, start, stop, k, nnz) if hashes is None
                          else (hashes[0][start:stop], hashes[1][start:stop]))
        columns = torch.arange(stop - start).repeat_interleave(nnz)
        indices = torch.stack([buckets.reshape(-1), columns]).to(x.device)
        sketch_t = torch.sparse_coo_tensor(
            indices, signs.reshape(-1).to(device=x.device, dtype=x.dtype), (k, stop - start), check_invariants=False
        )
        out_t = torch.sparse.addmm(out_t, sketch_t, x[:, start:stop].T)
    return out_t.T.contiguous().div_(math.sqrt(nnz))
