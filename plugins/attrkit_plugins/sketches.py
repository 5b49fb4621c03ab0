"""Sketching projectors: ``rademacher`` (dense ±1, optional low-precision matmul) and
``sjlt`` (sparse Johnson–Lindenstrauss transform)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar

import attrs
import torch

from attrkit import hookimpl
from attrkit.config import positive_int, seed_field
from attrkit.context import FitContext
from attrkit.errors import NotFittedError
from attrkit.functional.projection import SeededMatrix, rademacher_sampler
from attrkit.functional.sparse import sjlt_project

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@attrs.frozen(kw_only=True)
class RademacherConfig:
    """Config of ``rademacher``.

    Attributes:
        dim: output dimension ``k``.
        seed: fixes the matrix (per device type).
        chunk_rows: input rows multiplied at once when the matrix is not cached;
            bounds memory at ``chunk_rows * dim * 4`` bytes; never changes ``P``.
        cache_mb: keep the whole matrix when its float32 size is at most this many MiB.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``: the precision of the matmul
            (see :class:`RademacherProjector` for the accuracy cost).
    """

    dim: int = positive_int(512, (8, 32))
    seed: int = seed_field()
    chunk_rows: int = positive_int(8192, (1024, 8192))
    cache_mb: float = attrs.field(
        default=256.0, converter=float, validator=attrs.validators.ge(0.0), metadata={"examples": (0.0, 256.0)}
    )
    dtype: str = attrs.field(
        default="float32",
        validator=attrs.validators.in_(tuple(_DTYPES)),
        # low precision rounds each output to dtype, so results may change in the last bit with the
        # batch size (the GEMM kernel changes): it is tested with tolerances in tests/test_sketches.py
        metadata={"examples": ("float32",)},
    )


class RademacherProjector:
    """``x -> x P`` with ``P[p, k]`` i.i.d. ``±1/sqrt(k)``, so inner products are kept in expectation.

    ``P`` is drawn in fixed seeded blocks of rows (as for ``gaussian``): identical for
    any batch size, ``chunk_rows`` or cache setting. Returns float32.

    Low precision (``dtype`` ``"float16"``/``"bfloat16"``): each row of ``x`` is divided
    by its norm, rounded to ``dtype`` and multiplied by the exact ``±1`` signs; the norm
    and ``1/sqrt(k)`` are applied in float32 afterwards, so nothing overflows or
    underflows. The cost is the rounding of ``x`` and of each chunk's product: with unit
    roundoff ``u`` (``2**-11`` for float16, ``2**-8`` for bfloat16), the relative error
    ``||y - y_float32|| / ||y_float32||`` is about ``u``: ≲ 1e-3 for float16, ≲ 8e-3 for
    bfloat16, which is far below the projection's own JL error ``~sqrt(2/k)``. On the CPU,
    torch has no fast float16 matmul (it is ~200x slower than float32), so there the
    operands are rounded to float16 and multiplied with float32 arithmetic: the same
    rounding as a float16 GPU matmul that accumulates in float32. bfloat16 runs natively.
    Batch-size independence then holds up to that rounding: a different batch size may
    pick another matmul kernel and flip the last bit of an output.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "projector": {"name": "rademacher", "dim": 256, "dtype": "bfloat16"}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "rademacher"
    kind: ClassVar[str] = "projector"
    Config: ClassVar[type] = RademacherConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: RademacherConfig):
        self.config = config
        self.matrix: SeededMatrix | None = None
        self._signs: dict[torch.device, torch.Tensor] = {}

    def fit(self, context: FitContext) -> None:
        """Set up ``P`` for input dimension ``context.dimension`` (drawn lazily)."""
        c = self.config
        if self.matrix is None or self.matrix.p != context.dimension:
            cache = int(c.cache_mb * 2**20)
            self.matrix = SeededMatrix(context.dimension, c.dim, c.seed, rademacher_sampler, c.chunk_rows, cache)
            self._signs = {}

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, dim]`` float32.

        Raises:
            NotFittedError: before ``fit``.
            ValueError: vectors of another dimension than the fitted ``p``.
        """
        if self.matrix is None:
            raise NotFittedError("rademacher projector used before fit(context)")
        if self.config.dtype == "float32":
            return self.matrix.project(vectors.float())
        if vectors.shape[-1] != self.matrix.p:
            raise ValueError(f"rademacher was fitted for dimension {self.matrix.p}, got vectors of {vectors.shape[-1]}")
        x = vectors.float()
        norms = x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        storage = _DTYPES[self.config.dtype]
        compute = torch.float32 if storage == torch.float16 and x.device.type == "cpu" else storage
        unit = (x / norms).to(storage).to(compute)
        out = torch.zeros(x.shape[0], self.matrix.k, device=x.device)
        for start, signs in self._sign_chunks(x.device, compute):
            out += (unit[:, start : start + signs.shape[0]] @ signs).float()
        return out.mul_(norms).div_(math.sqrt(self.matrix.k))

    def _sign_chunks(self, device: torch.device, dtype: torch.dtype) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, sign(P[start:stop]))`` in ``dtype``: the whole matrix, cached, or streamed in chunks."""
        m = self.matrix
        if m.cacheable:
            if device not in self._signs:
                self._signs[device] = m.rows(0, m.p, device).sign_().to(dtype)
            yield 0, self._signs[device]
            return
        for start in range(0, m.p, m.chunk_rows):
            yield start, m.rows(start, min(m.p, start + m.chunk_rows), device).sign_().to(dtype)


@attrs.frozen(kw_only=True)
class SJLTConfig:
    """Config of ``sjlt``.

    Attributes:
        dim: output dimension ``k``.
        seed: fixes the sketch (the same on every device).
        nnz: nonzeros per input coordinate ``s`` (``1 <= nnz <= dim``); cost grows
            linearly in it, accuracy on sparse inputs too.
        chunk_rows: input coordinates handled at once; peak extra memory about
            ``chunk_rows * nnz * 20`` bytes (sparse indices and values); never changes results.
    """

    dim: int = positive_int(512, (8, 32))
    seed: int = seed_field()
    nnz: int = positive_int(4, (4, 1))
    chunk_rows: int = positive_int(8192, (1024, 8192))

    def __attrs_post_init__(self) -> None:
        if self.nnz > self.dim:
            raise ValueError(f"nnz must be <= dim (a coordinate takes nnz distinct buckets), got {self.nnz} > {self.dim}")


class SJLTProjector:
    """Sparse JL transform: each coordinate is added, with random signs ``±1/sqrt(nnz)``,
    to ``nnz`` distinct output buckets (Kane–Nelson block construction).

    Buckets and signs are hashed from ``(seed, block of 1024 coordinates)`` on the CPU,
    so results do not depend on batch size, ``chunk_rows`` or device. It costs
    ``b * p * nnz`` multiply-adds (a dense projection: ``b * p * dim``) and stores no
    matrix. Inner products are kept in expectation; for dense inputs the error is like
    a dense projection's, for very sparse inputs raise ``nnz`` (see
    :mod:`attrkit.functional.sparse`). Returns float32.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "projector": {"name": "sjlt", "dim": 2048, "nnz": 4}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "sjlt"
    kind: ClassVar[str] = "projector"
    Config: ClassVar[type] = SJLTConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: SJLTConfig):
        self.config = config
        self.dimension: int | None = None

    def fit(self, context: FitContext) -> None:
        """Remember the input dimension ``p`` (the sketch is hashed on the fly)."""
        self.dimension = context.dimension

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, dim]`` float32.

        Raises:
            NotFittedError: before ``fit``.
            ValueError: vectors of another dimension than the fitted ``p``.
        """
        if self.dimension is None:
            raise NotFittedError("sjlt projector used before fit(context)")
        if vectors.shape[-1] != self.dimension:
            raise ValueError(f"sjlt was fitted for dimension {self.dimension}, got vectors of {vectors.shape[-1]}")
        c = self.config
        return sjlt_project(vectors.float(), c.dim, c.seed, c.nnz, c.chunk_rows)


@hookimpl
def attrkit_components() -> list[type]:
    return [RademacherProjector, SJLTProjector]
