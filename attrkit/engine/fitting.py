"""``fit``: every member's fitted parts and training features, and the facts they share.

    fit(method, train) -> Fit
        guard the weights; find the examples to skip (nonfinite="skip"); open the store;
        the memory plan: the budget (argument, ATTRKIT_MEMORY_BUDGET or a share of the available
        memory), the features' estimate, in memory or streamed (memory_plan.plan; said on stderr);
        example weights q (method.example_weights)
        for each member m:  fit_member -> FittedMember
            projector_m = parts["projector"].make(m); projector_m.fit(context)
            groups (first member): the grouper's partition of the training set
            Φ_m = Proj_m(∇ loss_i) per example (summed per group), or group gradients (GGDA)
            solver_m = parts["solver"].make(m); solver_m.fit(context with Φ_m)
            train side: q_i Φ_m[i] (summed per group), unit rows for cosine
            (structured products, engine.products: Φ_m holds packed per-layer factors instead,
             and a parameter-space solver reads the training set, not Φ_m)
        column scale (method.column_scale: RelatIF), baked into every member's training side
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from attrkit import capabilities
from attrkit.context import FitContext, Member
from attrkit.engine.features import example_features, group_sum, grouped_features, open_store
from attrkit.engine.low_rank import low_rank
from attrkit.engine.memory_plan import MemoryPlanner, plan
from attrkit.engine.products import Chooser, HeldFactors, chooser, held_factors
from attrkit.engine.sides import explainer, train_side, training_fn, user_pass
from attrkit.engine.skips import Skips, scan
from attrkit.engine.state import Fit, FittedMember
from attrkit.budget import resolve_budget
from attrkit.feature_matrix import FeatureMatrix
from attrkit.fit_guard import FitGuard
from attrkit.loaders import CheckedLoader, checked
from attrkit.progress import progress
from attrkit.selection import check_partition
from attrkit.store import FeatureStore

if TYPE_CHECKING:
    from attrkit.engine.attributor import GradientAttributor

__all__ = ["fit", "fit_member"]


def _whole(matrix: FeatureMatrix) -> torch.Tensor | None:
    """``matrix`` as one tensor when every row of it is held in memory here, else ``None``."""
    return matrix.tensor() if matrix.resident and not matrix.partitioned else None


def _assign(method: GradientAttributor, context: FitContext) -> torch.Tensor:
    """``LongTensor[n_train]``: the grouper's partition, checked (the singletons without one)."""
    if method.grouper is None:
        return torch.arange(context.n_train)
    with context.member.applied(method.task.model):
        groups = method.grouper.assign(context)
    return check_partition(groups.cpu(), context.n_train, f"grouper {method.grouper.name!r}")


def _count(method: GradientAttributor, train: CheckedLoader) -> int:
    """Examples in ``train`` (a pass when none is complete yet)."""
    if train.n_examples is None:
        for _ in progress(train, f"{method.name}: counting examples"):
            pass
    return train.n_examples


def _context(method: GradientAttributor, member: Member, train: Iterable[Any], **known: Any) -> FitContext:
    """The context a part is fitted in: the task, the member, the batches it reads, and what is known."""
    return FitContext(task=method.task, member=member, train=train, gradients=method.gradients,
                      dimension=method.dimension, **known)


def _solver_context(
    method: GradientAttributor, member: Member, train: Iterable[Any], solver: Any, plain: FeatureMatrix, n_columns: int,
    packed: bool = False, factors: HeldFactors | None = None,
) -> FitContext:
    """The solver's context: ``feature_matrix`` always; ``features`` when held whole here, or
    gathered for a feature-space solver that does not stream (within the budget: else
    :meth:`~attrkit.feature_matrix.FeatureMatrix.full` refuses). Neither when the training side is
    ``packed`` factor rows (structured products: a parameter-space solver reads the training set,
    or the ``factors`` unpacked from them)."""
    if packed:
        return _context(method, member, train, n_train=n_columns, factors=factors)
    whole = _whole(plain)
    if whole is None and solver.space == "feature" and not solver.streams_features:
        whole = plain.full()
    return _context(method, member, train, n_train=n_columns, features=whole, feature_matrix=plain)


def fit_member(
    method: GradientAttributor, index: int, member: Member, train: CheckedLoader, chunks: FeatureStore,
    weights: torch.Tensor | None, groups: torch.Tensor | None, skips: Skips, budget: MemoryPlanner, n_members: int,
    products: Chooser | None = None,
) -> tuple[FittedMember, torch.Tensor]:
    """Fit member ``index``: its projector, its training features and its solver.

    Args:
        method: the attributor (task, gradient source, parts, hooks).
        index, member: the member and its position in the ensemble.
        train: the checked training loader.
        chunks: the feature store.
        weights: per-example weights ``q`` (``Tensor[n_train]``) or ``None``.
        groups: the partition found at an earlier member, or ``None`` (this member assigns it).
        skips: the non-finite policy and the examples left out.
        budget: the memory plan (bytes of features that may be held at once, tile size, spilling).
        n_members: members in all (for the budget of streamed features).
        products: the fit's structured-products chooser (:mod:`attrkit.engine.products`), or ``None``.

    Returns:
        ``(fitted member, groups)``.
    """
    clean = skips.view(train)
    projector = method.parts["projector"].make(index) if "projector" in method.parts else None
    if projector is not None:
        with member.applied(method.task.model), user_pass(method, member, clean):
            projector.fit(_context(method, member, clean))
    grouped = method.grouper is not None and capabilities.GROUP in method.gradients.provides
    if grouped and groups is None:
        groups = _assign(method, _context(method, member, train, n_train=_count(method, train)))
    if grouped and not torch.equal(groups, torch.arange(groups.numel())):
        if skips.indices:
            skips.finish(pointwise=False, n_train=groups.numel())  # refuses: group gradients would include them
        pair = grouped_features(method, index, member, projector, train, chunks, weights, groups)
        plain, feats = (FeatureMatrix.whole(x, budget.bytes) for x in pair)
    else:
        feats = example_features(method, index, member, projector, train, chunks, n_members, budget, skips, products)
        if groups is None:
            groups = _assign(method, _context(method, member, train, n_train=feats.n, features=_whole(feats),
                                              feature_matrix=feats))
        plain = group_sum(feats, groups, budget.bytes)
        feats = plain if weights is None else group_sum(feats.scaled(weights), groups, budget.bytes)
    layout = None if products is None or not products.packs_train else products.layout
    solver = method.parts["solver"].make(index) if "solver" in method.parts else None
    if solver is not None:
        with member.applied(method.task.model), user_pass(method, member, clean):
            held = held_factors(method, layout, feats, member, bool(skips.indices))
            solver.fit(_solver_context(method, member, clean, solver, plain, groups.numel(), layout is not None, held))
    if method.normalize:
        normalize = (lambda tile: train_side(tile, True)) if layout is None else layout.normalize
        feats = feats.mapped(lambda tile, _: normalize(tile))
    formed = products.layout if products is not None and not products.packs_train else None
    return FittedMember(member=member, projector=projector, solver=solver, train=feats, layout=layout,
                        from_factors=formed, low_rank=low_rank(method, projector, solver)), groups


def _weight_explainer(method: GradientAttributor, members: list[Member], train: CheckedLoader) -> Any:
    """``explain(i) -> str``: where training example ``i`` is and why its weight is non-finite."""

    def explain(i: int) -> str:
        starts = torch.tensor(train.sizes).cumsum(0)
        j = int(torch.searchsorted(starts, i, right=True))
        row = i - (int(starts[j - 1]) if j else 0)
        batch = next(b for k, b in enumerate(train) if k == j)
        why = explainer(method, members[0], batch, training_fn(method))(row)
        return f"training example {i} (batch {j}, row {row}) has a non-finite weight: {why}"

    return explain


def _reads_again(method: GradientAttributor, members: list[Member]) -> bool:
    """Whether the fit may read the training set more than once (several members, a solver, a projector
    fitted on the curvature, example weights or a column scale), so that its first pass's batches are
    worth keeping to replay."""
    from attrkit.engine.attributor import GradientAttributor

    solver, projector = method.parts.get("solver"), method.parts.get("projector")
    return (len(members) > 1 or (solver is not None and not solver.cls.identity)
            or (projector is not None and capabilities.HVP in projector.cls.requires)
            or type(method).example_weights is not GradientAttributor.example_weights
            or type(method).column_scale is not GradientAttributor.column_scale)


def fit(
    method: GradientAttributor, train: Iterable[Any], *, store: str | os.PathLike | None = None,
    memory_budget: int | float | str | None = None, nonfinite: str = "raise", on_mismatch: str = "error",
) -> Fit:
    """Fit every member of ``method`` on ``train``; see :meth:`GradientAttributor.fit` for the arguments.

    Returns:
        the :class:`~attrkit.engine.state.Fit`, column scale applied and baked.
    """
    members = method.members()
    train = checked(train, "train", keep=_reads_again(method, members))
    skips = Skips(nonfinite)
    budget = resolve_budget(memory_budget, method.task.device)
    guard = FitGuard(method.task, members)
    if skips.skipping:
        fns = [method.task.loss_fn] + ([method.task.target] if method.train_target else [])
        states = [(m.state, m.applied(method.task.model)) for m in members]
        skips.add(scan(method.task.model, fns, states, progress(train, f"{method.name}: non-finite scan"),
                       method.task.device))
    chunks = open_store(method, store, members, on_mismatch)
    grouped = method.grouper is not None and capabilities.GROUP in method.gradients.provides
    planner = plan(method, train, members, store, budget, chunks, grouped)
    with user_pass(method, members[0], train):
        weights = skips.weights(method.example_weights(members, train), _weight_explainer(method, members, train))
    products = chooser(method, store, weights)
    fitted, groups = [], None
    for index, member in enumerate(members):
        one, groups = fit_member(method, index, member, train, chunks, weights, groups, skips, planner, len(members),
                                 products)
        fitted.append(one)
    pointwise = torch.equal(groups, torch.arange(groups.numel()))
    state = Fit(members=fitted, groups=groups, weights=weights, skipped=skips.finish(pointwise, groups.numel()),
                policy=skips.policy, guard=guard, train=train,
                memory_plan=planner.finish([f.train for f in fitted]))
    scale = method.column_scale(state, train)
    for f in fitted:
        if scale is not None:
            f.train = f.train.scaled(scale) if f.layout is None else f.train.mapped(
                lambda tile, rows, layout=f.layout: layout.scale(tile, scale[rows]))
        f.train = f.train.baked()
    train.release()  # the replayed batches: later passes (self-influence) read the loader, checked against them
    guard.finished()
    return state
