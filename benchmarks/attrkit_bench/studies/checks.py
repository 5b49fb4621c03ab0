"""The checks study: what attrkit's safety checks cost, a setting's benchmark with and without them.

    attrkit bench checks [--setting mnist-lr] [--repeats 3] [--out DIR] [--spec FILE]

The setting is prepared once; then the spec's ``"methods"`` (names or spec objects; without
them the setting's default methods) and its default metrics run ``--repeats`` times with the
checks on and as many times inside :func:`attrkit.checks.disabled`, alternating which goes
first, each timed whole (every method's warm-up, fit, attribute and metrics). The overhead
is the ratio of the medians. Prints a table and writes ``{out}/check_overhead-{setting}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrkit
from attrkit import checks
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.report.checks import markdown
from attrkit_bench.runner.choices import parse_methods, parse_metrics
from attrkit_bench.runner.document import default_metrics, run_benchmark
from attrkit_bench.settings import get_setting

__all__ = ["add_arguments", "measure", "run"]


def measure(setting: str, repeats: int, specs: Sequence[str | Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """``{"on": [seconds...], "off": [...], "methods": {...}}`` of ``repeats`` runs each, alternating,
    of the methods ``specs`` (names or spec dicts; default: the setting's default methods)."""
    chosen = get_setting(setting)
    problem = chosen.prepare(default_cache_dir(chosen.name), False)
    registry = attrkit.default_registry()
    texts = chosen.default_methods if specs is None else [s if isinstance(s, str) else json.dumps(s) for s in specs]
    choices = parse_methods(texts, registry)
    metrics = parse_metrics(default_metrics(problem), registry)
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    methods: dict[str, dict[str, list[float]]] = {"on": {}, "off": {}}
    for r in range(repeats):
        for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
            start = time.perf_counter()
            if mode == "on":
                document = run_benchmark(problem, choices, metrics, registry=registry)
            else:
                with checks.disabled():
                    document = run_benchmark(problem, choices, metrics, registry=registry)
            seconds[mode].append(time.perf_counter() - start)
            for run in document["runs"]:
                methods[mode].setdefault(run["label"], []).append(run["seconds"])
    return {"setting": setting, "repeats": repeats, "seconds": seconds, "methods": methods,
            "load_average": os.getloadavg()}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--setting``, ``--repeats`` (defaults: the spec's) and ``--out``."""
    parser.add_argument("--setting", help="the setting (default: the spec's)")
    parser.add_argument("--repeats", type=int, help="runs with and without the checks (default: the spec's)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))


def run(args: argparse.Namespace) -> int:
    """Measure and report; returns 0."""
    setting, repeats = args.setting or args.spec["setting"], args.repeats or args.spec["repeats"]
    result = measure(setting, repeats, args.spec.get("methods"))
    on, off = (statistics.median(result["seconds"][m]) for m in ("on", "off"))
    result["overhead"] = on / off - 1
    print(markdown(result))
    path = args.out / f"check_overhead-{setting}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"results: {path}")
    return 0
