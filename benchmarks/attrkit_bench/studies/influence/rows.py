"""One row of the influence benchmark: the λ search, and its comparison with dattri on shared loaders."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader

from attrkit import AttrkitError
from attrkit.plugin import Metric
from attrkit_bench.compare.influence import DIFFERENCES, dattri_scores
from attrkit_bench.problem import Problem
from attrkit_bench.studies.influence.plan import SolverRow, lissa_scale, spec_for, top_eigenvalue
from attrkit_bench.studies.trials import Trial, attrkit_scores, best, first_targets, measure

__all__ = ["RowResult", "batch_dependence", "compare_row", "search_row"]


@attrs.frozen(kw_only=True)
class RowResult:
    """A row's search and, with ``--compare dattri``, its comparison.

    Attributes:
        row: the plan row.
        trials: one per damping value tried, in grid order.
        best: the ``ok`` trial of highest LDS, or ``None``.
        search_seconds: wall seconds of the whole search: the warm-up, every trial and
            (LiSSA) the ``λ̂_max`` estimate.
        top_eigenvalue: LiSSA's ``λ̂_max`` (``None`` for other rows).
        attrkit_shared: attrkit re-run at the best λ on the comparison loaders.
        dattri: dattri's run on the same loaders at the same λ.
    """

    row: SolverRow
    trials: list[Trial]
    best: Trial | None
    search_seconds: float
    top_eigenvalue: float | None = None
    attrkit_shared: Trial | None = None
    dattri: Trial | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the row's spec fields, every trial, the comparison)."""
        return {
            "label": self.row.label,
            "solver": self.row.solver,
            "params": dict(self.row.params),
            "curvature": self.row.curvature,
            "note": self.row.note,
            "dattri_counterpart": self.row.dattri,
            "dattri_differences": DIFFERENCES.get(self.row.dattri or "", ""),
            "top_eigenvalue": self.top_eigenvalue,
            "search_seconds": self.search_seconds,
            "best": attrs.asdict(self.best) if self.best else None,
            "trials": [attrs.asdict(t) for t in self.trials],
            "attrkit_shared_loaders": attrs.asdict(self.attrkit_shared) if self.attrkit_shared else None,
            "dattri": attrs.asdict(self.dattri) if self.dattri else None,
        }


def _scale(top: float | None, regularization: float | None) -> float | None:
    return lissa_scale(top, regularization) if top is not None and regularization is not None else None


def search_row(problem: Problem, row: SolverRow, lambdas: Sequence[float], metric: Metric) -> RowResult:
    """Run ``row`` at every ``λ`` of ``lambdas`` (once, without λ, for Grad-Dot).

    An untimed warm-up on the first training batch and two targets comes first, so
    one-off start-up costs fall on no run. LiSSA's ``λ̂_max`` (for its scale) is computed
    once and counted in the search time.
    """
    targets = first_targets(problem, row.n_targets)
    n = len(targets.dataset)
    started = time.perf_counter()
    top = top_eigenvalue(problem, str(row.params["curvature"])) if row.solver == "lissa" else None
    grid: Sequence[float | None] = (None,) if row.solver is None else lambdas
    try:
        warm = spec_for(row, grid[0], _scale(top, grid[0]))
        attrkit_scores(problem, warm, [next(iter(problem.train))], first_targets(problem, 2))()
    except AttrkitError:  # a refusal (e.g. max_dim) shows in the timed runs
        pass
    trials = []
    for lam in grid:
        scale = _scale(top, lam)
        extra = {"scale": scale, "top_eigenvalue": top} if scale is not None else {}
        scores = attrkit_scores(problem, spec_for(row, lam, scale), problem.train, targets)
        trial, _ = measure(scores, problem, metric, n, lam, extra)
        trials.append(trial)
        if trial.status == "refused" and "max_dim" in trial.message:
            break  # the refusal does not depend on λ
    return RowResult(row=row, trials=trials, best=best(trials), search_seconds=time.perf_counter() - started,
                     top_eigenvalue=top)


def _full_batch(problem: Problem) -> DataLoader:
    dataset = problem.train.dataset
    return DataLoader(dataset, batch_size=len(dataset), shuffle=False)


def compare_row(problem: Problem, result: RowResult, metric: Metric) -> RowResult:
    """attrkit and dattri at the row's best λ on the same loaders: the whole training set as
    one batch (where dattri's per-batch sums become the whole-set curvature), the first
    ``dattri_targets`` (or the row's) targets as one batch."""
    row, chosen = result.row, result.best
    if row.dattri is None or chosen is None:
        return result
    lam = chosen.regularization
    n = min(row.dattri_targets or chosen.n_targets, chosen.n_targets)
    targets, full = first_targets(problem, n), _full_batch(problem)
    scale = _scale(result.top_eigenvalue, lam)
    params = {**row.params, "scale": scale}
    ours, _ = measure(attrkit_scores(problem, spec_for(row, lam, scale), full, targets), problem, metric, n, lam)
    theirs, _ = measure(dattri_scores(row.dattri, problem.model, full, full, targets, lam, params),
                        problem, metric, n, lam)
    return attrs.evolve(result, attrkit_shared=ours, dattri=theirs)


def _row_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the Pearson correlation of ``a[t]`` and ``b[t]``."""
    a = a.double() - a.double().mean(1, keepdim=True)
    b = b.double() - b.double().mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def batch_dependence(
    problem: Problem, result: RowResult, metric: Metric, n_targets: int, batch_size: int
) -> dict[str, Any]:
    """Scores of dattri and attrkit with the training loaders batched by ``batch_size`` vs
    one batch, at the row's best λ on the first ``n_targets`` targets.

    Returns:
        JSON-able: for each library, both runs (LDS, seconds, peak), the ratio of the
        score norms and the mean per-target correlation of the two score matrices.
    """
    row, lam = result.row, result.best.regularization
    targets, full = first_targets(problem, n_targets), _full_batch(problem)
    batched = DataLoader(problem.train.dataset, batch_size=batch_size, shuffle=False)
    scale = _scale(result.top_eigenvalue, lam)
    params = {**row.params, "scale": scale}
    out: dict[str, Any] = {"label": row.label, "regularization": lam, "n_targets": n_targets, "batch_size": batch_size}
    for library in ("attrkit", "dattri"):
        runs = {}
        for name, loader in (("one_batch", full), ("batched", batched)):
            if library == "attrkit":
                scores = attrkit_scores(problem, spec_for(row, lam, scale), loader, targets)
            else:
                scores = dattri_scores(row.dattri, problem.model, loader, loader, targets, lam, params)
            runs[name] = measure(scores, problem, metric, n_targets, lam)
        (one, s_one), (many, s_many) = runs["one_batch"], runs["batched"]
        ok = s_one is not None and s_many is not None
        out[library] = {
            "one_batch": attrs.asdict(one),
            "batched": attrs.asdict(many),
            "norm_ratio": float(s_many.norm() / s_one.norm()) if ok else None,
            "max_relative_difference": float((s_many - s_one).abs().max() / s_one.abs().max()) if ok else None,
            "row_correlation": _row_correlation(s_one, s_many) if ok else None,
        }
    return out
