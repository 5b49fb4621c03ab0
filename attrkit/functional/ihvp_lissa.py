"""LiSSA (Agarwal et al., 2017) for ``(H + λI)⁻¹``: a stochastic Neumann series, iterated per solve.

Each step takes the curvature of a fresh random sample of the training data, all ``m``
vectors together. The public form is :func:`lissa_ihvp_at`; :func:`lissa_solve` is the
algorithm it runs, on a (stochastic) matvec. On an exact matvec the series converges
slowly: use CG there. See :mod:`attrkit.functional.ihvp` for the family and the cost units.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from attrkit import distributed
from attrkit.data import batch_size as examples_in
from attrkit.data import to_device
from attrkit.errors import ArgumentError, DataLoaderError
from attrkit.functional.curvature import MatVec
from attrkit.functional.ihvp import (
    CURVATURES,
    CurvatureError,
    InverseHVP,
    check_block,
    check_regularization,
    prepare_at,
)
from attrkit.functional.structured_matvec import Workspace, chosen_operator
from attrkit.progress import progress
from attrkit.types import LossFn

__all__ = ["lissa_ihvp_at", "lissa_solve"]

#: LiSSA stops when an iterate's norm exceeds this many times its bound ``(j + 1) ‖v‖`` on convergent problems.
_BLOW_UP = 100.0


def lissa_solve(
    sample_matvec: MatVec, vectors: torch.Tensor, *, regularization: float = 0.0, depth: int = 500,
    scale: float = 10.0, repeat: int = 1,
) -> torch.Tensor:
    """LiSSA (Agarwal et al., 2017): a stochastic Neumann series for ``(H + λI)⁻¹ v``, rows batched:
    the algorithm on a matvec that :func:`lissa_ihvp_at` runs (a module-level helper, not
    exported from :mod:`attrkit.functional`).

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
        raise ArgumentError(f"LiSSA needs depth >= 1, repeat >= 1 and scale > 0, got {depth}, {repeat}, {scale}")
    norms = vectors.norm(dim=1)
    total = torch.zeros_like(vectors)
    last_step = 0.0
    for run in range(repeat):
        current = vectors.clone()
        for step in progress(range(depth), f"lissa: recursion (run {run + 1}/{repeat})"):
            product = sample_matvec(current)
            previous = current.clone() if step == depth - 1 else None
            # v + (1 - λ/scale) v_j - H_j v_j / scale, in place: three passes over the block
            current.mul_(1 - regularization / scale).sub_(product, alpha=1 / scale).add_(vectors)
            del product
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
    scale: float = 10.0, batch_size: int = 10, seed: int = 0, repeat: int = 1, matvec: str = "auto",
) -> InverseHVP:
    """LiSSA on the mean training loss: curvature of ``batch_size`` random training examples per step.

    The training examples are gathered once from ``batches`` into memory on the parameters'
    device (tensor leaves concatenated; the whole training set is held), or, on the structured
    path (``matvec``), their per-example layer factors are collected in one pass
    (:func:`~attrkit.functional.structured_matvec.chosen_operator`) and each step's product is
    GEMMs on the sampled examples' factors (:meth:`~attrkit.functional.structured_matvec.StructuredMatVec.subset`)
    instead of HVPs: the same samples, the same results to float32 round-off. Each step samples ``batch_size``
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
            :func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`.
        depth: recursion steps per run.
        scale: divides the curvature; must exceed ``λ_max(H) + λ``.
        batch_size: training examples sampled per step, ``1 <= batch_size <= n``.
        seed: seeds the sampling.
        repeat: independent runs averaged.
        matvec: ``"auto"`` (default): the structured products where the layer structure applies
            (as for :func:`~attrkit.functional.ihvp_cg.cg_ihvp_at`: ``p >``
            :data:`~attrkit.functional.structured_matvec.MIN_DIM`, every selected parameter in an
            ``nn.Linear`` / ``nn.Conv`` applied once per example, for ``"hessian"`` a probe finding
            it equal to Gauss-Newton) in a single process, else HVPs; ``"hvp"``; or
            ``"structured"``, refused where it does not apply or in distributed mode.

    Returns:
        :class:`InverseHVP`; ``stats.info`` holds ``structured`` (``1.0`` on the structured path),
        ``hessian_probe`` when the probe ran, and the last solve's ``last_relative_step``,
        the largest ``‖v_depth - v_{depth-1}‖ / ‖v_depth‖`` (see :func:`lissa_solve`: with
        ``batch_size = n`` about the relative error times ``μ/scale``; with sampling it
        stays at the sampling noise, so no convergence warning is derived from it). Build:
        one pass to gather the data. Solve of ``m`` vectors: no pass,
        ``depth × repeat × batch_size × m`` example-HVPs.

    Raises:
        CurvatureError: the iterates diverge (``scale`` too small, or ``H + λI`` indefinite), or
            ``matvec="structured"`` where it does not apply.
        ValueError: ``batch_size`` outside ``[1, n]``, ``matvec`` not one of ``"auto"``, ``"hvp"``,
            ``"structured"``.
        DataLoaderError: ``batches`` empty or a one-shot iterator.
    """
    started = time.perf_counter()
    meter, p = prepare_at(state, names, batches, regularization, curvature)
    unavailable = None if distributed.world() is None else ("LiSSA samples examples that every rank holds, so it "
                                                             "is single-process only")
    operator, info = chosen_operator(meter, model, loss_fn, state, names, curvature, matvec, "lissa", unavailable)
    if operator is None:
        data, n = _gather(meter)
        data = to_device(data, state[names[0]].device)
    else:
        n = operator.examples
    if not 1 <= batch_size <= n:
        raise ArgumentError(f"batch_size (examples sampled per LiSSA step) must be between 1 and n={n}, got {batch_size}")
    product = CURVATURES[curvature]
    world = distributed.world()
    ranks = 1 if world is None else world[1]  # rank r takes part r of every sample

    def apply(vectors: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        workspace = Workspace()  # each step's product is consumed before the next is taken

        def sampled(rows: torch.Tensor) -> torch.Tensor:
            index = torch.randperm(n, generator=generator)[:batch_size]
            meter.example_hvps += batch_size * rows.shape[0]
            if operator is not None:
                return operator.subset(index, workspace)(rows)
            parts = [part for part in index.tensor_split(ranks) if part.numel()]
            samples = [tree_map(lambda t, part=part: t[part.to(t.device)], data) for part in parts]
            return product(model, loss_fn, state, names, samples)(rows)

        out, step = _lissa(sampled, vectors, regularization, depth, scale, repeat)
        info["last_relative_step"] = step
        return out

    return InverseHVP(apply, p, meter, started, info, name="lissa")
