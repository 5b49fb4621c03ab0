"""Structured inner products: when to take the score's inner products from per-layer factors.

    score(t, i) = Σ_m w_m <∇ target_t, ∇ loss_i>        (grad-dot, grad-cos, TracIn, IF with the identity)
    score(t, i) = Σ_m w_m <H_m⁻¹ ∇ target_t, ∇ loss_i>  (IF, RelatIF with a parameter-space solver)

needs only inner products with raw training gradients. For ``nn.Linear`` / ``nn.Conv`` layers
those come exactly from the layers' inputs and output gradients
(:mod:`attrkit.functional.structured_products`), without forming or storing the training
gradients. :class:`Chooser` decides at the first training batch, for the whole fit, which
layers stay as factors (the gradient source's ``products``: ``"auto"`` where no dearer,
``"structured"`` all, ``"dense"`` none); every member's training side is then packed factor
rows of that :class:`~attrkit.functional.structured_products.ProductLayout`. Without a solver
the queries are packed too (``layout.products``, far cheaper than the dense product where
:func:`~attrkit.functional.structured_products.cheaper_structured`); behind a parameter-space
solver they are the dense solved gradients (``layout.solved_products``: the dense product's
flops for layers at one position per example, :func:`~attrkit.functional.structured_products.cheaper_solved`,
without the ``n × p`` training side).

The training side stays packed when nothing transforms the raw training gradients
(:func:`packs_train`: the identity projector, no solver, the identity or a parameter-space one),
with the singleton grouper, no example weights, no properties on the task (their gradients are
dense), no feature store (its chunks would hold another representation) and a single process.
Behind a projector or a feature-space solver (TRAK) the training features are dense as ever, but
come from the factors, which ``"auto"`` takes for layers at one position per example: a projector
with ``projects_packed`` (the Gaussian, Rademacher and ``arnoldi`` ones) projects them without
forming the gradients (``projector.project_packed``: the dense projection's flops, and no
per-example gradient pass), on the test side too (:func:`query_packer`); any other projector (a
sparse sketch, or none before a feature-space solver) gets the training gradients formed from the
factors (``layout.materialize``: one in-place outer product per layer into the ``[b, p]`` block,
instead of a per-example backward and the concatenation of its pieces; 15–20 % faster for the
sparse sketch on the MNIST settings). The same features to round-off either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from attrkit import capabilities, distributed
from attrkit.errors import FactorisationError, SpecError
from attrkit.functional.factored_plan import FactorPlan, plan_factors
from attrkit.functional.gradient_factors import FactoredGradients
from attrkit.functional.structured_products import ProductLayout, cheaper_solved, product_layout

if TYPE_CHECKING:
    from attrkit.context import Member
    from attrkit.engine.attributor import GradientAttributor
    from attrkit.engine.state import FittedMember
    from attrkit.feature_matrix import FeatureMatrix

__all__ = ["Chooser", "HeldFactors", "check_spec", "chooser", "held_factors", "packs_train", "query_packer"]


def _why_dense_parts(method: GradientAttributor) -> str | None:
    """Which part of the spec needs the dense gradients, or ``None``."""
    parts = method.parts
    if "grouper" in parts and not parts["grouper"].cls.singletons:
        return f"grouper {parts['grouper'].name!r} sums gradients per group"
    return None


def packs_train(method: GradientAttributor) -> bool:
    """Whether the training side can stay packed factor rows: no projector but the identity, and no
    solver, the identity or a parameter-space one (else the factors only form the gradients)."""
    parts = method.parts
    projector, solver = parts.get("projector"), parts.get("solver")
    return ((projector is None or projector.cls.identity)
            and (solver is None or solver.cls.identity or solver.cls.space == "parameter"))


def _solved(method: GradientAttributor) -> bool:
    """Whether the queries pass through a (parameter-space) solver."""
    return "solver" in method.parts and not method.parts["solver"].cls.identity


def _refuse(why: str) -> SpecError:
    return SpecError([f"gradients.products='structured' needs the raw training gradients per example, but {why}; "
                      "use products='auto' (which takes dense products here) or 'dense'"])


def check_spec(method: GradientAttributor) -> None:
    """Refuse ``products="structured"`` in a spec whose parts transform the gradients (at composition).

    Raises:
        SpecError: naming the part.
    """
    source = method.gradients
    if capabilities.STRUCTURED in source.provides and source.config.products == "structured":
        why = _why_dense_parts(method)
        if why is not None:
            raise _refuse(why)


def _why_dense(method: GradientAttributor, store: Any, weights: torch.Tensor | None) -> str | None:
    """What in the composition or the fit needs the dense gradients, or ``None``."""
    why = _why_dense_parts(method)
    if why is not None:
        return why
    if distributed.world() is not None:
        return "distributed runs take dense products"
    if not packs_train(method):  # the factors only form the gradients: the features are dense as ever
        return None
    if weights is not None:
        return f"method {method.name!r} weights the training examples"
    if method.task.properties is not None:
        return "the task's properties are attributed with dense gradients"
    if store is not None:
        return "a feature store holds dense features (fit without store=, or products='dense')"
    return None


class Chooser:
    """The product layout of one fit, chosen at its first training batch.

    Attributes:
        mode: ``"auto"`` or ``"structured"``.
        packs_train: the training side stays packed rows (:func:`packs_train`); else the packed rows
            only form the dense gradients that are then projected.
        layout: the chosen :class:`ProductLayout`, ``None`` before the first batch; after it,
            ``None`` when the fit takes dense products.
        decided: whether the first batch has been seen.
    """

    def __init__(self, method: GradientAttributor, mode: str):
        self.method, self.mode = method, mode
        self.packs_train = packs_train(method)
        self.layout: ProductLayout | None = None
        self.decided = False

    @classmethod
    def fixed(cls, method: GradientAttributor, layout: ProductLayout) -> Chooser:
        """A chooser already decided on ``layout`` (a fitted member's, for its queries)."""
        out = cls(method, "structured")
        out.layout, out.decided = layout, True
        return out

    def rows(self, member: Member, batch: Any, fn: Any) -> torch.Tensor | None:
        """``Tensor[b, width]`` packed factor rows of ``fn``'s per-example gradients on ``batch``, or
        ``None`` when this fit takes dense products (decided at the first call).

        Raises:
            SpecError: ``products="structured"`` on a model without factored layers.
            FactorisationError: ``products="structured"`` where a layer's weight is also used
                outside its module; or a later batch with more positions than the first.
        """
        if self.decided and self.layout is None:
            return None
        task = self.method.task
        try:
            grads = self.method.gradients.factors(task, fn, member, batch)
        except FactorisationError:
            if self.decided or self.mode == "structured":
                raise
            self.decided = True
            return None
        if not self.decided:
            self.decided = True
            if self.mode == "structured":
                keep = [True] * len(grads.layers)
            elif _solved(self.method) or not self.packs_train:  # auto: layers at one position
                keep = [cheaper_solved(x.inputs.shape[1]) for x in grads.layers]
            else:  # auto: where cheaper than the dense product
                keep = None
            layout = product_layout(grads, keep)
            if not layout.structured:
                if self.mode == "structured":
                    raise SpecError([f"gradients.products='structured': the model has no nn.Linear or nn.Conv1d/2d "
                                     "layer among the differentiated parameters; use products='auto' or 'dense'"])
                return None
            self.layout = layout
        return self.layout.pack(grads)


class HeldFactors:
    """The training set's factored loss gradients, unpacked tile by tile from a member's packed rows
    (``FitContext.factors``: a solver fits from them instead of another pass over the data)."""

    def __init__(self, layout: ProductLayout, rows: FeatureMatrix, plan: FactorPlan, sizes: dict[str, int]):
        self.layout, self.rows, self.plan, self.sizes = layout, rows, plan, sizes

    def __len__(self) -> int:
        return -(-self.rows.rows // self.rows.tile_rows())

    def __iter__(self) -> Iterator[FactoredGradients]:
        for tile in self.rows.tiles():
            yield self.layout.unpack(tile.values, self.plan, self.sizes)


def held_factors(method: GradientAttributor, layout: ProductLayout | None, rows: FeatureMatrix, member: Member,
                 skipped: bool) -> HeldFactors | None:
    """The :class:`HeldFactors` of a member's packed training rows, or ``None`` where they are not the
    training loss's whole factored gradients: no layout, a layer materialised or at several
    positions (padding would count), the target differentiated (TRAK), or examples skipped."""
    if layout is None or method.train_target or skipped:
        return None
    if not all(slot.structured and slot.positions == 1 for slot in layout.layers):
        return None
    names = method.gradients.names(method.task)
    sizes = {name: member.state[name].numel() for name in names}
    return HeldFactors(layout, rows, plan_factors(method.task.model, names), sizes)


def query_packer(method: GradientAttributor, fitted: FittedMember) -> Chooser | None:
    """A chooser for the test gradients of a member with dense training features, when its projector
    projects from factors (``projects_packed``), the gradient source gives them (products not
    ``"dense"``) and no parameter-space solver needs the raw gradients: the queries are then
    projected without forming the target's per-example gradients; else ``None``. It depends on
    the spec alone, so a fit that reads its features back from a store queries alike."""
    source, projector, solver = method.gradients, fitted.projector, fitted.solver
    if (projector is None or not projector.projects_packed or capabilities.STRUCTURED not in source.provides
            or source.config.products == "dense" or distributed.world() is not None
            or (solver is not None and solver.space == "parameter")):
        return None
    return Chooser(method, source.config.products)


def chooser(method: GradientAttributor, store: Any, weights: torch.Tensor | None) -> Chooser | None:
    """The fit's :class:`Chooser`, or ``None`` when it takes dense products.

    Raises:
        SpecError: ``products="structured"`` in a composition that needs dense gradients
            (the message says which part).
    """
    source = method.gradients
    if capabilities.STRUCTURED not in source.provides or source.config.products == "dense":
        return None
    why = _why_dense(method, store, weights)
    if why is None:
        return Chooser(method, source.config.products)
    if source.config.products == "structured":
        raise _refuse(why)
    return None
