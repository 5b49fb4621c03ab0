"""Explicit ``(H + λI)⁻¹``: assemble the ``p × p`` curvature, Cholesky-factorise once, solve many.

The build pays for the curvature once and each solve applies the cached factor to a block
of vectors without touching the training data again. The matrix is built either from
dataset curvature products of identity rows (``p`` HVPs per example, any model) or, when
every selected parameter is in a factored layer applied once per example, from its layer
structure in large GEMMs (:mod:`attrkit.functional.explicit_structured`; the same matrix to
round-off, several times faster). The public form is
:func:`explicit_ihvp_at`; :func:`explicit_solve` is the algorithm it runs, on a matrix.
See :mod:`attrkit.functional.ihvp` for the family and the cost units.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from attrkit.errors import ArgumentError, NonFiniteError
from attrkit.functional.curvature import MatVec
from attrkit.functional.explicit_structured import structured_curvature
from attrkit.functional.ihvp import (
    CurvatureError,
    InverseHVP,
    check_block,
    check_regularization,
    dataset_matvec,
    prepare_at,
)
from attrkit.progress import progress
from attrkit.types import LossFn

__all__ = ["cholesky_solve_columns", "explicit_ihvp_at", "explicit_solve", "restore_explicit"]

#: Default largest ``p`` for which the explicit ``p × p`` matrix is built (3.2 GB in float64; the build holds two).
MAX_DIM = 20000
#: ``build=`` values of :func:`explicit_ihvp_at`.
BUILDS = ("auto", "hvp", "structured")


def _factor(damped: torch.Tensor, regularization: float) -> torch.Tensor:
    """Lower Cholesky factor of ``A + λI``, or a ``CurvatureError`` saying how much λ is needed.

    ``damped`` holds the symmetric ``A`` and is overwritten with ``A + λI`` (no extra ``p²``).
    A factorisation that succeeds is not enough: on a numerically singular ``A + λI`` it
    often does, and its solves are then round-off divided by round-off. So the smallest
    eigenvalue is estimated by inverse iteration on the factor (:func:`_looks_singular`,
    a few solves, ``O(p²)``); when it is within a factor 10 of ``p · eps · ‖A + λI‖_F``
    (``eps`` of the matrix's dtype) the spectrum is computed (``eigvalsh``) and ``A + λI``
    is refused when its smallest eigenvalue is at most ``p · eps · λ_max``.
    """
    damped.diagonal().add_(regularization)
    factor, info = torch.linalg.cholesky_ex(damped)
    p, eps = damped.shape[0], torch.finfo(damped.dtype).eps
    if int(info) == 0:
        if not _looks_singular(factor, damped, 10 * p * eps):
            return factor
        values = torch.linalg.eigvalsh(damped)
        if float(values[0]) > p * eps * float(values[-1]):
            return factor
    else:
        values = torch.linalg.eigvalsh(damped)
    if not bool(values.isfinite().all()):
        raise NonFiniteError("H + λI holds NaN or infinite entries: the curvature products are not finite (check the "
                             "model's weights, the training data and the loss scale)")
    values = values - regularization
    low, high = float(values[0]), float(values[-1].abs())
    noise = p * eps * high  # eigenvalues within this of 0 are round-off
    needed = max(-low, 0.0) + noise
    if low < -noise:
        fix = f"set regularization > {needed:.3g}"
    else:
        fix = (f"it is numerically singular (its smallest eigenvalue is within the round-off p·eps·λ_max = "
               f"{noise:.3g} of 0); set regularization > {needed:.3g} (e.g. {1e-3 * high:.3g}, 1e-3 of the largest "
               "eigenvalue)")
    raise CurvatureError(f"explicit solver: H + λI is not positive definite: the smallest eigenvalue of the curvature "
                         f"H is {low:.3g}, so with regularization={regularization:g} that of H + λI is "
                         f"{low + regularization:.3g}; {fix} (or use a positive semi-definite curvature such as "
                         "Gauss-Newton)")


def cholesky_solve_columns(factor: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``(L Lᵀ)⁻¹ B`` for the lower Cholesky factor ``L`` (``Tensor[p, p]``) and ``B`` (``Tensor[p, m]``).

    Two triangular solves. Unlike ``torch.cholesky_solve``, which copies the factor into
    column-major order at every call (``p²`` more memory, and time), these read ``L`` and
    its transposed view in place.
    """
    return torch.linalg.solve_triangular(factor.mT, torch.linalg.solve_triangular(factor, columns, upper=False),
                                         upper=True)


def _looks_singular(factor: torch.Tensor, matrix: torch.Tensor, threshold: float, steps: int = 4) -> bool:
    """Whether ``matrix = L Lᵀ`` (``Tensor[p, p]``) may have ``λ_min <= threshold · ‖matrix‖_F``.

    Inverse iteration from a seeded random start: ``steps`` solves with the factor. Its
    estimate of ``λ_min`` is an upper bound that a (numerically) null direction reaches at
    the first step (it is amplified by ``1/λ_min`` there), so a singular matrix is never
    missed; a ``True`` is to be confirmed by the spectrum. The scale is the Frobenius norm
    (``>= λ_max``), taken without a ``p²`` temporary.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(matrix.shape[0], 1, generator=gen, dtype=matrix.dtype).to(matrix.device)
    for _ in range(steps):
        x = cholesky_solve_columns(factor, x)
        size = x.norm()
        if not bool(size.isfinite()) or float(size) == 0.0:
            return True
        x = x / size
    smallest = 1.0 / float(cholesky_solve_columns(factor, x).norm())
    return not smallest > threshold * float(torch.linalg.vector_norm(matrix))  # Frobenius, no p² temporary


def _factored(factor: torch.Tensor) -> MatVec:
    """``V -> V (L Lᵀ)⁻¹`` (rows), computed in the factor's dtype, returned in ``V``'s."""

    def apply(vectors: torch.Tensor) -> torch.Tensor:
        rows = vectors.to(device=factor.device, dtype=factor.dtype)
        return cholesky_solve_columns(factor, rows.T).T.to(device=vectors.device, dtype=vectors.dtype)

    return apply


def _check_dim(p: int, max_dim: int, dtype: torch.dtype) -> None:
    """Refuse to build a ``p × p`` matrix above ``max_dim``."""
    if p > max_dim:
        gigabytes = 2 * p * p * torch.empty((), dtype=dtype).element_size() / 1e9
        raise CurvatureError(f"the explicit solver builds a p × p matrix and its factor ({gigabytes:.3g} GB in "
                             f"{dtype}) and p={p} exceeds max_dim={max_dim}: select fewer parameters, use the cg, "
                             "lissa or arnoldi solver, or raise max_dim if that memory is available")


def _assemble(matvec: MatVec, p: int, chunk_size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``Tensor[p, p]``: the matrix of ``matvec``, ``chunk_size`` identity rows per call
    (one pass over the data each, under a progress bar); not yet symmetrised."""
    matrix = torch.empty(p, p, dtype=dtype, device=device)
    for start in progress(range(0, p, chunk_size), f"explicit: building the {p} x {p} curvature from HVPs "
                          f"({chunk_size} rows a pass)"):
        stop = min(start + chunk_size, p)
        rows = torch.zeros(stop - start, p, dtype=dtype, device=device)
        rows[:, start:stop].fill_diagonal_(1.0)
        matrix[start:stop] = matvec(rows).to(dtype)
    return matrix


def _symmetrise(matrix: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``matrix`` (``Tensor[p, p]``) set to ``(M + Mᵀ)/2`` in place, one band of ``chunk_size`` rows at a time."""
    p = matrix.shape[0]
    for start in range(0, p, chunk_size):
        stop = min(start + chunk_size, p)
        band = (matrix[start:stop, :stop] + matrix[:stop, start:stop].T) / 2
        matrix[start:stop, :stop] = band
        matrix[:stop, start:stop] = band.T
    return matrix


def explicit_solve(matrix: torch.Tensor, vectors: torch.Tensor, regularization: float = 0.0) -> torch.Tensor:
    """``(A + λI)⁻¹ v`` for every row of ``vectors``, by Cholesky: the algorithm on a matrix
    that :func:`explicit_ihvp_at` runs (a module-level helper, not exported from
    :mod:`attrkit.functional`).

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
        raise ArgumentError(f"matrix must be square Tensor[p, p], got {tuple(matrix.shape)}")
    check_block(vectors, matrix.shape[0])
    check_regularization(regularization)
    return _factored(_factor(matrix.clone(), regularization))(vectors)


def explicit_ihvp_at(
    model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], *, regularization: float = 0.0, curvature: str = "hessian", max_dim: int = MAX_DIM,
    chunk_size: int = 256, dtype: torch.dtype = torch.float64, build: str = "auto",
) -> InverseHVP:
    """Exact ``(H + λI)⁻¹`` of the mean training loss: build ``H``, factorise once.

    ``H`` is built, symmetrised, damped and Cholesky-factorised; each solve is two
    triangular solves. Two builds give the same matrix to round-off:

    - ``"hvp"``: dataset curvature products of identity rows, ``chunk_size`` at a time
      (any model);
    - ``"structured"``: from the layer structure, ``G = (1/N) Σ_i J_iᵀ H_i J_i`` with
      ``J_i = B_i ⊗ ā_i`` per layer, in GEMMs over chunks of examples
      (:mod:`attrkit.functional.explicit_structured`). It needs every selected parameter in
      a factored layer (``nn.Linear``, ``nn.Conv1d/2d``) applied at one position per
      example, and ``loss_fn`` calling the model once. For ``curvature="gauss-newton"`` it
      is exact; for ``"hessian"`` it is used when a probe finds ``H = G`` (outputs linear in
      the selected parameters, e.g. logistic regression: ``‖Hv − Gv‖ <= 1e-4 ‖Hv‖`` for
      float32 parameters, see :func:`~attrkit.functional.structured_factors.probe_tolerance`).

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
        dtype: precision of the matrix and its factor (the structured build's GEMMs run in
            :func:`~attrkit.functional.structured_factors.gemm_dtype`, float32 for a float32 model, and are
            summed into it chunk by chunk).
        build: ``"auto"`` (default): the structured build where it applies and the HVP build
            would take more than one pass (``p > chunk_size``), else the HVP build;
            ``"hvp"``; or ``"structured"``, which raises where it does not apply.

    Returns:
        :class:`InverseHVP`; ``stats.info["structured"]`` is ``1.0`` when the structured build
        was used, ``0.0`` otherwise, and ``stats.info["hessian_probe"]`` the probe's relative
        ``‖Hv − Gv‖/‖Hv‖`` when one ran. HVP build: ``ceil(p / chunk_size)`` passes, ``n p``
        example-HVPs. Structured build: one pass with ``C`` hooked forward/backward passes
        per batch (``C`` outputs per example) and about ``p² n`` flops of GEMMs; for the
        Hessian, the probe adds the first batch's ``Hv`` and ``Gv`` and one pass of ``Hv``,
        of 2 vectors each. Then ``p³/3`` flops to factorise. Solve of
        ``m`` vectors: ``2 m p²`` flops, no pass over the data.

    Raises:
        CurvatureError: ``p > max_dim``, ``H + λI`` not positive definite (the message
            gives the smallest eigenvalue and the ``regularization`` needed), or
            ``build="structured"`` where it does not apply (the message says why).
        ArgumentError: ``build`` not one of ``"auto"``, ``"hvp"``, ``"structured"``.
        DataLoaderError: ``batches`` empty or a one-shot iterator.
    """
    started = time.perf_counter()
    meter, p = prepare_at(state, names, batches, regularization, curvature)
    _check_dim(p, max_dim, dtype)
    if chunk_size < 1:
        raise ArgumentError(f"chunk_size must be >= 1, got {chunk_size}")
    if build not in BUILDS:
        raise ArgumentError(f"build must be one of {', '.join(map(repr, BUILDS))}, got {build!r}")
    matrix, info = None, {}
    if build == "structured" or (build == "auto" and p > chunk_size):
        matrix, reason, info = structured_curvature(meter, model, loss_fn, state, names, curvature, dtype)
        if matrix is None and build == "structured":
            raise CurvatureError(f"explicit solver: build='structured' cannot be used: {reason}. Use build='hvp' (or "
                                 "'auto', which takes the HVP build where the structured one does not apply)")
    info["structured"] = float(matrix is not None)
    if matrix is None:
        matvec = dataset_matvec(meter, model, loss_fn, state, names, curvature)
        matrix = _assemble(matvec, p, chunk_size, dtype, state[names[0]].device)
    factor = _factor(_symmetrise(matrix, chunk_size), regularization)
    del matrix
    return InverseHVP(_factored(factor), p, meter, started, info, name="explicit", state={"factor": factor})


def restore_explicit(state: Mapping[str, Any]) -> MatVec:
    """The solve of a saved :func:`explicit_ihvp_at` (``state``: its ``{"factor": L}``, ``Tensor[p, p]``)."""
    return _factored(state["factor"])
