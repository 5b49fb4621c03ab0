"""The explicit solver's ``p × p`` curvature from its layer structure, in large GEMMs.

With the per-example factors of :mod:`~attrkit.functional.structured_factors` (``J_il = B_il ⊗ ā_il``
per factored layer, ``H_i`` the loss's Hessian in the ``C`` outputs), the Gauss-Newton matrix of
the mean loss, ``G = (1/N) Σ_i J_iᵀ H_i J_i``, has the blocks

    G_lm[(o, j), (q, k)] = (1/N) Σ_i M_i[o, q] ā_il[j] ā_im[k],    M_i = B_ilᵀ H_i B_im

(``M_i``: ``Tensor[d_out_l, d_out_m]``). For each output row ``o`` of layer ``l`` that is one GEMM
over a chunk of ``n`` examples, ``Ā_lᵀ W`` with ``W[i, (q, k)] = M_i[o, q] ā_im[k]``
(``Tensor[n, d_out_m (d_in_m + 1)]``); blocks below the diagonal are mirrored. ``H_i`` enters
only through ``M_i``, so no factorisation of it is needed, and an indefinite ``H_i`` (a loss
not convex in ``z``) is exact too.

Cost: one pass over the data with ``C`` hooked forward/backward passes per batch, and about
``p² N`` flops of GEMMs in :func:`~attrkit.functional.structured_factors.gemm_dtype` (float32 for a float32 model), against ``p`` HVPs per example for the HVP
build. Memory: the ``p × p`` matrix (``dtype``), plus ``_CHUNK`` elements of ``W``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs
import torch

from attrkit import distributed
from attrkit.functional.curvature import MatVec
from attrkit.functional.ihvp import _Meter
from attrkit.functional.structured_factors import Layer, collect_factors
from attrkit.types import LossFn

__all__ = ["structured_curvature"]

#: Elements of the weighted inputs ``W`` (``Tensor[n, d_out (d_in + 1)]``) formed at once; sets the examples per chunk.
_CHUNK = 1 << 24


@attrs.frozen
class _Piece:
    """Where part of one GEMM result ``out`` (``Tensor[width_l, nq, width_m]``) goes:
    ``matrix[rows, cols] += out[j, q, k].reshape(len(rows), len(cols))``; ``mirror``: it lies off
    the block diagonal, so ``matrix[cols, rows]`` gets its transpose."""

    rows: slice
    cols: slice
    j: slice
    q: slice
    k: slice
    mirror: bool


def _pieces(row: Layer, o: int, col: Layer, same: bool) -> tuple[int, list[_Piece]]:
    """``(q0, pieces)`` of the GEMM result for output ``o`` of layer ``row`` against layer ``col``.

    Its second index runs over the outputs ``q >= q0`` of ``col`` (``q0 = o`` within one layer:
    the rest is the mirror). Weight entries ``(o, j)`` lie at ``weight + o d_in + j``, bias
    entries ``o`` at ``bias + o``."""
    q0 = o if same else 0
    segments = [(o, o + 1, False), (o + 1, col.d_out, True)] if same else [(0, col.d_out, True)]
    rows = []
    if row.weight is not None:
        rows.append((slice(row.weight + o * row.d_in, row.weight + (o + 1) * row.d_in), slice(0, row.d_in)))
    if row.bias is not None:
        rows.append((slice(row.bias + o, row.bias + o + 1), slice(row.d_in, row.d_in + 1)))
    out = []
    for qa, qb, mirror in segments:
        if qa == qb:
            continue
        cols = []
        if col.weight is not None:
            cols.append((slice(col.weight + qa * col.d_in, col.weight + qb * col.d_in), slice(0, col.d_in)))
        if col.bias is not None:
            cols.append((slice(col.bias + qa, col.bias + qb), slice(col.d_in, col.d_in + 1)))
        out += [_Piece(r, c, j, slice(qa - q0, qb - q0), k, mirror) for r, j in rows for c, k in cols]
    return q0, out


def _accumulate(matrix: torch.Tensor, layers: Sequence[Layer], inputs: Sequence[torch.Tensor],
                jacobians: Sequence[torch.Tensor], hessians: torch.Tensor) -> None:
    """Add ``Σ_i J_iᵀ H_i J_i`` of a chunk of ``n`` examples to the upper blocks of ``matrix`` (``Tensor[p, p]``).

    Args:
        inputs: per layer, ``ā``: ``Tensor[n, width]``.
        jacobians: per layer, ``B``: ``Tensor[n, C, d_out]``.
        hessians: ``H``: ``Tensor[n, C, C]``.

    The GEMMs run in the factors' dtype; each result is added to ``matrix`` in its dtype.
    """
    n = hessians.shape[0]
    for a, row in enumerate(layers):
        for b in range(a, len(layers)):
            col = layers[b]
            weights = jacobians[a].mT @ (hessians @ jacobians[b])  # M: [n, d_out_a, d_out_b]
            for o in range(row.d_out):
                q0, pieces = _pieces(row, o, col, a == b)
                scaled = (weights[:, o, q0:, None] * inputs[b][:, None, :]).reshape(n, -1)
                out = (inputs[a].T @ scaled).view(row.width, -1, col.width)
                for piece in pieces:
                    block = out[piece.j, piece.q, piece.k]
                    matrix[piece.rows, piece.cols] += block.reshape(block.shape[0], -1)


def _mirror(matrix: torch.Tensor, layers: Sequence[Layer]) -> None:
    """Fill the lower blocks of ``matrix`` with the transposes of the upper ones :func:`_accumulate` wrote."""
    for a, row in enumerate(layers):
        for b in range(a, len(layers)):
            for o in range(row.d_out):
                for piece in _pieces(row, o, layers[b], a == b)[1]:
                    if piece.mirror:
                        matrix[piece.cols, piece.rows] = matrix[piece.rows, piece.cols].T


class _Chunks:
    """The matrix's :class:`~attrkit.functional.structured_factors.FactorSink`: per-example factors
    buffered across batches and added to the matrix ``chunk`` examples at a time."""

    def __init__(self, matrix: torch.Tensor, layers: Sequence[Layer], chunk: int):
        self.matrix, self.layers, self.chunk = matrix, layers, chunk
        self.parts: list[tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]] = []
        self.count = 0

    def admit(self, examples: int, outputs: int) -> None:
        """Take any batch (the buffer holds at most a chunk and a batch of examples)."""

    def add(self, inputs: list[torch.Tensor], jacobians: list[torch.Tensor], hessians: torch.Tensor) -> None:
        """Buffer one batch's factors; add every full chunk to the matrix."""
        self.parts.append((inputs, jacobians, hessians))
        self.count += hessians.shape[0]
        if self.count >= self.chunk:
            self.flush(whole=False)

    def flush(self, whole: bool = True) -> None:
        """Add every full chunk (and, when ``whole``, the rest) to the matrix; keep the rest buffered."""
        if not self.parts:
            return
        joined = [[torch.cat(t) for t in zip(*(p[k] for p in self.parts))] for k in (0, 1)]
        hessians = torch.cat([p[2] for p in self.parts])
        stop = self.count if whole else self.count - self.count % self.chunk
        for s in range(0, stop, self.chunk):
            e = min(s + self.chunk, stop)
            _accumulate(self.matrix, self.layers, [t[s:e] for t in joined[0]], [t[s:e] for t in joined[1]],
                        hessians[s:e])
        rest = ([t[stop:] for t in joined[0]], [t[stop:] for t in joined[1]], hessians[stop:])
        self.parts, self.count = ([rest] if stop < self.count else []), self.count - stop

    def finish(self, n: int) -> MatVec:
        """Add the rest, sum over the ranks, divide by the ``N`` examples and mirror; ``V -> G V`` (rows)."""
        self.flush()
        (n,) = distributed.sum_over_ranks([self.matrix], [n])
        self.matrix /= n
        _mirror(self.matrix, self.layers)
        return lambda v: (self.matrix @ v.to(self.matrix.dtype).T).T


def structured_curvature(
    meter: _Meter, model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor],
    names: Sequence[str], curvature: str, dtype: torch.dtype,
) -> tuple[torch.Tensor | None, str, dict[str, float]]:
    """The curvature of the mean training loss built from its structure, or why it cannot be.

    One pass of :func:`~attrkit.functional.structured_factors.collect_factors`, which decides
    whether the structure applies (for ``curvature="hessian"``, by its probe of ``H = G``;
    agreed between the ranks), each chunk of examples added to the matrix as it comes and
    the ranks' matrices summed.

    Args:
        meter: the counting view of the training batches (``prepare_at``).
        model, loss_fn, state, names, curvature: as :func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`.
        dtype: the matrix's dtype (GEMMs run in :func:`~attrkit.functional.structured_factors.gemm_dtype`, each chunk of
            examples is added to the matrix in ``dtype``).

    Returns:
        ``(matrix, "", info)``: ``Tensor[p, p]``, symmetric up to round-off (its upper blocks
        mirrored, the diagonal blocks as computed); or ``(None, reason, info)`` when the
        structure does not apply. ``info["hessian_probe"]``: the probe's relative
        ``‖Hv − Gv‖ / ‖Hv‖`` (largest over the two ``v``), when one ran.
    """
    first = state[names[0]]
    p = sum(state[n].numel() for n in names)

    def start(layers: list[Layer]) -> _Chunks:
        matrix = torch.zeros(p, p, dtype=dtype, device=first.device)
        return _Chunks(matrix, layers, max(1, _CHUNK // max(layer.d_out * layer.width for layer in layers)))

    sink, reason, info = collect_factors(meter, model, loss_fn, state, names, curvature, start,
                                         f"explicit: building the {p} x {p} curvature from its layer structure "
                                         "(one pass)")
    return (None if sink is None else sink.matrix), reason, info
