"""Low-rank Arnoldi ``(H + λI)⁻¹`` (Schioppa et al., 2022): top Lanczos eigenpairs, found once.

The build pays for the curvature once (``max_iter`` dataset products: passes of HVPs, or
products of a structured operator cached from one pass,
:mod:`~attrkit.functional.structured_matvec`) and each solve applies the cached eigenpairs to
a block of vectors without touching the training data again. The public form is
:func:`arnoldi_ihvp_at`. See :mod:`attrkit.functional.ihvp` for the family and the cost units.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from attrkit.errors import ArgumentError
from attrkit.functional.curvature import MatVec, lanczos
from attrkit.functional.ihvp import CurvatureError, InverseHVP, prepare_at
from attrkit.functional.structured_factors import gemm_dtype
from attrkit.functional.structured_matvec import curvature_matvec
from attrkit.types import LossFn

__all__ = ["arnoldi_ihvp_at", "arnoldi_low_rank", "restore_arnoldi"]


def _inverse(values: torch.Tensor, vectors: torch.Tensor, regularization: float, eps: float) -> torch.Tensor:
    """``1/(λ_i + λ)`` of the kept eigenpairs, ``0`` for the numerically null ones (pseudo-inverse):
    the diagonal of ``V -> V U diag(·) Uᵀ`` (see :func:`restore_arnoldi`).

    An eigenpair whose damped value ``|λ_i + λ|`` is at most ``len(U) · eps · max|λ_j|``
    (the round-off of eigenvalues from products computed with machine epsilon ``eps``) is
    numerically null: it is dropped like the orthogonal complement of ``U`` (mapped to 0),
    never inverted (``1/round-off`` would swamp the result).

    Raises:
        CurvatureError: some ``λ_i + λ`` below ``-`` that round-off (an indefinite ``H + λI``).
    """
    damped = values + regularization
    noise = max(len(vectors), len(values)) * eps * float(values.abs().max()) if len(values) else 0.0
    if (damped < -noise).any():
        worst = float(values.min())
        raise CurvatureError(f"eigenvalue + regularization = {worst + regularization:.3g} <= 0 among the {len(values)} "
                             f"kept eigenpairs, which cannot be inverted: set regularization > {-worst:.3g}, keep a "
                             "smaller rank, or use a positive semi-definite curvature such as Gauss-Newton")
    kept = damped > noise
    return torch.where(kept, 1.0 / torch.where(kept, damped, 1.0), 0.0)


def restore_arnoldi(state: Mapping[str, Any]) -> MatVec:
    """``V -> V U diag(inverse) Uᵀ`` (rows): the solve of :func:`arnoldi_ihvp_at`, from its state
    ``{"basis": U, "inverse": 1/(λ_i + λ)}`` (``Tensor[p, rank]``, ``Tensor[rank]``), as built or as saved."""
    vectors, inverse = state["basis"], state["inverse"]

    def apply(rows: torch.Tensor) -> torch.Tensor:
        coefficients = rows.to(device=vectors.device, dtype=vectors.dtype) @ vectors
        return ((coefficients * inverse) @ vectors.T).to(device=rows.device, dtype=rows.dtype)

    return apply


def arnoldi_low_rank(state: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, w)``, the solve of :func:`restore_arnoldi` as ``v -> U diag(w) Uᵀ v`` (``InverseHVP.low_rank``)."""
    return state["basis"], state["inverse"]


def _clamped_rank(rank: int, max_iter: int, p: int) -> tuple[int, int]:
    """``(min(rank, p), min(max_iter, p))``: what Lanczos can deliver on ``p`` coordinates.

    At ``rank >= p`` every eigenpair is kept and the low-rank inverse is the exact one.

    Raises:
        ValueError: ``rank < 1`` or ``rank > max_iter`` (one Lanczos step per eigenpair at least).
    """
    if not 1 <= rank <= max_iter:
        raise ArgumentError(f"rank must be between 1 and max_iter = {max_iter} (one Lanczos step per eigenpair at "
                         f"least), got rank={rank} with max_iter={max_iter}, p={p}")
    return min(rank, p), min(max_iter, p)


def arnoldi_ihvp_at(
    model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], *, regularization: float = 0.0, curvature: str = "hessian", rank: int = 50,
    max_iter: int = 100, seed: int = 0, matvec: str = "auto",
) -> InverseHVP:
    """Low-rank ``(H + λI)⁻¹ ≈ U (Λ + λI)⁻¹ Uᵀ`` on the top eigenpairs (Schioppa et al., 2022).

    :func:`~attrkit.functional.curvature.lanczos` finds the ``rank`` largest eigenvalues
    ``Λ`` and eigenvectors ``U`` (``Tensor[p, rank]``, float64) of the dataset curvature. As
    in the Arnoldi influence-function paper, the orthogonal complement of ``U`` is dropped
    (mapped to 0, not to ``v/λ``): exact only at ``rank = p``.

    ``rank`` and ``max_iter`` are clamped to ``p`` without a warning, so that the default
    (rank 50, 100 iterations) runs on any model: on a model with ``p <= rank`` parameters
    every eigenpair is kept and the result is the exact ``(H + λI)⁻¹`` on the full space
    (what the user asked for, only better), equal to
    :func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`'s up to round-off.

    Kept eigenpairs whose damped value ``λ_i + λ`` is numerically zero (within
    ``max(p, rank) · eps · max|λ_j|``, ``eps`` of the products' dtype (the parameters', or
    float32 for the structured products of a float32 model): e.g. the null space
    of a Gauss-Newton matrix at ``λ = 0``) are dropped like the complement: the
    pseudo-inverse, never ``1/round-off``.

    Args:
        model, loss_fn, state, names, batches, regularization, curvature: as
            :func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`.
        rank: eigenpairs kept, ``1 <= rank <= max_iter``; clamped to ``p``.
        max_iter: Lanczos iterations (``2 rank + 20`` is usual; ``p`` gives exact pairs);
            clamped to ``p``.
        seed: fixes the Lanczos start vector.
        matvec: how the curvature products are taken: ``"auto"`` (default), ``"hvp"`` or
            ``"structured"``, as :func:`~attrkit.functional.ihvp_cg.cg_ihvp_at`'s.

    Returns:
        :class:`InverseHVP`; ``stats.info`` holds the ``largest_eigenvalue`` (a safe
        LiSSA ``scale`` exceeds it plus ``λ``) and ``smallest_eigenvalue`` kept, undamped,
        the ``rank`` used (after clamping), ``structured`` (``1.0`` when the structured
        operator was used) and ``hessian_probe`` when its probe ran. Build:
        ``min(max_iter, p)`` products of one vector (``n`` example-HVPs each): HVP passes,
        or one pass to cache the structured operator (plus the Hessian probe's, see
        :func:`~attrkit.functional.ihvp_cg.cg_ihvp_at`) and ``4 n p`` flops of GEMMs each;
        ``min(max_iter, p) × p`` float64 memory. Solve: ``4 m p rank`` flops, no pass.

    Raises:
        CurvatureError: a kept ``λ_i + λ < 0`` beyond round-off (the message gives the
            ``regularization`` needed), or ``matvec="structured"`` where it does not apply.
        ValueError: ``rank`` outside ``[1, max_iter]``, ``matvec`` not one of ``"auto"``,
            ``"hvp"``, ``"structured"``.
        DataLoaderError: ``batches`` empty or a one-shot iterator.
    """
    started = time.perf_counter()
    meter, p = prepare_at(state, names, batches, regularization, curvature)
    rank, max_iter = _clamped_rank(rank, max_iter, p)
    product, info = curvature_matvec(meter, model, loss_fn, state, names, curvature, matvec, "arnoldi")
    values, basis = lanczos(product, p, rank, max_iter, seed, device=state[names[0]].device,
                            desc="arnoldi: Lanczos iterations")
    products = gemm_dtype(model, state, names) if info["structured"] else state[names[0]].dtype
    inverse = _inverse(values, basis, regularization, torch.finfo(products).eps)
    saved = {"basis": basis, "inverse": inverse}
    info.update(largest_eigenvalue=float(values.max()), smallest_eigenvalue=float(values.min()), rank=rank)
    return InverseHVP(restore_arnoldi(saved), p, meter, started, info, name="arnoldi", state=saved,
                      low_rank=arnoldi_low_rank(saved))
