"""The contract of every component kind, as a small base class a plugin subclasses.

A component is a *class* with these class attributes, declared once here with their
defaults (the composer and the engine read them; nothing is looked up with a fallback):

* ``name`` — registered name, lowercase with hyphens (``"grad-dot"``);
* ``kind`` — one of :data:`KINDS` (set by the base class);
* ``Config`` — a frozen, keyword-only ``attrs`` class holding its parameters
  (the composer builds it from the spec, validating every field);
* ``requires`` / ``provides`` — capability strings (see :mod:`attrkit.capabilities`);
  the composer checks that every requirement of a spec is provided by some part of it;
* the flags of its kind below (``HessianSolver.space``, ``Ensemble.gradient_params``…);
* ``availability()`` — ``None`` when usable here, else the reason and the fix;
  unavailable components stay listed but refuse to compose.
* ``check(config, task, parts)`` — problems decided from the spec and the task, which
  :func:`attrkit.compose` reports before any work (default: none).

Every component is constructed as ``cls(config)``, except methods, which are constructed
as ``cls(config, task=task, parts=parts, resolved=resolved)`` with a
:class:`~attrkit.parts.Part` per slot. Shapes: ``b`` batch, ``p`` gradient dimension, ``k``
feature (projected) dimension. The registry refuses a class that does not subclass the
base of its kind (see :func:`attrkit.plugins.component_problems`).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from attrkit.errors import LoadError, SaveError

if TYPE_CHECKING:
    import torch

    from attrkit.context import FitContext, Member
    from attrkit.parts import Part
    from attrkit.results import MetricResult
    from attrkit.saving import Saved
    from attrkit.task import AttributionTask
    from attrkit.types import PartState, StateValue

__all__ = [
    "BASES",
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


class Component(ABC):
    """What every component has: identity, parameters and capabilities.

    Args:
        config: an instance of the class's ``Config``.
        resolved: the checked spec it was made from and its provenance
            (:class:`attrkit.compose.Resolved`), when built by :func:`attrkit.compose` or
            :func:`attrkit.metric`; ``None`` for a part made by a method.
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    Config: ClassVar[type]
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: Any, *, resolved: Any = None):
        self.config, self.resolved = config, resolved

    @classmethod
    def availability(cls) -> str | None:
        """``None`` when the component can run on this machine, else why not and the fix."""
        return None

    @classmethod
    def check(cls, config: Any, task: AttributionTask, parts: Mapping[str, Part]) -> list[str]:
        """Problems of this part that the spec and the task decide, before any work.

        :func:`attrkit.compose` calls it for every part (the method's first) once every config
        is built and raises one :class:`~attrkit.errors.SpecError` with all of them
        (:mod:`attrkit.precheck` has helpers: the gradient dimension ``p``, the member count).
        Cheap checks only (sizes, the model's modules, the task's checkpoints), and only
        when decidable: what needs data is checked at ``fit``. Default: no problems.

        Args:
            config: this part's config.
            task: the task the attributor is composed for.
            parts: ``{slot: Part}`` of the whole spec (the method excluded).

        Returns:
            One line per problem, starting with the part's spec path (``solver.max_dim: …``).
        """
        return []


class GradientSource(Component):
    """Turns (member parameters, batch) into per-example gradient vectors.

    ``loss_gradients`` differentiates the task's training loss, ``target_gradients``
    its target; both return ``Tensor[b, p]`` float32 on the model's device (or a factored
    block with ``shape`` and ``materialize()``), in a fixed parameter order, and are
    independent of how examples are batched.
    """

    kind: ClassVar[str] = "gradients"

    @abstractmethod
    def names(self, task: AttributionTask) -> list[str]:
        """The parameters differentiated, in the order their entries take in a gradient vector."""

    @abstractmethod
    def dimension(self, task: AttributionTask) -> int:
        """``p``, the length of one gradient vector for this task."""

    @abstractmethod
    def loss_gradients(self, task: AttributionTask, member: Member, batch: Any) -> Any:
        """``Tensor[b, p]``: gradient of ``task.loss_fn`` for each example of ``batch``."""

    @abstractmethod
    def target_gradients(self, task: AttributionTask, member: Member, batch: Any) -> Any:
        """``Tensor[b, p]``: gradient of ``task.target`` for each example of ``batch``."""


class _Saveable:
    """``state_dict`` / ``load_state_dict`` of a part fitted per ensemble member (projectors, solvers).

    A part is saveable when it implements both; the defaults refuse, so that a part that does
    not is never saved half-way (:meth:`attrkit.GradientAttributor.save` collects every part's
    state before writing anything).
    """

    name: ClassVar[str]
    kind: ClassVar[str]

    def state_dict(self) -> PartState:
        """The fitted state, for :meth:`attrkit.GradientAttributor.save`.

        A flat ``{key: Tensor | int | float | str | None}`` (:data:`attrkit.types.StateValue`),
        written with ``torch.save`` and read back with ``torch.load(weights_only=True)`` (no
        pickled objects: nested data goes in as several keys or a JSON string), from which
        :meth:`load_state_dict` makes a fresh instance of the same config behave exactly as
        this one (bit-identical outputs) without fitting. Return the part's own tensors; they
        are written, never changed. A data-free random part needs only what it was fitted with
        (its input dimension): its matrix comes again from its seed.

        Raises:
            SaveError: the part cannot be saved (the default): names it, why and the alternative.
            NotFittedError: before ``fit``.
        """
        raise SaveError(_unsaveable(self))

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Become the fitted part ``state`` describes (a :meth:`state_dict` of a part of the same
        config); ``fit`` is not called. Tensors arrive on the task's device.

        Raises:
            SaveError: the part cannot be saved or loaded (the default).
        """
        raise SaveError(_unsaveable(self))


def _unsaveable(part: _Saveable) -> str:
    return (f"{part.kind} {part.name!r} cannot be saved: it does not implement state_dict() and load_state_dict(); "
            "fit the attributor again in the new process (attrkit.compose(spec, task).fit(train)), or use a "
            f"{part.kind} that implements them")


class Projector(_Saveable, Component):
    """A linear map ``Tensor[b, p] -> Tensor[b, k]``, deterministic given its seed.

    ``fit`` is called once per member before any projection (a no-op for data-free
    projectors); ``project`` must not depend on batch or chunk size. A projector that
    ``requires`` :data:`~attrkit.capabilities.FACTORED` is given factored gradient blocks
    whole; any other gets dense ``Tensor[b, p]``. A ``seed`` declared with
    ``seed_field(per_member=True)`` gives every ensemble member its own draw.
    """

    kind: ClassVar[str] = "projector"
    #: ``project`` returns its input unchanged (the engine may then take structured products).
    identity: ClassVar[bool] = False
    #: ``project_packed`` may project gradients from their layer factors (the engine's ``"auto"``
    #: products then take it for layers at one position per example; any other projector gets
    #: those layers' gradients formed from the factors).
    projects_packed: ClassVar[bool] = False

    def fit(self, context: FitContext) -> None:
        """Prepare for projecting gradients of dimension ``context.dimension`` (default: nothing)."""

    def project_packed(self, layout: Any, packed: torch.Tensor) -> torch.Tensor | None:
        """``project(layout.materialize(packed))`` (``Tensor[b, k]``) without forming the gradients,
        from packed factor rows ``[b, layout.width]`` of a
        :class:`~attrkit.functional.structured_products.ProductLayout`; or ``None`` where this
        projector has no such path (the default), and the engine forms them."""
        return None

    @abstractmethod
    def project(self, vectors: Any) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, k]``, on the input's device."""


class HessianSolver(_Saveable, Component):
    """Applies an (approximate) inverse curvature to vectors.

    Flags:

    * ``space`` (required): ``"feature"`` solvers are fitted on the projected training
      features and applied to projected test features; ``"parameter"`` solvers need HVPs
      and are applied to raw test gradients before projection.
    * ``streams_features`` (default ``False``): ``fit`` reads ``context.feature_matrix``
      (tiles, or its ``gram()`` / ``r_factor()``, which reduce over every rank's rows), not
      ``context.features``, so the training features need never be held whole. A
      feature-space solver without it gets ``context.features`` gathered into memory,
      which fails when they exceed the memory budget.
    * ``local_solve`` (default ``False``): ``solve`` reads no training data (the curvature
      is factorised at ``fit``), so in distributed mode each rank may solve different
      vectors (``self_influence`` is then split by batch). A solver whose ``solve`` runs
      passes over the training data (CG, LiSSA, DataInf) reduces them over the ranks,
      which must then solve the same vectors in lock-step.
    * ``linear`` (default ``True``): ``solve`` is linear in its input (a truncated
      iterative solver is not: its Krylov space depends on the right-hand side).
    """

    kind: ClassVar[str] = "solver"
    space: ClassVar[str]
    streams_features: ClassVar[bool] = False
    local_solve: ClassVar[bool] = False
    linear: ClassVar[bool] = True
    #: ``solve`` returns its input unchanged (the engine may then take structured products).
    identity: ClassVar[bool] = False

    @abstractmethod
    def fit(self, context: FitContext) -> None:
        """Fit on the whole training set's curvature (never per batch)."""

    @abstractmethod
    def solve(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, d] -> Tensor[b, d]``: ``H⁻¹ v`` for each row."""

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(U, w)`` (``Tensor[d, r]``, ``Tensor[r]``, ``r < d``) when the fitted ``solve`` is exactly
        ``v -> U diag(w) Uᵀ v``, else ``None`` (the default). The engine may then score
        ``(Uᵀ g_i) · (w ⊙ Uᵀ g_t)`` instead of ``g_i · solve(g_t)``: the same scores to round-off,
        in ``r`` columns instead of ``d``."""
        return None


class Grouper(Component):
    """Partitions the training set into groups."""

    kind: ClassVar[str] = "grouper"
    #: ``assign`` always returns the singletons and reads no features.
    singletons: ClassVar[bool] = False

    @abstractmethod
    def assign(self, context: FitContext) -> torch.Tensor:
        """``LongTensor[n_train]`` of group indices ``0..n_groups-1``, every index used."""


class Ensemble(Component):
    """Produces the members the score formula sums over.

    Flag ``gradient_params`` (default ``None``): ``fnmatch`` patterns of the only
    parameters the members differ in (``lora``: the adapters); the gradient source is then
    restricted to them.
    """

    kind: ClassVar[str] = "ensemble"
    gradient_params: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def member_count(cls, config: Any, task: AttributionTask) -> int | None:
        """How many members :meth:`members` gives for ``task``, when known without building
        them (for compose-time checks such as TracIn's learning rates); default ``None``."""
        return None

    @abstractmethod
    def members(self, task: AttributionTask) -> list[Member]:
        """The weighted members, in a fixed order."""


class Attributor(Component):
    """A method: scores training examples (or groups) for test examples.

    ``slots`` names the spec slots the method uses (a spec setting any other slot is
    refused); ``defaults`` gives the component name used for a slot the spec leaves
    empty. Constructed with the task, a :class:`~attrkit.parts.Part` per slot and the
    resolved spec (``self.resolved``: the full spec and its provenance).
    """

    kind: ClassVar[str] = "method"
    slots: ClassVar[frozenset[str]] = frozenset()
    defaults: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: Any, *, task: AttributionTask, parts: Mapping[str, Part], resolved: Any = None):
        super().__init__(config, resolved=resolved)
        self.task, self.parts = task, dict(parts)

    @abstractmethod
    def fit(self, train: Iterable[Any]) -> Attributor:
        """Cache everything that depends only on the training data; returns ``self``."""

    @abstractmethod
    def attribute(self, test: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n_test, n_train]`` (or ``[n_test, n_groups]``) float32 on the CPU."""

    @abstractmethod
    def self_influence(self, train: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n]``: each example's score for itself."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted state to the folder ``path``, for :func:`attrkit.load` in another process.

        The default refuses; a method that saves implements this and :meth:`restore` (with
        :func:`attrkit.saving.save_attributor` and :class:`attrkit.saving.Saved`).

        Raises:
            SaveError: the method cannot be saved (the default).
        """
        raise SaveError(f"method {self.name!r} cannot be saved: it does not implement save() and restore(); fit it "
                        "again in the new process")

    def restore(self, saved: Saved) -> None:
        """Become the fitted attributor that ``saved`` holds (called by :func:`attrkit.load` on a
        freshly composed attributor of the saved spec and the caller's task).

        Raises:
            LoadError: the method cannot be loaded (the default), or ``saved`` does not fit the task.
        """
        raise LoadError(f"method {self.name!r} cannot be loaded: it does not implement restore()")


class Metric(Component):
    """Compares scores with ground truth.

    Flags: ``needs`` (required) names the ground-truth entries it reads (e.g.
    ``{"subsets", "values"}``); ``higher_is_better`` (required); ``target_axes`` (default
    ``None``): ``{entry: axis}`` of the ground-truth entries indexed by target, so that the
    conformance kit can check that splitting the targets gives the same per-target results.
    """

    kind: ClassVar[str] = "metric"
    needs: ClassVar[frozenset[str]]
    higher_is_better: ClassVar[bool]
    target_axes: ClassVar[Mapping[str, int] | None] = None

    @classmethod
    def example_inputs(cls, n_test: int, n_train: int) -> tuple[torch.Tensor, Mapping[str, Any]] | None:
        """A small valid ``(scores [n_test, n_train], ground_truth)`` case for the conformance kit, or ``None``."""
        return None

    @abstractmethod
    def evaluate(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> MetricResult:
        """Score ``scores`` (``Tensor[n_test, n_train]``) against ``ground_truth``."""


#: The base class of each kind; a component must subclass the one of its ``kind``.
BASES: Mapping[str, type[Component]] = {
    "method": Attributor,
    "gradients": GradientSource,
    "projector": Projector,
    "solver": HessianSolver,
    "grouper": Grouper,
    "ensemble": Ensemble,
    "metric": Metric,
}

#: Flags a kind's components must define themselves (no default makes sense).
REQUIRED_FLAGS: Mapping[str, tuple[str, ...]] = {"solver": ("space",), "metric": ("needs", "higher_is_better")}
