"""How ``fit`` gets each member's training features, as a :class:`~attrkit.feature_matrix.FeatureMatrix`.

Per example: each training batch's projected gradients become one chunk of a feature
store (computed only when missing, so an on-disk store resumes), by the rank that owns
the batch (:func:`attrkit.distributed.owns`); the matrix holds this rank's chunks, in
memory or — over the memory budget — on disk. Per group (GGDA): one ``group_gradients``
call per member, projected, held whole. Mixed into
:class:`~attrkit.gradient_method.GradientAttributor`, whose ``task``, ``gradients``,
``groups``, ``train_target``, ``dimension``, ``_budget``, ``_nonfinite``, ``_skip``,
``_gradients`` and ``_project`` it uses.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from attrkit import capabilities, distributed
from attrkit.context import Member
from attrkit.data import batch_size, to_device
from attrkit.errors import DataLoaderError, MemoryBudgetError, NonFiniteError
from attrkit.feature_matrix import FeatureMatrix, tile_rows
from attrkit.finite import cause, check_rows, locate, nonfinite_rows
from attrkit.loaders import CheckedLoader
from attrkit.progress import progress
from attrkit.store import DiskStore, FeatureStore, MemoryStore, fingerprint
from attrkit.user_code import user_code_pass

__all__ = ["TrainFeatures"]


def _with_weights(batches: Iterable[Any], weights: torch.Tensor) -> Iterator[Any]:
    """``(batch, weights[b])`` pairs: each batch with its examples' weights attached."""
    offset = 0
    for batch in batches:
        b = batch_size(batch)
        yield batch, weights[offset : offset + b]
        offset += b


class TrainFeatures:
    """The training-feature steps of ``fit`` (a mixin of :class:`~attrkit.gradient_method.GradientAttributor`)."""

    def _has_group_gradients(self) -> bool:
        """Whether the gradient source computes group gradients (``capabilities.GROUP``)."""
        return capabilities.GROUP in self.gradients.provides and hasattr(self.gradients, "group_gradients")

    def _example_features(
        self, index: int, member: Member, projector: Any, train: CheckedLoader, chunks: FeatureStore, n_members: int
    ) -> FeatureMatrix:
        """Projected per-example training gradients of one member: this rank's batches
        (all of them when not distributed), held in memory or, over the budget, on disk.

        Each fresh chunk is checked to be finite before it is stored (``nonfinite="raise"``:
        an error naming the example; ``"skip"``: its rows join ``self._skip`` and read as 0).

        Raises:
            StoreMismatchError: a stored chunk of another batch, or with another number of rows.
            NonFiniteError: a non-finite training example (``nonfinite="raise"``).
            MemoryBudgetError: features over the budget in a memory store.
        """
        desc = f"{self.name}: train features ({member.label}, {index + 1}/{n_members})"
        held, offset, count, nbytes = [], 0, 0, 0
        width, dtype = 0, torch.float32
        for j, batch in enumerate(progress(train, desc)):
            size, count = batch_size(batch), j + 1
            if distributed.owns(j):
                if not chunks.has(index, j, data=train.digest(j), rows=size):
                    feats = self._checked_features(member, projector, batch, j, offset, train)
                    chunks.put(index, j, feats, train.digest(j))
                elif self._nonfinite == "skip":
                    self._skip.update(offset + int(r) for r in nonfinite_rows(chunks.get(index, j)))
                rows, width, dtype = chunks.meta(index, j)
                held.append((j, offset, size))
                nbytes += n_members * size * width * dtype.itemsize
                if not chunks.on_disk and self._budget is not None and nbytes > self._budget:
                    raise MemoryBudgetError(
                        f"the training features exceed memory_budget={self._budget} bytes in memory ({nbytes} bytes "
                        f"for {n_members} member(s) by batch {j}); pass fit(..., store=<folder>) to keep them on "
                        "disk and stream them, or raise memory_budget"
                    )
            offset += size
        ranks = distributed.world()
        if ranks is not None and count < ranks[1]:
            raise DataLoaderError(f"the train loader yielded {count} batches for {ranks[1]} ranks; every rank needs "
                                  "at least one: use smaller batches")
        resident = self._budget is None or nbytes <= self._budget
        matrix = FeatureMatrix.stored(chunks, index, held, n=offset, width=width, dtype=dtype,
                                      device=self.task.device, resident=resident, budget=self._budget)
        if not resident:
            tile_rows([matrix] * n_members)  # fail now, not at scoring, when not even one row fits
        return matrix.mapped(self._zero_skipped(offset)) if self._nonfinite == "skip" else matrix

    def _checked_features(
        self, member: Member, projector: Any, batch: Any, j: int, offset: int, train: CheckedLoader
    ) -> torch.Tensor:
        """``Proj(∇ loss)`` of training batch ``j`` (``Tensor[b, k]``), its non-finite rows refused or recorded."""
        raw = self._gradients(member, batch, target=False, where=f"training batch {j}")
        feats = self._project(projector, raw)
        fn = self.task.target if self.train_target else self.task.loss_fn

        def explain(row: int) -> str:
            with member.applied(self.task.model):
                if isinstance(raw, torch.Tensor) and bool(torch.isfinite(raw[row]).all()):
                    name = getattr(projector, "name", type(projector).__name__)
                    found = locate(self.task.model, fn, member.state, train, self.task.device)
                    why = (f"it was fitted on non-finite data: {found}" if found
                           else "its fit met a singular or ill-conditioned curvature")
                    return f"its gradient is finite, but projector {name!r} maps it to non-finite features ({why})"
                return cause(self.task.model, fn, member.state, to_device(batch, self.task.device), row)

        bad = check_rows(feats, side="training", batch=j, offset=offset, member=member.label, explain=explain,
                         policy=self._nonfinite)
        self._skip.update(offset + int(r) for r in bad)
        return feats

    def _zero_skipped(self, n: int) -> Any:
        """A row transform setting the rows of skipped examples to 0 (reads the live ``self._skip``)."""
        cache: dict[int, torch.Tensor] = {}

        def zero(tile: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            if not self._skip:
                return tile
            if len(self._skip) not in cache:
                mask = torch.zeros(n, dtype=torch.bool)
                mask[torch.tensor(sorted(self._skip))] = True
                cache.clear()
                cache[len(self._skip)] = mask
            drop = cache[len(self._skip)][rows].to(tile.device)[:, None]
            return torch.where(drop, torch.zeros((), dtype=tile.dtype, device=tile.device), tile)

        return zero

    def _grouped_features(
        self,
        index: int,
        member: Member,
        projector: Any,
        train: CheckedLoader,
        chunks: FeatureStore,
        weights: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ_{i∈g} Proj(∇f_i), Σ_{i∈g} q_i Proj(∇f_i))``, both ``Tensor[n_groups, k]``, from
        group gradients (the second is the first when there are no example weights ``q``).
        Stored as chunks 0 and 1 of the member."""
        out, data = [], train.data_digest()
        for j, w in enumerate([None] if weights is None else [None, weights]):
            if not chunks.has(index, j, data=data):
                feats = self._project(projector, self._group_gradients(member, train, w))
                bad = nonfinite_rows(feats)
                if len(bad):
                    raise NonFiniteError(
                        f"the group gradient of group {int(bad[0])} ({len(bad)} groups in all) is non-finite at "
                        f"member {member.label!r}: one of its examples has a non-finite input or loss; fix or remove it"
                    )
                chunks.put(index, j, feats, data)
            out.append(chunks.get(index, j).to(self.task.device))
        return out[0], out[-1]

    def _group_gradients(self, member: Member, train: Iterable[Any], weights: torch.Tensor | None) -> torch.Tensor:
        """``Tensor[n_groups, p]``: each group's gradient of its summed (weighted) training-side value."""
        fn = self.task.target if self.train_target else self.task.loss_fn
        task = copy.copy(self.task)
        task.loss_fn = fn
        if weights is not None:  # the gradient of Σ_{i∈g} q_i f_i, q_i carried along in each batch

            def weighted(model: torch.nn.Module, pair: Any) -> torch.Tensor:
                value = fn(model, pair[0])
                return pair[1].to(value) * value

            task.loss_fn, train = weighted, _with_weights(train, weights)
        with member.applied(self.task.model), user_code_pass(self.task.model, fn, member.state, train):
            grads = self.gradients.group_gradients(task, member, train, self.groups)
        expected = (int(self.groups.max()) + 1, self.dimension)
        if tuple(grads.shape) != expected:
            raise DataLoaderError(
                f"gradient source {self.gradients.name!r} returned {tuple(grads.shape)} group gradients, expected {expected}"
            )
        return grads

    def _open_store(self, store: str | os.PathLike | None, members: list[Member], on_mismatch: str) -> FeatureStore:
        """A memory store, or the disk store at ``store`` keyed by the spec, the members' weights and the
        loss and target functions (the data is checked chunk by chunk)."""
        if store is None:
            return MemoryStore()
        resolved = getattr(self, "resolved", None)
        spec = resolved.spec.to_dict() if resolved is not None else {"method": self.name}
        functions = [self.task.loss_fn, self.task.target]
        return DiskStore(store, fingerprint(spec, [m.state for m in members], functions), on_mismatch)

    def _pointwise(self) -> bool:
        """Whether every group is the single example of the same index."""
        return torch.equal(self.groups, torch.arange(self.groups.numel()))

    def _group_sum(self, feats: FeatureMatrix) -> FeatureMatrix:
        """Rows summed per group (held whole on every rank); ``feats`` itself when pointwise."""
        if self._pointwise():
            return feats
        return FeatureMatrix.whole(feats.sum_rows_by(self.groups, int(self.groups.max()) + 1), self._budget)
