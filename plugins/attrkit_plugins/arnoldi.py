"""The ``arnoldi`` projector: onto the top eigenvectors of the training-loss curvature
(Schioppa et al., 2022, "Scaling up influence functions")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import (
    HVP,
    ArgumentError,
    FitContext,
    NotFittedError,
    Projector,
    SpecError,
    StateValue,
    float_field,
    hookimpl,
    int_field,
    positive_int,
    seed_field,
)
from attrkit.functional.curvature import lanczos
from attrkit.functional.ihvp import prepare_at
from attrkit.functional.structured_matvec import MATVECS, curvature_matvec
from attrkit.functional.gradients import flat_dimension, select_parameters


@attrs.frozen(kw_only=True)
class ArnoldiConfig:
    """Config of ``arnoldi``.

    Attributes:
        dim: number of eigenpairs kept, ``k``.
        curvature: ``"hessian"`` (exact, may be indefinite away from a minimum) or
            ``"gauss-newton"`` (positive semi-definite for convex losses of the outputs;
            ``loss_fn`` must call the model once per batch).
        max_iter: Lanczos iterations, i.e. passes over the training set; default
            ``min(p, 2 * dim + 20)``. Must be at least ``dim``; ``p`` gives exact eigenpairs.
        regularization: damping ``λ >= 0``: the curvature is ``H + λI``.
        seed: fixes the Lanczos start vector.
        scale: project onto ``u_i / sqrt(λ_i + λ)``, so that a plain dot product of two
            projections is ``gᵀ U (Λ + λI)⁻¹ Uᵀ g'``, a rank-``dim`` inverse-curvature product.
            With ``False``, onto the orthonormal eigenvectors ``u_i``.
        matvec: how the curvature products are taken, as the ``arnoldi`` solver's: ``"auto"``
            (default) from the layer structure where it applies and ``p > 256``
            (:func:`~attrkit.functional.structured_matvec.curvature_matvec`: one pass caches
            per-example factors, each Lanczos step is then GEMMs), else dataset HVPs (one pass per
            step); ``"hvp"``; or ``"structured"``, refused where it does not apply.
    """

    dim: int = positive_int(64, (4, 8))
    curvature: str = attrs.field(
        default="hessian",
        validator=attrs.validators.in_(("hessian", "gauss-newton")),
        metadata={"examples": ("gauss-newton", "hessian")},
    )
    max_iter: int | None = int_field(None, ge=1, optional=True, examples=(None,))
    regularization: float = float_field(0.0, ge=0.0, examples=(0.01, 0.0))
    seed: int = seed_field(per_member=True)
    scale: bool = attrs.field(
        default=True, validator=attrs.validators.instance_of(bool), metadata={"examples": (True, False)}
    )
    matvec: str = attrs.field(default="auto", validator=attrs.validators.in_(MATVECS),
                              metadata={"examples": ("auto", "hvp")})

    def __attrs_post_init__(self) -> None:
        if self.max_iter is not None and self.max_iter < self.dim:
            raise ArgumentError(f"max_iter must be >= dim (a Lanczos step per eigenpair), got {self.max_iter} < {self.dim}")


class ArnoldiProjector(Projector):
    """``g -> Uᵀ g`` (optionally scaled), ``U`` the top-``dim`` eigenvectors of the curvature
    of the mean training loss over the whole training set, at the member's weights.

    Fitting runs Lanczos with full reorthogonalisation (:func:`attrkit.functional.curvature.lanczos`)
    over dataset Hessian- (or Gauss-Newton-) vector products: ``max_iter`` passes over the
    training data, each one HVP per batch (about 2-3 gradient evaluations), or, where the
    layer structure applies (``matvec``), one pass and ``max_iter`` products in GEMMs; the Krylov
    basis takes ``max_iter * p * 8`` bytes. Eigenvectors are those of the largest *algebraic*
    eigenvalues. After fitting, ``eigenvalues`` (``Tensor[min(dim, p)]`` float64, of the undamped
    curvature, descending) and ``basis`` (``Tensor[p, min(dim, p)]`` in the parameters' dtype,
    scaled when ``scale``) are kept; projections are returned as float32.
    With ``scale=True`` and a grad-dot method, scores are influence functions restricted to
    the top eigenspace (with ``dim = p``: exactly ``gᵀ (H + λI)⁻¹ g'``).

    ``dim`` (and ``max_iter``) larger than the number ``p`` of selected parameters is
    clamped to ``p``, without a warning: every eigenpair is then kept, the projection is
    exact (an orthogonal change of basis, scaled), and the features are ``p`` wide instead of
    ``dim``. So the default ``dim = 64`` runs on any model. With ``scale=True``, an eigenpair
    whose damped eigenvalue ``λ_i + λ`` is numerically zero (within ``max(p, dim) · eps ·
    max|λ_j|``, ``eps`` of the parameters' dtype: the null space of the curvature at
    ``λ = 0``) is projected onto 0, the pseudo-inverse, rather than scaled by
    ``1/sqrt(round-off)``; the width does not change.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "projector": {"name": "arnoldi", "dim": 64, "regularization": 1e-3}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "arnoldi"
    Config: ClassVar[type] = ArnoldiConfig
    requires: ClassVar[frozenset[str]] = frozenset({HVP})
    projects_packed: ClassVar[bool] = True

    def __init__(self, config: ArnoldiConfig):
        super().__init__(config)
        self.eigenvalues: torch.Tensor | None = None
        self.basis: torch.Tensor | None = None

    def fit(self, context: FitContext) -> None:
        """Find the top-``dim`` eigenpairs at ``context.member`` over ``context.train``.

        The parameters are those the gradient source selects (``names(task)``), all of
        them when ``context.gradients`` is ``None``.

        ``dim`` and ``max_iter`` are clamped to ``p`` (then ``basis`` is ``Tensor[p, p]``).

        Raises:
            SpecError: a gradient dimension that is not the selected parameters' size, or
                (``scale=True``) a kept eigenvalue with ``λ_i + regularization < 0`` beyond
                round-off.
        """
        c, task = self.config, context.task
        gradients = context.gradients
        names = gradients.names(task) if gradients is not None else select_parameters(task.model, ("*",))
        p = flat_dimension(task.model, names)
        if p != context.dimension:
            raise SpecError([
                f"projector: arnoldi works on the parameters {names} ({p} entries) but the gradient source "
                f"gives vectors of dimension {context.dimension}; use a gradient source of plain parameter gradients"
            ])
        dim = min(c.dim, p)  # dim >= p: every eigenpair, the exact (scaled) change of basis
        state = context.member.state
        meter, _ = prepare_at(state, names, context.train, c.regularization, c.curvature)
        matvec, _ = curvature_matvec(meter, task.model, task.loss_fn, state, names, c.curvature, c.matvec,
                                     "arnoldi projector")
        max_iter = min(c.max_iter if c.max_iter is not None else 2 * dim + 20, p)
        values, vectors = lanczos(matvec, p, dim, max_iter, c.seed, device=task.device)
        dtype = context.member.state[names[0]].dtype
        if c.scale:
            damped = values + c.regularization
            noise = max(p, dim) * torch.finfo(dtype).eps * float(values.abs().max())
            if (damped < -noise).any():
                worst = float(damped.min())
                raise SpecError([
                    f"projector.regularization: eigenvalue + regularization = {worst:.3g} <= 0 among the top {dim} "
                    f"of the {c.curvature}, so 1/sqrt cannot scale it; raise regularization above "
                    f"{c.regularization - worst:.3g}, lower dim, use curvature='gauss-newton' (positive semi-definite) "
                    "or scale=false"
                ])
            kept = damped > noise  # numerically null directions: projected to 0 (the pseudo-inverse)
            vectors = vectors * torch.where(kept, torch.where(kept, damped, 1.0).rsqrt(), 0.0)
        self.eigenvalues = values
        self.basis = vectors.to(dtype)

    def state_dict(self) -> dict[str, StateValue]:
        """``{"eigenvalues", "basis"}``: the fitted eigenpairs (``basis`` scaled when ``scale``).

        Raises:
            NotFittedError: before ``fit``.
        """
        if self.basis is None:
            raise NotFittedError("arnoldi projector cannot be saved before fit(context)")
        return {"eigenvalues": self.eigenvalues, "basis": self.basis}

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Restore the fitted eigenpairs."""
        self.eigenvalues, self.basis = state["eigenvalues"], state["basis"]

    def project(self, vectors: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p] -> Tensor[b, min(dim, p)]`` float32, on the input's device.

        Raises:
            NotFittedError: before ``fit``.
            ValueError: vectors of another dimension than the fitted ``p``.
        """
        if self.basis is None:
            raise NotFittedError("arnoldi projector used before fit(context)")
        if vectors.shape[-1] != self.basis.shape[0]:
            p = self.basis.shape[0]
            raise ArgumentError(f"arnoldi was fitted for dimension {p}, got vectors of dimension {vectors.shape[-1]}")
        projected = vectors.to(device=self.basis.device, dtype=self.basis.dtype) @ self.basis
        return projected.to(vectors.device, torch.float32)

    def project_packed(self, layout: Any, packed: torch.Tensor) -> torch.Tensor | None:
        """:meth:`project` of the gradients that packed factor rows stand for, without forming them:
        each layer's factors meet its rows of the basis (``layout.project``); ``None`` for rows in
        another dtype than the basis (the engine then forms the gradients).

        Raises:
            NotFittedError: before ``fit``.
            ValueError: rows of gradients of another dimension than the fitted ``p``.
        """
        if self.basis is None:
            raise NotFittedError("arnoldi projector used before fit(context)")
        p = layout.flat_width("project from factors")
        if p != self.basis.shape[0]:
            raise ArgumentError(f"arnoldi was fitted for dimension {self.basis.shape[0]}, got factors of dimension {p}")
        if packed.dtype != self.basis.dtype:
            return None
        projected = layout.project(packed.to(self.basis.device), lambda start, stop: self.basis[start:stop])
        return projected.to(packed.device, torch.float32)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [ArnoldiProjector]
