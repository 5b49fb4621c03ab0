"""The contracts every component fulfils, one ``Protocol`` per kind.

A component is a *class* with these class attributes:

* ``name`` — registered name, lowercase with hyphens (``"grad-dot"``);
* ``kind`` — one of :data:`KINDS`;
* ``Config`` — a frozen, keyword-only ``attrs`` class holding its parameters
  (the composer builds it from the spec, validating every field);
* ``requires`` / ``provides`` — capability strings (see :mod:`attrkit.capabilities`);
  the composer checks that every requirement of a spec is provided by some part of it;
* ``availability()`` (optional classmethod) — ``None`` when usable here, else the
  reason and the fix; unavailable components stay listed but refuse to compose.

All components except methods are constructed as ``cls(config)``; a method is
constructed as ``cls(config, task=task, parts=parts)`` with its resolved parts.
Shapes: ``b`` batch, ``p`` gradient dimension, ``k`` feature (projected) dimension.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from attrkit.context import FitContext, Member
    from attrkit.results import MetricResult
    from attrkit.task import AttributionTask

__all__ = [
    "KINDS",
    "SLOTS",
    "Attributor",
    "Component",
    "Ensemble",
    "GradientSource",
    "Grouper",
    "HessianSolver",
    "Metric",
    "Projector",
]

#: Spec slots a method may use, in spec order (``method`` itself is not a slot).
SLOTS = ("gradients", "projector", "solver", "grouper", "ensemble")
#: Every component kind the registry knows.
KINDS = ("method", *SLOTS, "metric")


@runtime_checkable
class Component(Protocol):
    """What the registry needs of any component class."""

    name: ClassVar[str]
    kind: ClassVar[str]
    Config: ClassVar[type]
    requires: ClassVar[frozenset[str]]
    provides: ClassVar[frozenset[str]]


class GradientSource(Component, Protocol):
    """Turns (member parameters, batch) into per-example gradient vectors.

    ``loss_gradients`` differentiates the task's training loss, ``target_gradients``
    its target; both return ``Tensor[b, p]`` float32 on the model's device, in a fixed
    parameter order, and are independent of how examples are batched.
    """

    def names(self, task: AttributionTask) -> list[str]:
        """The parameters differentiated, in the order their entries take in a gradient vector."""

    def dimension(self, task: AttributionTask) -> int:
        """``p``, the length of one gradient vector for this task."""

    def loss_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]``: gradient of ``task.loss_fn`` for each example of ``batch``."""

    def target_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]``: gradient of ``task.target_fn`` for each example of ``batch``."""


class Projector(Component, Protocol):
    """A linear map ``Tensor[b, p] -> Tensor[b, k]``, deterministic given its seed.

    ``fit`` is called once per member before any projection (no-op for data-free
    projectors); ``project`` must not depend on batch or chunk size.
    """

    def fit(self, context: FitContext) -> None:
        """Prepare for projecting gradients of dimension ``context.dimension``."""

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, k]`` float32, on the input's device."""


class HessianSolver(Component, Protocol):
    """Applies an (approximate) inverse curvature to vectors.

    ``space`` says where it works: ``"feature"`` solvers are fitted on the projected
    training features and applied to projected test features; ``"parameter"`` solvers
    need HVPs and are applied to raw test gradients before projection.

    Two optional class attributes (absent means the default):

    * ``streams_features`` (default ``False``): ``fit`` reads ``context.feature_matrix``
      (tiles, or its ``gram()`` / ``r_factor()``, which reduce over every rank's rows), not
      ``context.features``, so the training features need never be held whole. A
      feature-space solver without it gets ``context.features`` gathered into memory,
      which fails when they exceed the memory budget.
    * ``local_solve`` (default: ``space == "feature"``): ``solve`` reads no training data
      (the curvature is factorised at ``fit``), so in distributed mode each rank may
      solve different vectors (``self_influence`` is then split by batch). A solver
      whose ``solve`` runs passes over the training data (CG, LiSSA, DataInf) reduces
      them over the ranks, which must then solve the same vectors in lock-step.
    """

    space: ClassVar[str]

    def fit(self, context: FitContext) -> None:
        """Fit on the whole training set's curvature (never per batch)."""

    def solve(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, d] -> Tensor[b, d]``: ``H⁻¹ v`` for each row."""


class Grouper(Component, Protocol):
    """Partitions the training set into groups."""

    def assign(self, context: FitContext) -> torch.Tensor:
        """``LongTensor[n_train]`` of group indices ``0..n_groups-1``, every index used."""


class Ensemble(Component, Protocol):
    """Produces the members the score formula sums over."""

    def members(self, task: AttributionTask) -> list[Member]:
        """The weighted members, in a fixed order."""


class Attributor(Component, Protocol):
    """Scores training examples (or groups) for test examples.

    ``slots`` names the spec slots the method uses (a spec setting any other slot is
    refused); ``defaults`` gives the component name used for a slot the spec leaves
    empty. After composing, ``resolved`` holds the full spec and its provenance.
    """

    slots: ClassVar[frozenset[str]]
    defaults: ClassVar[Mapping[str, str]]

    def fit(self, train: Iterable[Any]) -> Attributor:
        """Cache everything that depends only on the training data; returns ``self``."""

    def attribute(self, test: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n_test, n_train]`` (or ``[n_test, n_groups]``) float32 on the CPU."""

    def self_influence(self, train: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n]``: each example's score for itself."""


class Metric(Component, Protocol):
    """Compares scores with ground truth.

    ``needs`` names the ground-truth entries it reads (e.g. ``{"subsets", "values"}``).
    Optionally, for the conformance kit: ``example_inputs(n_test, n_train) -> (scores,
    ground_truth)`` (a classmethod making a small valid case) and ``target_axes``
    (``{entry: axis}`` of the ground-truth entries indexed by target, so that splitting
    the targets can be checked to give the same per-target results).
    """

    needs: ClassVar[frozenset[str]]
    higher_is_better: ClassVar[bool]

    def evaluate(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> MetricResult:
        """Score ``scores`` (``Tensor[n_test, n_train]``) against ``ground_truth``."""
