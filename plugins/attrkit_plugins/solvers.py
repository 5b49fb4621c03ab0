"""Feature-space solvers: ``identity`` (``H⁻¹ = I``) and ``gauss-newton`` (``(ΦᵀΦ + λI)⁻¹``)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from attrkit import hookimpl
from attrkit.context import FitContext
from attrkit.errors import NotFittedError


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


@attrs.frozen(kw_only=True)
class GaussNewtonConfig:
    """Config of ``gauss-newton``.

    Attributes:
        regularization: damping ``λ >= 0`` added as ``λI`` to ``ΦᵀΦ``.
    """

    regularization: float = attrs.field(
        default=0.0, converter=float, validator=attrs.validators.ge(0.0), metadata={"examples": (1e-3, 0.1)}
    )


class GaussNewtonSolver:
    """``v -> (ΦᵀΦ + λI)⁻¹ v`` with ``Φ`` the training features ``[n, k]`` (TRAK's kernel inverse).

    ``Φ`` are the projected training gradients (or group gradients): ``ΦᵀΦ`` is the
    Gauss-Newton / empirical Fisher matrix of the sum of training losses in feature space,
    accumulated over the whole training set and factorised once (Cholesky, ``k³/3`` flops).

    Raises:
        ValueError: at ``fit``, when ``ΦᵀΦ + λI`` is not positive definite (``k > n`` with
            ``λ = 0``): the message says how large ``regularization`` must be.
    """

    name: ClassVar[str] = "gauss-newton"
    kind: ClassVar[str] = "solver"
    Config: ClassVar[type] = GaussNewtonConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    space: ClassVar[str] = "feature"

    def __init__(self, config: GaussNewtonConfig):
        self.config = config
        self._factor: torch.Tensor | None = None

    def fit(self, context: FitContext) -> None:
        """Factorise ``ΦᵀΦ + λI`` from ``context.features`` (``[n, k]``)."""
        phi = context.features.double()
        kernel = phi.T @ phi + self.config.regularization * torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
        factor, info = torch.linalg.cholesky_ex(kernel)
        if info.item():
            smallest = torch.linalg.eigvalsh(kernel)[0].item()
            raise ValueError(
                f"gauss-newton: ΦᵀΦ + λI is not positive definite (smallest eigenvalue {smallest:.3g} with "
                f"{phi.shape[0]} training rows and k = {phi.shape[1]} features); set solver.regularization > "
                f"{max(-smallest, 0.0) + self.config.regularization:.3g}"
            )
        self._factor = factor

    def solve(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, k] -> Tensor[b, k]``, in the input's dtype."""
        if self._factor is None:
            raise NotFittedError("gauss-newton solver used before fit(context)")
        out = torch.cholesky_solve(vectors.double().T.to(self._factor.device), self._factor).T
        return out.to(device=vectors.device, dtype=vectors.dtype)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [IdentitySolver, GaussNewtonSolver]
