"""The shared score formula of gradient-based methods, as a base class for plugins.

    score(t, i) = Σ_m w_m · < Precond_m(Proj_m(∇ target_t)), Proj_m(∇ loss_i) >

over ensemble members ``m``. Grad-Dot, Grad-Cos (rows normalised), TracIn (weights =
learning rates), influence functions (a solver as ``Precond``) and TRAK are subclasses
that fix the defaults; the parts come from the spec. With a grouper, the training side
is summed per group (gradients are linear), so column ``j`` of the scores is group ``j``;
a gradient source with group gradients computes those sums directly (GGDA). With no
test data, the task's property functions ``g(θ)`` take the place of the test targets.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit import capabilities, distributed
from attrkit.context import FitContext, Member
from attrkit.data import batch_size, check_fixed_order
from attrkit.errors import DataLoaderError, NotFittedError, SpecError
from attrkit.functional.scoring import normalize_rows, row_dots
from attrkit.selection import TopK, check_partition, merge_top_k
from attrkit.parameter_gradients import restrict_gradients
from attrkit.progress import progress
from attrkit.properties import property_gradient
from attrkit.store import DiskStore, FeatureStore, MemoryStore, fingerprint
from attrkit.task import AttributionTask

__all__ = ["GradientAttributor"]


def _count(batches: Iterable[Any]) -> int:
    """Number of examples in ``batches``.

    Raises:
        DataLoaderError: no batch.
    """
    sizes = [batch_size(batch) for batch in batches]
    if not sizes:
        raise DataLoaderError("the train loader yielded no batch")
    return sum(sizes)


def _with_weights(batches: Iterable[Any], weights: torch.Tensor) -> Iterator[Any]:
    """``(batch, weights[b])`` pairs: each batch with its examples' weights attached."""
    offset = 0
    for batch in batches:
        b = batch_size(batch)
        yield batch, weights[offset : offset + b]
        offset += b


@attrs.define
class _Fitted:
    """What ``fit`` keeps per member: its parts, fitted, and its training features."""

    member: Member
    projector: Any
    solver: Any
    train: torch.Tensor  # [n_train or n_groups, k], train-side transform applied


class GradientAttributor:
    """Base class implementing fit / attribute / self_influence for the score formula.

    Subclasses set ``name``, ``Config``, ``slots``, ``defaults`` and ``normalize``.
    Memory: the training features of every member, ``Tensor[n_train, k]`` each.

    With an initialised ``torch.distributed`` process group (:mod:`attrkit.distributed`),
    ``fit`` splits the per-example training features and the solvers' curvature passes
    over the ranks by batch index, and every rank ends with the same fitted state;
    ``attribute`` and ``top_k`` score each rank's block of training columns and gather
    them (or merge the candidates), and ``self_influence`` is computed whole on every
    rank. Every rank returns the same result; all must make the same calls on the same data.

    Args:
        config: the method's config.
        task: the attribution task.
        parts: ``{slot: component}`` resolved by the composer.
    """

    kind: ClassVar[str] = "method"
    requires: ClassVar[frozenset[str]] = frozenset({capabilities.PER_EXAMPLE})
    provides: ClassVar[frozenset[str]] = frozenset()
    slots: ClassVar[frozenset[str]] = frozenset({"gradients", "projector", "grouper", "ensemble"})
    defaults: ClassVar[Mapping[str, str]] = {"gradients": "per-example", "projector": "identity", "grouper": "singleton"}
    #: Cosine instead of dot product: normalise both sides' features to unit length.
    normalize: ClassVar[bool] = False
    #: The training side uses the target's gradients too (TRAK: the margin on both sides).
    train_target: ClassVar[bool] = False

    def __init__(self, config: Any, *, task: AttributionTask, parts: Mapping[str, Any]):
        self.config = config
        self.task = task
        self.gradients = parts["gradients"]
        self.projector = parts.get("projector")
        self.solver = parts.get("solver")
        self.grouper = parts.get("grouper")
        self.ensemble = parts.get("ensemble")
        only = getattr(self.ensemble, "gradient_params", None)
        if only is not None:
            self.gradients = restrict_gradients(self.gradients, only, getattr(self.ensemble, "name", "ensemble"))
        self.dimension = self.gradients.dimension(task)
        #: ``LongTensor[n_train]``: the group of each training example, after ``fit``.
        self.groups: torch.Tensor | None = None
        self._fitted: list[_Fitted] | None = None
        self._weights: torch.Tensor | None = None

    # -- the two sides of the formula -------------------------------------------------

    def _gradients(self, member: Member, batch: Any, target: bool) -> Any:
        """Raw gradients: ``Tensor[b, p]``, or a factored block (with ``shape`` and
        ``materialize()``) from a gradient source that provides factors."""
        fn = self.gradients.target_gradients if target or self.train_target else self.gradients.loss_gradients
        with member.applied(self.task.model):
            grads = fn(self.task, member, batch)
        expected = (batch_size(batch), self.dimension)
        if tuple(grads.shape) != expected:
            raise DataLoaderError(f"gradient source {self.gradients.name!r} returned {tuple(grads.shape)}, expected {expected}")
        return grads

    @staticmethod
    def _dense(grads: Any) -> torch.Tensor:
        return grads if isinstance(grads, torch.Tensor) else grads.materialize()

    def _project(self, projector: Any, grads: Any) -> torch.Tensor:
        """``Proj(g)``; a factored block goes whole only to a projector that ``accepts_factored``."""
        if projector is None:
            return self._dense(grads)
        if not isinstance(grads, torch.Tensor) and not getattr(projector, "accepts_factored", False):
            grads = grads.materialize()
        return projector.project(grads)

    def _query_side(self, fitted: _Fitted, grads: Any) -> torch.Tensor:
        """``Precond(Proj(g))`` for raw gradients ``[b, p]`` -> ``[b, k]``."""
        solver = fitted.solver
        if solver is not None and solver.space == "parameter":
            grads = solver.solve(self._dense(grads))
        feats = self._project(fitted.projector, grads)
        if solver is not None and solver.space == "feature":
            feats = solver.solve(feats)
        return normalize_rows(feats) if self.normalize else feats

    def _train_side(self, feats: torch.Tensor) -> torch.Tensor:
        return normalize_rows(feats) if self.normalize else feats

    # -- public API -------------------------------------------------------------------

    def members(self) -> list[Member]:
        """The ensemble members (the task's checkpoints when no ensemble is given)."""
        return self.ensemble.members(self.task) if self.ensemble is not None else self.task.members()

    def fit(self, train: Iterable[Any], store: str | os.PathLike | None = None) -> GradientAttributor:
        """Compute and keep the training features of every member.

        With a grouper whose partition is not the singletons and a gradient source that
        provides group gradients (``capabilities.GROUP``, e.g. ``group``), groups are
        assigned first (the grouper sees no ``context.features``) and each member's
        grouped training side comes from one ``group_gradients`` call, projected — no
        per-example gradient is formed (GGDA). Per-example weights (TRAK's ``Q``) enter
        as a weighted loss in a second call. Otherwise per-example features are summed
        per group.

        Args:
            train: fixed-order batches (a ``DataLoader`` with ``shuffle=False``).
            store: a folder for a resumable on-disk feature store: each batch's features
                (on the group-gradient path: each member's group features) are written
                atomically, and a rerun after a kill computes only what is missing
                (bit-identical results). ``None`` keeps them in memory.

        Returns:
            ``self``.

        Raises:
            DataLoaderError: a shuffling or empty loader.
            StoreMismatchError: ``store`` holds features of another spec or model.
        """
        check_fixed_order(train, "train")
        fitted = []
        members = self.members()
        chunks = self._open_store(store, members)
        weights = self._weights = self._example_weights(members, train)
        self.groups = None
        groups_first = self.grouper is not None and self._has_group_gradients()
        for index, member in enumerate(members):
            context = FitContext(
                task=self.task, member=member, train=train, gradients=self.gradients, dimension=self.dimension, n_train=0
            )
            projector = self._member_projector(index)
            if projector is not None:
                with member.applied(self.task.model):
                    projector.fit(context)
            if groups_first and self.groups is None:
                self._assign(attrs.evolve(context, n_train=_count(train)))
            if groups_first and not self._pointwise():
                plain, feats = self._grouped_features(index, member, projector, train, chunks, weights)
            else:
                feats = self._example_features(index, member, projector, train, chunks, len(members))
                if self.groups is None:
                    self._assign(attrs.evolve(context, n_train=feats.shape[0], features=feats))
                plain = self._group_sum(feats)
                feats = plain if weights is None else self._group_sum(feats * weights.to(feats)[:, None])
            solver = copy.deepcopy(self.solver)
            if solver is not None:
                with member.applied(self.task.model):
                    solver.fit(attrs.evolve(context, n_train=self.groups.numel(), features=plain))
            fitted.append(_Fitted(member=member, projector=projector, solver=solver, train=self._train_side(feats)))
        self._fitted = fitted
        return self

    def _has_group_gradients(self) -> bool:
        """Whether the gradient source computes group gradients (``capabilities.GROUP``)."""
        return capabilities.GROUP in self.gradients.provides and hasattr(self.gradients, "group_gradients")

    def _assign(self, context: FitContext) -> None:
        """Set ``self.groups`` from the grouper (singletons without one), checked."""
        if self.grouper is None:
            self.groups = torch.arange(context.n_train)
            return
        with context.member.applied(self.task.model):
            groups = self.grouper.assign(context)
        self.groups = check_partition(groups.cpu(), context.n_train, f"grouper {getattr(self.grouper, 'name', '')!r}")

    def _example_features(
        self, index: int, member: Member, projector: Any, train: Iterable[Any], chunks: FeatureStore, n_members: int
    ) -> torch.Tensor:
        """``Tensor[n_train, k]``: projected per-example training gradients of one member.

        In distributed mode each rank computes (and stores) the batches it owns and the
        chunks are gathered, so every rank returns the whole matrix.
        """
        desc = f"{self.name}: train features ({member.label}, {index + 1}/{n_members})"
        count = 0
        for j, batch in enumerate(progress(train, desc)):
            count = j + 1
            if distributed.owns(j) and not chunks.has(index, j):
                chunks.put(index, j, self._project(projector, self._gradients(member, batch, target=False)))
        if not count:
            raise DataLoaderError("the train loader yielded no batch")
        mine = {j: chunks.get(index, j) for j in range(count) if distributed.owns(j)}
        return torch.cat(distributed.gather_chunks(mine, count)).to(self.task.device)

    def _grouped_features(
        self,
        index: int,
        member: Member,
        projector: Any,
        train: Iterable[Any],
        chunks: FeatureStore,
        weights: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Σ_{i∈g} Proj(∇f_i), Σ_{i∈g} q_i Proj(∇f_i))``, both ``Tensor[n_groups, k]``, from
        group gradients (the second is the first when there are no example weights ``q``).
        Stored as chunks 0 and 1 of the member."""
        out = []
        for j, w in enumerate([None] if weights is None else [None, weights]):
            if not chunks.has(index, j):
                chunks.put(index, j, self._project(projector, self._group_gradients(member, train, w)))
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
        with member.applied(self.task.model):
            grads = self.gradients.group_gradients(task, member, train, self.groups)
        expected = (int(self.groups.max()) + 1, self.dimension)
        if tuple(grads.shape) != expected:
            raise DataLoaderError(
                f"gradient source {self.gradients.name!r} returned {tuple(grads.shape)} group gradients, expected {expected}"
            )
        return grads

    def _member_projector(self, index: int) -> Any:
        """A fresh copy of the projector for member ``index``, its ``seed`` (if any) shifted by
        ``index``: members get independent random projections, so ensembling also averages
        the projection noise away (as TRAK does); member 0 keeps the spec's seed."""
        if self.projector is None:
            return None
        config = getattr(self.projector, "config", None)
        if index and config is not None and attrs.has(type(config)) and "seed" in attrs.fields_dict(type(config)):
            return type(self.projector)(attrs.evolve(config, seed=config.seed + index))
        return copy.deepcopy(self.projector)

    def _example_weights(self, members: list[Member], train: Iterable[Any]) -> torch.Tensor | None:
        """``Tensor[n_train]`` multiplying each training example's features (TRAK's Q), or ``None``.

        Applied after the solver is fitted and before the group sum, so the solver sees
        the raw features and a group's column is the sum of its members' weighted columns.
        """
        return None

    def _open_store(self, store: str | os.PathLike | None, members: list[Member]) -> FeatureStore:
        if store is None:
            return MemoryStore()
        resolved = getattr(self, "resolved", None)
        spec = resolved.spec.to_dict() if resolved is not None else {"method": self.name}
        return DiskStore(store, fingerprint(spec, [m.state for m in members]))

    def _pointwise(self) -> bool:
        """Whether every group is the single example of the same index."""
        return torch.equal(self.groups, torch.arange(self.groups.numel()))

    def _group_sum(self, feats: torch.Tensor) -> torch.Tensor:
        if self._pointwise():
            return feats
        n_groups = int(self.groups.max()) + 1
        out = torch.zeros(n_groups, feats.shape[1], dtype=feats.dtype, device=feats.device)
        return out.index_add_(0, self.groups.to(feats.device), feats)

    def _require_fit(self) -> list[_Fitted]:
        if self._fitted is None:
            raise NotFittedError(f"call {type(self).__name__}.fit(train_loader) before attributing")
        return self._fitted

    def attribute(self, test: Iterable[Any] | None = None) -> torch.Tensor:
        """Scores of every training example (or group) for every test example or property.

        Args:
            test: fixed-order test batches; the target is ``task.target``. ``None``
                attributes the task's ``properties`` instead: each property's test side
                is its gradient at the member (see :meth:`property_gradients`).

        Returns:
            ``Tensor[n_test, n_train]`` (``[n_test, n_groups]`` with a grouper; with
            ``test=None``, ``[n_properties, …]`` in the task's order), float32, CPU.
            Positive means the training example is a proponent.

        Raises:
            DataLoaderError: ``test`` is ``None`` and the task declares no properties.
            SpecError: properties with a gradient source that does not name its parameters.
        """
        fitted = self._require_fit()
        cols = distributed.columns(fitted[0].train.shape[0])
        if test is None:
            total = 0.0
            for f in fitted:
                query = self._query_side(f, self.property_gradients(f.member))
                total = total + f.member.weight * (query @ f.train[cols].T)
            return distributed.gather_columns(total.float().cpu())
        check_fixed_order(test, "test")
        rows = []
        for batch in progress(test, f"{self.name}: scoring"):
            total = 0.0
            for f in fitted:
                query = self._query_side(f, self._gradients(f.member, batch, target=True))
                total = total + f.member.weight * (query @ f.train[cols].T)
            rows.append(distributed.gather_columns(total.float().cpu()))
        if not rows:
            raise DataLoaderError("the test loader yielded no batch")
        return torch.cat(rows)

    def property_gradients(self, member: Member) -> torch.Tensor:
        """``Tensor[n_properties, p]``: the gradient of each of the task's properties at ``member``.

        Taken by ``torch.func.grad`` through ``functional_call`` with the member's state,
        w.r.t. the parameters the gradient source selects (``gradients.names(task)``, in
        that order, each flattened), in eval mode and with the member's patch applied.

        Raises:
            DataLoaderError: the task declares no properties (pass ``test`` instead).
            SpecError: the gradient source has no ``names(task)``.
        """
        properties = self.task.properties
        if not properties:
            raise DataLoaderError(
                "attribute() needs test batches, or properties declared on the task: "
                "AttributionTask(..., properties=[attrkit.properties.mean_loss(test_loader, loss_fn)])"
            )
        if not hasattr(self.gradients, "names"):
            raise SpecError([
                f"gradients: {self.gradients.name!r} does not name the parameters it differentiates (no names(task)), "
                "which property attribution needs; use a gradient source such as 'per-example' or 'last-layer'"
            ])
        names = self.gradients.names(self.task)
        with member.applied(self.task.model):
            rows = [property_gradient(self.task.model, p, member.state, names) for p in properties]
        return torch.stack(rows)

    def top_k(self, test: Iterable[Any], k: int, tile_rows: int = 65536) -> TopK:
        """The ``k`` strongest proponents and opponents of every test example.

        Scores are computed in tiles of ``tile_rows`` training rows and merged, so the
        full ``[n_test, n_train]`` matrix is never held (in distributed mode, over each
        rank's columns, then the ranks' candidates are merged).

        Returns:
            :class:`TopK` with ``[n_test, k]`` values (float32) and indices (int64), CPU.

        Raises:
            ValueError: ``k`` is not in ``1..n_train`` (or ``n_groups``).
        """
        fitted = self._require_fit()
        check_fixed_order(test, "test")
        n = fitted[0].train.shape[0]
        if not 1 <= k <= n:
            raise ValueError(f"k must be in 1..{n} (the number of training columns), got {k}")
        cols = distributed.columns(n)
        parts = []
        for batch in progress(test, f"{self.name}: top-{k}"):
            queries = [self._query_side(f, self._gradients(f.member, batch, target=True)) for f in fitted]
            best = worst = None
            for start in range(cols.start, cols.stop, tile_rows):
                stop = min(cols.stop, start + tile_rows)
                tile = sum(f.member.weight * (q @ f.train[start:stop].T) for f, q in zip(fitted, queries))
                best = merge_top_k(best, tile.float().cpu(), start, k, largest=True)
                worst = merge_top_k(worst, tile.float().cpu(), start, k, largest=False)
            parts.append((distributed.gather_top_k(best, k, True), distributed.gather_top_k(worst, k, False)))
        return TopK(
            proponent_scores=torch.cat([b[0] for b, _ in parts]),
            proponents=torch.cat([b[1] for b, _ in parts]),
            opponent_scores=torch.cat([w[0] for _, w in parts]),
            opponents=torch.cat([w[1] for _, w in parts]),
        )

    def self_influence(self, train: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n]`` float32 CPU: each training example's score for itself (loss on both sides).

        With a grouper, ``train`` must be the fitted training set and the result is per group.
        """
        fitted = self._require_fit()
        check_fixed_order(train, "train")
        total = 0.0
        for f in fitted:
            grads = [self._gradients(f.member, b, target=False) for b in progress(train, f"{self.name}: self-influence")]
            raw = torch.cat([self._dense(g) for g in grads])
            if self.groups.shape[0] != raw.shape[0] and (not self._pointwise() or self._weights is not None):
                raise DataLoaderError(
                    f"self_influence with groups or example weights needs the fitted training set "
                    f"({self.groups.shape[0]} examples), got {raw.shape[0]}"
                )
            keys = self._project(f.projector, raw)
            if self._weights is not None:
                keys = keys * self._weights.to(keys)[:, None]
            query = self._query_side(f, raw if self._pointwise() else self._group_sum(raw))
            key = self._train_side(self._group_sum(keys))
            total = total + f.member.weight * row_dots(query, key)
        return total.float().cpu()
