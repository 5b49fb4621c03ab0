"""Block conjugate gradients for ``(H + λI)⁻¹``: iterate per solve, nothing factorised.

Each solve runs CG on the curvature products of the block of vectors, all ``m`` vectors
together: one dataset pass of HVPs per iteration, or, where the layer structure applies, one
product of a structured operator cached from a single pass
(:mod:`~attrkit.functional.structured_matvec`). The public form is :func:`cg_ihvp_at`;
:func:`cg_solve` is the algorithm it runs, on a matvec. See :mod:`attrkit.functional.ihvp`
for the family and the cost units.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from attrkit.errors import ArgumentError, ConvergenceWarning
from attrkit.functional.curvature import MatVec
from attrkit.functional.ihvp import (
    CurvatureError,
    InverseHVP,
    check_block,
    check_regularization,
    prepare_at,
)
from attrkit.functional.ihvp_kfac import ekfac_solve, kfac_solve
from attrkit.functional.kfac_factors import fit_ekfac, fit_kfac
from attrkit.functional.structured_factors import gemm_dtype
from attrkit.functional.structured_matvec import curvature_matvec
from attrkit.progress import progress
from attrkit.types import LossFn

__all__ = ["PRECONDITIONERS", "cg_ihvp_at", "cg_solve"]

#: ``preconditioner=`` values of :func:`cg_ihvp_at`.
PRECONDITIONERS = ("none", "kfac", "ekfac")


def _block_cg(
    matvec: MatVec, vectors: torch.Tensor, regularization: float, max_iter: int, tol: float,
    precondition: MatVec | None = None,
) -> tuple[torch.Tensor, int, float, int]:
    """Block CG, preconditioned by ``precondition`` (``M⁻¹``, symmetric positive definite) when given;
    returns ``(solutions, iterations, max relative residual, rows not converged)``.

    A row has converged when its (recursively updated) residual ``r`` is at most ``tol`` times
    its right-hand side's norm (the residual of the system itself, not ``M⁻¹ r``: the same
    stopping rule with or without a preconditioner); the rows still above it when
    ``max_iter`` is reached count as not converged.
    """
    x = torch.zeros_like(vectors)
    residual = vectors.clone()
    direction = vectors.clone() if precondition is None else precondition(residual)
    squares = residual.square().sum(1)
    weights = squares if precondition is None else (residual * direction).sum(1)  # rᵀ M⁻¹ r
    targets = (tol * vectors.norm(dim=1)).square()
    active = squares > targets
    iterations = 0
    for _ in progress(range(max_iter), "cg: iterations"):
        if not bool(active.any()):
            break
        rows = active.nonzero().squeeze(1)
        whole = len(rows) == len(active)  # every row active: update in place, no gathered copies
        d = direction if whole else direction[rows]
        product = matvec(d) + regularization * d
        curvature = (d * product).sum(1)
        if bool((curvature <= 0).any()):
            quotient = float((curvature / d.square().sum(1)).min())
            raise CurvatureError(
                f"CG met a direction with dᵀ(H + λI)d <= 0 (Rayleigh quotient {quotient:.3g}): "
                f"H + λI is not positive definite; set regularization > {regularization - quotient:.3g} or use a "
                "positive semi-definite curvature such as Gauss-Newton"
            )
        step = weights[rows] / curvature
        if whole:
            x += step[:, None] * d
            new = residual.sub_(step[:, None] * product)
        else:
            x[rows] += step[:, None] * d
            new = residual[rows] - step[:, None] * product
        new_squares = new.square().sum(1)
        if precondition is None:
            following, ratio = new, new_squares / squares[rows]
        else:
            following = precondition(new)
            new_weights = (new * following).sum(1)
            ratio = new_weights / weights[rows]
            weights[rows] = new_weights
        if whole:  # d is direction itself: the next direction overwrites it
            direction.mul_(ratio[:, None]).add_(following)
        else:
            direction[rows] = following + ratio[:, None] * d
            residual[rows] = new
        squares[rows] = new_squares
        active[rows] = new_squares > targets[rows]
        iterations += 1
    norms = vectors.norm(dim=1)
    relative = torch.where(norms > 0, squares.sqrt() / norms.clamp_min(torch.finfo(norms.dtype).tiny), 0.0)
    return x, iterations, float(relative.max()) if len(relative) else 0.0, int(active.sum())


def _not_converged(where: str, max_iter: int, tol: float, regularization: float, residual: float, rows: int,
                   total: int) -> str:
    """The :class:`ConvergenceWarning` message of a CG solve stopped at ``max_iter``."""
    return (f"{where} stopped at max_iter={max_iter} with {rows} of {total} vectors above tol={tol:g}: max relative "
            f"residual ‖v - (H + λI)x‖/‖v‖ = {residual:.3g}, so the inverse-HVPs (and the scores built on them) are "
            f"approximate. Raise max_iter, raise regularization (now {regularization:g}; a better-conditioned "
            "H + λI converges in fewer iterations), or use a direct solver: explicit, arnoldi or ekfac")


def _preconditioner(
    kind: str, model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], regularization: float,
) -> MatVec | None:
    """``M⁻¹``: ``(F + λI)⁻¹`` of the K-FAC or EK-FAC factors fitted on ``batches`` now, or ``None`` for ``"none"``.

    Its rotations run in :func:`~attrkit.functional.structured_factors.gemm_dtype` (float32 for a
    float32 model whose state is float64): a preconditioner changes how fast CG converges, not
    what to, and CG's own recurrences stay in the vectors' dtype."""
    if kind == "none":
        return None
    fit, solve = (fit_kfac, kfac_solve) if kind == "kfac" else (fit_ekfac, ekfac_solve)
    factors = fit(model, loss_fn, state, names, batches)
    dtype = gemm_dtype(model, state, names)

    def apply(rows: torch.Tensor) -> torch.Tensor:
        try:
            return solve(factors, rows.to(dtype), regularization).to(rows.dtype)
        except CurvatureError as exc:
            raise CurvatureError(f"cg's preconditioner: {exc}") from None

    return apply


def _check_cg(max_iter: int, tol: float) -> None:
    """Refuse CG settings that make no sense."""
    if max_iter < 1 or not tol >= 0:
        raise ArgumentError(f"CG needs max_iter >= 1 and tol >= 0, got max_iter={max_iter}, tol={tol}")


def cg_solve(
    matvec: MatVec, vectors: torch.Tensor, *, regularization: float = 0.0, max_iter: int = 100, tol: float = 1e-6,
    warn: bool = True,
) -> torch.Tensor:
    """``(A + λI)⁻¹ v`` for every row of ``vectors`` by conjugate gradients, all rows at once:
    the algorithm on a matvec that :func:`cg_ihvp_at` runs (a module-level helper, not
    exported from :mod:`attrkit.functional`).

    Each row runs its own CG (its own step sizes) and stops when its residual
    ``‖v - (A + λI) x‖ <= tol ‖v‖``; every iteration calls ``matvec`` once, on the block
    of the rows still running. CG needs ``A + λI`` symmetric positive definite; in exact
    arithmetic it is exact after ``p`` iterations.

    Args:
        matvec: ``Tensor[k, p] -> Tensor[k, p]``, the symmetric ``A`` applied to rows.
        vectors: ``Tensor[m, p]``, one right-hand side per row.
        regularization: damping ``λ >= 0``.
        max_iter: most iterations (``matvec`` calls).
        tol: relative residual at which a row stops.
        warn: issue a :class:`~attrkit.errors.ConvergenceWarning` when some row is still
            above ``tol`` after ``max_iter`` iterations (one per call).

    Returns:
        ``Tensor[m, p]``, in the dtype of ``vectors`` (CG runs in it). Cost: at most
        ``max_iter`` calls of ``matvec``.

    Raises:
        CurvatureError: a direction with ``dᵀ(A + λI)d <= 0`` (not positive definite).

    Warns:
        ConvergenceWarning: ``warn`` and a row not converged; the message gives
            ``max_iter``, ``tol``, the largest relative residual reached and the fixes.
    """
    check_block(vectors)
    check_regularization(regularization)
    _check_cg(max_iter, tol)
    x, _, residual, rows = _block_cg(matvec, vectors, regularization, max_iter, tol)
    if warn and rows:
        message = _not_converged("cg_solve", max_iter, tol, regularization, residual, rows, len(vectors))
        warnings.warn(message, ConvergenceWarning, stacklevel=2)
    return x


def cg_ihvp_at(
    model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], *, regularization: float = 0.0, curvature: str = "hessian", max_iter: int = 10,
    tol: float = 1e-6, matvec: str = "auto", preconditioner: str = "none",
) -> InverseHVP:
    """``(H + λI)⁻¹`` of the mean training loss by block CG on dataset curvature products.

    Every CG iteration is one curvature product of the whole block of still-running vectors:
    with ``matvec="hvp"`` a pass over ``batches`` of HVPs; with the structured operator
    (:mod:`~attrkit.functional.structured_matvec`), GEMMs on per-example factors cached at
    the build from one pass, the same products to round-off. Truncated CG (small
    ``max_iter``) is the usual influence-function trade-off; ``max_iter = p`` converges.

    Args:
        model, loss_fn, state, names, batches, regularization, curvature: as
            :func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`.
        max_iter: most CG iterations (curvature products) per solve.
        tol: relative residual at which a vector stops.
        matvec: ``"auto"`` (default): the structured operator where it applies (every
            selected parameter in an ``nn.Linear`` / ``nn.Conv1d/2d`` applied once per example,
            ``loss_fn`` calling the model once; for ``"hessian"``, a probe finding it equal to
            Gauss-Newton; its factors within a quarter of the available memory) and ``p`` exceeds
            :data:`~attrkit.functional.structured_matvec.MIN_DIM`, else HVPs; ``"hvp"``; or
            ``"structured"``, which raises where it does not apply.
        preconditioner: ``"none"`` (default), or ``"kfac"`` / ``"ekfac"``: preconditioned CG
            with ``M⁻¹ = (F + λI)⁻¹`` of the Kronecker-factored empirical Fisher
            (:func:`~attrkit.functional.ihvp_kfac.kfac_solve`, :func:`~attrkit.functional.ihvp_kfac.ekfac_solve`),
            fitted at the build (one pass of factored gradients; two for EK-FAC). The
            solution and the stopping rule (``tol`` on ``‖v − (H + λI)x‖``) are the same; a
            preconditioner close to ``H`` reaches them in fewer iterations, at the cost of one
            application per iteration (``O(m (d_in + d_out) d_in d_out)`` flops per layer).

    Returns:
        :class:`InverseHVP`; ``stats.info`` holds the last solve's ``iterations`` and
        ``max_relative_residual``, ``unconverged_solves``, the number of solves so far that
        stopped at ``max_iter`` above ``tol``, ``structured`` (``1.0`` when the structured
        operator is used) and ``hessian_probe`` when its probe ran (as
        :func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`'s). HVP path: build
        nothing; solve of ``m`` vectors: at most ``max_iter`` passes and ``max_iter n m``
        example-HVPs. Structured: build one pass (``C`` hooked forward/backward passes per
        batch; for the Hessian, the probe's first-batch products and one pass of ``Hv``, as
        the explicit solver's) and ``n (Σ d_in + C Σ d_out + C²)`` elements held; solve: no
        pass, at most ``max_iter n m`` example-HVPs counted, each about ``4 p`` flops of GEMMs.

    Raises:
        CurvatureError: ``H + λI`` is not positive definite along a CG direction, or
            ``matvec="structured"`` where it does not apply (the message says why).
        ArgumentError: ``matvec`` not one of ``"auto"``, ``"hvp"``, ``"structured"``.
        DataLoaderError: ``batches`` empty or a one-shot iterator.

    Warns:
        ConvergenceWarning: at the first solve that stops at ``max_iter`` with a vector
            above ``tol`` (naming ``max_iter``, ``tol``, the residual reached and the
            fixes); later solves of the same :class:`InverseHVP` only update ``stats.info``.
    """
    started = time.perf_counter()
    meter, p = prepare_at(state, names, batches, regularization, curvature)
    _check_cg(max_iter, tol)
    if preconditioner not in PRECONDITIONERS:
        raise ArgumentError(f"preconditioner must be one of {', '.join(map(repr, PRECONDITIONERS))}, "
                            f"got {preconditioner!r}")
    product, info = curvature_matvec(meter, model, loss_fn, state, names, curvature, matvec, "cg")
    precondition = _preconditioner(preconditioner, model, loss_fn, state, names, meter, regularization)
    info["unconverged_solves"] = 0

    def apply(vectors: torch.Tensor) -> torch.Tensor:
        x, iterations, residual, rows = _block_cg(product, vectors, regularization, max_iter, tol, precondition)
        info.update(iterations=iterations, max_relative_residual=residual)
        if rows:
            if not info["unconverged_solves"]:
                message = _not_converged("solver cg", max_iter, tol, regularization, residual, rows, len(vectors))
                warnings.warn(message + " (warned once per fitted solver; see its stats.info)", ConvergenceWarning,
                              stacklevel=3)
            info["unconverged_solves"] += 1
        return x

    return InverseHVP(apply, p, meter, started, info, name="cg")


