"""Self-influence: each training example's (or group's) score for itself, streamed over the batches.

    self_influence(method, fit, train) -> Tensor[n]
        per batch and member: raw gradients g (recomputed; the stored features are not read),
        keys = q_i Proj(g) (the training side), score = Σ_m w_m <Precond(Proj(g)), keys>
        (structured products: ‖packed side‖² from the layer factors, engine.products)
        with groups: group sums of g and of the keys over the whole set, solved at once
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from attrkit import distributed
from attrkit.data import batch_size
from attrkit.engine.sides import dense, explainer, gradients, project, query, train_side, training_fn
from attrkit.engine.products import Chooser
from attrkit.engine.state import Fit, FittedMember
from attrkit.errors import DataLoaderError
from attrkit.finite import check_rows
from attrkit.functional.scoring import row_dots
from attrkit.loaders import checked
from attrkit.progress import progress

if TYPE_CHECKING:
    from attrkit.engine.attributor import GradientAttributor

__all__ = ["self_influence"]


def _check_fitted(fit: Fit, seen: int, whole: bool = False) -> None:
    """Refuse a ``train`` that is not the fitted training set, after ``seen`` examples (``whole``: all of it).

    Raises:
        DataLoaderError: more (or, with ``whole``, fewer) examples than were fitted.
    """
    n = fit.groups.shape[0]
    if seen > n or (whole and seen != n):
        raise DataLoaderError(
            f"self_influence with groups or example weights needs the fitted training set ({n} examples), "
            f"got {'more' if seen > n else seen}"
        )


def _batch(
    method: GradientAttributor, fit: Fit, batch: Any, weights: torch.Tensor | None, index: int, offset: int
) -> torch.Tensor:
    """``Tensor[b]`` float32 CPU: self-influence of each example of training batch ``index`` (pointwise).

    Non-finite examples are refused (``nonfinite="raise"``) or score 0 (``"skip"``).
    """
    total = 0.0
    for f in fit.members:
        if f.layout is not None and not f.solved:  # packed rows of raw gradients: ‖side‖² from the factors
            total = total + f.member.weight * _packed(method, fit, f, batch, index, offset)
            continue
        raw = dense(gradients(method, f.member, batch, target=False, where=f"training batch {index}"))
        bad = check_rows(raw, side="training", batch=index, offset=offset, member=f.member.label,
                         explain=explainer(method, f.member, batch, training_fn(method)), policy=fit.policy)
        if len(bad):
            raw = raw.index_fill(0, bad.to(raw.device), 0.0)
        keys = project(f.projector, raw)
        if weights is not None:
            keys = keys * weights.to(keys)[:, None]
        total = total + f.member.weight * row_dots(query(f, raw, method.normalize), train_side(keys, method.normalize))
    return total.float().cpu()


def _packed(method: GradientAttributor, fit: Fit, f: FittedMember, batch: Any, index: int, offset: int) -> torch.Tensor:
    """``Tensor[b]``: ``<side_i, side_i>`` of a structured member's packed rows of training batch ``index``."""
    rows = gradients(method, f.member, batch, target=False, where=f"training batch {index}",
                     products=Chooser.fixed(method, f.layout))
    bad = check_rows(rows, side="training", batch=index, offset=offset, member=f.member.label,
                     explain=explainer(method, f.member, batch, training_fn(method)), policy=fit.policy)
    if len(bad):
        rows = rows.index_fill(0, bad.to(rows.device), 0.0)
    side = f.layout.normalize(rows) if method.normalize else rows
    return f.layout.squared_norms(side)


def _grouped(method: GradientAttributor, fit: Fit, train: Iterable[Any]) -> torch.Tensor:
    """``Tensor[n_groups]`` float32 CPU: each group's score for itself, from group sums of gradients
    and of (weighted) features over ``train`` (this rank's batches, all-reduced)."""
    n_groups, total = int(fit.groups.max()) + 1, 0.0
    for f in fit.members:
        raw = keys = None
        offset = 0
        for j, batch in enumerate(progress(train, f"{method.name}: self-influence ({f.member.label})")):
            size = batch_size(batch)
            _check_fitted(fit, offset + size)
            if distributed.owns(j):
                grads = dense(gradients(method, f.member, batch, target=False, where=f"training batch {j}"))
                check_rows(grads, side="training", batch=j, offset=offset, member=f.member.label,
                           explain=explainer(method, f.member, batch, method.task.loss_fn))
                feats = project(f.projector, grads)
                if fit.weights is not None:
                    feats = feats * fit.weights[offset : offset + size].to(feats)[:, None]
                if raw is None:
                    raw = grads.new_zeros(n_groups, grads.shape[1])
                    keys = feats.new_zeros(n_groups, feats.shape[1])
                rows = fit.groups[offset : offset + size].to(grads.device)
                raw.index_add_(0, rows, grads)
                keys.index_add_(0, rows, feats)
            offset += size
        _check_fitted(fit, offset, whole=True)
        if raw is None:  # this rank owns no batch of a loader with fewer batches than ranks
            raw = torch.zeros(n_groups, method.dimension, dtype=f.train.dtype, device=method.task.device)
            keys = torch.zeros(n_groups, f.train.width, dtype=f.train.dtype, device=method.task.device)
        distributed.sum_over_ranks([raw, keys])
        total = total + f.member.weight * row_dots(query(f, raw, method.normalize), train_side(keys, method.normalize))
    return total.float().cpu()


def self_influence(method: GradientAttributor, fit: Fit, train: Iterable[Any]) -> torch.Tensor:
    """``Tensor[n]`` (or ``[n_groups]``) float32 CPU; see :meth:`GradientAttributor.self_influence`."""
    fit.guard.check(method.task)
    train = fit.train if fit.train is not None and train is fit.train.loader else checked(train, "train")
    if not fit.pointwise:
        return _grouped(method, fit, train)
    split = all(f.solver is None or f.solver.local_solve for f in fit.members)
    values, offset, count = {}, 0, 0
    for j, batch in enumerate(progress(train, f"{method.name}: self-influence")):
        size, count = batch_size(batch), j + 1
        weights = None
        if fit.weights is not None:
            _check_fitted(fit, offset + size)
            weights = fit.weights[offset : offset + size]
        if distributed.owns(j) or not split:
            values[j] = _batch(method, fit, batch, weights, j, offset)
        offset += size
    if fit.weights is not None:
        _check_fitted(fit, offset, whole=True)
    return torch.cat(distributed.gather_chunks(values, count) if split else [values[j] for j in range(count)])
