"""dattri's or kronfluence's counterpart of a resolved attrkit spec, for ``attrkit bench SETTING --compare LIBRARY``.

:func:`counterpart` maps a spec (every default explicit) to a runner of dattri 0.3
(``library="dattri"``) or kronfluence 1.0.1 (``library="kronfluence"``) on the same model,
members, loaders and hyper-parameters, or says why there is none. dattri:

* ``grad-dot`` / ``grad-cos`` → ``TracInAttributor`` with one checkpoint, weight 1,
  ``normalized_grad`` off / on, dattri's default projection off (exact products, as attrkit's);
* ``tracin`` → ``TracInAttributor`` over the same checkpoints and learning rates;
* ``trak`` → ``TRAKAttributor`` over the same members, same projection dimension and λ (for the
  LoGra form, factored gradients with a ``kronecker`` projector, dattri's dense projection to
  as many features, ``layers × dim_in × dim_out``; for a sparse ``sjlt`` sketch, its dense
  projection to the sketch's ``dim``);
* ``rps`` → ``RPSAttributor`` with the same L2 strength;
* ``if`` with solver ``explicit``, ``cg``, ``lissa``, ``arnoldi``, ``ekfac`` or ``datainf``
  → the matching ``IFAttributor*`` (:mod:`attrkit_bench.compare.influence`), cached on and
  attributing to the whole training set as one batch: its per-batch curvature is then the
  whole set's, and its ``attribute``, which redoes the test side (inverse-HVPs included)
  for every training batch, does it once. dattri's CG has no preconditioner: a ``cg`` row
  with one (``"preconditioner": "kfac"`` or ``"ekfac"``) is set beside dattri's plain CG at
  its default ``max_iter`` (:data:`DATTRI_CG_ITERATIONS`), the comparison of a method at
  equal or better LDS for less work, as for LoGra. Arnoldi influence in its projected form
  (``if`` with a scaled ``arnoldi`` projector and the ``identity`` solver, the same scores as the
  ``arnoldi`` solver) → ``IFAttributorArnoldi`` with the projector's ``dim``, ``max_iter`` and λ.

A spec with a projector (other than TRAK's), a grouper, a non-default gradient source or
an ensemble other than the members has no counterpart. Where dattri computes something
different, :data:`attrkit_bench.compare.influence.DIFFERENCES` and
:mod:`attrkit_bench.compare.ensembles` say what.

kronfluence: ``if`` with solver ``ekfac`` or ``kfac`` on the trained model (no members),
per-example or factored gradients, no projector, grouper or ensemble → kronfluence's ``Analyzer``
with that strategy, the same absolute damping ``λ``, the empirical Fisher, tracking the
``nn.Linear`` / ``nn.Conv2d`` modules that hold attrkit's differentiated parameters
(:mod:`attrkit_bench.compare.kronfluence`); the counterpart's ``note`` says which of
attrkit's parameters kronfluence leaves out.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader

from attrkit.functional import plan_factors, resolve_linear_layer, select_parameters
from attrkit_bench.compare.ensembles import dattri_rps, dattri_tracin, dattri_trak
from attrkit_bench.compare.influence import KINDS, dattri_scores
from attrkit_bench.compare.kronfluence import STRATEGIES, coverage, kronfluence_scores
from attrkit_bench.problem import Problem

__all__ = ["DATTRI_CG_ITERATIONS", "LIBRARIES", "Counterpart", "counterpart"]

#: The libraries ``--compare`` runs.
LIBRARIES = ("dattri", "kronfluence")


@attrs.frozen(kw_only=True)
class Counterpart:
    """dattri's or kronfluence's counterpart of one method, or why there is none.

    Attributes:
        name: the counterpart (``"TRAKAttributor"``, ``"kronfluence EK-FAC"``), or ``None``.
        scores: ``scores() -> Tensor[n_targets, n_train]``, or ``None``.
        reason: why there is no counterpart (``None`` when there is one).
        note: what the counterpart computes differently (kronfluence: the parameters it
            covers, the damping), or ``None``.
    """

    name: str | None = None
    scores: Callable[[], torch.Tensor] | None = attrs.field(default=None, repr=False)
    reason: str | None = None
    note: str | None = None


def _name(part: Any) -> str | None:
    return part.get("name") if isinstance(part, Mapping) else part


def _params(part: Any) -> dict[str, Any]:
    return {k: v for k, v in part.items() if k != "name"} if isinstance(part, Mapping) else {}


#: dattri's ``IFAttributorCG`` iterations (its default) against a preconditioned attrkit CG.
DATTRI_CG_ITERATIONS = 10


def _one_batch(train: DataLoader) -> DataLoader:
    """The training set as one batch, in order: what dattri's IF attributors cache and attribute to."""
    return DataLoader(train.dataset, batch_size=len(train.dataset), shuffle=False)  # type: ignore[arg-type]


def _arnoldi_projection(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parameters of an ``if`` spec that is Arnoldi influence in its projected form (an ``arnoldi``
    projector scaled by ``(λ_i + λ)^{-1/2}`` and the identity solver: ``gᵀ U (Λ + λI)⁻¹ Uᵀ g'``, what
    dattri's ``IFAttributorArnoldi`` computes), as the ``arnoldi`` solver's (``rank``, ``max_iter``,
    ``regularization``), or ``None``."""
    projector = spec.get("projector")
    if _name(spec["method"]) != "if" or _name(projector) != "arnoldi" or _name(spec.get("solver")) != "identity":
        return None
    params = _params(projector)
    if not params.get("scale", True):
        return None
    dim = int(params.get("dim", 64))
    return {"rank": dim, "max_iter": params.get("max_iter") or 2 * dim + 20,
            "regularization": float(params.get("regularization", 0.0))}


def _extra_parts(spec: Mapping[str, Any], method: str) -> str | None:
    """Why ``spec`` has a part dattri's counterpart cannot have, or ``None``."""
    if _name(spec.get("gradients")) not in (None, "per-example") and not (
            method == "trak" and _name(spec.get("gradients")) == "factored"):
        return f"gradient source {_name(spec['gradients'])!r}"
    if _name(spec.get("grouper")) not in (None, "singleton"):
        return f"grouper {_name(spec['grouper'])!r}"
    if _name(spec.get("projector")) not in (None, "identity") and method != "trak" and not _arnoldi_projection(spec):
        return f"projector {_name(spec['projector'])!r}"
    if _name(spec.get("ensemble")) not in (None, "checkpoints"):
        return f"ensemble {_name(spec['ensemble'])!r}"
    return None


def counterpart(spec: Mapping[str, Any], problem: Problem, states: Sequence[dict[str, torch.Tensor]],
                library: str = "dattri") -> Counterpart:
    """dattri's (or kronfluence's) counterpart of ``spec`` on ``problem``.

    Args:
        spec: the resolved spec (``resolved.spec.to_dict()``).
        problem: the prepared setting.
        states: the members' state dicts the attrkit run used (the trained model's when
            it used none).
        library: one of :data:`LIBRARIES`.
    """
    if library == "kronfluence":
        return _kronfluence(spec, problem, states)
    if library != "dattri":
        raise LookupError(f"no counterparts from {library!r}; known: {', '.join(LIBRARIES)}")
    method, params = _name(spec["method"]), _params(spec["method"])
    extra = _extra_parts(spec, method)
    if extra is not None:
        return Counterpart(reason=f"dattri has no {method} with {extra}")
    model, train, targets = problem.model, problem.train, problem.targets
    if method in ("grad-dot", "grad-cos"):
        if len(states) != 1:
            return Counterpart(reason=f"dattri's {method} (TracIn) with members is not {method}")
        normalized = method == "grad-cos"
        return Counterpart(name=f"TracInAttributor(normalized_grad={normalized})",
                           scores=dattri_tracin(model, states, [1.0], train, targets, normalized=normalized))
    if method == "tracin":
        rates = params.get("learning_rates") or 1.0
        rates = list(rates) if isinstance(rates, Sequence) else [float(rates)] * len(states)
        return Counterpart(name="TracInAttributor", scores=dattri_tracin(model, states, rates, train, targets))
    if method == "trak":
        projector, solver = spec.get("projector"), spec.get("solver")
        if _name(projector) not in ("gaussian", "rademacher", "kronecker", "sjlt") or _name(solver) != "gauss-newton":
            return Counterpart(reason="dattri's TRAK projects randomly and solves by Gauss-Newton only")
        lam = float(_params(solver).get("regularization", 0.0))
        if _name(projector) == "kronecker":  # LoGra: as many features as its Kronecker blocks give
            layers = len(plan_factors(model, select_parameters(model, ["*"])).layers)
            dim = layers * _params(projector)["dim_in"] * _params(projector)["dim_out"]
        else:
            dim = _params(projector)["dim"]
        scores = dattri_trak(model, states, train, targets, dim, lam)
        if _name(projector) in ("kronecker", "sjlt"):  # dattri: dense, to as many features
            return Counterpart(name=f"TRAKAttributor (dense projection, k = {dim})", scores=scores)
        return Counterpart(name="TRAKAttributor", scores=scores)
    if method == "rps":
        lam = float(params.get("regularization", 3e-3))
        return Counterpart(name="RPSAttributor",
                           scores=dattri_rps(model, resolve_linear_layer(model), train, targets, lam))
    projected = _arnoldi_projection(spec)
    if projected is not None:
        full = _one_batch(train)
        return Counterpart(name="IFAttributor(arnoldi)", scores=dattri_scores(
            "arnoldi", model, full, full, targets, projected["regularization"], projected))
    if method == "if":
        solver = _name(spec.get("solver"))
        if solver not in KINDS:
            return Counterpart(reason=f"dattri has no influence function with solver {solver!r}")
        solver_params = _params(spec["solver"])
        full = _one_batch(train)
        lam = float(solver_params.get("regularization", 0.0))
        if solver == "cg" and solver_params.get("preconditioner", "none") != "none":
            solver_params = {**solver_params, "max_iter": DATTRI_CG_ITERATIONS}
            return Counterpart(name=f"IFAttributor(cg) (no preconditioner, max_iter = {DATTRI_CG_ITERATIONS})",
                               scores=dattri_scores(solver, model, full, full, targets, lam, solver_params))
        return Counterpart(name=f"IFAttributor({solver})",
                           scores=dattri_scores(solver, model, full, full, targets, lam, solver_params))
    return Counterpart(reason=f"dattri has no counterpart of {method!r}")


def _kronfluence(spec: Mapping[str, Any], problem: Problem, states: Sequence[dict[str, torch.Tensor]]) -> Counterpart:
    """kronfluence's counterpart of an ``if`` + ``ekfac`` / ``kfac`` spec (see the module docstring)."""
    method, solver = _name(spec["method"]), _name(spec.get("solver"))
    if method != "if" or solver not in STRATEGIES:
        what = f"{method} with solver {solver!r}" if method == "if" else repr(method)
        return Counterpart(reason=f"kronfluence has no counterpart of {what}: it computes K-FAC / EK-FAC influence")
    gradients = spec.get("gradients")
    if _name(gradients) not in (None, "per-example", "factored"):
        return Counterpart(reason=f"kronfluence has no influence on gradient source {_name(gradients)!r}")
    for slot, default in (("projector", "identity"), ("grouper", "singleton"), ("ensemble", "checkpoints")):
        if _name(spec.get(slot)) not in (None, default):
            return Counterpart(reason=f"kronfluence has no influence with {slot} {_name(spec[slot])!r}")
    if len(states) != 1:
        return Counterpart(reason="kronfluence has no ensembles: it attributes one model")
    model = copy.deepcopy(problem.model)  # at the weights the attrkit run used (a member of one, or the model)
    model.load_state_dict(states[0])
    options = _params(gradients)
    names = select_parameters(model, options.get("params", ["*"]), frozen=bool(options.get("frozen", False)))
    covered = coverage(model, names)
    if not covered.modules:
        return Counterpart(reason="kronfluence tracks only nn.Linear and nn.Conv2d modules; attrkit's parameters "
                                  f"hold none ({', '.join(covered.uncovered[:6])})")
    lam = float(_params(spec["solver"]).get("regularization", 0.0))
    label = "EK-FAC" if solver == "ekfac" else "K-FAC"
    note = (f"empirical Fisher, damping λ = {lam:g} on both sides (absolute, added to the eigenvalues); "
            f"{covered.note()}")
    if solver == "kfac":
        note += ("; K-FAC differs for layers applied at several positions per example (sequences, convolutions): "
                 "kronfluence averages G over positions, attrkit over examples, so the same λ damps them differently")
    return Counterpart(name=f"kronfluence {label}", note=note,
                       scores=kronfluence_scores(model, problem.loss_fn, problem.train, problem.targets, names, lam,
                                                 strategy=solver))
