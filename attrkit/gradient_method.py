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
import itertools
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit import capabilities, checks, distributed
from attrkit.context import FitContext, Member
from attrkit.data import batch_size, to_device
from attrkit.errors import DataLoaderError, NonFiniteError, NonFiniteWarning, NotFittedError, SpecError
from attrkit.feature_matrix import FeatureMatrix, check_budget
from attrkit.finite import cause, check_policy, check_rows, check_scores, nonfinite_rows
from attrkit.fit_guard import FitGuard
from attrkit.functional.scoring import normalize_rows
from attrkit.loaders import CheckedLoader, checked
from attrkit.parameter_gradients import restrict_gradients
from attrkit.progress import progress
from attrkit.properties import property_gradient
from attrkit.selection import TopK, check_partition
from attrkit.self_influence import SelfInfluence
from attrkit.skipping import WithoutSkipped, announce, scan
from attrkit.task import AttributionTask
from attrkit.tiled_scores import score_block, top_k_block
from attrkit.train_features import TrainFeatures
from attrkit.user_code import user_code, user_code_pass

__all__ = ["GradientAttributor"]


@attrs.define
class _Fitted:
    """What ``fit`` keeps per member: its parts, fitted, and its training features."""

    member: Member
    projector: Any
    solver: Any
    train: FeatureMatrix  # [n_train or n_groups, k] (this rank's rows), train-side transforms applied


class GradientAttributor(TrainFeatures, SelfInfluence):
    """Base class implementing fit / attribute / self_influence for the score formula.

    Subclasses set ``name``, ``Config``, ``slots``, ``defaults`` and ``normalize``.
    Memory: the training features of every member, ``Tensor[n_train, k]`` each — or,
    with a ``memory_budget`` they exceed, tiles of at most that many bytes read from an
    on-disk store (see :meth:`fit`).

    With an initialised ``torch.distributed`` process group (:mod:`attrkit.distributed`),
    ``fit`` splits the per-example training features and the solvers' curvature passes
    over the ranks by batch index, and each rank keeps only its batches' features (the
    solvers' reductions over them are all-reduced); ``attribute`` and ``top_k`` score each
    rank's training columns and gather them (or merge the candidates), and
    ``self_influence`` is split by batch where the solver allows (see
    :class:`~attrkit.self_influence.SelfInfluence`). Every rank returns the same result;
    all must make the same calls on the same data.

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
        #: ``LongTensor``: training examples left out by ``fit(..., nonfinite="skip")`` (sorted).
        self.skipped: torch.Tensor | None = None
        self._fitted: list[_Fitted] | None = None
        self._weights: torch.Tensor | None = None
        self._budget: int | None = None
        self._nonfinite = "raise"
        self._skip: set[int] = set()
        self._guard: FitGuard | None = None
        self._train: CheckedLoader | None = None

    # -- the two sides of the formula -------------------------------------------------

    def _gradients(self, member: Member, batch: Any, target: bool, where: str = "a batch") -> Any:
        """Raw gradients: ``Tensor[b, p]``, or a factored block (with ``shape`` and
        ``materialize()``) from a gradient source that provides factors.

        An exception from the user's function is explained (:mod:`attrkit.user_code`),
        naming ``where`` (``"training batch 3"``)."""
        use_target = target or self.train_target
        fn = self.gradients.target_gradients if use_target else self.gradients.loss_gradients
        user = self.task.target if use_target else self.task.loss_fn
        name = "target_fn" if use_target and self.task.target_fn is not None else "loss_fn"
        with member.applied(self.task.model), user_code(self.task.model, user, member.state, batch, where, name):
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
        """``Precond(Proj(g))`` for raw gradients ``[b, p]`` -> ``[b, k]``.

        Raises:
            NonFiniteError: the solver returned non-finite values for finite input rows.
        """
        solver = fitted.solver
        if solver is not None and solver.space == "parameter":
            grads = self._solved(fitted, self._dense(grads))
        feats = self._project(fitted.projector, grads)
        if solver is not None and solver.space == "feature":
            feats = self._solved(fitted, feats)
        return normalize_rows(feats) if self.normalize else feats

    @staticmethod
    def _solved(fitted: _Fitted, vectors: torch.Tensor) -> torch.Tensor:
        """``solver.solve(vectors)``, refused when it turns finite rows non-finite."""
        out = fitted.solver.solve(vectors)
        if not checks.enabled():
            return out
        bad = nonfinite_rows(out)
        if len(bad) and bool(torch.isfinite(vectors[bad]).all()):
            name = getattr(fitted.solver, "name", type(fitted.solver).__name__)
            raise NonFiniteError(
                f"solver {name!r} returned non-finite values for {len(bad)} finite vector(s) at member "
                f"{fitted.member.label!r}: the curvature is singular or too ill-conditioned to invert; raise "
                "solver.regularization (the damping λ)"
            )
        return out

    def _train_side(self, feats: torch.Tensor) -> torch.Tensor:
        """The training side's transform of features ``[b, k]`` (unit rows for cosine)."""
        return normalize_rows(feats) if self.normalize else feats

    # -- public API -------------------------------------------------------------------

    def members(self) -> list[Member]:
        """The ensemble members (the task's checkpoints when no ensemble is given)."""
        return self.ensemble.members(self.task) if self.ensemble is not None else self.task.members()

    def fit(
        self, train: Iterable[Any], store: str | os.PathLike | None = None, memory_budget: int | None = None,
        nonfinite: str = "raise", on_mismatch: str = "error",
    ) -> GradientAttributor:
        """Compute and keep the training features of every member.

        With a grouper whose partition is not the singletons and a gradient source that
        provides group gradients (``capabilities.GROUP``, e.g. ``group``), groups are
        assigned first (the grouper sees no ``context.features``) and each member's
        grouped training side comes from one ``group_gradients`` call, projected — no
        per-example gradient is formed (GGDA). Per-example weights (TRAK's ``Q``) enter
        as a weighted loss in a second call. Otherwise per-example features are summed
        per group.

        What is checked (see the README's "What attrkit checks"): the loader yields the
        same batches in the same order on every pass (:class:`~attrkit.loaders.CheckedLoader`);
        every member's weights, every training example's gradient and features, and the
        solvers' outputs are finite; the weights do not change while fitting (and, when
        the members are the model's own weights, until the attributor attributes); a
        ``store`` holds features of this spec, these weights, these functions and these
        batches, with intact files.

        Args:
            train: fixed-order batches (a ``DataLoader`` with ``shuffle=False``).
            store: a folder for a resumable on-disk feature store: each batch's features
                (on the group-gradient path: each member's group features) are written
                atomically, and a rerun after a kill computes only what is missing
                (bit-identical results). ``None`` keeps them in memory.
            memory_budget: bytes of training features this process may hold at once.
                When every member's features (this rank's rows) fit, they are held in
                memory; otherwise they stay in ``store`` (required then) and are streamed
                in tiles of at most this many bytes — to fit the solver (``ΦᵀΦ``), to sum
                groups and to score — so no ``[n_train, k]`` matrix is ever formed. Each
                test batch then reads the features once: use large test batches. Results
                equal the in-memory ones up to floating-point summation order. ``None``:
                no budget (features in memory).
            nonfinite: ``"raise"`` (default): an error naming the first training example
                (and later test example) with a NaN or infinite input, loss or gradient.
                ``"skip"``: leave such training examples out (their score columns are 0,
                ``top_k`` never returns them, the curvature never sees them, a warning
                names them, ``self.skipped`` lists them) and give such test examples a
                NaN score row (see :mod:`attrkit.skipping`). Not with groups.
            on_mismatch: what to do with a ``store`` whose contents do not match:
                ``"error"`` (default) or ``"recompute"`` (recompute what differs).

        Returns:
            ``self``.

        Raises:
            DataLoaderError: a shuffling, dropping or empty loader, a loader whose batches
                change between passes, or fewer batches than ranks.
            NonFiniteError: a non-finite weight, example or solver output (``nonfinite="raise"``).
            LossFunctionError: ``loss_fn``/``target_fn`` failed on a batch (explained).
            ModelChangedError: weights changed in place while fitting.
            StoreMismatchError: ``store`` holds features of another spec, model, loss, data or
                batching, or (``StoreCorruptError``) damaged files.
            MemoryBudgetError: a bad budget, one too small for a tile, or features over the
                budget without an on-disk ``store``.
        """
        train = checked(train, "train")
        self._train = None
        self._nonfinite = check_policy(nonfinite)
        self._budget = check_budget(memory_budget)
        fitted = []
        members = self.members()
        guard = self._guard = FitGuard(self.task, members)
        self._skip = self._scan(members, train) if nonfinite == "skip" else set()
        clean = WithoutSkipped(train, self._skip) if nonfinite == "skip" else train
        chunks = self._open_store(store, members, on_mismatch)
        with self._user_pass(members[0], train):
            weights = self._weights = self._checked_weights(self._example_weights(members, train), train)
        self.groups = None
        groups_first = self.grouper is not None and self._has_group_gradients()
        for index, member in enumerate(members):
            context = FitContext(
                task=self.task, member=member, train=clean, gradients=self.gradients, dimension=self.dimension,
                n_train=0,
            )
            projector = self._member_projector(index)
            if projector is not None:
                with member.applied(self.task.model), self._user_pass(member, clean):
                    projector.fit(context)
            if groups_first and self.groups is None:
                self._assign(attrs.evolve(context, train=train, n_train=self._count(train)))
            if groups_first and not self._pointwise():
                if self._skip:
                    self._finish_skipping()  # refuses: group gradients would include the skipped examples
                grouped = self._grouped_features(index, member, projector, train, chunks, weights)
                plain, feats = (FeatureMatrix.whole(x, self._budget) for x in grouped)
            else:
                feats = self._example_features(index, member, projector, train, chunks, len(members))
                if self.groups is None:
                    self._assign(attrs.evolve(context, train=train, n_train=feats.n, features=_whole(feats),
                                              feature_matrix=feats))
                plain = self._group_sum(feats)
                feats = plain if weights is None else self._group_sum(feats.scaled(weights))
            solver = copy.deepcopy(self.solver)
            if solver is not None:
                with member.applied(self.task.model), self._user_pass(member, clean):
                    solver.fit(self._solver_context(context, solver, plain))
            side = feats.mapped(lambda tile, _: self._train_side(tile)) if self.normalize else feats
            fitted.append(_Fitted(member=member, projector=projector, solver=solver, train=side))
        self._fitted = fitted
        self._finish_skipping()
        scale = self._column_scale(train)
        for f in fitted:
            f.train = (f.train if scale is None else f.train.scaled(scale)).baked()
        guard.finished()
        self._train = train
        return self

    def _user_pass(self, member: Member, train: Iterable[Any]) -> Any:
        """Context explaining an exception of a pass over ``train`` that the user's loss is at fault for."""
        fn = self.task.target if self.train_target else self.task.loss_fn
        return user_code_pass(self.task.model, fn, member.state, train)

    def _scan(self, members: list[Member], train: CheckedLoader) -> set[int]:
        """Training examples with a non-finite input or training-side value at some member (``nonfinite="skip"``)."""
        fns = [self.task.loss_fn] + ([self.task.target] if self.train_target else [])
        states = [(m.state, m.applied(self.task.model)) for m in members]
        return scan(self.task.model, fns, states, progress(train, f"{self.name}: non-finite scan"), self.task.device)

    def _checked_weights(self, weights: torch.Tensor | None, train: CheckedLoader) -> torch.Tensor | None:
        """Per-example weights (TRAK's ``Q``) with the skipped examples' set to 0; non-finite others refused."""
        if weights is None:
            return None
        bad = nonfinite_rows(weights)
        if self._nonfinite == "skip":
            self._skip.update(int(i) for i in bad)
            if self._skip:
                weights = weights.clone()
                weights[torch.tensor(sorted(self._skip))] = 0
            return weights
        if len(bad):
            i = int(bad[0])
            j = int(torch.searchsorted(torch.tensor(train.sizes).cumsum(0), i, right=True))
            row = i - sum(train.sizes[:j])
            batch = next(itertools.islice(train, j, None))
            fn = self.task.target if self.train_target else self.task.loss_fn
            why = self._explainer(self.members()[0], batch, fn)(row)
            raise NonFiniteError(
                f"training example {i} (batch {j}, row {row}) has a non-finite weight ({float(weights[i])}; "
                f"{len(bad)} examples in all): {why}. Fix or remove it, or pass fit(..., nonfinite='skip') to leave it "
                "out"
            )
        return weights

    def _finish_skipping(self) -> None:
        """Gather the skipped examples over the ranks and announce them (``nonfinite="skip"``).

        Raises:
            DataLoaderError: examples were skipped and the columns are groups.
        """
        if self._nonfinite != "skip":
            self.skipped = None
            return
        self._skip.update(*distributed.all_ranks(self._skip))
        self.skipped = torch.tensor(sorted(self._skip), dtype=torch.long)
        if len(self.skipped) and not self._pointwise():
            raise DataLoaderError(
                f"nonfinite='skip' left out {len(self.skipped)} training examples, which cannot be done with groups "
                "(a group's column would silently lose members); fix or remove those examples, or attribute single "
                "examples (no grouper)"
            )
        announce(self.skipped, self.groups.numel())

    def _count(self, train: CheckedLoader) -> int:
        """Examples in ``train`` (a pass when none is complete yet)."""
        if train.n_examples is None:
            for _ in progress(train, f"{self.name}: counting examples"):
                pass
        return train.n_examples

    def _column_scale(self, train: Iterable[Any]) -> torch.Tensor | None:
        """``Tensor[n_columns]`` multiplying each training column once everything else is fitted
        (RelatIF: ``1 / sqrt(self-influence)``), or ``None``. ``self._fitted`` is set when called."""
        return None

    def _solver_context(self, context: FitContext, solver: Any, plain: FeatureMatrix) -> FitContext:
        """The solver's context: ``feature_matrix`` always; ``features`` when held whole here, or
        gathered for a feature-space solver that does not stream (within the budget)."""
        whole = _whole(plain)
        if whole is None and solver.space == "feature" and not getattr(solver, "streams_features", False):
            whole = plain.full()
        return attrs.evolve(context, n_train=self.groups.numel(), features=whole, feature_matrix=plain)

    def _assign(self, context: FitContext) -> None:
        """Set ``self.groups`` from the grouper (singletons without one), checked."""
        if self.grouper is None:
            self.groups = torch.arange(context.n_train)
            return
        with context.member.applied(self.task.model):
            groups = self.grouper.assign(context)
        self.groups = check_partition(groups.cpu(), context.n_train, f"grouper {getattr(self.grouper, 'name', '')!r}")

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
            Positive means the training example is a proponent. With
            ``fit(..., nonfinite="skip")``, skipped training columns are 0 and the rows of
            test examples with non-finite values are NaN (a warning names them).

        Raises:
            DataLoaderError: ``test`` is ``None`` and the task declares no properties; a
                shuffling, dropping or changing test loader.
            ModelChangedError: the model's weights changed since ``fit``.
            NonFiniteError: a test example with a non-finite input, loss or gradient
                (``nonfinite="raise"``), or scores that overflow float32.
            LossFunctionError: the target function failed on a test batch (explained).
            SpecError: properties with a gradient source that does not name its parameters.
            MemoryBudgetError: the budget cannot hold one tile row and its scores.
        """
        fitted = self._require_fit()
        sides = [f.train.owned() for f in fitted]
        if test is None:
            self._guard.check(self.task)
            queries = [(f.member.weight, self._query_side(f, self._property_side(f))) for f in fitted]
            scores = distributed.gather_columns(score_block(queries, sides), sides[0].spans, sides[0].n)
            check_scores(scores, first_row=0)
            return scores
        rows, skipped = [], []
        for index, offset, batch in self._test_batches(test, "scoring"):
            queries, bad = self._queries(fitted, batch, index, offset)
            block = distributed.gather_columns(score_block(queries, sides), sides[0].spans, sides[0].n)
            check_scores(block, first_row=offset, skipped_rows=bad)
            rows.append(block)
            skipped.extend(offset + int(r) for r in bad)
        _announce_test(skipped)
        return torch.cat(rows)

    def _test_batches(self, test: Iterable[Any], what: str) -> Iterator[tuple[int, int, Any]]:
        """``(batch index, index of its first example, batch)`` of a checked test loader, after
        checking the model's weights are those fitted at."""
        self._guard.check(self.task)
        offset = 0
        for index, batch in enumerate(progress(checked(test, "test"), f"{self.name}: {what}")):
            yield index, offset, batch
            offset += batch_size(batch)

    def _queries(
        self, fitted: list[_Fitted], batch: Any, index: int, offset: int
    ) -> tuple[list[tuple[float, torch.Tensor]], torch.Tensor]:
        """Per member ``(w_m, Precond(Proj(∇ target)))`` of test batch ``index``, ``Tensor[b, k]``, and
        the rows left out as non-finite (``nonfinite="skip"``: their query rows are NaN).

        Raises:
            NonFiniteError: a non-finite test example (``nonfinite="raise"``).
        """
        queries, skipped = [], torch.zeros(batch_size(batch), dtype=torch.bool)
        for f in fitted:
            raw = self._gradients(f.member, batch, target=True, where=f"test batch {index}")
            explain = self._explainer(f.member, batch, self.task.target)
            if isinstance(raw, torch.Tensor):
                bad = check_rows(raw, side="test", batch=index, offset=offset, member=f.member.label,
                                 explain=explain, policy=self._nonfinite)
                if len(bad):
                    raw = raw.index_fill(0, bad.to(raw.device), 0.0)
            query = self._query_side(f, raw)
            late = check_rows(query, side="test", batch=index, offset=offset, member=f.member.label,
                              explain=explain, policy=self._nonfinite)
            bad = late if not isinstance(raw, torch.Tensor) else torch.cat([bad, late]).unique()
            if len(bad):
                query = query.index_fill(0, bad.to(query.device), float("nan"))
                skipped[bad.cpu()] = True
            queries.append((f.member.weight, query))
        return queries, skipped.nonzero().squeeze(1)

    def _explainer(self, member: Member, batch: Any, fn: Any) -> Any:
        """``explain(row) -> str``: why a row of ``batch`` is non-finite (see :func:`attrkit.finite.cause`)."""

        def explain(row: int) -> str:
            with member.applied(self.task.model):
                return cause(self.task.model, fn, member.state, to_device(batch, self.task.device), row)

        return explain

    def _property_side(self, fitted: _Fitted) -> torch.Tensor:
        """The checked property gradients of one member (see :meth:`property_gradients`)."""
        grads = self.property_gradients(fitted.member)
        bad = nonfinite_rows(grads)
        if len(bad):
            name = self.task.properties[int(bad[0])].name
            raise NonFiniteError(f"the gradient of property {name!r} is non-finite at member {fitted.member.label!r}; "
                                 "check its function and the test data it reads")
        return grads

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

        Scores are computed in tiles of at most ``tile_rows`` training rows (fewer when the
        memory budget asks) and merged, so the full ``[n_test, n_train]`` matrix is never
        held (in distributed mode, over each rank's columns, then the ranks' candidates
        are merged). Training examples skipped by ``fit(..., nonfinite="skip")`` are never
        returned; a skipped test example's row holds NaN scores and index -1.

        Returns:
            :class:`TopK` with ``[n_test, k]`` values (float32) and indices (int64), CPU.

        Raises:
            ValueError: ``k`` is not in ``1..n_train`` (or ``n_groups``; skipped examples excluded).
            ModelChangedError, NonFiniteError, LossFunctionError: as :meth:`attribute`.
        """
        fitted = self._require_fit()
        n = fitted[0].train.n - (len(self.skipped) if self.skipped is not None else 0)
        if not 1 <= k <= n:
            raise ValueError(f"k must be in 1..{n} (the number of training columns), got {k}")
        sides = [f.train.owned() for f in fitted]
        excluded = None
        if self.skipped is not None and len(self.skipped):
            excluded = torch.zeros(fitted[0].train.n, dtype=torch.bool)
            excluded[self.skipped] = True
        parts, skipped = [], []
        for index, offset, batch in self._test_batches(test, f"top-{k}"):
            queries, bad = self._queries(fitted, batch, index, offset)
            best, worst = top_k_block(queries, sides, k, tile_rows, excluded)
            best, worst = distributed.gather_top_k(best, k, True), distributed.gather_top_k(worst, k, False)
            for values, columns in (best, worst):
                check_scores(values, first_row=offset, skipped_rows=bad)
                values[bad], columns[bad] = float("nan"), -1
            parts.append((best, worst))
            skipped.extend(offset + int(r) for r in bad)
        _announce_test(skipped)
        return TopK(
            proponent_scores=torch.cat([b[0] for b, _ in parts]),
            proponents=torch.cat([b[1] for b, _ in parts]),
            opponent_scores=torch.cat([w[0] for _, w in parts]),
            opponents=torch.cat([w[1] for _, w in parts]),
        )


def _announce_test(skipped: list[int]) -> None:
    """Warn that the score rows of the test examples ``skipped`` are NaN (``nonfinite="skip"``)."""
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (" …" if len(skipped) > 10 else "")
        warnings.warn(f"nonfinite='skip': {len(skipped)} test examples have non-finite inputs, losses or gradients; "
                      f"their score rows are NaN: {shown}", NonFiniteWarning, stacklevel=3)


def _whole(matrix: FeatureMatrix) -> torch.Tensor | None:
    """``matrix`` as one tensor when every row of it is held in memory here, else ``None``."""
    return matrix.tensor() if matrix.resident and not matrix.partitioned else None
