"""``self_influence``: each training example's (or group's) score for itself, streamed over the batches.

Mixed into :class:`~attrkit.gradient_method.GradientAttributor`, whose fitted members,
``groups``, ``normalize``, ``_weights``, ``_guard``, ``_train``, ``_nonfinite``, ``_gradients``,
``_dense``, ``_project``, ``_explainer`` and ``_query_side`` it uses.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from attrkit import distributed
from attrkit.data import batch_size
from attrkit.errors import DataLoaderError
from attrkit.finite import check_rows
from attrkit.functional.scoring import row_dots
from attrkit.loaders import checked
from attrkit.progress import progress

__all__ = ["SelfInfluence"]


def _local_solve(solver: Any) -> bool:
    """Whether ``solver.solve`` reads no training data, so ranks may solve different vectors:
    its ``local_solve`` attribute, by default true of feature-space solvers only."""
    return solver is None or bool(getattr(solver, "local_solve", solver.space == "feature"))


class SelfInfluence:
    """``self_influence`` (a mixin of :class:`~attrkit.gradient_method.GradientAttributor`)."""

    def self_influence(self, train: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n]`` float32 CPU: each training example's score for itself (loss on both sides).

        Streams over ``train`` batch by batch (gradients are recomputed; the stored features
        are not read). With a grouper, ``train`` must be the fitted training set and the
        result is per group: group sums of gradients and features are accumulated
        (``Tensor[n_groups, p]``) and solved at once. In distributed mode each rank takes its
        batches when every solver solves locally (``local_solve``; feature-space solvers
        do), else every rank takes all of them (the solves then run collective passes in
        lock-step); group sums are always split and all-reduced.
        """
        fitted = self._require_fit()
        self._guard.check(self.task)
        train = self._train if self._train is not None and train is self._train.loader else checked(train, "train")
        if not self._pointwise():
            return self._group_self_influence(fitted, train)
        split = all(_local_solve(f.solver) for f in fitted)
        values, offset, count = {}, 0, 0
        for j, batch in enumerate(progress(train, f"{self.name}: self-influence")):
            size, count = batch_size(batch), j + 1
            weights = None
            if self._weights is not None:
                self._check_fitted(offset + size)
                weights = self._weights[offset : offset + size]
            if distributed.owns(j) or not split:
                values[j] = self._batch_self_influence(fitted, batch, weights, j, offset)
            offset += size
        if self._weights is not None:
            self._check_fitted(offset, whole=True)
        return torch.cat(distributed.gather_chunks(values, count) if split else [values[j] for j in range(count)])

    def _check_fitted(self, seen: int, whole: bool = False) -> None:
        """Refuse a ``train`` that is not the fitted training set, after ``seen`` examples (``whole``: all of it).

        Raises:
            DataLoaderError: more (or, with ``whole``, fewer) examples than were fitted.
        """
        n = self.groups.shape[0]
        if seen > n or (whole and seen != n):
            raise DataLoaderError(
                f"self_influence with groups or example weights needs the fitted training set ({n} examples), "
                f"got {'more' if seen > n else seen}"
            )

    def _batch_self_influence(
        self, fitted: list[Any], batch: Any, weights: torch.Tensor | None, index: int, offset: int
    ) -> torch.Tensor:
        """``Tensor[b]`` float32 CPU: self-influence of each example of training batch ``index`` (pointwise).

        Non-finite examples are refused (``nonfinite="raise"``) or score 0 (``"skip"``).
        """
        total = 0.0
        for f in fitted:
            raw = self._dense(self._gradients(f.member, batch, target=False, where=f"training batch {index}"))
            fn = self.task.target if self.train_target else self.task.loss_fn
            bad = check_rows(raw, side="training", batch=index, offset=offset, member=f.member.label,
                             explain=self._explainer(f.member, batch, fn), policy=self._nonfinite)
            if len(bad):
                raw = raw.index_fill(0, bad.to(raw.device), 0.0)
            keys = self._project(f.projector, raw)
            if weights is not None:
                keys = keys * weights.to(keys)[:, None]
            total = total + f.member.weight * row_dots(self._query_side(f, raw), self._train_side(keys))
        return total.float().cpu()

    def _group_self_influence(self, fitted: list[Any], train: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n_groups]`` float32 CPU: each group's score for itself, from group sums of
        gradients and of (weighted) features over ``train`` (this rank's batches, all-reduced)."""
        n_groups, total = int(self.groups.max()) + 1, 0.0
        for f in fitted:
            raw = keys = None
            offset = 0
            for j, batch in enumerate(progress(train, f"{self.name}: self-influence ({f.member.label})")):
                size = batch_size(batch)
                self._check_fitted(offset + size)
                if distributed.owns(j):
                    grads = self._dense(self._gradients(f.member, batch, target=False, where=f"training batch {j}"))
                    check_rows(grads, side="training", batch=j, offset=offset, member=f.member.label,
                               explain=self._explainer(f.member, batch, self.task.loss_fn))
                    feats = self._project(f.projector, grads)
                    if self._weights is not None:
                        feats = feats * self._weights[offset : offset + size].to(feats)[:, None]
                    if raw is None:
                        raw = grads.new_zeros(n_groups, grads.shape[1])
                        keys = feats.new_zeros(n_groups, feats.shape[1])
                    rows = self.groups[offset : offset + size].to(grads.device)
                    raw.index_add_(0, rows, grads)
                    keys.index_add_(0, rows, feats)
                offset += size
            self._check_fitted(offset, whole=True)
            if raw is None:  # this rank owns no batch of a loader with fewer batches than ranks
                raw = torch.zeros(n_groups, self.dimension, dtype=f.train.dtype, device=self.task.device)
                keys = torch.zeros(n_groups, f.train.width, dtype=f.train.dtype, device=self.task.device)
            distributed.sum_over_ranks([raw, keys])
            total = total + f.member.weight * row_dots(self._query_side(f, raw), self._train_side(keys))
        return total.float().cpu()
