"""The GGDA study: runtime vs retraining score across group sizes and groupers.

    attrkit bench ggda [--settings mnist-mlp,adult-mlp] [--sizes 1,4,16,64,256]
                       [--groupers random,grad-kmeans] [--out DIR] [--quick] [--spec FILE]

For each setting, method of the spec file (``benchmarks/specs/ggda.json``: Grad-Dot, IF
with the feature-space Gauss-Newton solver, TRAK — all on ``group`` gradients: one batched
backward per group) and group size (1 is pointwise), every grouper assigns groups and the
method attributes the *mean loss over the targets* (a property function) to each group,
timed from ``fit`` to ``attribute``. Retraining score: each training point inherits its
group's score; the top 1/5/10/20 % of points (whole groups first, ties in a seeded order)
are removed, the model is retrained from scratch with the setting's recipe, and the test
accuracy drop is averaged (the ``retraining`` metric). A plot of runtime vs retraining
score is written beside the JSON and markdown.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

import attrkit
from attrkit.properties import mean_loss
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.memory import measured
from attrkit_bench.problem import Problem
from attrkit_bench.report.output import environment, write_results
from attrkit_bench.report.plots import ggda_plot
from attrkit_bench.settings import get_classifier
from attrkit_bench.settings.classifier import ClassifierConfig, ClassifierSetting
from attrkit_bench.studies.options import add_run_arguments, names
from attrkit_bench.training.sgd import accuracy, train_model

__all__ = ["add_arguments", "run", "run_setting"]


def _spec(spec: Mapping[str, Any], method: str, grouper: str, size: int) -> dict[str, Any]:
    """The attrkit spec of ``method`` on the study's gradients and projector, with ``grouper`` at ``size``."""
    composed = {**spec["methods"][method], "gradients": spec["gradients"], "projector": spec["projector"]}
    composed["grouper"] = "singleton" if size == 1 else {"name": grouper, "group_size": size, "seed": 0}
    return composed


def _retrainer(declaration: ClassifierSetting, config: ClassifierConfig, problem: Problem, x_test: torch.Tensor,
               y_test: torch.Tensor) -> Any:
    """``retrain(keep) -> test accuracy`` of a model trained from scratch on the kept points (memoised)."""
    x, y = problem.train.dataset.tensors  # type: ignore[attr-defined]
    make = declaration.constructor(problem)
    seen: dict[bytes, float] = {}

    def retrain(keep: torch.Tensor) -> float:
        key = keep.numpy().tobytes()
        if key not in seen:
            model = train_model(make, attrkit.cross_entropy, x[keep], y[keep], config.recipe, config.seed)
            seen[key] = accuracy(model, x_test, y_test)
        return seen[key]

    return retrain


def run_setting(name: str, spec: Mapping[str, Any], cache_dir: Path, *, quick: bool, sizes: list[int],
                groupers: list[str]) -> dict[str, Any]:
    """Every (method of ``spec``, grouper, size) on setting ``name``: runtime, retraining score, groups.

    Returns:
        The setting's JSON entry: ``setting``, ``info``, ``n_train``, ``rows``.
    """
    declaration = get_classifier(name)
    config = declaration.quick if quick else declaration.full
    problem = declaration.setting().prepare(cache_dir, quick)
    print(problem.summary, flush=True)
    retrain = _retrainer(declaration, config, problem, *problem.test)
    metric = attrkit.metric({"name": "retraining", "fractions": spec["fractions"]})
    prop = mean_loss(problem.targets, attrkit.cross_entropy, name="mean target loss")
    task = attrs.evolve(problem.task(), properties=[prop])
    n_train = len(problem.train.dataset)  # type: ignore[arg-type]
    rows = []
    for method in spec["methods"]:
        for size in sizes:
            for grouper in (["singleton"] if size == 1 else groupers):
                attributor = attrkit.compose(_spec(spec, method, grouper, size), task)
                gc.collect()
                scores, seconds, peak = measured(lambda a=attributor: a.fit(problem.train).attribute())
                groups = attributor.groups
                # each point inherits its group's score: removal counts points, whole groups first
                result = metric.evaluate(scores[:, groups], {"retrain": retrain})
                row = {"method": method, "grouper": grouper, "group_size": size, "n_groups": int(groups.max()) + 1,
                       "seconds": seconds, "peak_mib": peak, "retraining": result.value,
                       "details": dict(result.details)}
                print(f"  {method} / {grouper} / {size}: {seconds:.2f} s, retraining {result.value:.4f}", flush=True)
                rows.append(row)
    return {"setting": name, "info": dict(problem.info), "n_train": n_train, "rows": rows}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--settings``, ``--sizes``, ``--groupers`` and the options of every study (:func:`add_run_arguments`)."""
    parser.add_argument("--settings", help="comma-separated settings (default: the spec's)")
    parser.add_argument("--sizes", help="group sizes, 1: pointwise (default: the spec's)")
    parser.add_argument("--groupers", help="groupers for sizes > 1 (default: the spec's)")
    add_run_arguments(parser, "GGDA.md", threads=1)


def run(args: argparse.Namespace) -> int:
    """Run the GGDA study; returns 0, or 2 on a usage error or a missing package."""
    spec = args.spec
    settings = names(args.settings, spec["settings"])
    try:
        for name in settings:
            get_classifier(name)
    except LookupError as exc:
        print(f"attrkit bench ggda: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in names(args.sizes, [str(s) for s in spec["sizes"]])]
    groupers = names(args.groupers, spec["groupers"])
    started = time.perf_counter()
    try:
        entries = [run_setting(n, spec, args.cache or default_cache_dir(n), quick=args.quick, sizes=sizes,
                               groupers=groupers) for n in settings]
    except ImportError as exc:
        print(f"attrkit bench ggda: {exc}", file=sys.stderr)
        return 2
    document = {
        "command": args.command,
        "quick": args.quick,
        "fractions": list(spec["fractions"]),
        "total_seconds": time.perf_counter() - started,
        "environment": environment(False),
        "settings": entries,
    }
    write_results(document, args.out, "ggda", args.markdown)
    try:
        ggda_plot(document, args.out / f"ggda{'-quick' if args.quick else ''}.png")
    except ImportError:
        print('plot skipped: matplotlib is not installed (pip install "attrkit[bench]")')
    return 0
