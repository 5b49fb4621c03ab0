"""The ``achlioptas`` projector: a database-friendly sparse JL projection.

Entries of ``P`` are ``sqrt(3) * {+1, 0, -1}`` with probabilities ``1/6, 2/3, 1/6``
(Achlioptas, 2003): unit variance, so ``E[<xP, yP>] = <x, y>`` after the ``1/sqrt(k)``
scaling, with two thirds of the entries zero.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import torch

from attrkit import plugin
from attrkit.functional import SeededMatrix


def achlioptas_sampler(gen: torch.Generator, rows: int, k: int, device: torch.device) -> torch.Tensor:
    """``Tensor[rows, k]`` with entries ``sqrt(3) * {+1, 0, -1}`` w.p. ``1/6, 2/3, 1/6``."""
    u = torch.randint(0, 6, (rows, k), generator=gen, device=device)
    return ((u == 0).float() - (u == 1).float()) * math.sqrt(3.0)


@attrs.frozen(kw_only=True)
class AchlioptasConfig:
    """Config of ``achlioptas``.

    Attributes:
        dim: output dimension ``k``.
        seed: fixes the matrix (per device type).
    """

    dim: int = plugin.positive_int(512, (8, 32))
    seed: int = plugin.seed_field(per_member=True)


class AchlioptasProjector(plugin.Projector):
    """Sparse random projection ``Tensor[b, p] -> Tensor[b, dim]``, seeded and chunked.

    ``P`` is generated in seeded blocks of rows (:class:`attrkit.functional.SeededMatrix`),
    once, and reused: memory is bounded whatever ``p`` is, and a batch's projection does
    not depend on how the examples are batched.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "projector": {"name": "achlioptas", "dim": 64}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "achlioptas"
    Config: ClassVar[type] = AchlioptasConfig

    def __init__(self, config: AchlioptasConfig):
        super().__init__(config)
        self.matrix: SeededMatrix | None = None

    def fit(self, context: plugin.FitContext) -> None:
        """Set up ``P`` for input dimension ``context.dimension``."""
        self.matrix = SeededMatrix(context.dimension, self.config.dim, self.config.seed, achlioptas_sampler)

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, dim]``, in the input's dtype and on its device.

        Raises:
            NotFittedError: before ``fit``.
        """
        if self.matrix is None:
            raise plugin.NotFittedError("achlioptas projector used before fit(context)")
        return self.matrix.project(vectors)


@plugin.hookimpl
def attrkit_components() -> list[type]:
    """The classes this plugin registers."""
    return [AchlioptasProjector]
