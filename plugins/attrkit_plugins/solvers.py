"""Hessian solvers: ``identity`` (no curvature: ``H⁻¹ = I``)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from attrkit import hookimpl
from attrkit.context import FitContext


@attrs.frozen(kw_only=True)
class IdentityConfig:
    """``identity`` has no parameters."""


class IdentitySolver:
    """``H⁻¹ v = v``. With it, an influence function reduces to Grad-Dot."""

    name: ClassVar[str] = "identity"
    kind: ClassVar[str] = "solver"
    Config: ClassVar[type] = IdentityConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    space: ClassVar[str] = "feature"

    def __init__(self, config: IdentityConfig):
        self.config = config

    def fit(self, context: FitContext) -> None:
        """Nothing to fit."""

    def solve(self, vectors: torch.Tensor) -> torch.Tensor:
        """Returns ``vectors`` unchanged (``[b, d]``)."""
        return vectors


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [IdentitySolver]
