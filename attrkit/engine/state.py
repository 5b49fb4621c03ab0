"""What ``fit`` leaves behind: per member its fitted parts and training features, and the fit's facts."""

from __future__ import annotations

from typing import Any

import attrs
import torch

from attrkit.context import Member
from attrkit.engine.low_rank import LowRank
from attrkit.engine.memory_plan import MemoryPlan
from attrkit.feature_matrix import FeatureMatrix
from attrkit.fit_guard import FitGuard
from attrkit.functional.structured_products import ProductLayout
from attrkit.loaders import CheckedLoader

__all__ = ["Fit", "FittedMember"]


@attrs.define
class FittedMember:
    """One member of the score formula, fitted.

    Attributes:
        member: its weights, weight ``w_m`` and patch.
        projector: its fitted projector (``None`` without one).
        solver: its fitted solver (``None`` without one).
        train: the training side ``Φ_m``, ``[n_train or n_groups, k]`` (this rank's rows), with
            the train-side transforms applied (example weights, cosine normalisation, column
            scale): what a query is multiplied with.
        layout: with structured products (:mod:`attrkit.engine.products`), the layout of the
            packed factor rows that ``train`` then holds, scored by the layout's products instead
            of a matrix product; ``None`` for dense features. The queries are packed rows too,
            or, behind a parameter-space solver (:attr:`solved`), dense solved gradients.
        from_factors: the layout whose factor rows the (dense) training features were projected
            or formed from (:mod:`attrkit.engine.products`), ``None`` when they came from dense
            gradients or the rows are kept (``layout``).
        low_rank: with a solver whose solve is ``U diag(w) Uᵀ`` (:mod:`attrkit.engine.low_rank`),
            its factors: a block of queries may then be its ``r`` coefficients per row (narrower
            than the ``p`` of solved gradients), which :meth:`products` meets with the training
            rows projected on ``U``; ``None`` otherwise.
    """

    member: Member
    projector: Any
    solver: Any
    train: FeatureMatrix
    layout: ProductLayout | None = None
    from_factors: ProductLayout | None = None
    low_rank: LowRank | None = None

    @property
    def solved(self) -> bool:
        """Structured products behind a solver: dense queries ``H⁻¹ ∇ target`` against packed training rows."""
        return self.layout is not None and self.solver is not None and not self.solver.identity

    def products(self, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, t]``: the score products of query rows ``[b, k]`` with training rows ``[t, k]``
        (or low-rank coefficients ``[b, r]``, told apart by their width ``r < p``)."""
        if self.low_rank is not None and queries.shape[1] == self.low_rank.rank:
            return self.low_rank.products(self.layout, queries, rows)
        if self.layout is None:
            return queries @ rows.T
        return self.layout.solved_products(queries, rows) if self.solved else self.layout.products(queries, rows)


@attrs.define
class Fit:
    """A fitted :class:`~attrkit.engine.attributor.GradientAttributor`'s state.

    Attributes:
        members: the fitted members, in ensemble order.
        groups: ``LongTensor[n_train]``, the score column of each training example.
        weights: ``Tensor[n_train]`` per-example weights (TRAK's ``Q``), or ``None``.
        skipped: ``LongTensor`` of the training examples left out (``nonfinite="skip"``), or
            ``None`` (``"raise"``).
        policy: the ``nonfinite`` policy, also applied to test examples.
        guard: the weights' check (:class:`~attrkit.fit_guard.FitGuard`).
        train: the checked training loader (later passes over the same loader are compared with
            it); ``None`` in an attributor read back by :func:`attrkit.load`.
        memory_plan: where ``fit`` kept the training features and why (estimate, budget, in
            memory or streamed, the folder): :class:`~attrkit.engine.memory_plan.MemoryPlan`;
            ``None`` in an attributor read back by :func:`attrkit.load`.
        packers: per member index, the chooser that packs its test gradients into factor rows for
            a projector that projects from them (:func:`attrkit.engine.products.query_packer`),
            made at the first test batch; not saved.
    """

    members: list[FittedMember]
    groups: torch.Tensor
    weights: torch.Tensor | None
    skipped: torch.Tensor | None
    policy: str
    guard: FitGuard
    train: CheckedLoader | None
    memory_plan: MemoryPlan | None = None
    packers: dict[int, Any] = attrs.field(factory=dict, repr=False)

    @property
    def pointwise(self) -> bool:
        """Whether every score column is the single training example of the same index."""
        return torch.equal(self.groups, torch.arange(self.groups.numel()))

    @property
    def n_columns(self) -> int:
        """Score columns: training examples, or groups."""
        return self.members[0].train.n
