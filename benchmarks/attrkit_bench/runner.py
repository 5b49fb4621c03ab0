"""Run methods on a prepared problem: time, peak memory and LDS, as a table and a JSON file."""

from __future__ import annotations

import gc
import json
import math
import platform
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch

import attrkit
from attrkit.config import config_to_dict
from attrkit.protocols import Metric
from attrkit.registry import Registry
from attrkit_bench.memory import PeakMemory
from attrkit_bench.methods import MethodChoice
from attrkit_bench.problem import Problem

__all__ = ["MethodRun", "format_table", "run_benchmark", "run_method"]

METRIC = "lds"


@attrs.frozen(kw_only=True)
class MethodRun:
    """One method's result on one problem.

    Attributes:
        label: the method's label.
        spec: the full resolved spec, every default explicit (``resolved.spec.to_dict()``).
        provenance: ``{part: {"name", "plugin", "distribution", "version"}}``.
        lds: mean Spearman correlation over targets, in [-1, 1] (higher is better).
        lds_per_target: ``[n_targets]`` correlations; ``None`` where undefined.
        auc: noisy-label detection ROC AUC: the method fitted on the model retrained with
            10 % flipped labels ranks the training points by self-influence (``None``
            when the setting has no noisy-label task).
        seconds: wall seconds of ``fit`` + ``attribute``.
        peak_mib: peak process RSS above its level at the start, MiB.
        cuda_peak_mib: peak CUDA allocation above the start, MiB; ``None`` off CUDA.
        memory_source: how ``peak_mib`` was measured (``"statm"`` or ``"getrusage"``).
    """

    label: str
    spec: dict[str, Any]
    provenance: dict[str, dict[str, str]]
    lds: float
    lds_per_target: list[float | None] = attrs.field(repr=False)
    auc: float | None
    seconds: float
    peak_mib: float
    cuda_peak_mib: float | None
    memory_source: str


def _first(loader: Iterable[Any]) -> list[Any]:
    return [next(iter(loader))]


def run_method(problem: Problem, choice: MethodChoice, metric: Metric, registry: Registry | None = None) -> MethodRun:
    """Compose ``choice`` for ``problem``, time and measure fit + attribute, score it.

    An untimed warm-up on the first batch of each loader comes first, so one-off
    start-up costs (first calls into ``torch.func``, lazy imports) fall on no method.

    Args:
        problem: the prepared setting.
        choice: the method and its label.
        metric: the ``lds`` metric (the ``auc`` one comes from ``registry``).
        registry: where the spec's parts are looked up; defaults to every installed plugin.

    Raises:
        SpecError: the spec cannot be composed.
    """
    task = problem.task()
    attrkit.compose(choice.spec, task, registry).fit(_first(problem.train)).attribute(_first(problem.targets))
    attributor = attrkit.compose(choice.spec, task, registry)
    gc.collect()
    with PeakMemory(device=task.device) as memory:
        start = time.perf_counter()
        scores = attributor.fit(problem.train).attribute(problem.targets)
    seconds = time.perf_counter() - start
    result = metric.evaluate(scores, problem.ground_truth)
    per_target = [None if math.isnan(v) else v for v in result.per_target.tolist()]
    auc = None
    if problem.noisy is not None:
        noisy_task = attrs.evolve(task, model=problem.noisy.model)
        influence = attrkit.compose(choice.spec, noisy_task, registry).fit(problem.noisy.train)
        entry = (registry or attrkit.default_registry()).get("metric", "auc")
        detection = entry.cls(entry.cls.Config())
        auc = detection.evaluate(influence.self_influence(problem.noisy.train), {"flipped": problem.noisy.flipped}).value
    return MethodRun(
        label=choice.label,
        spec=attributor.resolved.spec.to_dict(),
        provenance=attributor.resolved.provenance(),
        lds=result.value,
        lds_per_target=per_target,
        auc=auc,
        seconds=seconds,
        peak_mib=memory.peak_mib,
        cuda_peak_mib=memory.cuda_peak_mib,
        memory_source=memory.source,
    )


def format_table(runs: Sequence[MethodRun]) -> str:
    """The results as a fixed-width text table: method, LDS, noisy-label AUC, time (s), peak mem (MiB)."""
    header = ("method", "LDS", "noisy AUC", "time (s)", "peak mem (MiB)")
    rows = [(r.label, f"{r.lds:.3f}", "–" if r.auc is None else f"{r.auc:.3f}", f"{r.seconds:.2f}",
             f"{r.peak_mib:.1f}") for r in runs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def run_benchmark(
    problem: Problem,
    choices: Sequence[MethodChoice],
    out_dir: Path,
    *,
    quick: bool = False,
    registry: Registry | None = None,
) -> tuple[list[MethodRun], Path]:
    """Run every method on ``problem`` and write ``{out_dir}/{name}[-quick].json``.

    The file holds the setting's facts (sizes, training time and accuracy, ground-truth
    time), the versions of torch and attrkit, the metric and its provenance, and one
    entry per run (see :class:`MethodRun`).

    Args:
        problem: the prepared setting.
        choices: the methods, in table order.
        out_dir: folder of the JSON file (created when missing).
        quick: the problem is a ``--quick`` one (recorded, and kept out of the full run's file).
        registry: where methods and the metric are looked up; defaults to every installed plugin.

    Returns:
        ``(runs, path of the JSON file)``.
    """
    registry = registry or attrkit.default_registry()
    entry = registry.get("metric", METRIC)
    metric = entry.cls(entry.cls.Config())
    runs = [run_method(problem, choice, metric, registry) for choice in choices]
    document = {
        "setting": problem.name,
        "quick": quick,
        "info": {
            **problem.info,
            "torch": torch.__version__,
            "attrkit": attrkit.__version__,
            "device": str(problem.task().device),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "metric": {
            "name": entry.name,
            "config": config_to_dict(metric.config),
            "provenance": {
                "plugin": entry.plugin.name,
                "distribution": entry.plugin.distribution,
                "version": entry.plugin.version,
            },
        },
        "runs": [attrs.asdict(run) for run in runs],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{problem.name}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return runs, path
