"""What attrkit's safety checks cost: a setting's default benchmark with and without them, in one run.

    python -m attrkit_bench.check_overhead [--setting mnist-lr] [--repeats 3]

The setting is prepared once; then its default methods and metrics (what ``attrkit bench
SETTING`` runs) run ``--repeats`` times with the checks on and as many times inside
:func:`attrkit.checks.disabled`, alternating which goes first, each timed whole (every
method's warm-up, fit, attribute and metrics). The overhead is the ratio of the medians.
Prints a table and writes ``{out}/check_overhead-{setting}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import attrkit
from attrkit import checks
from attrkit_bench.methods import parse_methods, parse_metrics
from attrkit_bench.runner import default_metrics, run_benchmark
from attrkit_bench.settings import get_setting
from attrkit_bench.cache import default_cache_dir

__all__ = ["main", "measure"]


def measure(setting: str, repeats: int) -> dict:
    """``{"on": [seconds...], "off": [...], "methods": {...}}`` of ``repeats`` runs each, alternating."""
    chosen = get_setting(setting)
    problem = chosen.prepare(default_cache_dir(chosen.name), False)
    registry = attrkit.default_registry()
    choices = parse_methods(chosen.default_methods, registry)
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


def main(argv: list[str] | None = None) -> int:
    """Measure and report; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m attrkit_bench.check_overhead", description=__doc__)
    parser.add_argument("--setting", default="mnist-lr")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    result = measure(args.setting, args.repeats)
    on, off = (statistics.median(result["seconds"][m]) for m in ("on", "off"))
    result["overhead"] = on / off - 1
    lines = [f"| part | checks on (s) | checks off (s) | overhead |", "|---|---|---|---|",
             f"| whole benchmark ({args.setting}) | {on:.2f} | {off:.2f} | {100 * (on / off - 1):+.1f} % |"]
    for label, times in result["methods"]["on"].items():
        a, b = statistics.median(times), statistics.median(result["methods"]["off"][label])
        lines.append(f"| {label}: fit + attribute | {a:.3f} | {b:.3f} | {100 * (a / b - 1):+.1f} % |")
    print("\n".join(lines))
    print(f"medians of {args.repeats} runs each, alternating; load average {result['load_average']}")
    path = Path(args.out) / f"check_overhead-{args.setting}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
