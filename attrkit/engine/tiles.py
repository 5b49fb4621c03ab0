"""Scores of a block of queries against this rank's training columns, read tile by tile.

    scores[:, i] = Σ_m w_m · q_m Φ_m[i]ᵀ

for the rows ``i`` a rank owns (:meth:`FeatureMatrix.owned`), with every member's tile of
the same rows read together, so a streamed matrix is read once per query block and never
held whole. Used by :mod:`attrkit.engine.scoring`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from attrkit.budget import tile_rows
from attrkit.feature_matrix import FeatureMatrix
from attrkit.selection import merge_top_k

__all__ = ["score_block", "top_k_block"]

#: ``(w_m, Tensor[b, k_m])``: a member's weight and its query side.
Query = tuple[float, torch.Tensor]
#: ``(Tensor[b, c] scores, LongTensor[b, c] global columns)``: top-k candidates.
Candidates = tuple[torch.Tensor, torch.Tensor]
#: ``products(q [b, k], rows [t, k]) -> Tensor[b, t]``: a member's score products
#: (:meth:`~attrkit.engine.state.FittedMember.products`); ``None`` for ``q @ rows.T``.
Products = Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None


def _score_bytes(queries: Sequence[Query]) -> int:
    """Working bytes per training row of a score tile: two columns in the queries' dtype (the sum and
    one member's part) and one in float32."""
    first = queries[0][1]
    return first.shape[0] * (2 * first.dtype.itemsize + 4)


def _tiles(
    queries: Sequence[Query], matrices: Sequence[FeatureMatrix], rows: int, products: Sequence[Products] | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(local start, Tensor[b, t] scores summed over members)`` per tile of ``rows`` rows.

    Each member's tile is dropped before the next is read (no ``zip``, which would keep them).
    """
    readers = [x.tiles(rows) for x in matrices]
    products = products or [None] * len(matrices)
    for first in readers[0]:
        tiles = [first, *(next(reader) for reader in readers[1:])]
        start, scores = first.start, None
        del first
        for (w, q), tile, product in zip(queries, tiles, products):
            part = (q @ tile.values.T if product is None else product(q, tile.values)).mul_(w)
            scores = part if scores is None else scores.add_(part)
            del part
        del tiles, tile
        yield start, scores
        del scores


def score_block(
    queries: Sequence[Query], matrices: Sequence[FeatureMatrix], products: Sequence[Products] | None = None
) -> torch.Tensor:
    """``Tensor[b, rows]`` float32 CPU: the scores of this rank's rows of ``matrices`` (one per member).

    Args:
        queries: per member ``(w_m, Tensor[b, k_m])``, in the order of ``matrices``.
        matrices: the members' training sides, with the same held rows.
        products: per member its score products (structured members), default ``q @ rows.T``.

    Raises:
        MemoryBudgetError: the budget cannot hold one tile row of every member and its scores.
    """
    out = torch.empty(queries[0][1].shape[0], matrices[0].rows, dtype=torch.float32)
    for start, scores in _tiles(queries, matrices, tile_rows(matrices, _score_bytes(queries)), products):
        out[:, start : start + scores.shape[1]] = scores.float().cpu()
        del scores
    return out


def top_k_block(
    queries: Sequence[Query], matrices: Sequence[FeatureMatrix], k: int, rows: int,
    excluded: torch.Tensor | None = None, products: Sequence[Products] | None = None,
) -> tuple[Candidates | None, Candidates | None]:
    """This rank's best ``k`` proponent and opponent candidates, from one pass over the tiles.

    Args:
        queries, matrices, products: as :func:`score_block`.
        k: how many to keep of each.
        rows: most training rows per tile (the budget may allow fewer).
        excluded: ``BoolTensor[n]`` over the global columns: never return these (or ``None``).

    Returns:
        ``(proponents, opponents)``, each ``(Tensor[b, c] float32, LongTensor[b, c] global
        columns)`` with ``c <= k``, CPU, sorted by strength; ``None`` when this rank holds no row.
    """
    step = min(rows, tile_rows(matrices, _score_bytes(queries)))
    index = matrices[0].global_index
    best = worst = None
    for start, scores in _tiles(queries, matrices, step, products):
        scores = scores.float().cpu()
        high = low = scores
        if excluded is not None:
            out = excluded[index(torch.arange(start, start + scores.shape[1]))]
            high, low = scores.masked_fill(out, float("-inf")), scores.masked_fill(out, float("inf"))
        best = merge_top_k(best, high, start, k, largest=True)
        worst = merge_top_k(worst, low, start, k, largest=False)
        del scores, high, low
    if best is None:
        return None, None
    return (best[0], index(best[1])), (worst[0], index(worst[1]))
