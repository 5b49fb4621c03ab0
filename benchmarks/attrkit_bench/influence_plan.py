"""What the influence benchmark runs: one row per solver, per setting, and the LiSSA scale rule.

Every row is an influence function (method ``if``) with one registered solver, its damping
``λ`` searched over :data:`LAMBDAS` (the grid of the dattri paper's appendix), plus the
Grad-Dot reference row. On ``mnist-lr`` (convex) the HVP solvers use the Hessian; on
``mnist-mlp`` they use the Gauss-Newton curvature (positive semi-definite, so no ``λ`` is
refused, and a CG pass costs about 3/4 of a Hessian one). Rows too slow for the 2-core
budget run on the first ``n_targets`` targets, stated in the table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from attrkit.functional.curvature import dataset_gnvp, dataset_hvp, lanczos
from attrkit.functional.gradients import select_parameters
from attrkit_bench.problem import Problem

__all__ = ["LAMBDAS", "QUICK_LAMBDAS", "SolverRow", "lissa_scale", "plan", "spec_for", "top_eigenvalue"]

#: Damping candidates, as in the dattri paper's appendix.
LAMBDAS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
#: The ``--quick`` grid.
QUICK_LAMBDAS = (1e-1, 1e-3)
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


def _hvp_rows(
    curvature: str, quick: bool, cg_targets: int | None, lissa_targets: int | None, lissa_dattri: int
) -> list[SolverRow]:
    note = f"curvature {curvature}"
    cg_iter, depth, arnoldi_iter = (3, 20, 10) if quick else (10, 500, 50)
    return [
        SolverRow(label="if+cg", solver="cg", params={"curvature": curvature, "max_iter": cg_iter},
                  n_targets=cg_targets, dattri="cg", note=note),
        SolverRow(label="if+lissa", solver="lissa",
                  params={"curvature": curvature, "depth": depth, "batch_size": 50 if not quick else 10},
                  n_targets=lissa_targets, dattri="lissa", dattri_targets=lissa_dattri, note=note),
        SolverRow(label="if+arnoldi", solver="arnoldi",
                  params={"curvature": curvature, "max_iter": arnoldi_iter, "rank": min(50, arnoldi_iter)},
                  dattri="arnoldi", note=note),
    ]


def _layer_rows(datainf_targets: int) -> list[SolverRow]:
    return [
        SolverRow(label="if+kfac", solver="kfac", note="dattri 0.3.0 has no K-FAC attributor"),
        SolverRow(label="if+ekfac", solver="ekfac", dattri="ekfac"),
        SolverRow(label="if+datainf", solver="datainf", dattri="datainf", dattri_targets=datainf_targets),
    ]


def plan(setting: str, quick: bool = False) -> list[SolverRow]:
    """The rows run on ``setting`` (``"mnist-lr"`` or ``"mnist-mlp"``), in table order.

    Raises:
        LookupError: a setting the influence benchmark has no plan for.
    """
    reference = SolverRow(label="grad-dot", solver=None)
    if setting == "mnist-lr":
        explicit = SolverRow(label="if+explicit", solver="explicit", params={"curvature": "hessian"},
                             dattri="explicit")
        feature = SolverRow(label="if+gauss-newton", solver="gauss-newton",
                            note="feature space, identity projector: (ΦᵀΦ + λI)⁻¹ of the *summed* loss, so a "
                            "given λ damps n = 4000 times less than in the parameter-space rows")
        return [reference, explicit, *_hvp_rows("hessian", quick, None, None, 50), *_layer_rows(100), feature]
    if setting == "mnist-mlp":
        explicit = SolverRow(label="if+explicit", solver="explicit", params={"curvature": "gauss-newton"},
                             note="refused by max_dim (p = 109,386 > 20,000); dattri's explicit attributor would "
                             "build the same 109,386² Hessian (48 GB in float32): not run")
        cg_targets, lissa_targets = (None, None) if quick else (100, 50)
        return [reference, explicit, *_hvp_rows("gauss-newton", quick, cg_targets, lissa_targets, 5),
                *_layer_rows(20 if not quick else 10)]
    raise LookupError(f"the influence benchmark has no plan for setting {setting!r}; known: mnist-lr, mnist-mlp")


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
