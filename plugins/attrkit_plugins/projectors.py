"""Projectors: ``identity``, and dense ``gaussian`` and ``rademacher`` (seeded, generated in fixed blocks)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import (
    FitContext,
    NotFittedError,
    Projector,
    StateValue,
    float_field,
    hookimpl,
    positive_int,
    seed_field,
)
from attrkit.functional.projection import SeededMatrix, gaussian_sampler, rademacher_sampler


@attrs.frozen(kw_only=True)
class IdentityConfig:
    """``identity`` has no parameters."""


class IdentityProjector(Projector):
    """``k = p``: features are the raw gradients."""

    name: ClassVar[str] = "identity"
    Config: ClassVar[type] = IdentityConfig
    identity: ClassVar[bool] = True

    def fit(self, context: FitContext) -> None:
        """Nothing to fit."""

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """Returns ``vectors`` unchanged (``[b, p]``)."""
        return vectors

    def state_dict(self) -> dict[str, StateValue]:
        """Nothing is fitted: ``{}``."""
        return {}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Nothing to restore."""


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@attrs.frozen(kw_only=True)
class DenseConfig:
    """Config of ``gaussian`` and ``rademacher``.

    Attributes:
        dim: output dimension ``k``.
        seed: fixes the matrix (per device type).
        chunk_rows: input rows multiplied at once when the matrix is not cached;
            bounds memory at ``chunk_rows * dim * 4`` bytes; never changes ``P``.
        cache_mb: keep the whole matrix when its float32 size is at most this many MiB, in a
            process-wide cache whose total stays within it (least recently used first out: an
            ensemble's members share it); otherwise its blocks are regenerated on the input's
            device at each call. An ensemble scores its test batches member by member in groups
            (:mod:`attrkit.engine.scoring`), so a budget of one matrix draws each member's again
            once per group, and a budget of all of them none: memory against time.
        dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"``: precision of the matmul
            (see :meth:`attrkit.functional.projection.SeededMatrix.project` for its error).
    """

    dim: int = positive_int(512, (8, 32))
    seed: int = seed_field(per_member=True)
    chunk_rows: int = positive_int(8192, (1024, 8192))
    cache_mb: float = float_field(256.0, ge=0.0, examples=(0.0, 256.0))
    # low precision may change the last bits with the batch size, so property tests draw
    # float32 only; tests/test_projection.py checks the low-precision error bound
    dtype: str = attrs.field(
        default="float32", validator=attrs.validators.in_(tuple(_DTYPES)), metadata={"examples": ("float32",)}
    )


class _DenseRandomProjector(Projector):
    """``x -> x P`` with ``P[p, k]`` i.i.d. unit-variance entries scaled by ``1/sqrt(k)``.

    Inner products are kept in expectation. ``P`` is drawn in fixed seeded blocks of
    rows: identical for any batch size, ``chunk_rows`` or cache setting.
    """

    Config: ClassVar[type] = DenseConfig
    sampler: ClassVar[Callable[..., torch.Tensor]]
    projects_packed: ClassVar[bool] = True

    def __init__(self, config: DenseConfig):
        super().__init__(config)
        self.matrix: SeededMatrix | None = None

    def fit(self, context: FitContext) -> None:
        """Set up ``P`` for input dimension ``context.dimension`` (drawn lazily)."""
        self._setup(context.dimension)

    def _setup(self, p: int) -> None:
        c = self.config
        if self.matrix is None or self.matrix.p != p:
            self.matrix = SeededMatrix(p, c.dim, c.seed, type(self).sampler, c.chunk_rows, int(c.cache_mb * 2**20))

    def state_dict(self) -> dict[str, StateValue]:
        """``{"dimension": p}``: ``P`` is drawn again from the seed.

        Raises:
            NotFittedError: before ``fit``.
        """
        if self.matrix is None:
            raise NotFittedError(f"{self.name} projector cannot be saved before fit(context)")
        return {"dimension": self.matrix.p}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Set up ``P`` for the saved input dimension."""
        self._setup(int(state["dimension"]))

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, dim]`` (the input's dtype with ``dtype="float32"``, else float32).

        Raises:
            NotFittedError: before ``fit``.
            ValueError: vectors of another dimension than the fitted ``p``.
        """
        if self.matrix is None:
            raise NotFittedError(f"{self.name} projector used before fit(context)")
        return self.matrix.project(vectors, _DTYPES[self.config.dtype])

    def project_packed(self, layout: Any, packed: torch.Tensor) -> torch.Tensor | None:
        """``project`` of the gradients packed factor rows stand for, without forming them (float32
        ``dtype`` and inputs; ``None`` otherwise: the engine forms the gradients).

        Raises:
            NotFittedError: before ``fit``.
        """
        if self.matrix is None:
            raise NotFittedError(f"{self.name} projector used before fit(context)")
        if self.config.dtype != "float32" or packed.dtype != torch.float32:
            return None
        return self.matrix.project_packed(layout, packed)


class GaussianProjector(_DenseRandomProjector):
    """Dense Gaussian projection: entries ``N(0, 1/k)``.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "projector": {"name": "gaussian", "dim": 256, "seed": 0}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "gaussian"
    sampler = staticmethod(gaussian_sampler)


class RademacherProjector(_DenseRandomProjector):
    """Dense Rademacher projection: entries ``±1/sqrt(k)``, exact in low precision.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "projector": {"name": "rademacher", "dim": 256, "dtype": "bfloat16"}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "rademacher"
    sampler = staticmethod(rademacher_sampler)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [IdentityProjector, GaussianProjector, RademacherProjector]
