"""Projectors: ``identity`` and ``gaussian`` (seeded, generated in fixed blocks)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from attrkit import hookimpl
from attrkit.config import positive_int, seed_field
from attrkit.context import FitContext
from attrkit.functional.projection import SeededMatrix, gaussian_sampler


@attrs.frozen(kw_only=True)
class IdentityConfig:
    """``identity`` has no parameters."""


class IdentityProjector:
    """``k = p``: features are the raw gradients."""

    name: ClassVar[str] = "identity"
    kind: ClassVar[str] = "projector"
    Config: ClassVar[type] = IdentityConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: IdentityConfig):
        self.config = config

    def fit(self, context: FitContext) -> None:
        """Nothing to fit."""

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """Returns ``vectors`` unchanged (``[b, p]``)."""
        return vectors


@attrs.frozen(kw_only=True)
class GaussianConfig:
    """Config of ``gaussian``.

    Attributes:
        dim: output dimension ``k``.
        seed: fixes the matrix (per device type).
        chunk_rows: input rows multiplied at once when the matrix is not cached;
            bounds memory at ``chunk_rows * dim * 4`` bytes; never changes results.
        cache_mb: keep the whole matrix when it is at most this many MiB.
    """

    dim: int = positive_int(512, (8, 32))
    seed: int = seed_field()
    chunk_rows: int = positive_int(8192, (1024, 8192))
    cache_mb: float = attrs.field(
        default=256.0, converter=float, validator=attrs.validators.ge(0.0), metadata={"examples": (0.0, 256.0)}
    )


class GaussianProjector:
    """``x -> x P`` with ``P[p, k]`` i.i.d. ``N(0, 1/k)``, so inner products are kept in expectation.

    ``P`` is drawn in fixed seeded blocks of rows: identical for any batch size,
    ``chunk_rows`` or cache setting. It is cached whole when within ``cache_mb``,
    else regenerated block by block on the input's device at each call.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "projector": {"name": "gaussian", "dim": 256, "seed": 0}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "gaussian"
    kind: ClassVar[str] = "projector"
    Config: ClassVar[type] = GaussianConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: GaussianConfig):
        self.config = config
        self.matrix: SeededMatrix | None = None

    def fit(self, context: FitContext) -> None:
        """Set up ``P`` for input dimension ``context.dimension`` (drawn lazily)."""
        c = self.config
        if self.matrix is None or self.matrix.p != context.dimension:
            self.matrix = SeededMatrix(
                context.dimension, c.dim, c.seed, gaussian_sampler, c.chunk_rows, int(c.cache_mb * 2**20)
            )

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, dim]``."""
        if self.matrix is None:
            raise RuntimeError("gaussian projector used before fit(context)")
        return self.matrix.project(vectors)


@hookimpl
def attrkit_components() -> list[type]:
    return [IdentityProjector, GaussianProjector]
