"""The two sides of the score formula for one member: raw gradients, projected, preconditioned.

    query(t) = Precond(Proj(∇ target_t))        train(i) = Proj(∇ loss_i)

A *parameter*-space solver is applied to the raw gradient before projection, a
*feature*-space one after it; with cosine, both sides are normalised to unit length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from attrkit import capabilities, checks
from attrkit.context import Member
from attrkit.data import batch_size, to_device
from attrkit.errors import DataLoaderError, NonFiniteError
from attrkit.finite import cause
from attrkit.functional.nonfinite import nonfinite_rows
from attrkit.functional.scoring import normalize_rows
from attrkit.user_code import user_code, user_code_pass

if TYPE_CHECKING:
    from attrkit.engine.attributor import GradientAttributor
    from attrkit.engine.products import Chooser
    from attrkit.engine.state import FittedMember
    from attrkit.functional.structured_products import ProductLayout

__all__ = ["dense", "explainer", "from_factors", "gradients", "project", "query", "takes_rank_one", "train_side",
           "training_fn", "user_pass"]


def training_fn(method: GradientAttributor) -> Callable[..., torch.Tensor]:
    """The function differentiated on the training side: the loss, or the target (TRAK)."""
    return method.task.target if method.train_target else method.task.loss_fn


def gradients(method: GradientAttributor, member: Member, batch: Any, target: bool, where: str = "a batch",
              products: Chooser | None = None) -> Any:
    """Raw gradients of one batch: ``Tensor[b, p]``, or a factored block (``shape``, ``materialize()``),
    or packed factor rows ``Tensor[b, width]`` when ``products`` takes structured products.

    Args:
        method: the attributor (its task, gradient source and ``train_target``).
        member: the member whose weights (and patch) are used.
        batch: the batch.
        target: the test side (the target); else the training side.
        where: the batch, for messages (``"training batch 3"``).
        products: the fit's structured-products chooser (:mod:`attrkit.engine.products`), or ``None``.

    Raises:
        LossFunctionError: the user's function failed (explained, see :mod:`attrkit.user_code`).
        DataLoaderError: the source returned another shape than ``[b, p]``.
    """
    task = method.task
    use_target = target or method.train_target
    fn = method.gradients.target_gradients if use_target else method.gradients.loss_gradients
    user = task.target if use_target else task.loss_fn
    name = "target_fn" if use_target and task.target_fn is not None else "loss_fn"
    with member.applied(task.model), user_code(task.model, user, member.state, batch, where, name):
        packed = None if products is None else products.rows(member, batch, user)
        grads = fn(task, member, batch) if packed is None else packed
    expected = (batch_size(batch), method.dimension if packed is None else products.layout.width)
    if tuple(grads.shape) != expected:
        raise DataLoaderError(f"gradient source {method.gradients.name!r} returned {tuple(grads.shape)}, expected "
                              f"{expected}")
    return grads


def dense(grads: Any) -> torch.Tensor:
    """``Tensor[b, p]`` of raw gradients, materialising a factored block."""
    return grads if isinstance(grads, torch.Tensor) else grads.materialize()


def project(projector: Any, grads: Any) -> torch.Tensor:
    """``Proj(g)``, ``Tensor[b, k]`` (``g`` itself without a projector); a factored block goes
    whole only to a projector that requires factored gradients."""
    if projector is None:
        return dense(grads)
    if not isinstance(grads, torch.Tensor) and capabilities.FACTORED not in projector.requires:
        grads = grads.materialize()
    return projector.project(grads)


def from_factors(projector: Any, layout: ProductLayout, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Proj(g), the rows it came from)`` for packed factor rows of ``layout``: projected straight from
    the factors (``projector.project_packed``) with the rows as they are, or else the gradients formed
    from them (``layout.materialize``), then projected (``g`` itself without a projector)."""
    feats = None if projector is None else projector.project_packed(layout, rows)
    if feats is not None:
        return feats, rows
    grads = layout.materialize(rows)
    return project(projector, grads), grads


def _solved(fitted: FittedMember, vectors: torch.Tensor, coefficients: bool = False,
            rank_one: Any = None) -> torch.Tensor:
    """``solver.solve(vectors)`` (with ``coefficients``, its low-rank coefficients ``[b, r]``,
    :mod:`attrkit.engine.low_rank`; with ``rank_one``, the vectors' rank-one layer blocks as factors,
    for a solver that takes them), refused when it turns finite rows non-finite."""
    if coefficients:
        out = fitted.low_rank.coefficients(vectors)
    else:
        out = fitted.solver.solve(vectors, rank_one=rank_one) if rank_one else fitted.solver.solve(vectors)
    if not checks.enabled():
        return out
    bad = nonfinite_rows(out)
    if len(bad) and bool(torch.isfinite(vectors[bad]).all()):
        raise NonFiniteError(
            f"solver {fitted.solver.name!r} returned non-finite values for {len(bad)} finite vector(s) at member "
            f"{fitted.member.label!r}: the curvature is singular or too ill-conditioned to invert; raise "
            "solver.regularization (the damping λ)"
        )
    return out


def query(fitted: FittedMember, grads: Any, normalize: bool, packed: ProductLayout | None = None,
          coefficients: bool = False) -> torch.Tensor:
    """``Precond(Proj(g))`` for raw gradients ``[b, p]`` -> ``[b, k]`` (unit rows for cosine); packed
    factor rows of a structured member without a solver stay packed (normalised for cosine).
    With ``packed``, ``grads`` are factor rows of that layout, projected from the factors
    (``projector.project_packed``) or else formed first; behind a parameter-space solver that takes
    them (:func:`takes_rank_one`), formed and solved with their rank-one layers' factors. With ``coefficients``, a member with a
    low-rank solve (``fitted.low_rank``) returns its coefficients ``[b, r]`` instead where they
    are cheaper to score (:meth:`~attrkit.engine.low_rank.LowRank.worth`): only for
    :meth:`FittedMember.products <attrkit.engine.state.FittedMember.products>`.

    Raises:
        NonFiniteError: the solver returned non-finite values for finite input rows.
    """
    if fitted.layout is not None and not fitted.solved:  # packed rows of raw gradients, nothing to apply
        return fitted.layout.normalize(grads) if normalize else grads
    rank_one = None
    if packed is not None and fitted.solved:  # factor rows behind the solver: formed, solved from the factors
        rank_one, grads, packed = packed.rank_one(grads), packed.materialize(grads), None
    if coefficients and fitted.low_rank is not None and fitted.low_rank.worth(grads.shape[0]):
        return _solved(fitted, dense(grads), coefficients=True)
    solver = fitted.solver
    if packed is not None:  # no parameter-space solver here (engine.products.query_packer)
        feats, _ = from_factors(fitted.projector, packed, grads)
    else:
        if solver is not None and solver.space == "parameter":
            grads = _solved(fitted, dense(grads), rank_one=rank_one)
        feats = project(fitted.projector, grads)
    if solver is not None and solver.space == "feature":
        feats = _solved(fitted, feats)
    return normalize_rows(feats) if normalize else feats


def takes_rank_one(fitted: FittedMember) -> bool:
    """Whether a member's queries are solved from packed factor rows: structured products behind a
    parameter-space solver that uses rank-one layer factors (K-FAC, EK-FAC)."""
    return fitted.solved and bool(getattr(fitted.solver, "takes_rank_one", False))


def train_side(feats: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The training side's transform of features ``[b, k]`` (unit rows for cosine)."""
    return normalize_rows(feats) if normalize else feats


def explainer(method: GradientAttributor, member: Member, batch: Any, fn: Callable[..., Any]) -> Callable[[int], str]:
    """``explain(row) -> str``: why row ``row`` of ``batch`` is non-finite (:func:`attrkit.finite.cause`)."""

    def explain(row: int) -> str:
        with member.applied(method.task.model):
            return cause(method.task.model, fn, member.state, to_device(batch, method.task.device), row)

    return explain


def user_pass(method: GradientAttributor, member: Member, train: Iterable[Any]) -> Any:
    """Context explaining an exception of a pass over ``train`` when the user's function is at fault."""
    return user_code_pass(method.task.model, training_fn(method), member.state, train)
