"""A member's training features, as a :class:`~attrkit.feature_matrix.FeatureMatrix`.

Per example: each training batch's projected gradients become one chunk of a feature
store (computed only when missing, so an on-disk store resumes), by the rank that owns
the batch (:func:`attrkit.distributed.owns`); the matrix holds this rank's chunks, in
memory or — over the memory budget — on disk (a fit without a store spills to a temporary
one: :mod:`attrkit.engine.memory_plan`). Per group (GGDA): one ``group_gradients`` call per
member, projected, held whole.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from attrkit import distributed
from attrkit.context import Member
from attrkit.data import batch_size, to_device
from attrkit.engine.sides import from_factors, gradients, project, training_fn
from attrkit.engine.skips import Skips
from attrkit.errors import DataLoaderError, NonFiniteError
from attrkit.budget import tile_rows
from attrkit.feature_matrix import FeatureMatrix
from attrkit.finite import cause, check_rows, locate
from attrkit.functional.nonfinite import nonfinite_rows
from attrkit.loaders import CheckedLoader
from attrkit.progress import length_of, progress
from attrkit.disk_store import DiskStore, SpillingStore
from attrkit.store import FeatureStore, fingerprint
from attrkit.user_code import user_code_pass

if TYPE_CHECKING:
    from attrkit.engine.attributor import GradientAttributor
    from attrkit.engine.memory_plan import MemoryPlanner
    from attrkit.engine.products import Chooser

__all__ = ["example_features", "group_sum", "grouped_features", "open_store"]


def open_store(
    method: GradientAttributor, store: str | os.PathLike | None, members: list[Member], on_mismatch: str
) -> FeatureStore:
    """A memory store that spills to a temporary disk store over the budget, or the disk store at
    ``store`` keyed by the resolved spec, the members' weights and the loss and target functions
    (the data is checked chunk by chunk)."""
    if store is None:
        return SpillingStore()
    spec = method.resolved.spec.to_dict() if method.resolved is not None else {"method": method.name}
    functions = [method.task.loss_fn, method.task.target]
    return DiskStore(store, fingerprint(spec, [m.state for m in members], functions), on_mismatch)


def _checked_features(
    method: GradientAttributor, member: Member, projector: Any, batch: Any, j: int, offset: int, train: CheckedLoader,
    skips: Skips, products: Chooser | None,
) -> torch.Tensor:
    """``Proj(∇ loss)`` of training batch ``j`` (``Tensor[b, k]``; packed factor rows with structured
    ``products``), its non-finite rows refused or skipped."""
    raw = gradients(method, member, batch, target=False, where=f"training batch {j}", products=products)
    packed = products is not None and products.layout is not None
    if packed and not products.packs_train:  # dense features from the factors
        (feats, raw), packed = from_factors(projector, products.layout, raw), False
    else:
        feats = raw if packed else project(projector, raw)
    fn, task = training_fn(method), method.task

    def explain(row: int) -> str:
        with member.applied(task.model):
            if not packed and isinstance(raw, torch.Tensor) and bool(torch.isfinite(raw[row]).all()):
                found = locate(task.model, fn, member.state, train, task.device)
                why = (f"it was fitted on non-finite data: {found}" if found
                       else "its fit met a singular or ill-conditioned curvature")
                return f"its gradient is finite, but projector {projector.name!r} maps it to non-finite features ({why})"
            return cause(task.model, fn, member.state, to_device(batch, task.device), row)

    bad = check_rows(feats, side="training", batch=j, offset=offset, member=member.label, explain=explain,
                     policy=skips.policy)
    skips.add(offset + int(r) for r in bad)
    return feats


def example_features(
    method: GradientAttributor, index: int, member: Member, projector: Any, train: CheckedLoader,
    chunks: FeatureStore, n_members: int, budget: MemoryPlanner, skips: Skips, products: Chooser | None = None,
) -> FeatureMatrix:
    """Projected per-example training gradients of member ``index``: ``[n_train, k]``, this rank's
    batches (all of them when not distributed), held in memory or, over the budget, on disk.
    With structured ``products`` (:mod:`attrkit.engine.products`) the rows are packed factors.

    Each fresh chunk is checked to be finite before it is stored; with ``nonfinite="skip"``,
    the rows of skipped examples read as 0. Features held in memory that pass the budget
    spill to a temporary store (:meth:`~attrkit.engine.memory_plan.MemoryPlanner.overflow`);
    once a resident matrix is built, the store's in-memory copies are released.

    Raises:
        StoreMismatchError: a stored chunk of another batch, or with another number of rows.
        NonFiniteError: a non-finite training example (``nonfinite="raise"``).
        MemoryBudgetError: the budget cannot hold one tile row.
    """
    desc = f"{method.name}: train features ({member.label}, {index + 1}/{n_members})"
    held, offset, count, nbytes = [], 0, 0, 0
    width, dtype = 0, torch.float32
    for j, batch in enumerate(progress(train, desc, total=length_of(train))):
        size, count = batch_size(batch), j + 1
        if distributed.owns(j):
            if not chunks.has(index, j, data=train.digest(j), rows=size):
                feats = _checked_features(method, member, projector, batch, j, offset, train, skips, products)
                chunks.put(index, j, feats, train.digest(j))
            elif skips.skipping:
                skips.add(offset + int(r) for r in nonfinite_rows(chunks.get(index, j)))
            rows, width, dtype = chunks.meta(index, j)
            held.append((j, offset, size))
            nbytes += n_members * size * width * dtype.itemsize
            if not chunks.on_disk and budget.bytes is not None and nbytes > budget.bytes:
                budget.overflow(j, nbytes)
        offset += size
    ranks = distributed.world()
    if ranks is not None and count < ranks[1]:
        raise DataLoaderError(f"the train loader yielded {count} batches for {ranks[1]} ranks; every rank needs "
                              "at least one: use smaller batches")
    resident = budget.bytes is None or nbytes <= budget.bytes
    matrix = FeatureMatrix.stored(chunks, index, held, n=offset, width=width, dtype=dtype,
                                  device=method.task.device, resident=resident, budget=budget.bytes,
                                  tile_bytes=budget.tile_bytes, release=True)  # the matrix holds a copy
    if not resident:
        tile_rows([matrix] * n_members)  # fail now, not at scoring, when not even one row fits
    return matrix.mapped(skips.zero_rows(offset)) if skips.skipping else matrix


def _with_weights(batches: Iterable[Any], weights: torch.Tensor) -> Iterator[Any]:
    """``(batch, weights[b])`` pairs: each batch with its examples' weights attached."""
    offset = 0
    for batch in batches:
        b = batch_size(batch)
        yield batch, weights[offset : offset + b]
        offset += b


def _group_gradients(
    method: GradientAttributor, member: Member, train: Iterable[Any], weights: torch.Tensor | None,
    groups: torch.Tensor,
) -> torch.Tensor:
    """``Tensor[n_groups, p]``: each group's gradient of its summed (weighted) training-side value."""
    fn = training_fn(method)
    task = copy.copy(method.task)
    task.loss_fn = fn
    if weights is not None:  # the gradient of Σ_{i∈g} q_i f_i, q_i carried along in each batch

        def weighted(model: torch.nn.Module, pair: Any) -> torch.Tensor:
            value = fn(model, pair[0])
            return pair[1].to(value) * value

        task.loss_fn, train = weighted, _with_weights(train, weights)
    with member.applied(method.task.model), user_code_pass(method.task.model, fn, member.state, train):
        grads = method.gradients.group_gradients(task, member, train, groups)
    expected = (int(groups.max()) + 1, method.dimension)
    if tuple(grads.shape) != expected:
        raise DataLoaderError(
            f"gradient source {method.gradients.name!r} returned {tuple(grads.shape)} group gradients, expected "
            f"{expected}"
        )
    return grads


def grouped_features(
    method: GradientAttributor, index: int, member: Member, projector: Any, train: CheckedLoader,
    chunks: FeatureStore, weights: torch.Tensor | None, groups: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Σ_{i∈g} Proj(∇f_i), Σ_{i∈g} q_i Proj(∇f_i))``, both ``Tensor[n_groups, k]``, from group
    gradients (the second is the first without example weights ``q``); stored as chunks 0 and 1.

    Raises:
        NonFiniteError: a group gradient with NaN or infinite entries.
    """
    out, data = [], train.data_digest()
    for j, w in enumerate([None] if weights is None else [None, weights]):
        if not chunks.has(index, j, data=data):
            feats = project(projector, _group_gradients(method, member, train, w, groups))
            bad = nonfinite_rows(feats)
            if len(bad):
                raise NonFiniteError(
                    f"the group gradient of group {int(bad[0])} ({len(bad)} groups in all) is non-finite at "
                    f"member {member.label!r}: one of its examples has a non-finite input or loss; fix or remove it"
                )
            chunks.put(index, j, feats, data)
        out.append(chunks.get(index, j).to(method.task.device))
    return out[0], out[-1]


def group_sum(feats: FeatureMatrix, groups: torch.Tensor, budget: int | None) -> FeatureMatrix:
    """Rows summed per group (held whole on every rank); ``feats`` itself when every group is one example."""
    if torch.equal(groups, torch.arange(groups.numel())):
        return feats
    return FeatureMatrix.whole(feats.sum_rows_by(groups, int(groups.max()) + 1), budget)
