"""Iterate per solve: block conjugate gradients and LiSSA.

Nothing is factorised: each solve runs its iterations on the curvature products of the
block of vectors, all ``m`` vectors together. See :mod:`attrkit.functional.ihvp` for the
family, the forms and the cost units.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from attrkit import distributed
from attrkit.data import batch_size as examples_in
from attrkit.data import to_device
from attrkit.errors import ConvergenceWarning, DataLoaderError
from attrkit.functional.curvature import MatVec
from attrkit.functional.ihvp import (
    CURVATURES,
    CurvatureError,
    InverseHVP,
    check_block,
    check_regularization,
    dataset_matvec,
    function_matvec,
    prepare_at,
)
from attrkit.types import LossFn

__all__ = ["cg_ihvp_at", "cg_solve", "ihvp_cg", "lissa_ihvp_at", "lissa_solve"]

#: LiSSA stops when an iterate's norm exceeds this many times its bound ``(j + 1) ‖v‖`` on convergent problems.
_BLOW_UP = 100.0


def _block_cg(
    matvec: MatVec, vectors: torch.Tensor, regularization: float, max_iter: int, tol: float
) -> tuple[torch.Tensor, int, float, int]:
    """Block CG; returns ``(solutions, iterations, max relative residual, rows not converged)``.

    A row has converged when its (recursively updated) residual is at most ``tol`` times
    its right-hand side's norm; the rows still above it when ``max_iter`` is reached count
    as not converged.
    """
    x = torch.zeros_like(vectors)
    residual, direction = vectors.clone(), vectors.clone()
    squares = residual.square().sum(1)
    targets = (tol * vectors.norm(dim=1)).square()
    active = squares > targets
    iterations = 0
    while iterations < max_iter and bool(active.any()):
        rows = active.nonzero().squeeze(1)
        d = direction[rows]
        product = matvec(d) + regularization * d
        curvature = (d * product).sum(1)
        if bool((curvature <= 0).any()):
            quotient = float((curvature / d.square().sum(1)).min())
            raise CurvatureError(
                f"CG met a direction with dᵀ(H + λI)d <= 0 (Rayleigh quotient {quotient:.3g}): "
                f"H + λI is not positive definite; set regularization > {regularization - quotient:.3g} or use a "
                "positive semi-definite curvature such as Gauss-Newton"
            )
        step = squares[rows] / curvature
        x[rows] += step[:, None] * d
        new = residual[rows] - step[:, None] * product
        new_squares = new.square().sum(1)
        direction[rows] = new + (new_squares / squares[rows])[:, None] * d
        residual[rows], squares[rows] = new, new_squares
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


def _check_cg(max_iter: int, tol: float) -> None:
    """Refuse CG settings that make no sense."""
    if max_iter < 1 or not tol >= 0:
        raise ValueError(f"CG needs max_iter >= 1 and tol >= 0, got max_iter={max_iter}, tol={tol}")


def cg_solve(
    matvec: MatVec, vectors: torch.Tensor, *, regularization: float = 0.0, max_iter: int = 100, tol: float = 1e-6,
    warn: bool = True,
) -> torch.Tensor:
    """``(A + λI)⁻¹ v`` for every row of ``vectors`` by conjugate gradients, all rows at once.

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
    return _warned_cg("cg_solve", matvec, vectors, regularization, max_iter, tol, warn)


def _warned_cg(
    where: str, matvec: MatVec, vectors: torch.Tensor, regularization: float, max_iter: int, tol: float, warn: bool
) -> torch.Tensor:
    """Check the arguments, run :func:`_block_cg`, warn (as the caller's caller) when a row did not converge."""
    check_block(vectors)
    check_regularization(regularization)
    _check_cg(max_iter, tol)
    x, _, residual, rows = _block_cg(matvec, vectors, regularization, max_iter, tol)
    if warn and rows:
        message = _not_converged(where, max_iter, tol, regularization, residual, rows, len(vectors))
        warnings.warn(message, ConvergenceWarning, stacklevel=3)
    return x


def ihvp_cg(
    fn: Callable[[Any], torch.Tensor], params: Any, vectors: torch.Tensor, *, regularization: float = 0.0,
    max_iter: int = 100, tol: float = 1e-6, warn: bool = True,
) -> torch.Tensor:
    """``(∇²fn(params) + λI)⁻¹ v`` for every row of ``vectors`` by block CG on HVPs.

    Args:
        fn: scalar function (``Tensor[]``) of ``params``, written with ``vmap``-able ops.
        params: a tensor or pytree of tensors (``p`` entries, in ``tree_flatten`` order).
        vectors: ``Tensor[m, p]``.
        regularization, max_iter, tol, warn: as :func:`cg_solve`.

    Returns:
        ``Tensor[m, p]``. Cost: at most ``max_iter`` ``vmap``-ed HVP blocks.

    Raises:
        CurvatureError: ``∇²fn + λI`` is not positive definite along a CG direction.

    Warns:
        ConvergenceWarning: as :func:`cg_solve`.
    """
    matvec, theta = function_matvec(fn, params)
    check_block(vectors, theta.numel())
    return _warned_cg("ihvp_cg", matvec, vectors, regularization, max_iter, tol, warn)


def cg_ihvp_at(
    model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], *, regularization: float = 0.0, curvature: str = "hessian", max_iter: int = 10,
    tol: float = 1e-6,
) -> InverseHVP:
    """``(H + λI)⁻¹`` of the mean training loss by block CG on dataset curvature products.

    Nothing is precomputed: every CG iteration is one pass over ``batches`` for the whole
    block of still-running vectors. Truncated CG (small ``max_iter``) is the usual
    influence-function trade-off; ``max_iter = p`` converges.

    Args:
        model, loss_fn, state, names, batches, regularization, curvature: as
            :func:`~attrkit.functional.ihvp_direct.explicit_ihvp_at`.
        max_iter: most CG iterations (passes) per solve.
        tol: relative residual at which a vector stops.

    Returns:
        :class:`InverseHVP`; ``stats.info`` holds the last solve's ``iterations`` and
        ``max_relative_residual``, and ``unconverged_solves``, the number of solves so far
        that stopped at ``max_iter`` above ``tol``. Build: nothing. Solve of ``m`` vectors:
        at most ``max_iter`` passes, at most ``max_iter n m`` example-HVPs.

    Raises:
        CurvatureError: ``H + λI`` is not positive definite along a CG direction.
        DataLoaderError: ``batches`` empty or a one-shot iterator.

    Warns:
        ConvergenceWarning: at the first solve that stops at ``max_iter`` with a vector
            above ``tol`` (naming ``max_iter``, ``tol``, the residual reached and the
            fixes); later solves of the same :class:`InverseHVP` only update ``stats.info``.
    """
    started = time.perf_counter()
    meter, p = prepare_at(state, names, batches, regularization, curvature)
    _check_cg(max_iter, tol)
    matvec = dataset_matvec(meter, model, loss_fn, state, names, curvature)
    info: dict[str, float] = {"unconverged_solves": 0}

    def apply(vectors: torch.Tensor) -> torch.Tensor:
        x, iterations, residual, rows = _block_cg(matvec, vectors, regularization, max_iter, tol)
        info.update(iterations=iterations, max_relative_residual=residual)
        if rows:
            if not info["unconverged_solves"]:
                message = _not_converged("solver cg", max_iter, tol, regularization, residual, rows, len(vectors))
                warnings.warn(message + " (warned once per fitted solver; see its stats.info)", ConvergenceWarning,
                              stacklevel=3)
            info["unconverged_solves"] += 1
        return x

    return InverseHVP(apply, p, meter, started, info, name="cg")


def lissa_solve(
    sample_matvec: MatVec, vectors: torch.Tensor, *, regularization: float = 0.0, depth: int = 500,
    scale: float = 10.0, repeat: int = 1,
) -> torch.Tensor:
    """LiSSA (Agarwal et al., 2017): a stochastic Neumann series for ``(H + λI)⁻¹ v``, rows batched.

    From ``v_0 = v``, ``v_{j+1} = v + (I - (H_j + λI)/scale) v_j``, with ``H_j`` the
    curvature of a fresh random sample (one ``sample_matvec`` call) at each step; the
    estimate is ``v_depth / scale``, averaged over ``repeat`` runs. With exact curvature
    its error is ``(I - (H + λI)/scale)^(depth+1) (H + λI)⁻¹ v``: below
    ``(1 - μ/scale)^depth`` relatively, ``μ = λ_min(H) + λ``, whenever
    ``scale >= λ_max(H) + λ`` and ``μ > 0``. A too small ``scale`` diverges geometrically.

    Args:
        sample_matvec: ``Tensor[m, p] -> Tensor[m, p]``, the curvature of a new random
            sample at each call (called ``depth × repeat`` times, in order; seed it).
        vectors: ``Tensor[m, p]``.
        regularization: damping ``λ >= 0``.
        depth: steps per run.
        scale: ``> λ_max(H) + λ`` for convergence (of every sample's curvature, to be safe).
        repeat: independent runs averaged.

    Returns:
        ``Tensor[m, p]`` in the dtype of ``vectors``. Cost: ``depth × repeat`` calls.

    Raises:
        CurvatureError: the iterates diverge: a non-finite value, or a norm above 100 ×
            ``(j + 1) ‖v‖`` (on convergent problems ``‖v_j‖ <= (j + 1) ‖v‖``).
    """
    return _lissa(sample_matvec, vectors, regularization, depth, scale, repeat)[0]


def _lissa(
    sample_matvec: MatVec, vectors: torch.Tensor, regularization: float, depth: int, scale: float, repeat: int
) -> tuple[torch.Tensor, float]:
    """:func:`lissa_solve`, also returning the largest relative size of the last step,
    ``max_rows ‖v_depth - v_{depth-1}‖ / ‖v_depth‖`` over the runs (0 for zero rows).

    With exact curvature that step is ``‖(I - (H + λI)/scale)^depth v‖``-sized, the error's
    own scale; with sampled curvature it does not go to 0 (it holds the sampling noise),
    so it is reported, never tested against a tolerance (LiSSA has none).
    """
    check_block(vectors)
    check_regularization(regularization)
    if depth < 1 or repeat < 1 or not scale > 0:
        raise ValueError(f"LiSSA needs depth >= 1, repeat >= 1 and scale > 0, got {depth}, {repeat}, {scale}")
    norms = vectors.norm(dim=1)
    total = torch.zeros_like(vectors)
    last_step = 0.0
    for run in range(repeat):
        current = vectors
        for step in range(depth):
            previous = current
            current = vectors + current - (sample_matvec(current) + regularization * current) / scale
            size = current.norm(dim=1)
            if not bool(size.isfinite().all()) or bool((size > _BLOW_UP * (step + 2) * norms).any()):
                raise CurvatureError(
                    f"LiSSA diverged at step {step + 1} of run {run + 1} (iterate norm {float(size.max()):.3g}, "
                    f"vectors' {float(norms.max()):.3g}): the recursion converges only when scale > λ_max(H) + "
                    f"regularization on every sample and H + λI is positive definite; scale={scale:g} is too small: "
                    "increase it (e.g. 10x, or above the top eigenvalue from lanczos), or raise regularization"
                )
        change = (current - previous).norm(dim=1) / size.clamp_min(torch.finfo(size.dtype).tiny)
        last_step = max(last_step, float(change.max()) if len(change) else 0.0)
        total += current / scale
    return total / repeat, last_step


def _gather(batches: Iterable[Any]) -> tuple[Any, int]:
    """The whole training set as one batch (tensor leaves concatenated) and its size."""
    columns: list[list[torch.Tensor]] = []
    spec = None
    for batch in batches:
        leaves, structure = tree_flatten(batch)
        if spec is None:
            spec, columns = structure, [[] for _ in leaves]
        elif structure != spec:
            raise DataLoaderError(f"every training batch must have the same structure to be gathered; got {structure} "
                                  f"after {spec}")
        for column, leaf in zip(columns, leaves):
            column.append(leaf)
    data = tree_unflatten([torch.cat(column) for column in columns], spec)
    return data, examples_in(data)


def lissa_ihvp_at(
    model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], *, regularization: float = 0.0, curvature: str = "hessian", depth: int = 500,
    scale: float = 10.0, batch_size: int = 10, seed: int = 0, repeat: int = 1,
) -> InverseHVP:
    """LiSSA on the mean training loss: curvature of ``batch_size`` random training examples per step.

    The training examples are gathered once from ``batches`` into memory on the parameters'
    device (tensor leaves concatenated; the whole training set is held). Each step samples ``batch_size``
    distinct examples with a ``torch.Generator`` seeded by ``seed`` afresh at each solve,
    so a solve is reproducible and a block gives the rows' results one by one.
    ``batch_size = n`` uses the full curvature at every step (deterministic). See
    :func:`lissa_solve` for the recursion, its convergence (``scale > λ_max(H) + λ``)
    and its error ``(1 - μ/scale)^depth``.

    In distributed mode (:mod:`attrkit.distributed`) every rank draws the same sample and
    computes the curvature product of its part of it (the sample split in as many
    consecutive parts as ranks); the parts are all-reduced, so every rank gets the product
    of the whole sample — exactly what one process computes, up to the order of
    floating-point additions. Every rank holds the whole training set (the sampling needs
    it) and must solve the same vectors in lock-step.

    Args:
        model, loss_fn, state, names, batches, regularization, curvature: as
            :func:`~attrkit.functional.ihvp_direct.explicit_ihvp_at`.
        depth: recursion steps per run.
        scale: divides the curvature; must exceed ``λ_max(H) + λ``.
        batch_size: training examples sampled per step, ``1 <= batch_size <= n``.
        seed: seeds the sampling.
        repeat: independent runs averaged.

    Returns:
        :class:`InverseHVP`; ``stats.info`` holds the last solve's ``last_relative_step``,
        the largest ``‖v_depth - v_{depth-1}‖ / ‖v_depth‖`` (see :func:`lissa_solve`: with
        ``batch_size = n`` about the relative error times ``μ/scale``; with sampling it
        stays at the sampling noise, so no convergence warning is derived from it). Build:
        one pass to gather the data. Solve of ``m`` vectors: no pass,
        ``depth × repeat × batch_size × m`` example-HVPs.

    Raises:
        CurvatureError: the iterates diverge (``scale`` too small, or ``H + λI`` indefinite).
        ValueError: ``batch_size`` outside ``[1, n]``.
        DataLoaderError: ``batches`` empty or a one-shot iterator.
    """
    started = time.perf_counter()
    meter, p = prepare_at(state, names, batches, regularization, curvature)
    data, n = _gather(meter)
    data = to_device(data, state[names[0]].device)
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size (examples sampled per LiSSA step) must be between 1 and n={n}, got {batch_size}")
    product = CURVATURES[curvature]
    world = distributed.world()
    ranks = 1 if world is None else world[1]  # rank r takes part r of every sample
    info: dict[str, float] = {}

    def apply(vectors: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)

        def sampled(rows: torch.Tensor) -> torch.Tensor:
            index = torch.randperm(n, generator=generator)[:batch_size]
            parts = [part for part in index.tensor_split(ranks) if part.numel()]
            samples = [tree_map(lambda t, part=part: t[part.to(t.device)], data) for part in parts]
            meter.example_hvps += batch_size * rows.shape[0]
            return product(model, loss_fn, state, names, samples)(rows)

        out, step = _lissa(sampled, vectors, regularization, depth, scale, repeat)
        info["last_relative_step"] = step
        return out

    return InverseHVP(apply, p, meter, started, info, name="lissa")
