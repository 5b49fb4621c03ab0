"""What the influence study runs: one row per solver, per setting, read from its spec file; the LiSSA scale rule.

Every row is an influence function (method ``if``) with one registered solver, its damping
``λ`` searched over the spec's ``lambdas`` (the grid of the dattri paper's appendix), plus
the Grad-Dot reference row. On ``mnist-lr`` (convex) the HVP solvers use the Hessian; on
``mnist-mlp`` they use the Gauss-Newton curvature (positive semi-definite, so no ``λ`` is
refused, and a CG pass costs about 3/4 of a Hessian one). Rows too slow for the 2-core
budget run on the first ``n_targets`` targets, stated in the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from attrkit.functional import dataset_gnvp, dataset_hvp, lanczos, select_parameters
from attrkit_bench.problem import Problem

__all__ = ["SolverRow", "lissa_scale", "plan", "spec_for", "top_eigenvalue"]

#: Lanczos iterations used to estimate the top curvature eigenvalue for LiSSA's scale.
SCALE_ITERATIONS = 20
#: LiSSA's ``scale`` is this many times ``λ̂_max + λ``: head-room for the curvature of sampled batches.
SCALE_FACTOR = 2.0

_CURVATURES = {"hessian": dataset_hvp, "gauss-newton": dataset_gnvp}


@attrs.frozen(kw_only=True)
class SolverRow:
    """One row of the table.

    Attributes:
        label: the row's name (``"if+cg"``; ``"grad-dot"`` for the reference).
        solver: registered solver name; ``None`` for Grad-Dot (nothing searched).
        params: the solver's fixed parameters (``regularization`` is searched). LiSSA's
            ``scale`` is left out and set by :func:`lissa_scale`.
        n_targets: run on the first ``n_targets`` targets only; ``None`` for all.
        dattri: the dattri counterpart (``"explicit"``, ``"cg"``, ``"lissa"``,
            ``"arnoldi"``, ``"ekfac"``, ``"datainf"``), or ``None`` when it has none.
        dattri_targets: targets of the dattri comparison when fewer than the row's
            (dattri's DataInf holds ``b_test² × p`` floats at once).
        note: shown under the table (why a subset, what is not run).
    """

    label: str
    solver: str | None
    params: Mapping[str, Any] = attrs.field(factory=dict)
    n_targets: int | None = None
    dattri: str | None = None
    dattri_targets: int | None = None
    note: str = ""

    @property
    def curvature(self) -> str:
        """The curvature the row's solver uses (``"-"`` when none applies)."""
        if self.solver in ("kfac", "ekfac", "datainf"):
            return "emp. Fisher"
        if self.solver == "gauss-newton":
            return "GN (features)"
        return str(self.params.get("curvature", "-"))


def spec_for(row: SolverRow, regularization: float | None, scale: float | None = None) -> dict[str, Any]:
    """The attrkit spec of ``row`` at damping ``regularization`` (and LiSSA ``scale``)."""
    if row.solver is None:
        return {"method": "grad-dot"}
    solver: dict[str, Any] = {"name": row.solver, **row.params, "regularization": regularization}
    if scale is not None:
        solver["scale"] = scale
    spec: dict[str, Any] = {"method": "if", "solver": solver}
    if row.solver == "gauss-newton":
        spec["projector"] = "identity"
    return spec


def _row(entry: Mapping[str, Any], quick: bool) -> SolverRow:
    """A row of the spec file; with ``quick``, its ``"quick"`` entries replace (``params``: update) its own."""
    fields = {key: value for key, value in entry.items() if key != "quick"}
    for key, value in (entry.get("quick", {}) if quick else {}).items():
        fields[key] = {**fields.get(key, {}), **value} if key == "params" else value
    return SolverRow(**fields)


def plan(spec: Mapping[str, Any], setting: str, quick: bool = False) -> list[SolverRow]:
    """The rows the study's ``spec`` runs on ``setting``, in table order.

    Raises:
        LookupError: the spec has no rows for ``setting``.
    """
    rows = spec["rows"]
    if setting not in rows:
        raise LookupError(f"the influence study has no plan for setting {setting!r}; known: {', '.join(rows)}")
    return [_row(entry, quick) for entry in rows[setting]]


def top_eigenvalue(problem: Problem, curvature: str) -> float:
    """``λ̂_max``: the top eigenvalue of the curvature of ``problem``'s mean training loss.

    :data:`SCALE_ITERATIONS` Lanczos iterations in float64, one pass over the training set each.
    """
    model = problem.model
    state = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    names = select_parameters(model, ("*",))
    batches = [[t.double() if t.is_floating_point() else t for t in batch] for batch in problem.train]
    matvec = _CURVATURES[curvature](model, problem.loss_fn, state, names, batches)
    p = sum(state[n].numel() for n in names)
    values, _ = lanczos(matvec, p, 1, min(SCALE_ITERATIONS, p))
    return float(values[0])


def lissa_scale(top: float, regularization: float) -> float:
    """LiSSA's ``scale``: ``2 (λ̂_max + λ)`` (``top`` from :func:`top_eigenvalue`).

    LiSSA converges only for ``scale > λ_max + λ`` on every sampled batch; the factor 2
    covers the larger curvature of the sampled batches.
    """
    return SCALE_FACTOR * (top + regularization)
