"""GGDA benchmark: runtime vs retraining score across group sizes and groupers.

    python -m attrkit_bench.ggda [--settings mnist-mlp,adult-mlp] [--sizes 1,4,16,64,256]
                                 [--groupers random,grad-kmeans] [--out DIR] [--quick]
    attrkit bench ggda ...        (the same)

For each setting, method (Grad-Dot, IF with the feature-space Gauss-Newton solver, TRAK —
all on ``group`` gradients: one batched backward per group) and group size (1 is
pointwise), every grouper assigns groups and the method attributes the *mean loss over the
targets* (a property function) to each group, timed from ``fit`` to ``attribute``.
Retraining score: each training point inherits its group's score; the top 1/5/10/20 % of
points (whole groups first, ties in a seeded order) are removed, the model is retrained
from scratch with the setting's recipe, and the test accuracy drop is averaged
(:class:`~attrkit_plugins.retraining_metrics.Retraining`). A plot of runtime vs
retraining score is written beside the JSON and markdown.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch

import attrkit
from attrkit.properties import mean_loss
from attrkit.targets import cross_entropy
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.ggda_report import markdown, plot
from attrkit_bench.memory import PeakMemory
from attrkit_bench.output import add_run_arguments, environment, write_results
from attrkit_bench.problem import Problem
from attrkit_bench.settings import adult, mnist_lr, mnist_mlp
from attrkit_bench.settings.classifier import ClassifierConfig, ClassifierSetting
from attrkit_bench.training import accuracy, train_model

__all__ = ["METHODS", "main", "run_setting"]

_DECLARATIONS = {"mnist-lr": mnist_lr.DECLARATION, "mnist-mlp": mnist_mlp.DECLARATION,
                 "adult-lr": adult.LR, "adult-mlp": adult.MLP}
_PROJECTOR = {"name": "gaussian", "dim": 512, "seed": 0}
#: The methods compared, all on group gradients and a 512-dimensional Gaussian projection.
METHODS: dict[str, dict[str, Any]] = {
    "grad-dot": {"method": "grad-dot"},
    "if (gauss-newton)": {"method": "if", "solver": {"name": "gauss-newton", "regularization": 1e-3}},
    "trak": {"method": {"name": "trak", "reweight": False}, "solver": {"name": "gauss-newton", "regularization": 1e-3}},
}
FRACTIONS = (0.01, 0.05, 0.1, 0.2)


def _spec(method: str, grouper: str, size: int) -> dict[str, Any]:
    spec = {**METHODS[method], "gradients": "group", "projector": _PROJECTOR}
    spec["grouper"] = "singleton" if size == 1 else {"name": grouper, "group_size": size, "seed": 0}
    return spec


def _retrainer(declaration: ClassifierSetting, config: ClassifierConfig, problem: Problem, x_test: torch.Tensor,
               y_test: torch.Tensor) -> Any:
    """``retrain(keep) -> test accuracy`` of a model trained from scratch on the kept points (memoised)."""
    x, y = problem.train.dataset.tensors  # type: ignore[attr-defined]
    make = declaration.constructor(problem)
    seen: dict[bytes, float] = {}

    def retrain(keep: torch.Tensor) -> float:
        key = keep.numpy().tobytes()
        if key not in seen:
            model = train_model(make, cross_entropy, x[keep], y[keep], config.recipe, config.seed)
            seen[key] = accuracy(model, x_test, y_test)
        return seen[key]

    return retrain


def run_setting(name: str, cache_dir: Path, *, quick: bool, sizes: list[int], groupers: list[str]) -> dict[str, Any]:
    """Every (method, grouper, size) on setting ``name``: runtime, retraining score, groups.

    Returns:
        The setting's JSON entry: ``setting``, ``info``, ``rows``.
    """
    declaration = _DECLARATIONS[name]
    config = declaration.quick if quick else declaration.full
    problem = declaration.setting().prepare(cache_dir, quick)
    print(problem.summary, flush=True)
    retrain = _retrainer(declaration, config, problem, *problem.test)
    entry = attrkit.default_registry().get("metric", "retraining")
    metric = entry.cls(entry.cls.Config(fractions=FRACTIONS))
    prop = mean_loss(problem.targets, cross_entropy, name="mean target loss")
    task = attrs.evolve(problem.task(), properties=[prop])
    n_train = len(problem.train.dataset)  # type: ignore[arg-type]
    rows = []
    for method in METHODS:
        for size in sizes:
            for grouper in (["singleton"] if size == 1 else groupers):
                attributor = attrkit.compose(_spec(method, grouper, size), task)
                scores, seconds, peak = _timed(lambda a=attributor: a.fit(problem.train).attribute())
                groups = attributor.groups
                # each point inherits its group's score: removal counts points, whole groups first
                result = metric.evaluate(scores[:, groups], {"retrain": retrain})
                row = {"method": method, "grouper": grouper, "group_size": size, "n_groups": int(groups.max()) + 1,
                       "seconds": seconds, "peak_mib": peak, "retraining": result.value,
                       "details": dict(result.details)}
                print(f"  {method} / {grouper} / {size}: {seconds:.2f} s, retraining {result.value:.4f}", flush=True)
                rows.append(row)
    return {"setting": name, "info": dict(problem.info), "n_train": n_train, "rows": rows}


def _timed(run: Any) -> tuple[torch.Tensor, float, float]:
    """``(run(), wall seconds, peak RSS rise in MiB)``."""
    gc.collect()
    start = time.perf_counter()
    with PeakMemory() as memory:
        out = run()
    return out, time.perf_counter() - start, memory.peak_mib


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attrkit_bench.ggda", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="mnist-mlp,adult-mlp", help="comma-separated settings")
    parser.add_argument("--sizes", default="1,4,16,64,256", help="group sizes (1: pointwise)")
    parser.add_argument("--groupers", default="random,grad-kmeans", help="groupers for sizes > 1")
    add_run_arguments(parser, "GGDA.md", threads=1)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the GGDA benchmark; returns 0, or 2 on a usage error or a missing package."""
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in _DECLARATIONS]
    if unknown:
        print(f"attrkit bench ggda: no setting {unknown}; known: {', '.join(_DECLARATIONS)}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    groupers = [g.strip() for g in args.groupers.split(",")]
    started = time.perf_counter()
    try:
        settings = [run_setting(n, args.cache or default_cache_dir(n), quick=args.quick, sizes=sizes,
                                groupers=groupers) for n in names]
    except ImportError as exc:
        print(f"attrkit bench ggda: {exc}", file=sys.stderr)
        return 2
    document = {
        "command": "python -m attrkit_bench.ggda " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "fractions": list(FRACTIONS),
        "total_seconds": time.perf_counter() - started,
        "environment": environment(False),
        "settings": settings,
    }
    write_results(document, args.out, "ggda", markdown, args.markdown)
    try:
        plot(document, args.out / f"ggda{'-quick' if args.quick else ''}.png")
    except ImportError:
        print('plot skipped: matplotlib is not installed (pip install "attrkit[bench]")')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
