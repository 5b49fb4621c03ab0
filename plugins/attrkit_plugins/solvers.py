"""Feature-space solvers: ``identity`` (``H⁻¹ = I``) and ``gauss-newton`` (``(ΦᵀΦ + λI)⁻¹``)."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch

from attrkit import hookimpl
from attrkit.context import FitContext
from attrkit.errors import NotFittedError
from attrkit.feature_matrix import FeatureMatrix


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
    It streams: ``ΦᵀΦ`` is summed tile by tile (in float64) from ``context.feature_matrix``
    and all-reduced over the ranks of a distributed run, so ``Φ`` is never held whole.

    With ``λ = 0`` and a singular ``ΦᵀΦ`` (``k > n``, or repeated features) it applies the
    pseudo-inverse ``(ΦᵀΦ)⁺``, from the SVD of ``R`` in ``Φ = QR`` (tall-skinny QR over the
    tiles: the singular values and right singular vectors of ``Φ``, without squaring its
    condition number); singular values below ``max(n, k) · eps · s_max`` are dropped,
    ``eps`` of the features' dtype, as ``numpy.linalg.pinv``. Scores ``⟨(ΦᵀΦ)⁺ φ_t, φ_i⟩``
    are then the ``λ → 0`` limit of the damped ones, because every training-side feature
    lies in the row space of ``Φ``.

    Raises:
        ValueError: at ``fit``, when ``λ > 0`` and ``ΦᵀΦ + λI`` is still not numerically
            positive definite; the message says how large ``regularization`` must be.
    """

    name: ClassVar[str] = "gauss-newton"
    kind: ClassVar[str] = "solver"
    Config: ClassVar[type] = GaussNewtonConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()
    space: ClassVar[str] = "feature"
    streams_features: ClassVar[bool] = True

    def __init__(self, config: GaussNewtonConfig):
        self.config = config
        self._factor: torch.Tensor | None = None
        self._basis: torch.Tensor | None = None  # [k, r] right singular vectors, pseudo-inverse path
        self._inverse_squares: torch.Tensor | None = None  # [r] 1 / s²

    def fit(self, context: FitContext) -> None:
        """Factorise ``ΦᵀΦ + λI`` from ``context.feature_matrix`` (else ``context.features``,
        ``[n, k]``), or its pseudo-inverse at ``λ = 0``."""
        phi = context.feature_matrix if context.feature_matrix is not None else FeatureMatrix.whole(context.features)
        n, k = phi.n, phi.width
        rcond = max(n, k) * torch.finfo(phi.dtype).eps
        lam = self.config.regularization
        gram = phi.gram(torch.float64)
        kernel = gram + lam * torch.eye(k, dtype=gram.dtype, device=gram.device)
        factor, info = torch.linalg.cholesky_ex(kernel)
        if not info.item() and (lam > 0 or k <= n):
            self._factor, self._basis, self._inverse_squares = factor, None, None
            return
        if lam > 0:
            smallest = torch.linalg.eigvalsh(kernel)[0].item()
            raise ValueError(
                f"gauss-newton: ΦᵀΦ + λI is not positive definite (smallest eigenvalue {smallest:.3g} with "
                f"{n} training rows and k = {k} features); set solver.regularization > "
                f"{max(-smallest, 0.0) + lam:.3g}"
            )
        _, values, vh = torch.linalg.svd(phi.r_factor(torch.float64), full_matrices=False)
        keep = values > rcond * values.max().clamp_min(torch.finfo(values.dtype).tiny)
        self._factor, self._basis, self._inverse_squares = None, vh[keep].T, values[keep] ** -2

    def solve(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, k] -> Tensor[b, k]``, in the input's dtype."""
        if self._factor is None and self._basis is None:
            raise NotFittedError("gauss-newton solver used before fit(context)")
        v = vectors.double().to((self._factor if self._factor is not None else self._basis).device)
        if self._factor is not None:
            out = torch.cholesky_solve(v.T, self._factor).T
        else:
            out = ((v @ self._basis) * self._inverse_squares) @ self._basis.T
        return out.to(device=vectors.device, dtype=vectors.dtype)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [IdentitySolver, GaussNewtonSolver]
