"""Feature-space solvers: ``identity`` (``H⁻¹ = I``) and ``gauss-newton`` (``(ΦᵀΦ + λI)⁻¹``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import attrs
import torch

from attrkit.plugin import (
    CurvatureError,
    FeatureMatrix,
    FitContext,
    HessianSolver,
    NonFiniteError,
    NotFittedError,
    StateValue,
    float_field,
    hookimpl,
)
from attrkit.functional.ihvp import check_finite_solve
from attrkit.functional.ihvp_explicit import cholesky_solve_columns

#: How far the pseudo-inverse cut ``rcond²`` must lie above the float64 gram's round-off for the
#: gram's ``eigh`` to give the pseudo-inverse (else the QR of ``Φ``): its smallest kept eigenvalue
#: is then known to 1e-4 relative or better.
_RESOLVED = 1e4


@attrs.frozen(kw_only=True)
class IdentityConfig:
    """``identity`` has no parameters."""


class IdentitySolver(HessianSolver):
    """``H⁻¹ v = v``. With it, an influence function reduces to Grad-Dot."""

    name: ClassVar[str] = "identity"
    Config: ClassVar[type] = IdentityConfig
    space: ClassVar[str] = "feature"
    local_solve: ClassVar[bool] = True
    identity: ClassVar[bool] = True

    def fit(self, context: FitContext) -> None:
        """Nothing to fit."""

    def solve(self, vectors: torch.Tensor) -> torch.Tensor:
        """Returns ``vectors`` unchanged (``[b, d]``)."""
        return vectors

    def state_dict(self) -> dict[str, StateValue]:
        """Nothing is fitted: ``{}``."""
        return {}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Nothing to restore."""


@attrs.frozen(kw_only=True)
class GaussNewtonConfig:
    """Config of ``gauss-newton``.

    Attributes:
        regularization: damping ``λ >= 0`` added as ``λI`` to ``ΦᵀΦ``.
    """

    regularization: float = float_field(0.0, ge=0.0, examples=(1e-3, 0.1))


class GaussNewtonSolver(HessianSolver):
    """``v -> (ΦᵀΦ + λI)⁻¹ v`` with ``Φ`` the training features ``[n, k]`` (TRAK's kernel inverse).

    ``Φ`` are the projected training gradients (or group gradients): ``ΦᵀΦ`` is the
    Gauss-Newton / empirical Fisher matrix of the sum of training losses in feature space,
    accumulated over the whole training set and factorised once (Cholesky, ``k³/3`` flops).
    It streams: ``ΦᵀΦ`` is summed tile by tile (in float64) from ``context.feature_matrix``
    and all-reduced over the ranks of a distributed run, so ``Φ`` is never held whole.

    With ``λ = 0`` and a singular ``ΦᵀΦ`` (``k > n``, repeated features, or the null
    directions every softmax classifier's margin gradients share) it applies the
    pseudo-inverse ``(ΦᵀΦ)⁺``: singular values of ``Φ`` below ``rcond · s_max``,
    ``rcond = max(n, k) · eps`` with ``eps`` of the features' dtype, are dropped, as
    ``numpy.linalg.pinv``. For float32 (or coarser) features that cut, ``e = s² > rcond² · e_max``,
    lies far above the round-off of the float64 gram (``rcond² >= 10⁴ · max(n, k) · eps₆₄``), so the
    pseudo-inverse comes from the gram's ``eigh``, which the rank decision computes anyway.
    Otherwise (float64 features) from the SVD of ``R`` in ``Φ = QR`` (tall-skinny QR over the
    tiles: the singular values and right singular vectors of ``Φ``, without squaring its
    condition number). Scores ``⟨(ΦᵀΦ)⁺ φ_t, φ_i⟩`` are then the ``λ → 0`` limit of the damped
    ones, because every training-side feature lies in the row space of ``Φ``.

    Whether ``ΦᵀΦ`` is singular is read from its spectrum, never from whether a Cholesky
    factorisation happens to succeed (on a numerically singular matrix it often does, and
    ``1/σ²`` of round-off then swamps the scores). At ``λ = 0`` Cholesky is used only when
    every eigenvalue of the float64 gram exceeds ``τ · e_max`` with
    ``τ = max(rcond², max(n, k) · eps₆₄)``, ``rcond = max(n, k) · eps`` (the pinv rule
    above, squared, since ``e = s²``; ``max(n, k) · eps₆₄`` is the round-off of the gram
    itself, below which its eigenvalues say nothing). Otherwise the pseudo-inverse path
    decides the rank with the pinv rule on ``R``: it keeps every direction of a full-rank,
    merely ill-conditioned ``Φ``, so it is the inverse then. The test is first tried on a
    certificate from a Cholesky factor ``L`` (``e_min >= 1/‖L⁻¹‖_F²``, ``e_max <= ‖ΦᵀΦ‖_F``,
    ``k³/3`` flops for ``L⁻¹``): when the bounds clear it, the spectrum would have too, and
    Cholesky is used at once. Otherwise the spectrum costs one ``eigh`` of the ``k × k`` gram
    (about ``9k³`` flops) at ``fit``.

    Raises:
        CurvatureError: at ``fit`` (a ``ValueError``), when ``λ > 0`` and ``ΦᵀΦ + λI`` is still
            not numerically positive definite; the message says how large ``regularization`` must be.
        NonFiniteError: at ``fit``, when ``ΦᵀΦ`` is not finite (features that overflowed).
    """

    name: ClassVar[str] = "gauss-newton"
    Config: ClassVar[type] = GaussNewtonConfig
    space: ClassVar[str] = "feature"
    streams_features: ClassVar[bool] = True
    local_solve: ClassVar[bool] = True

    def __init__(self, config: GaussNewtonConfig):
        super().__init__(config)
        self._factor: torch.Tensor | None = None
        self._basis: torch.Tensor | None = None  # [k, r] right singular vectors, pseudo-inverse path
        self._inverse_squares: torch.Tensor | None = None  # [r] 1 / s²

    def fit(self, context: FitContext) -> None:
        """Factorise ``ΦᵀΦ + λI`` from ``context.feature_matrix`` (else ``context.features``,
        ``[n, k]``), or, at ``λ = 0`` with a numerically singular ``ΦᵀΦ``, its pseudo-inverse.

        Raises:
            CurvatureError: ``λ > 0`` and ``ΦᵀΦ + λI`` is not numerically positive definite.
            NonFiniteError: ``ΦᵀΦ`` holds a NaN or an infinity.
        """
        phi = context.feature_matrix if context.feature_matrix is not None else FeatureMatrix.whole(context.features)
        n, k = phi.n, phi.width
        rcond = max(n, k) * torch.finfo(phi.dtype).eps
        lam = self.config.regularization
        gram = phi.gram(torch.float64)
        if not bool(gram.isfinite().all()):
            raise NonFiniteError(
                f"gauss-newton: ΦᵀΦ of the {n} training features (k = {k}) holds NaN or infinite entries: some "
                "features are not finite or their squares overflow float64; check the training gradients"
            )
        if lam > 0:
            kernel = gram + lam * torch.eye(k, dtype=gram.dtype, device=gram.device)
            factor, info = torch.linalg.cholesky_ex(kernel)
            if not info.item():
                self._factor, self._basis, self._inverse_squares = factor, None, None
                return
            smallest = torch.linalg.eigvalsh(kernel)[0].item()
            raise CurvatureError(
                f"gauss-newton: ΦᵀΦ + λI is not positive definite (smallest eigenvalue {smallest:.3g} with "
                f"{n} training rows and k = {k} features); set solver.regularization > "
                f"{max(-smallest, 0.0) + lam:.3g}, or 0 for the pseudo-inverse"
            )
        round_off = max(n, k) * torch.finfo(torch.float64).eps
        tau = max(rcond**2, round_off)
        factor = None
        if k <= n:
            factor, info = torch.linalg.cholesky_ex(gram)
            factor = None if info.item() else factor
        if factor is not None:  # the certificate: the spectrum's test passed without computing the spectrum
            eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
            inverse = torch.linalg.solve_triangular(factor, eye, upper=False)
            if float(inverse.square().sum()) * tau * float(torch.linalg.matrix_norm(gram)) < 1.0:
                self._factor, self._basis, self._inverse_squares = factor, None, None
                return
        energies, vectors = torch.linalg.eigh(gram)
        top = float(energies[-1])
        if factor is not None and top > 0 and float(energies[0]) > tau * top:
            self._factor, self._basis, self._inverse_squares = factor, None, None
            return
        if rcond**2 >= _RESOLVED * round_off:  # the gram resolves every direction the cut keeps
            keep = energies > rcond**2 * max(top, torch.finfo(torch.float64).tiny)
            self._factor, self._basis, self._inverse_squares = None, vectors[:, keep], 1.0 / energies[keep]
            return
        _, values, vh = torch.linalg.svd(phi.r_factor(torch.float64), full_matrices=False)
        keep = values > rcond * values.max().clamp_min(torch.finfo(values.dtype).tiny)
        self._factor, self._basis, self._inverse_squares = None, vh[keep].T, values[keep] ** -2

    def solve(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, k] -> Tensor[b, k]``, in the input's dtype.

        Raises:
            NotFittedError: before ``fit``.
            NonFiniteError: finite vectors gave NaN or infinite values (an overflow).
        """
        if self._factor is None and self._basis is None:
            raise NotFittedError("gauss-newton solver used before fit(context)")
        v = vectors.double().to((self._factor if self._factor is not None else self._basis).device)
        if self._factor is not None:
            out = cholesky_solve_columns(self._factor, v.T).T
        else:
            out = ((v @ self._basis) * self._inverse_squares) @ self._basis.T
        return check_finite_solve(self.name, vectors, out.to(device=vectors.device, dtype=vectors.dtype))

    def state_dict(self) -> dict[str, StateValue]:
        """``{"factor": L or None, "basis": V or None, "inverse_squares": 1/s² or None}`` (float64):
        the Cholesky factor of ``ΦᵀΦ + λI``, or the pseudo-inverse's ``V`` and ``1/s²``.

        Raises:
            NotFittedError: before ``fit``.
        """
        if self._factor is None and self._basis is None:
            raise NotFittedError("gauss-newton solver cannot be saved before fit(context)")
        return {"factor": self._factor, "basis": self._basis, "inverse_squares": self._inverse_squares}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Restore the factorisation of :meth:`state_dict`."""
        self._factor, self._basis, self._inverse_squares = state["factor"], state["basis"], state["inverse_squares"]


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [IdentitySolver, GaussNewtonSolver]
