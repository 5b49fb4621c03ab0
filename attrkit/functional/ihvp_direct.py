"""Factorise once, solve many: explicit ``(H + λI)⁻¹`` by Cholesky, and low-rank Arnoldi.

Both forms pay for the curvature once (``p`` or ``max_iter`` HVPs) and then apply the
cached factor to any block of vectors without touching the training data again. See
:mod:`attrkit.functional.ihvp` for the family, the forms and the cost units.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from attrkit.functional.curvature import MatVec, lanczos
from attrkit.functional.ihvp import (
    CurvatureError,
    InverseHVP,
    check_block,
    check_regularization,
    dataset_matvec,
    function_matvec,
    prepare_at,
)
from attrkit.task import LossFn

__all__ = ["arnoldi_ihvp_at", "explicit_ihvp_at", "explicit_solve", "ihvp_arnoldi", "ihvp_explicit"]

#: Default largest ``p`` for which the explicit ``p × p`` matrix is built (3.2 GB in float64; the build holds two).
MAX_DIM = 20000
#: Identity rows per vmapped HVP call when :func:`ihvp_explicit` builds its Hessian.
_CHUNK = 256


def _factor(damped: torch.Tensor, regularization: float) -> torch.Tensor:
    """Lower Cholesky factor of ``A + λI``, or a ``CurvatureError`` saying how much λ is needed.

    ``damped`` holds the symmetric ``A`` and is overwritten with ``A + λI`` (no extra ``p²``).
    """
    damped.diagonal().add_(regularization)
    factor, info = torch.linalg.cholesky_ex(damped)
    if int(info) == 0:
        return factor
    values = torch.linalg.eigvalsh(damped) - regularization
    low, high = float(values[0]), float(values[-1].abs())
    if low + regularization <= 0:
        fix = f"set regularization > {-low:.3g}"
    else:
        fix = f"it is numerically singular (condition number {high / (low + regularization):.3g}); raise regularization"
    raise CurvatureError(f"H + λI is not positive definite: the smallest eigenvalue of the curvature H is {low:.3g}, "
                         f"so with regularization={regularization:g} that of H + λI is {low + regularization:.3g}; "
                         f"{fix} (or use a positive semi-definite curvature such as Gauss-Newton)")


def _factored(factor: torch.Tensor) -> MatVec:
    """``V -> V (L Lᵀ)⁻¹`` (rows), computed in the factor's dtype, returned in ``V``'s."""

    def apply(vectors: torch.Tensor) -> torch.Tensor:
        rows = vectors.to(device=factor.device, dtype=factor.dtype)
        return torch.cholesky_solve(rows.T, factor).T.to(device=vectors.device, dtype=vectors.dtype)

    return apply


def _check_dim(p: int, max_dim: int, dtype: torch.dtype) -> None:
    """Refuse to build a ``p × p`` matrix above ``max_dim``."""
    if p > max_dim:
        gigabytes = 2 * p * p * torch.empty((), dtype=dtype).element_size() / 1e9
        raise CurvatureError(f"the explicit solver builds a p × p matrix and its factor ({gigabytes:.3g} GB in "
                             f"{dtype}) and p={p} exceeds max_dim={max_dim}: select fewer parameters, use the cg, "
                             "lissa or arnoldi solver, or raise max_dim if that memory is available")


def _assemble(matvec: MatVec, p: int, chunk_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``Tensor[p, p]``: the symmetrised matrix of ``matvec``, ``chunk_size`` identity rows per call."""
    matrix = torch.empty(p, p, dtype=dtype, device=device)
    for start in range(0, p, chunk_size):
        stop = min(start + chunk_size, p)
        rows = torch.zeros(stop - start, p, dtype=dtype, device=device)
        rows[:, start:stop].fill_diagonal_(1.0)
        matrix[start:stop] = matvec(rows).to(dtype)
    for start in range(0, p, chunk_size):  # (M + Mᵀ)/2, one band of rows at a time
        stop = min(start + chunk_size, p)
        band = (matrix[start:stop, :stop] + matrix[:stop, start:stop].T) / 2
        matrix[start:stop, :stop] = band
        matrix[:stop, start:stop] = band.T
    return matrix


def explicit_solve(matrix: torch.Tensor, vectors: torch.Tensor, regularization: float = 0.0) -> torch.Tensor:
    """``(A + λI)⁻¹ v`` for every row of ``vectors``, by Cholesky.

    Args:
        matrix: ``Tensor[p, p]``, symmetric (its lower triangle is used).
        vectors: ``Tensor[m, p]``, one vector per row.
        regularization: damping ``λ >= 0``.

    Returns:
        ``Tensor[m, p]`` in the dtype and on the device of ``vectors``, computed in the
        matrix's dtype. Cost: ``p³/3 + 2 m p²`` flops, memory ``2 p²``.

    Raises:
        CurvatureError: ``A + λI`` is not positive definite (the message gives its smallest
            eigenvalue and the ``regularization`` needed).
        ValueError: shapes that do not match, a negative ``regularization``.
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"matrix must be square Tensor[p, p], got {tuple(matrix.shape)}")
    check_block(vectors, matrix.shape[0])
    check_regularization(regularization)
    return _factored(_factor(matrix.clone(), regularization))(vectors)


def ihvp_explicit(
    fn: Callable[[Any], torch.Tensor], params: Any, vectors: torch.Tensor, *, regularization: float = 0.0,
    max_dim: int = MAX_DIM,
) -> torch.Tensor:
    """``(∇²fn(params) + λI)⁻¹ v`` for every row of ``vectors``, from the full Hessian.

    Args:
        fn: scalar function (``Tensor[]``) of ``params``, written with ``vmap``-able ops.
        params: a tensor or pytree of tensors (``p`` entries, in ``tree_flatten`` order).
        vectors: ``Tensor[m, p]``.
        regularization: damping ``λ >= 0``.
        max_dim: refuse ``p`` above it (the Hessian takes ``p²`` memory).

    Returns:
        ``Tensor[m, p]`` in the dtype of ``vectors``. Cost: ``p`` HVPs (``vmap``-ed 256 at a
        time), a Cholesky in the parameters' dtype; memory ``2 p²``.

    Raises:
        CurvatureError: not positive definite, or ``p > max_dim``.
    """
    matvec, theta = function_matvec(fn, params)
    p = theta.numel()
    check_block(vectors, p)
    _check_dim(p, max_dim, theta.dtype)
    check_regularization(regularization)
    matrix = _assemble(matvec, p, _CHUNK, theta.dtype, theta.device)
    return _factored(_factor(matrix, regularization))(vectors)


def explicit_ihvp_at(
    model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], *, regularization: float = 0.0, curvature: str = "hessian", max_dim: int = MAX_DIM,
    chunk_size: int = 256, dtype: torch.dtype = torch.float64,
) -> InverseHVP:
    """Exact ``(H + λI)⁻¹`` of the mean training loss: build ``H``, factorise once.

    ``H`` is assembled from dataset curvature products of identity rows, ``chunk_size`` at
    a time, symmetrised, damped and Cholesky-factorised; each solve is two triangular solves.

    Args:
        model: the module ``loss_fn`` calls (its weights are not used or changed).
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, per-example training loss.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        names: selected parameters (``select_parameters``), the layout of the vectors.
        batches: the whole training set, re-iterable in a fixed order.
        regularization: damping ``λ >= 0``.
        curvature: ``"hessian"`` or ``"gauss-newton"`` (PSD; ``loss_fn`` must call the
            model once per batch).
        max_dim: refuse ``p`` above it: memory is ``2 p²`` elements of ``dtype``.
        chunk_size: identity rows per dataset pass (memory ``chunk_size`` × one HVP).
        dtype: precision of the matrix and its factor.

    Returns:
        :class:`InverseHVP`. Build: ``ceil(p / chunk_size)`` passes, ``n p`` example-HVPs,
        ``p³/3`` flops. Solve of ``m`` vectors: ``2 m p²`` flops, no pass over the data.

    Raises:
        CurvatureError: ``p > max_dim``, or ``H + λI`` not positive definite (the message
            gives the smallest eigenvalue and the ``regularization`` needed).
        DataLoaderError: ``batches`` empty or a one-shot iterator.
    """
    started = time.perf_counter()
    meter, p = prepare_at(state, names, batches, regularization, curvature)
    _check_dim(p, max_dim, dtype)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    matvec = dataset_matvec(meter, model, loss_fn, state, names, curvature)
    matrix = _assemble(matvec, p, chunk_size, dtype, state[names[0]].device)
    factor = _factor(matrix, regularization)
    del matrix
    return InverseHVP(_factored(factor), p, meter, started, {})


def _low_rank(values: torch.Tensor, vectors: torch.Tensor, regularization: float) -> MatVec:
    """``V -> V U diag(1/(λ_i + λ)) Uᵀ`` (rows), or a ``CurvatureError`` when some ``λ_i + λ <= 0``."""
    damped = values + regularization
    if (damped <= 0).any():
        worst = float(values.min())
        raise CurvatureError(f"eigenvalue + regularization = {worst + regularization:.3g} <= 0 among the {len(values)} "
                             f"kept eigenpairs, which cannot be inverted: set regularization > {-worst:.3g}, keep a "
                             "smaller rank, or use a positive semi-definite curvature such as Gauss-Newton")
    inverse = 1.0 / damped

    def apply(rows: torch.Tensor) -> torch.Tensor:
        coefficients = rows.to(device=vectors.device, dtype=vectors.dtype) @ vectors
        return ((coefficients * inverse) @ vectors.T).to(device=rows.device, dtype=rows.dtype)

    return apply


def _check_rank(rank: int, max_iter: int, p: int) -> None:
    """Refuse a rank Lanczos cannot deliver."""
    if not 1 <= rank <= min(max_iter, p):
        raise ValueError(f"rank must be between 1 and min(max_iter, p) = {min(max_iter, p)} (one Lanczos step per "
                         f"eigenpair at least), got rank={rank} with max_iter={max_iter}, p={p}")


def ihvp_arnoldi(
    fn: Callable[[Any], torch.Tensor], params: Any, vectors: torch.Tensor, *, regularization: float = 0.0,
    rank: int = 50, max_iter: int = 100, seed: int = 0,
) -> torch.Tensor:
    """Low-rank ``U (Λ + λI)⁻¹ Uᵀ v`` on the top-``rank`` eigenpairs of ``∇²fn(params)``.

    Args:
        fn: scalar function (``Tensor[]``) of ``params``, written with ``vmap``-able ops.
        params: a tensor or pytree of tensors (``p`` entries, in ``tree_flatten`` order).
        vectors: ``Tensor[m, p]``.
        regularization: damping ``λ >= 0``.
        rank: eigenpairs kept (largest eigenvalues); the rest of the space is dropped.
        max_iter: Lanczos iterations (HVPs), ``>= rank``; ``p`` makes them exact.
        seed: fixes the Lanczos start vector.

    Returns:
        ``Tensor[m, p]`` in the dtype of ``vectors``. Cost: ``min(max_iter, p)`` HVPs.

    Raises:
        CurvatureError: a kept eigenvalue with ``λ_i + λ <= 0``.
        ValueError: ``rank`` outside ``[1, min(max_iter, p)]``.
    """
    matvec, theta = function_matvec(fn, params)
    p = theta.numel()
    check_block(vectors, p)
    check_regularization(regularization)
    _check_rank(rank, max_iter, p)
    values, basis = lanczos(lambda v: matvec(v[None])[0], p, rank, max_iter, seed, device=theta.device)
    return _low_rank(values, basis, regularization)(vectors)


def arnoldi_ihvp_at(
    model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], *, regularization: float = 0.0, curvature: str = "hessian", rank: int = 50,
    max_iter: int = 100, seed: int = 0,
) -> InverseHVP:
    """Low-rank ``(H + λI)⁻¹ ≈ U (Λ + λI)⁻¹ Uᵀ`` on the top eigenpairs (Schioppa et al., 2022).

    :func:`~attrkit.functional.curvature.lanczos` finds the ``rank`` largest eigenvalues
    ``Λ`` and eigenvectors ``U`` (``Tensor[p, rank]``, float64) of the dataset curvature. As
    in the Arnoldi influence-function paper, the orthogonal complement of ``U`` is dropped
    (mapped to 0, not to ``v/λ``): exact only at ``rank = p``.

    Args:
        model, loss_fn, state, names, batches, regularization, curvature: as
            :func:`~attrkit.functional.ihvp_direct.explicit_ihvp_at`.
        rank: eigenpairs kept, ``1 <= rank <= min(max_iter, p)``.
        max_iter: Lanczos iterations (``2 rank + 20`` is usual; ``p`` gives exact pairs).
        seed: fixes the Lanczos start vector.

    Returns:
        :class:`InverseHVP`; ``stats.info`` holds the ``largest_eigenvalue`` (a safe
        LiSSA ``scale`` exceeds it plus ``λ``) and ``smallest_eigenvalue`` kept, undamped.
        Build: ``min(max_iter, p)`` passes of one vector (``n`` example-HVPs each) and
        ``max_iter × p`` float64 memory. Solve: ``4 m p rank`` flops, no pass.

    Raises:
        CurvatureError: a kept ``λ_i + λ <= 0`` (the message gives the ``regularization`` needed).
        ValueError: ``rank`` outside ``[1, min(max_iter, p)]``.
        DataLoaderError: ``batches`` empty or a one-shot iterator.
    """
    started = time.perf_counter()
    meter, p = prepare_at(state, names, batches, regularization, curvature)
    _check_rank(rank, max_iter, p)
    matvec = dataset_matvec(meter, model, loss_fn, state, names, curvature)
    values, basis = lanczos(matvec, p, rank, max_iter, seed, device=state[names[0]].device)
    apply = _low_rank(values, basis, regularization)
    info = {"largest_eigenvalue": float(values.max()), "smallest_eigenvalue": float(values.min())}
    return InverseHVP(apply, p, meter, started, info)
