"""DataInf (Kwon et al. 2024): a closed-form, layer-wise inverse of the empirical Fisher.

Per layer ``l`` (the selected parameters of one module: a weight and its bias form one
layer), with ``g_i`` the layer's slice of the per-example gradient of the training loss and
``F_l = (1/n) Σ_i g_i g_iᵀ`` the empirical Fisher of the mean loss over the whole training
set, DataInf swaps the inverse and the mean,

    (F_l + λ_l I)⁻¹ v  ≈  (1/n) Σ_i (λ_l I + g_i g_iᵀ)⁻¹ v
                       =  (1/λ_l) (v - (1/n) Σ_i (g_iᵀ v) / (λ_l + ‖g_i‖²) g_i),

the last step exact per term (Sherman–Morrison). Layers are independent (block-diagonal).
The default damping is the paper's (and its reference code's),
``λ_l = 0.1 · (1/(n d_l)) Σ_i ‖g_i‖²`` — a tenth of the mean eigenvalue of ``F_l``
(``trace(F_l) / d_l``), ``d_l`` the layer's number of parameters.

The closed form needs every training gradient at solve time and none of them is kept, so
each solve streams over the training batches again: solve as large a block as possible.

In distributed mode (:mod:`attrkit.distributed`) each rank sums the terms of its shard of
the batches (for the solve and for the default damping) and the sums are all-reduced:
the result is one process's, up to the order of floating-point additions, and every rank
must solve the same vectors in lock-step.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from attrkit import distributed
from attrkit.data import batch_size, to_device
from attrkit.errors import ArgumentError, CurvatureError, DataLoaderError
from attrkit.functional.gradients import per_example_gradients
from attrkit.functional.ihvp import check_finite_solve
from attrkit.progress import length_of, progress
from attrkit.types import LossFn

__all__ = ["DataInfSolve", "datainf_ihvp_at"]

#: Fraction of the mean eigenvalue of ``F_l`` used as the default damping ``λ_l`` (the paper's 0.1).
_DAMPING = 0.1


@attrs.frozen(kw_only=True, eq=False)
class DataInfSolve:
    """DataInf's layer-wise inverse curvature at a point; call it on a block of vectors.

    Built by :func:`datainf_ihvp_at`. It holds the model and the training batches, not the
    training gradients: every call recomputes them, one pass over ``batches``.

    Attributes:
        model: the module ``loss_fn`` calls (its weights are not used or changed).
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, per-example training loss.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        names: selected parameters, in model order: the layout of the vectors.
        batches: the whole training set, re-iterable, read at every call.
        layers: the parameter names of each layer (one module's selected parameters).
        columns: per layer, ``LongTensor[d_l]``, its coordinates in a flattened vector.
        damping: ``Tensor[L]``, ``λ_l`` per layer, in the parameters' dtype.
    """

    model: torch.nn.Module = attrs.field(repr=False)
    loss_fn: LossFn = attrs.field(repr=False)
    state: Mapping[str, torch.Tensor] = attrs.field(repr=False)
    names: tuple[str, ...]
    batches: Iterable[Any] = attrs.field(repr=False)
    layers: tuple[tuple[str, ...], ...]
    columns: tuple[torch.Tensor, ...] = attrs.field(repr=False)
    damping: torch.Tensor

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """``(1/n) Σ_i (λ_l I + g_i g_iᵀ)⁻¹ v`` per layer, for each row of ``vectors``.

        Args:
            vectors: ``Tensor[m, p]``, flattened in ``names`` order (each parameter row-major).

        Returns:
            ``Tensor[m, p]`` in the dtype and on the device of ``vectors`` (computed in the
            parameters'). Cost: one pass of :func:`per_example_gradients` over the training
            set plus ``4 m n p`` flops; memory ``m p`` for the result and ``b p`` per batch.

        Raises:
            ValueError: ``vectors`` is not ``[m, p]``.
            DataLoaderError: the batches yield no example.
            NonFiniteError: finite vectors gave NaN or infinite values (non-finite training
                gradients, or ``1/λ_l`` overflowing).
        """
        p = sum(len(c) for c in self.columns)
        if vectors.dim() != 2 or vectors.shape[1] != p:
            raise ArgumentError(f"expected a block of vectors Tensor[m, {p}], got shape {tuple(vectors.shape)}")
        like = self.damping
        order = torch.cat(self.columns).to(like.device)
        # layers whose columns follow the vectors' own order (every layer's parameters adjacent in ``names``)
        # take no gather: a copy of each batch's [b, p] gradients less
        order = None if torch.equal(order, torch.arange(p, device=order.device)) else order
        sizes = [len(c) for c in self.columns]
        rows = vectors.to(dtype=like.dtype, device=like.device)
        rows = (rows if order is None else rows[:, order]).split(sizes, 1)
        totals = [torch.zeros(v.shape, dtype=v.dtype, device=v.device) for v in rows]
        n = 0
        total = length_of(self.batches) if distributed.world() is None else None
        for batch in progress(distributed.shard(self.batches), "datainf: solve pass", total=total):
            batch = to_device(batch, like.device)
            grads = per_example_gradients(self.model, self.loss_fn, self.state, batch, self.names)
            grads = grads if order is None else grads[:, order]
            for v, total, g, lam in zip(rows, totals, grads.split(sizes, 1), self.damping, strict=True):
                total += ((v @ g.T) / (lam + g.square().sum(1))) @ g
            n += batch_size(batch)
        (n,) = distributed.sum_over_ranks(totals, [n])
        if n == 0:
            raise DataLoaderError("the training batches are empty; pass a re-iterable loader, not a one-shot generator")
        solved = torch.cat([(v - total / n) / lam for v, total, lam in zip(rows, totals, self.damping)], 1)
        out = solved if order is None else torch.empty_like(solved).index_copy_(1, order, solved)
        return check_finite_solve("datainf", vectors, out.to(dtype=vectors.dtype, device=vectors.device))


def datainf_ihvp_at(
    model: torch.nn.Module,
    loss_fn: LossFn,
    state: Mapping[str, torch.Tensor],
    names: Sequence[str],
    batches: Iterable[Any],
    regularization: float | None = None,
) -> DataInfSolve:
    """DataInf's inverse curvature at ``state``, ready to apply to blocks of vectors.

    Args:
        model: the module ``loss_fn`` calls (its weights are not used or changed).
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, per-example training loss.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        names: selected parameters, in model order (``select_parameters``).
        batches: the whole training set, re-iterable (a fixed-order ``DataLoader``).
        regularization: ``λ > 0`` for every layer; ``None`` for the paper's layer-wise
            ``λ_l = 0.1 · mean_i ‖g_i‖² / d_l``, which costs one pass over ``batches`` here.

    Returns:
        :class:`DataInfSolve`: ``Tensor[m, p] -> Tensor[m, p]``, one pass over ``batches``
        per call.

    Raises:
        ValueError: ``regularization <= 0``.
        CurvatureError: (a ``ValueError``) a layer whose default damping is 0 (every
            training gradient vanishes there).
        DataLoaderError: the default damping is asked for and ``batches`` is empty.
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.rpartition(".")[0], []).append(name)
    layers = tuple(tuple(group) for group in groups.values())
    like = state[names[0]]
    starts = dict(zip(names, itertools.accumulate((state[n].numel() for n in names), initial=0)))
    columns = tuple(
        torch.cat([torch.arange(starts[n], starts[n] + state[n].numel(), device=like.device) for n in layer])
        for layer in layers
    )
    if regularization is not None:
        if not regularization > 0:
            raise ArgumentError(f"regularization must be > 0 (DataInf divides by λ), got {regularization}")
        damping = torch.full((len(layers),), float(regularization), dtype=like.dtype, device=like.device)
    else:
        damping = _default_damping(model, loss_fn, state, names, batches, layers, columns)
    return DataInfSolve(model=model, loss_fn=loss_fn, state=state, names=tuple(names), batches=batches,
                        layers=layers, columns=columns, damping=damping)


def _default_damping(model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
                     batches: Iterable[Any], layers: Sequence[Sequence[str]],
                     columns: Sequence[torch.Tensor]) -> torch.Tensor:
    """``λ_l = 0.1 · (1/(n d_l)) Σ_i ‖g_i‖²`` per layer, one pass over ``batches``."""
    like = state[names[0]]
    layer_of = torch.empty(sum(len(c) for c in columns), dtype=torch.long, device=like.device)
    for index, cols in enumerate(columns):
        layer_of[cols] = index
    squares, n = like.new_zeros(len(columns)), 0
    total = length_of(batches) if distributed.world() is None else None
    for batch in progress(distributed.shard(batches), "datainf: default damping pass", total=total):
        batch = to_device(batch, like.device)
        squares.index_add_(0, layer_of, per_example_gradients(model, loss_fn, state, batch, names).square().sum(0))
        n += batch_size(batch)
    (n,) = distributed.sum_over_ranks([squares], [n])
    if n == 0:
        raise DataLoaderError("the training batches are empty; pass a re-iterable loader, not a one-shot generator")
    damping = _DAMPING * squares / (n * torch.tensor([len(c) for c in columns], dtype=like.dtype, device=like.device))
    zero = [", ".join(layer) for layer, lam in zip(layers, damping.tolist()) if not lam > 0]
    if zero:
        raise CurvatureError(f"datainf: the default damping is 0 for layer(s) {zero}: every training gradient vanishes "
                             "there, so its curvature is 0; leave those parameters out of `names` or pass "
                             "regularization > 0")
    return damping
