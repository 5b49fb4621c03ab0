"""One member's training features ``Φ``, ``Tensor[n, k]``: in RAM, or streamed from disk in row tiles.

Row ``i`` of ``Φ`` is training example (or group) ``i``, i.e. score column ``i``. A
:class:`FeatureMatrix` holds some rows of ``Φ`` — all of them, or in distributed mode only
those of this rank's batches (``partitioned``; ``spans`` says which) — either *resident*
(one tensor on the task's device) or as the chunks of an on-disk
:class:`~attrkit.store.FeatureStore`, read through memory maps a tile at a time, so the
whole matrix is never in memory. Row transforms (TRAK's ``Q``, cosine normalisation,
RelatIF's scale) are applied lazily to each tile.

The memory budget (bytes, per process) bounds what one tile of a streamed matrix may
occupy: its rows plus the per-row working memory of the caller (``tile_rows``).
Reductions over all rows — ``gram`` (``ΦᵀΦ``), ``r_factor`` (``R`` of ``Φ = QR``),
``sum_rows_by`` (group sums), ``full`` — are taken over every rank's rows.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch

from attrkit import distributed
from attrkit.budget import tile_rows
from attrkit.errors import MemoryBudgetError
from attrkit.memory import require
from attrkit.store import FeatureStore

#: Bytes a reduction (``gram``, ``r_factor``) converts at once: a tile's copy in the reduction's dtype.
REDUCTION_BYTES = 8 << 20

__all__ = ["FeatureMatrix", "Tile"]

#: ``transform(tile[t, k], rows: LongTensor[t]) -> [t, k]``, applied to every tile read; ``rows`` are global.
Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Tile(NamedTuple):
    """Consecutive rows of a :class:`FeatureMatrix`.

    Attributes:
        start: local position of the first row (rows ``start..start+t-1`` of this process).
        index: ``LongTensor[t]`` (CPU), the global row (score column) of each row.
        values: ``Tensor[t, k]`` with the matrix's transforms applied, on its device.
    """

    start: int
    index: torch.Tensor
    values: torch.Tensor


class FeatureMatrix:
    """Some rows of ``Φ`` (``Tensor[n, k]``), resident or on disk; see the module docstring.

    Build one with :meth:`whole` or :meth:`stored`.

    Attributes:
        n: rows of the whole ``Φ`` (all ranks).
        width: ``k``.
        dtype: the features' dtype.
        device: where tiles (and reductions) are.
        partitioned: whether other ranks hold the other rows (reductions all-reduce).
        budget: bytes of features this process may hold at once (``None``: no budget).
        tile_bytes: bytes a tile may use: ``budget``, or less (the default budget caps tiles at
            :data:`~attrkit.budget.DEFAULT_TILE_BYTES`).
    """

    def __init__(
        self, *, n: int, width: int, dtype: torch.dtype, device: torch.device, spans: Sequence[tuple[int, int]],
        read: Callable[[int, int], torch.Tensor], resident: torch.Tensor | None, partitioned: bool,
        budget: int | None, transforms: tuple[Transform, ...] = (), tile_bytes: int | None = None,
    ):
        self.n, self.width, self.dtype, self.device = n, width, dtype, torch.device(device)
        self.partitioned, self.budget = partitioned, budget
        self.tile_bytes = budget if tile_bytes is None or budget is None else min(tile_bytes, budget)
        self._spans = list(spans)
        self._starts = list(itertools.accumulate((b - a for a, b in self._spans), initial=0))
        self._read, self._resident, self._transforms = read, resident, transforms

    @classmethod
    def whole(cls, tensor: torch.Tensor, budget: int | None = None, tile_bytes: int | None = None) -> FeatureMatrix:
        """Every row of ``Φ``, held as ``tensor`` (``[n, k]``) on every rank."""
        return cls(n=tensor.shape[0], width=tensor.shape[1], dtype=tensor.dtype, device=tensor.device,
                   spans=[(0, tensor.shape[0])], read=lambda lo, hi: tensor[lo:hi], resident=tensor,
                   partitioned=False, budget=budget, tile_bytes=tile_bytes)

    @classmethod
    def stored(
        cls, store: FeatureStore, member: int, chunks: Sequence[tuple[int, int, int]], *, n: int, width: int,
        dtype: torch.dtype, device: torch.device, resident: bool, budget: int | None, tile_bytes: int | None = None,
        release: bool = False,
    ) -> FeatureMatrix:
        """The rows of ``chunks`` of ``member`` in ``store``: loaded now when ``resident``, else read per tile.

        Args:
            chunks: ``(chunk index j, global row of its first example, b_j)`` of the chunks held
                here, in loader order; the others belong to other ranks.
            n, width, dtype: shape and dtype of ``Φ``.
            device: where tiles (and a resident matrix) go.
            budget, tile_bytes: as the attributes.
            release: when ``resident``, release each chunk from ``store`` once it is copied
                (:meth:`~attrkit.store.FeatureStore.release`), so that an in-memory store and the
                matrix do not both hold every row.
        """
        spans = [(offset, offset + size) for _, offset, size in chunks]
        starts = list(itertools.accumulate((size for *_, size in chunks), initial=0))
        partitioned = starts[-1] < n

        def read(lo: int, hi: int, drop: bool = False) -> torch.Tensor:
            out = torch.empty(hi - lo, width, dtype=dtype, device="cpu" if store.on_disk else device)
            first = bisect.bisect_right(starts, lo) - 1
            for c in range(first, len(chunks)):
                a, b = max(lo, starts[c]), min(hi, starts[c + 1])
                if a >= b:
                    break
                store.read_into(member, chunks[c][0], a - starts[c], b - starts[c], out[a - lo : b - lo])
                if drop:
                    store.release(member, chunks[c][0])
            return out.to(device)

        if resident:
            require(starts[-1] * width * torch.empty((), dtype=dtype).element_size(),
                    f"holding {starts[-1]} x {width} training features in memory",
                    "give fit a memory budget (memory_budget=None: a quarter of the available memory, or e.g. "
                    "'8GiB') so that they are streamed from disk", device)
            tensor = read(0, starts[-1], release)
            return cls(n=n, width=width, dtype=dtype, device=device, spans=spans, read=lambda lo, hi: tensor[lo:hi],
                       resident=tensor, partitioned=partitioned, budget=budget, tile_bytes=tile_bytes)
        return cls(n=n, width=width, dtype=dtype, device=device, spans=spans, read=read, resident=None,
                   partitioned=partitioned, budget=budget, tile_bytes=tile_bytes)

    # -- layout -------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """Rows held by this process."""
        return self._starts[-1]

    @property
    def resident(self) -> bool:
        """Whether the rows are in memory (else read from disk per tile)."""
        return self._resident is not None

    @property
    def nbytes(self) -> int:
        """Bytes of the rows held here (``rows · k · itemsize``)."""
        return self.rows * self.width * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes one row takes when read: its features, twice when transforms make a copy."""
        return self.width * self.dtype.itemsize * (2 if self._transforms else 1)

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Global ``[start, stop)`` row ranges of the local rows, in local order."""
        return list(self._spans)

    def global_index(self, local: torch.Tensor) -> torch.Tensor:
        """``LongTensor`` of the global rows of local positions ``local`` (any shape, CPU)."""
        starts = torch.tensor(self._starts[:-1], dtype=torch.long)
        offsets = torch.tensor([a for a, _ in self._spans], dtype=torch.long)
        block = torch.searchsorted(starts, local, right=True) - 1
        return offsets[block] + (local - starts[block])

    def owned(self) -> FeatureMatrix:
        """The rows whose score columns this rank computes: all held rows when partitioned
        (or not distributed), else the block :func:`attrkit.distributed.columns` of a whole matrix."""
        if self.partitioned or distributed.world() is None:
            return self
        cols = distributed.columns(self.n)
        base, read = cols.start, self._read
        resident = self._resident[cols] if self._resident is not None else None
        return FeatureMatrix(n=self.n, width=self.width, dtype=self.dtype, device=self.device,
                             spans=[(cols.start, cols.stop)], read=lambda lo, hi: read(base + lo, base + hi),
                             resident=resident, partitioned=True, budget=self.budget, transforms=self._transforms,
                             tile_bytes=self.tile_bytes)

    def mapped(self, transform: Transform) -> FeatureMatrix:
        """The same rows with ``transform(tile, global rows)`` applied after the current transforms."""
        return FeatureMatrix(n=self.n, width=self.width, dtype=self.dtype, device=self.device, spans=self._spans,
                             read=self._read, resident=self._resident, partitioned=self.partitioned,
                             budget=self.budget, transforms=(*self._transforms, transform), tile_bytes=self.tile_bytes)

    def scaled(self, weights: torch.Tensor) -> FeatureMatrix:
        """Row ``i`` multiplied by ``weights[i]`` (``Tensor[n]``, cast to the features' dtype)."""
        return self.mapped(lambda tile, rows: tile * weights[rows].to(tile)[:, None])

    def baked(self) -> FeatureMatrix:
        """A resident matrix with its transforms applied once (held as the transformed tensor);
        ``self`` when streamed (transforms stay per tile) or untransformed."""
        if self._resident is None or not self._transforms:
            return self
        tensor = self.tensor()
        return FeatureMatrix(n=self.n, width=self.width, dtype=tensor.dtype, device=self.device, spans=self._spans,
                             read=lambda lo, hi: tensor[lo:hi], resident=tensor, partitioned=self.partitioned,
                             budget=self.budget, tile_bytes=self.tile_bytes)

    # -- reading ------------------------------------------------------------------------

    def tile_rows(self, extra: int = 0) -> int:
        """Rows per tile of this matrix alone: see :func:`tile_rows`."""
        return tile_rows([self], extra)

    def tiles(self, rows: int | None = None) -> Iterator[Tile]:
        """The held rows in order, ``rows`` at a time (default :meth:`tile_rows`).

        A tile is read when the next one is asked for: to hold one tile at a time, drop
        every reference to the previous one first (``del tile``) — a ``zip`` over several
        of these iterators would keep the previous tiles while reading the next ones.
        """
        step = rows or self.tile_rows()
        for start in range(0, self.rows, step):
            stop = min(self.rows, start + step)
            index = self.global_index(torch.arange(start, stop))
            values = self._read(start, stop)
            for transform in self._transforms:
                values = transform(values, index)
            yield Tile(start, index, values)
            del values, index  # before reading the next tile: only one is held at a time

    def tensor(self) -> torch.Tensor:
        """``Tensor[rows, k]``: the held rows, transformed (the resident tensor itself when untransformed)."""
        if self._resident is not None and not self._transforms:
            return self._resident
        if not self.rows:
            return torch.zeros(0, self.width, dtype=self.dtype, device=self.device)
        (tile,) = self.tiles(self.rows)
        return tile.values

    def full(self) -> torch.Tensor:
        """``Tensor[n, k]``: every row of ``Φ``, transformed, on every rank (gathered when partitioned).

        Raises:
            MemoryBudgetError: ``Φ`` is larger than the budget.
        """
        if self.budget is not None and self.n * self.width * self.dtype.itemsize > self.budget and not (
            self.resident and not self.partitioned
        ):
            raise MemoryBudgetError(
                f"the whole feature matrix ({self.n} x {self.width}, {self.n * self.width * self.dtype.itemsize} "
                f"bytes) is asked for and exceeds memory_budget={self.budget}; raise the budget "
                "(fit(memory_budget=...) or the environment variable ATTRKIT_MEMORY_BUDGET, e.g. '8GiB', or inf for "
                "none) or use components "
                "that stream the features (a solver with streams_features = True)"
            )
        mine = self.tensor()
        if not self.partitioned:
            return mine
        out = torch.empty(self.n, self.width, dtype=self.dtype, device=mine.device)
        for spans, rows in distributed.all_ranks((self._spans, mine.cpu())):
            starts = itertools.accumulate((b - a for a, b in spans), initial=0)
            for (a, b), s in zip(spans, starts):
                out[a:b] = rows[s : s + b - a]
        return out

    # -- reductions over every rank's rows ---------------------------------------------

    def _reduction_rows(self, extra: int) -> int:
        """Rows per tile of a reduction that holds ``extra`` bytes per row besides the tile: within the
        budget and :data:`REDUCTION_BYTES` (at least ``k`` rows, so its GEMMs stay large)."""
        return max(1, min(self.tile_rows(extra), max(self.width, REDUCTION_BYTES // max(1, extra))))

    def gram(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``ΦᵀΦ``, ``Tensor[k, k]`` in ``dtype``, accumulated tile by tile (all-reduced when partitioned)."""
        total = None
        for tile in self.tiles(self._reduction_rows(self.width * torch.finfo(dtype).bits // 8)):
            values = tile.values.to(dtype)
            del tile
            product = values.T @ values
            del values
            total = product if total is None else total.add_(product)
        if total is None:
            total = torch.zeros(self.width, self.width, dtype=dtype, device=self.device)
        if self.partitioned:
            distributed.sum_over_ranks([total])
        return total

    def r_factor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``R`` (``Tensor[min(n, k), k]`` in ``dtype``) of ``Φ = QR``, by tall-skinny QR over the tiles.

        ``RᵀR = ΦᵀΦ``, and ``R`` has the singular values and right singular vectors of ``Φ``
        without squaring its condition number. When partitioned, every rank's ``R`` is stacked
        (rank order) and factorised again, so every rank gets the same ``R``.
        """
        r = torch.zeros(0, self.width, dtype=dtype, device=self.device)
        for tile in self.tiles(self._reduction_rows(2 * self.width * torch.finfo(dtype).bits // 8)):
            stacked = torch.cat([r, tile.values.to(dtype)])
            del tile
            r = torch.linalg.qr(stacked, mode="r").R
            del stacked
        if self.partitioned:
            r = torch.linalg.qr(torch.cat(distributed.all_ranks(r.cpu())).to(self.device), mode="r").R
        return r

    def sum_rows_by(self, groups: torch.Tensor, n_groups: int) -> torch.Tensor:
        """``Tensor[n_groups, k]``: the sum of the (transformed) rows of each group (all-reduced when partitioned).

        Args:
            groups: ``LongTensor[n]``, the group of every global row.
            n_groups: number of groups.

        Raises:
            MemoryBudgetError: ``Tensor[n_groups, k]`` is larger than the budget.
        """
        size = n_groups * self.width * self.dtype.itemsize
        if self.budget is not None and size > self.budget:
            raise MemoryBudgetError(
                f"the group features ({n_groups} groups x {self.width}, {size} bytes) are held in memory and exceed "
                f"memory_budget={self.budget}; raise the budget or use fewer groups"
            )
        out = None
        for tile in self.tiles():
            if out is None:
                out = torch.zeros(n_groups, self.width, dtype=tile.values.dtype, device=tile.values.device)
            out.index_add_(0, groups[tile.index].to(out.device), tile.values)
            del tile
        if out is None:
            out = torch.zeros(n_groups, self.width, dtype=self.dtype, device=self.device)
        if self.partitioned:
            distributed.sum_over_ranks([out])
        return out
