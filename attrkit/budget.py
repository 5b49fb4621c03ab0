"""The memory budget: how many bytes of training features one process may hold at once.

``fit(..., memory_budget=bytes)`` bounds what a tile of a streamed
:class:`~attrkit.feature_matrix.FeatureMatrix` occupies: its rows plus the per-row working
memory of the caller. :func:`tile_rows` turns the budget into rows per tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from attrkit.errors import MemoryBudgetError

if TYPE_CHECKING:
    from attrkit.feature_matrix import FeatureMatrix

__all__ = ["INDEX_BYTES", "check_budget", "tile_rows"]

#: Bytes per tile row of its global index (``Tile.index``, int64).
INDEX_BYTES = 8


def check_budget(memory_budget: int | None) -> int | None:
    """``memory_budget`` as bytes, or ``None`` (no budget).

    Raises:
        MemoryBudgetError: not a positive whole number of bytes.
    """
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 1:
        raise MemoryBudgetError(
            f"memory_budget must be a positive number of bytes (int) or None, got {memory_budget!r}"
        )
    return memory_budget


def tile_rows(matrices: Sequence[FeatureMatrix], extra: int = 0) -> int:
    """Rows per tile when the same rows of ``matrices`` (one per member) are read together.

    All held rows when every matrix is resident or has no budget (reading them costs
    nothing more); else as many as fit in the budget at ``Σ_m row_bytes + 8 + extra`` bytes
    per row (a row's features and their transformed copy, its global index). The memory
    map of the chunk being read (one batch's rows) comes on top.

    Args:
        matrices: matrices with the same rows and the same budget.
        extra: the caller's working bytes per row (e.g. a float64 copy, a score column).

    Raises:
        MemoryBudgetError: the budget cannot hold one row.
    """
    first = matrices[0]
    if all(x.resident or x.budget is None for x in matrices):
        return max(first.rows, 1)
    per_row = sum(x.row_bytes for x in matrices) + INDEX_BYTES + extra
    if first.budget < per_row:
        raise MemoryBudgetError(
            f"memory_budget={first.budget} bytes cannot hold one tile: a tile row takes {per_row} bytes "
            f"({len(matrices)} member(s) of k={first.width} features, its index and {extra} bytes of working "
            "memory); "
            f"raise memory_budget to at least {per_row}"
        )
    return first.budget // per_row
