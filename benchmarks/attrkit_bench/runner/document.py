"""Every method on a prepared problem, as one JSON-able result document (what ``attrkit bench SETTING`` writes)."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

import attrkit
from attrkit import Registry
from attrkit_bench.problem import Problem
from attrkit_bench.roofline import Rates, Sizes, limits, measure_rates, sizes_of
from attrkit_bench.runner.choices import MethodChoice, MetricChoice
from attrkit_bench.runner.method import MethodRun, compared_library, run_method

__all__ = ["default_metrics", "run_benchmark", "write_document"]


def default_metrics(problem: Problem) -> list[str]:
    """``lds``, ``loo`` where the setting has LOO ground truth, ``auc`` where it has a noisy-label task."""
    return ["lds", *(["loo"] if "loo" in problem.truths else []), *(["auc"] if problem.noisy is not None else [])]


def run_benchmark(
    problem: Problem,
    choices: Sequence[MethodChoice],
    metrics: Sequence[MetricChoice],
    *,
    compare: bool | str = False,
    registry: Registry | None = None,
    on_run: Callable[[MethodRun], None] | None = None,
) -> dict[str, Any]:
    """Run every method on ``problem``; the JSON-able result document.

    The document holds the setting's facts (sizes, training time and accuracy,
    ground-truth time), the versions of torch, attrkit (and the library compared), every metric's
    config and provenance, and one entry per run (see :class:`MethodRun`). Where the model is
    counted (:mod:`attrkit_bench.roofline`), the machine's rates are measured before and after the
    methods and each run's roofline figures use the faster of each; ``on_run`` sees them against
    the first measurement.

    Args:
        problem: the prepared setting.
        choices: the methods, in table order.
        metrics: the metrics, in column order.
        compare: also run each method's counterpart from ``"dattri"`` (or ``True``) or
            ``"kronfluence"``.
        registry: where the methods' parts are looked up; defaults to every installed plugin.
        on_run: called with each run as it finishes (e.g. to print progress).
    """
    registry = registry or attrkit.default_registry()
    sizes = _roofline_sizes(problem)
    before = None if sizes is None else measure_rates(problem.model, problem.loss_fn, problem.train)
    runs = []
    for choice in choices:
        runs.append(_with_roofline(run_method(problem, choice, metrics, registry, compare), choice, sizes, before))
        if on_run is not None:
            on_run(runs[-1])  # its multiple against the rates measured so far
    rates = None
    if before is not None:  # measured again after the methods: the faster of each rate is the machine's
        after = measure_rates(problem.model, problem.loss_fn, problem.train)
        rates = before.best(after)
        runs = [_with_roofline(run, choice, sizes, rates) for run, choice in zip(runs, choices)]
    info = {**problem.info, "torch": torch.__version__, "attrkit": attrkit.__version__,
            "device": str(problem.task().device), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "platform": platform.platform()}
    if rates is not None:
        info["roofline"] = {"gemm_gflops": rates.gemm / 1e9, "pass_examples_per_s": rates.passes,
                            "forward_examples_per_s": rates.forwards, "n_train": sizes.n, "n_targets": sizes.m,
                            "parameters": sizes.p, "measured": [attrs.asdict(before), attrs.asdict(after)]}
    library = compared_library(compare)
    if library == "dattri":
        from attrkit_bench.compare.dattri import dattri_version

        info["dattri"] = dattri_version()
    elif library == "kronfluence":
        from attrkit_bench.compare.kronfluence import kronfluence_version

        info["kronfluence"] = kronfluence_version()
    return {
        "setting": problem.name,
        "info": info,
        "metrics": [
            {"name": m.name, "params": dict(m.params), "provenance": m.metric.resolved.provenance()["metric"]}
            for m in metrics
        ],
        "runs": [attrs.asdict(run) for run in runs],
    }


def _with_roofline(run: MethodRun, choice: MethodChoice, sizes: Sizes | None, rates: Rates | None) -> MethodRun:
    """``run`` with its roofline figures against ``rates`` (unchanged where the model or the method is not counted)."""
    if rates is None:
        return run
    try:
        members = choice.members[1] if choice.members else 1
        return attrs.evolve(run, roofline=limits(run.spec, members, sizes, rates, run.seconds))
    except LookupError:  # a method the roofline does not count
        return run


def _roofline_sizes(problem: Problem) -> Sizes | None:
    """The roofline's sizes of ``problem`` (:mod:`attrkit_bench.roofline`), or ``None`` when its model
    has parameters outside ``nn.Linear`` layers (the counts cover only those)."""
    try:
        return sizes_of(problem.model, len(problem.train.dataset), len(problem.targets.dataset))
    except (ValueError, AttributeError, TypeError):  # other layers, or loaders without a sized dataset
        return None


def write_document(document: dict[str, Any], out_dir: Path, quick: bool) -> Path:
    """Write ``{out_dir}/{setting}[-quick].json`` (``quick`` is recorded in it) and return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{document['setting']}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps({**document, "quick": quick}, indent=2, default=str) + "\n")
    return path
