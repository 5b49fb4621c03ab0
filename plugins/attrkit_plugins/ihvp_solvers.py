"""Hessian solvers over HVPs: ``explicit``, ``cg``, ``lissa`` and ``arnoldi``.

Parameter space: the curvature (Hessian or Gauss-Newton) of the *mean* training loss over
the whole training set, never per-batch inverses; each is applied to raw test gradients
before any projection.

The default curvature is Gauss-Newton ``Jᵀ H_ℓ J``: positive semi-definite, so any
``regularization > 0`` makes it invertible on non-convex models (the Hessian of an MLP is
usually indefinite away from a minimum, and the solvers then refuse it with the damping
it would need). Gauss-Newton sees ``loss_fn`` only through the model's output: a term
written directly on the parameters (an L2 penalty) is not in it — add it through
``regularization``, or choose ``curvature="hessian"``. The maths is in :mod:`attrkit.functional.ihvp_explicit`,
:mod:`~attrkit.functional.ihvp_cg`, :mod:`~attrkit.functional.ihvp_lissa` and
:mod:`~attrkit.functional.ihvp_arnoldi`; config fields are their builders' keyword arguments.

Where every selected parameter is in an ``nn.Linear`` / ``nn.Conv1d/2d`` applied once per
example, ``explicit`` builds its matrix (``build``) and ``cg``, ``arnoldi`` and ``lissa`` take
their products (``matvec``) from the layer structure, in GEMMs on per-example factors collected in
one pass, instead of from HVPs (``lissa``: on each step's sampled examples, single process).

In distributed mode (:mod:`attrkit.distributed`) the curvature products are split over the
ranks and all-reduced: at ``fit`` for ``explicit`` and ``arnoldi``, which then solve
locally (``local_solve``), and at every solve for ``cg`` (each iteration's pass, or its
structured product over each rank's cached examples) and ``lissa`` (each sampled batch),
whose solves run in lock-step on every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import (
    HVP,
    ArgumentError,
    AttributionTask,
    ParameterSolver,
    Part,
    Solve,
    float_field,
    gradient_dimension,
    hookimpl,
    positive_int,
    seed_field,
)
from attrkit.functional import arnoldi_ihvp_at, cg_ihvp_at, explicit_ihvp_at, lissa_ihvp_at
from attrkit.functional.ihvp_cg import PRECONDITIONERS


def _regularization(default: float = 1e-3) -> Any:
    return float_field(default, ge=0.0, examples=(1e-2, 1e-1))


def _structure() -> Any:
    """A ``build`` / ``matvec`` field: ``"auto"``, ``"hvp"`` or ``"structured"`` (how the curvature is taken)."""
    return attrs.field(default="auto", validator=attrs.validators.in_(("auto", "hvp", "structured")),
                       metadata={"examples": ("auto", "hvp")})


def _curvature() -> Any:
    return attrs.field(
        default="gauss-newton",
        validator=attrs.validators.in_(("hessian", "gauss-newton")),
        metadata={"examples": ("gauss-newton", "hessian")},
    )


class _HVPSolver(ParameterSolver):
    """Calls ``build_at(model, loss_fn, state, names, batches, **config)`` once per member."""

    requires: ClassVar[frozenset[str]] = frozenset({HVP})
    build_at: ClassVar[Callable[..., Solve]]

    def build(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
        state: Mapping[str, torch.Tensor],
        names: Sequence[str],
        batches: Iterable[Any],
    ) -> Solve:
        """The ``InverseHVP`` of the whole training set at ``state`` (its ``stats`` record the cost)."""
        return type(self).build_at(model, loss_fn, state, names, batches, **attrs.asdict(self.config))


@attrs.frozen(kw_only=True)
class ExplicitConfig:
    """Config of ``explicit``.

    Attributes:
        regularization: damping ``λ >= 0`` (``H + λI`` must be positive definite).
        curvature: ``"gauss-newton"`` (default) or ``"hessian"``.
        max_dim: refuse more selected parameters ``p`` than this (the matrix and its
            factor take ``16 p²`` bytes); checked when the spec is composed.
        build: how the ``p × p`` curvature is built. ``"auto"`` (default): from the layer
            structure in large GEMMs where that applies (every selected parameter in an
            ``nn.Linear`` / ``nn.Conv1d/2d`` applied once per example; for ``"hessian"``, a
            probe finding it equal to Gauss-Newton, e.g. logistic regression) and ``p`` exceeds
            one pass of HVPs, else from HVPs; ``"hvp"``: always from HVPs (any model);
            ``"structured"``: from the layer structure, refused (``CurvatureError``, with the
            reason) where it does not apply. Both give the same matrix to round-off.
    """

    regularization: float = _regularization()
    curvature: str = _curvature()
    max_dim: int = positive_int(20000)
    build: str = _structure()


class ExplicitSolver(_HVPSolver):
    """Exact ``(H + λI)⁻¹``: ``H`` assembled from HVPs or from the layer structure (``build``),
    Cholesky-factorised once (``p³/3`` flops). The fitted ``InverseHVP``'s ``stats.info["structured"]``
    says which build ran. See :func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`."""

    name: ClassVar[str] = "explicit"
    Config: ClassVar[type] = ExplicitConfig
    local_solve: ClassVar[bool] = True
    build_at = staticmethod(explicit_ihvp_at)

    @classmethod
    def check(cls, config: ExplicitConfig, task: AttributionTask, parts: Mapping[str, Part]) -> list[str]:
        """Refuse ``p > max_dim`` (``p`` the gradient source's dimension) before any work."""
        p = gradient_dimension(task, parts)
        if p is None or p <= config.max_dim:
            return []
        gib = 16 * p * p / 2**30
        return [f"solver.max_dim: the explicit solver builds a p × p matrix and its factor ({gib:.3g} GiB in "
                f"float64), and the gradient source selects p={p} parameters, more than max_dim={config.max_dim}: "
                "select fewer parameters, use the cg, lissa or arnoldi solver, or raise max_dim if that memory "
                "is available"]


@attrs.frozen(kw_only=True)
class CGConfig:
    """Config of ``cg``.

    Attributes:
        regularization: damping ``λ >= 0``.
        curvature: ``"gauss-newton"`` (default) or ``"hessian"``.
        max_iter: CG iterations per solve, each one curvature product (with HVPs, one pass over the training data).
        tol: relative residual at which a vector stops.
        matvec: how the curvature products are taken: ``"auto"`` (default) from the layer structure where
            it applies (every selected parameter in an ``nn.Linear`` / ``nn.Conv1d/2d`` applied once per
            example; for ``"hessian"``, a probe finding it equal to Gauss-Newton, e.g. logistic regression;
            the factors within a quarter of the available memory) and ``p > 256``, else from HVPs;
            ``"hvp"``: dataset HVPs, one pass per product; ``"structured"``: GEMMs on per-example factors
            cached from one pass, refused (``CurvatureError``) where they do not apply. Both give the
            same products to round-off.
        preconditioner: ``"none"`` (default), ``"kfac"`` or ``"ekfac"``: preconditioned CG with the
            damped inverse of the Kronecker-factored empirical Fisher, fitted at the build (one pass of
            factored gradients, two for EK-FAC). Same solution and stopping rule; fewer iterations to
            reach ``tol`` when the factors are close to the curvature.
    """

    regularization: float = _regularization()
    curvature: str = _curvature()
    max_iter: int = positive_int(10, (5,))
    tol: float = float_field(1e-6, gt=0.0)
    matvec: str = _structure()
    preconditioner: str = attrs.field(default="none", validator=attrs.validators.in_(PRECONDITIONERS),
                                      metadata={"examples": ("kfac",)})


class CGSolver(_HVPSolver):
    """Block conjugate gradients on the dataset curvature: all test vectors of a batch together.

    Truncated before convergence, CG's result is not a linear function of its right-hand
    side (the Krylov space depends on it), hence ``linear = False``. A solve that stops at
    ``max_iter`` with a vector above ``tol`` issues one
    :class:`~attrkit.errors.ConvergenceWarning` per fitted solver (per member), with the
    residual reached and the fixes; every solve records ``iterations``,
    ``max_relative_residual`` and ``unconverged_solves`` in the fitted ``InverseHVP``'s
    ``stats.info`` (and ``structured``, which curvature products were used). See
    :func:`~attrkit.functional.ihvp_cg.cg_ihvp_at`.
    """

    name: ClassVar[str] = "cg"
    linear: ClassVar[bool] = False
    Config: ClassVar[type] = CGConfig
    build_at = staticmethod(cg_ihvp_at)


@attrs.frozen(kw_only=True)
class LiSSAConfig:
    """Config of ``lissa``.

    Attributes:
        regularization: damping ``λ >= 0``.
        curvature: ``"gauss-newton"`` (default) or ``"hessian"``.
        depth: recursion steps.
        scale: must exceed ``λ_max(H) + λ`` for convergence.
        batch_size: training examples sampled per step.
        seed: seeds the sampling.
        repeat: independent runs averaged.
        matvec: how each step's sampled curvature product is taken: ``"auto"`` (default), ``"hvp"``
            or ``"structured"``, as for ``cg`` (the structured one single-process only).
    """

    regularization: float = _regularization()
    curvature: str = _curvature()
    depth: int = positive_int(500, (20,))
    scale: float = float_field(10.0, gt=0.0, examples=(50.0,))
    batch_size: int = positive_int(10, (10, 4))
    seed: int = seed_field()
    repeat: int = positive_int(1)
    matvec: str = _structure()


class LiSSASolver(_HVPSolver):
    """LiSSA (Agarwal et al., 2017): a Neumann series with curvature products on sampled mini-batches:
    HVPs, or (``matvec``) GEMMs on the sampled examples' rows of the structured operator's cached
    factors (single process). See :func:`~attrkit.functional.ihvp_lissa.lissa_ihvp_at`."""

    name: ClassVar[str] = "lissa"
    Config: ClassVar[type] = LiSSAConfig
    build_at = staticmethod(lissa_ihvp_at)


@attrs.frozen(kw_only=True)
class ArnoldiConfig:
    """Config of solver ``arnoldi``.

    Attributes:
        regularization: damping ``λ >= 0``.
        curvature: ``"gauss-newton"`` (default) or ``"hessian"``.
        rank: eigenpairs kept.
        max_iter: Lanczos iterations (``>= rank``), each one curvature product.
        seed: fixes the start vector.
        matvec: how the curvature products are taken: ``"auto"`` (default), ``"hvp"`` or
            ``"structured"``, as for ``cg``.
    """

    regularization: float = _regularization()
    curvature: str = _curvature()
    rank: int = positive_int(50, (4, 8))
    max_iter: int = positive_int(100, (20,))
    seed: int = seed_field()
    matvec: str = _structure()

    def __attrs_post_init__(self) -> None:
        if self.rank > self.max_iter:
            raise ArgumentError(f"rank must be <= max_iter, got rank {self.rank} > max_iter {self.max_iter}")


class ArnoldiSolver(_HVPSolver):
    """Low-rank ``U (Λ + λI)⁻¹ Uᵀ`` on the top Lanczos eigenpairs (Schioppa et al., 2022).

    ``rank`` and ``max_iter`` are clamped to the number ``p`` of selected parameters, so
    the default spec runs on any model: with ``p <= rank`` every eigenpair is kept and the
    result is the exact ``(H + λI)⁻¹`` on the full space, as the ``explicit`` solver's (no
    warning: nothing is lost). Eigenpairs with a numerically zero ``λ_i + λ`` are dropped
    (pseudo-inverse). See :func:`~attrkit.functional.ihvp_arnoldi.arnoldi_ihvp_at`.
    """

    name: ClassVar[str] = "arnoldi"
    Config: ClassVar[type] = ArnoldiConfig
    local_solve: ClassVar[bool] = True
    build_at = staticmethod(arnoldi_ihvp_at)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [ExplicitSolver, CGSolver, LiSSASolver, ArnoldiSolver]
