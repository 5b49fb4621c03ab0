"""Sparse sketching projector: ``sjlt`` (sparse Johnson–Lindenstrauss transform)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import attrs
import torch

from attrkit.plugin import (
    ArgumentError,
    FitContext,
    NotFittedError,
    Projector,
    StateValue,
    hookimpl,
    positive_int,
    seed_field,
)
from attrkit.functional.sparse import sjlt_hashes, sjlt_project

#: Most bytes of a sketch's hashes (``p · nnz`` buckets and signs, 12 bytes each) a projector keeps
#: between batches instead of drawing them again for every batch.
KEPT_HASH_BYTES = 16 * 2**20


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
    seed: int = seed_field(per_member=True)
    nnz: int = positive_int(4, (4, 1))
    chunk_rows: int = positive_int(8192, (1024, 8192))

    def __attrs_post_init__(self) -> None:
        if self.nnz > self.dim:
            raise ArgumentError(f"nnz must be <= dim (a coordinate takes nnz distinct buckets), got {self.nnz} > {self.dim}")


class SJLTProjector(Projector):
    """Sparse JL transform: each coordinate is added, with random signs ``±1/sqrt(nnz)``,
    to ``nnz`` distinct output buckets (Kane–Nelson block construction).

    Buckets and signs are hashed from ``(seed, block of 1024 coordinates)`` on the CPU,
    so results do not depend on batch size, ``chunk_rows`` or device. It costs
    ``b * p * nnz`` multiply-adds (a dense projection: ``b * p * dim``) and stores no
    matrix: only its hashes, 12 bytes per coordinate and nonzero, kept between batches
    while they fit :data:`KEPT_HASH_BYTES`. Inner products are kept in expectation; for dense inputs the error is like
    a dense projection's, for very sparse inputs raise ``nnz`` (see
    :mod:`attrkit.functional.sparse`). Returns float32.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "projector": {"name": "sjlt", "dim": 2048, "nnz": 4}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "sjlt"
    Config: ClassVar[type] = SJLTConfig

    def __init__(self, config: SJLTConfig):
        super().__init__(config)
        self.dimension: int | None = None
        self._hashes: tuple[torch.Tensor, torch.Tensor] | None = None

    def fit(self, context: FitContext) -> None:
        """Remember the input dimension ``p`` (the sketch is hashed on the fly, and its hashes kept
        between batches when they fit :data:`KEPT_HASH_BYTES`)."""
        self.dimension, self._hashes = context.dimension, None

    def state_dict(self) -> dict[str, StateValue]:
        """``{"dimension": p}``: the sketch is hashed again from the seed.

        Raises:
            NotFittedError: before ``fit``.
        """
        if self.dimension is None:
            raise NotFittedError("sjlt projector cannot be saved before fit(context)")
        return {"dimension": self.dimension}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Remember the saved input dimension."""
        self.dimension, self._hashes = int(state["dimension"]), None

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, dim]``: float64 for float64 vectors (kept exact, as the dense
        projectors do), float32 otherwise.

        Raises:
            NotFittedError: before ``fit``.
            ValueError: vectors of another dimension than the fitted ``p``.
        """
        if self.dimension is None:
            raise NotFittedError("sjlt projector used before fit(context)")
        if vectors.shape[-1] != self.dimension:
            raise ArgumentError(f"sjlt was fitted for dimension {self.dimension}, got vectors of {vectors.shape[-1]}")
        c = self.config
        x = vectors if vectors.dtype == torch.float64 else vectors.float()
        if self._hashes is None and self.dimension * c.nnz * 12 <= KEPT_HASH_BYTES:
            self._hashes = sjlt_hashes(c.seed, 0, self.dimension, c.dim, c.nnz)
        return sjlt_project(x, c.dim, c.seed, c.nnz, c.chunk_rows, hashes=self._hashes)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [SJLTProjector]
