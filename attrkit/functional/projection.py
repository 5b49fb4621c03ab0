"""Seeded random projection matrices, generated in fixed blocks and never held whole
unless they fit a cache budget.

``P`` (``[p, k]``) is defined block by block: rows ``[j*B, (j+1)*B)`` are drawn by a
sampler from a generator seeded by ``(seed, j)``. Because ``B`` is fixed, ``P`` does
not depend on batch size, chunk size or which rows are asked for first. Numbers differ
between CPU and CUDA generators: a seed fixes ``P`` per device type.

Whole matrices are cached process-wide (:data:`CACHE`), least recently used first out, while
their total stays within the cache budget of the matrix asked for, and only while a
:class:`SeededMatrix` that drew them is alive: an ensemble's members, each with its own seed,
then hold one budget's worth of matrices between them, not one each (ten members of a
109,386 × 512 projection: one 214 MiB matrix at a time instead of 2.1 GiB), and draw again the
ones evicted; a matrix goes with the last projector that used it.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch

from attrkit.errors import ArgumentError
from attrkit.memory import require

if TYPE_CHECKING:
    from attrkit.functional.structured_products import ProductLayout

__all__ = ["BLOCK_ROWS", "CACHE", "FORMED_BYTES", "MatrixCache", "SeededMatrix", "block_generator", "gaussian_sampler",
           "rademacher_sampler"]

#: Rows of ``P`` per seeded block. Changing it changes every projection: keep it fixed.
BLOCK_ROWS = 1024

#: Most bytes of gradients :meth:`SeededMatrix.project_packed` forms from packed factor rows to project them
#: in one GEMM.
FORMED_BYTES = 16 * 2**20

#: ``sampler(generator, rows, k, device) -> Tensor[rows, k]`` float32 with unit-variance entries. A sampler
#: with ``concurrent = True`` also takes ``out=`` (a ``[rows, k]`` float32 view to fill) and fills it with
#: one serial kernel that reads no state but its generator, as :func:`gaussian_sampler`: the blocks of a
#: CPU matrix are then drawn side by side on threads of their own, straight into the matrix. Any other is
#: called block after block (elementwise work or a copy on a drawing thread would start torch's intra-op
#: threads once per drawing thread).
Sampler = Callable[[torch.Generator, int, int, torch.device], torch.Tensor]


class MatrixCache:
    """Whole projection matrices by what defines them, least recently used first out, within a byte budget.

    Thread-safe (distributed tests run ranks as threads). A matrix larger than the budget is not kept.
    """

    def __init__(self) -> None:
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes the cached matrices hold."""
        with self._lock:
            return sum(t.numel() * t.element_size() for t in self._entries.values())

    def get(self, key: Hashable, budget: int, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The matrix of ``key``: cached, or ``make()``, kept with the least recently used ones evicted
        until everything kept fits ``budget`` bytes."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        value = make()
        size = value.numel() * value.element_size()
        with self._lock:
            if size <= budget:
                self._entries[key] = value
                total = sum(t.numel() * t.element_size() for t in self._entries.values())
                while total > budget:
                    _, old = self._entries.popitem(last=False)
                    total -= old.numel() * old.element_size()
        return value

    def drop(self, keys: set[Hashable]) -> None:
        """Drop the matrices of ``keys`` (those a garbage-collected :class:`SeededMatrix` drew)."""
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def clear(self) -> None:
        """Drop every cached matrix."""
        with self._lock:
            self._entries.clear()


#: The process's cache of whole projection matrices (see the module docstring).
CACHE = MatrixCache()


def block_generator(seed: int, block: int, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``(seed, block)`` (SplitMix64-style mixing)."""
    z = (seed * 0x9E3779B97F4A7C15 + block + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return torch.Generator(device=device).manual_seed((z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF)


def gaussian_sampler(gen: torch.Generator, rows: int, k: int, device: torch.device,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """Standard normal entries, written into ``out`` when given (one serial kernel: ``concurrent``)."""
    return torch.randn(rows, k, generator=gen, device=device, out=out)


gaussian_sampler.concurrent = True  # type: ignore[attr-defined]


def rademacher_sampler(gen: torch.Generator, rows: int, k: int, device: torch.device) -> torch.Tensor:
    """Entries ±1 with probability 1/2 each."""
    return torch.randint(0, 2, (rows, k), generator=gen, device=device).float().mul_(2).sub_(1)


class SeededMatrix:
    """The ``[p, k]`` matrix ``sampler(...) / sqrt(k)``, applied block by block.

    With unit-variance entries scaled by ``1/sqrt(k)``, ``E[<xP, yP>] = <x, y>``.

    Args:
        p: input dimension.
        k: output dimension.
        seed: fixes the matrix (per device type).
        sampler: draws one block of unit-variance entries.
        chunk_rows: rows multiplied at once (memory ``chunk_rows * k * 4`` bytes);
            rounded up to a multiple of :data:`BLOCK_ROWS`. Does not change ``P``.
        cache_bytes: keep the whole matrix per device in :data:`CACHE` when it is at most this large,
            with the least recently used matrices evicted to keep the cache's total within it;
            otherwise blocks are regenerated on the fly at every call (fast on GPU).
    """

    def __init__(
        self,
        p: int,
        k: int,
        seed: int,
        sampler: Sampler,
        chunk_rows: int = 8 * BLOCK_ROWS,
        cache_bytes: int = 256 * 2**20,
    ):
        self.p, self.k, self.seed, self.sampler = p, k, seed, sampler
        self.chunk_rows = max(BLOCK_ROWS, math.ceil(chunk_rows / BLOCK_ROWS) * BLOCK_ROWS)
        self.cache_bytes = cache_bytes
        self.cacheable = p * k * 4 <= cache_bytes
        self._keys: set[Hashable] = set()  # what it put in CACHE: dropped with it
        weakref.finalize(self, CACHE.drop, self._keys)
        self._matrices: dict[torch.device, torch.Tensor] = {}

    def rows(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """``P[start:stop]``, float32 on ``device`` (any ``start``; drawn from whole blocks)."""
        return self._raw(start, stop, device).div_(math.sqrt(self.k))

    def matrix(self, device: torch.device) -> torch.Tensor:
        """The whole ``P`` (``[p, k]``), float32, cached per device: for small matrices."""
        if device not in self._matrices:
            self._matrices[device] = self.rows(0, self.p, device)
        return self._matrices[device]

    def project(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``x @ P`` for ``x`` of shape ``[b, p]``.

        Args:
            x: the vectors.
            dtype: precision of the matmul. ``float32`` (full precision) multiplies
                float64 vectors in float64 and any other in float32, and returns ``x``'s dtype. With
                ``float16``/``bfloat16``, each row of ``x`` is divided by its norm and
                rounded, the unscaled unit-variance entries are rounded (±1 stays exact),
                products accumulate in float32, and norms and ``1/sqrt(k)`` are applied in
                float32 afterwards: the relative error per row is about the unit roundoff
                (≲1e-3 float16, ≲8e-3 bfloat16), far below the JL error ``~sqrt(2/k)``;
                results may change in the last bits with the batch size. On the CPU, which
                has no fast float16 matmul, float16 operands are rounded then multiplied in
                float32 (the same rounding as a GPU float16 matmul accumulating in float32).
                Returns float32.
        """
        if x.shape[-1] != self.p:
            raise ArgumentError(f"projector was fitted for dimension {self.p}, got vectors of dimension {x.shape[-1]}")
        self._require(x.shape[0], x.device)
        if dtype == torch.float32:
            full = torch.float64 if x.dtype == torch.float64 else torch.float32  # float64 stays exact
            return self._matmul(x.to(full), full, full).div_(math.sqrt(self.k)).to(x.dtype)
        x = x.float()
        norms = x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        compute = torch.float32 if dtype == torch.float16 and x.device.type == "cpu" else dtype
        unit = (x / norms).to(dtype).to(compute)
        return self._matmul(unit, dtype, compute).mul_(norms).div_(math.sqrt(self.k))

    def project_packed(self, layout: ProductLayout, x: torch.Tensor) -> torch.Tensor:
        """``layout.materialize(x) @ P`` (float32, ``[b, k]``) from packed factor rows ``x``
        (``[b, layout.width]``), equal to :meth:`project` of the materialised gradients to float32
        round-off. Gradients of at most :data:`FORMED_BYTES` are formed and projected in one GEMM
        (faster than one GEMM per layer and output row); larger ones are not formed
        (:meth:`~attrkit.functional.structured_products.ProductLayout.project`), reading ``P``'s rows
        layer by layer from the cache or drawing them.

        Raises:
            ArgumentError: a layout for gradients of another dimension than ``p``.
        """
        p = layout.flat_width("project from factors")
        if p != self.p:
            raise ArgumentError(f"projector was fitted for dimension {self.p}, got factors of gradients of dimension {p}")
        self._require(x.shape[0], x.device)
        device, x = x.device, x.float()
        if x.shape[0] * p * 4 <= FORMED_BYTES:
            return self.project(layout.materialize(x))
        if self.cacheable:
            whole = next(self._chunks(device, torch.float32, torch.float32))[1]
            rows = lambda start, stop: whole[start:stop]  # noqa: E731
        else:
            rows = lambda start, stop: self._raw(start, stop, device)  # noqa: E731
        return layout.project(x, rows).div_(math.sqrt(self.k))

    def _require(self, b: int, device: torch.device) -> None:
        """Refuse, before allocating, projecting ``b`` vectors whose output and a block of ``P`` do not fit.

        Raises:
            InsufficientMemoryError: naming ``dim`` and the fix.
        """
        rows = self.p if self.cacheable else min(self.p, self.chunk_rows)
        require((b + 2 * rows) * self.k * 8, f"projecting {b} vectors of dimension {self.p} to dim={self.k} (the "
                "output and a block of the matrix)", "lower the projector's dim (or chunk_rows)", device)

    def _raw(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """Unscaled rows ``sqrt(k) * P[start:stop]`` (unit-variance entries), float32."""
        first, last = start // BLOCK_ROWS, math.ceil(stop / BLOCK_ROWS)
        offset = first * BLOCK_ROWS
        out = torch.empty(min(self.p, last * BLOCK_ROWS) - offset, self.k, device=device)

        def rows(j: int) -> tuple[int, int]:
            return j * BLOCK_ROWS - offset, min(BLOCK_ROWS, self.p - j * BLOCK_ROWS)

        def fill(j: int) -> None:
            at, n = rows(j)
            self.sampler(block_generator(self.seed, j, device), n, self.k, device, out=out[at : at + n])

        workers = min(torch.get_num_threads(), last - first)
        if device.type == "cpu" and workers > 1 and getattr(self.sampler, "concurrent", False):
            with ThreadPoolExecutor(workers) as pool:  # a CPU generator draws on one thread: each block's its own
                list(pool.map(fill, range(first, last)))
        else:
            for j in range(first, last):
                at, n = rows(j)
                out[at : at + n] = self.sampler(block_generator(self.seed, j, device), n, self.k, device)
        return out[start - offset : stop - offset]

    def _chunks(self, device: torch.device, storage: torch.dtype, compute: torch.dtype):
        """``(start, raw rows)`` rounded to ``storage`` then held in ``compute``: whole and cached, or streamed."""
        if self.cacheable:
            key = (self.sampler, self.seed, self.p, self.k, device, storage, compute)
            self._keys.add(key)
            yield 0, CACHE.get(key, self.cache_bytes, lambda: self._raw(0, self.p, device).to(storage).to(compute))
            return
        for start in range(0, self.p, self.chunk_rows):
            yield start, self._raw(start, min(self.p, start + self.chunk_rows), device).to(storage).to(compute)

    def _matmul(self, x: torch.Tensor, storage: torch.dtype, compute: torch.dtype) -> torch.Tensor:
        """``x @ (sqrt(k) P)`` accumulated over chunks of rows, in float32 (float64 for float64 ``compute``)."""
        accumulate = torch.float64 if compute == torch.float64 else torch.float32
        out = torch.zeros(x.shape[0], self.k, device=x.device, dtype=accumulate)
        for start, rows in self._chunks(x.device, storage, compute):
            out += (x[:, start : start + rows.shape[0]] @ rows).to(accumulate)
        return out
