"""The roofline study: each method's time as a multiple of the machine's limit for its work.

    attrkit bench roofline [--settings mnist-lr,mnist-mlp] [--spec FILE] [--out DIR] [--markdown FILE]

Per setting, in one run: the float32 GEMM, gradient pass and forward rates, then every method of
the spec (default: the setting's own spec file ``benchmarks/specs/{setting}.json``) timed fit +
attribute, no metrics, then the rates again (the faster of each counts); each method's limit is
``examples / pass_rate + forwards / forward_rate + flops / gemm_rate`` (:mod:`attrkit_bench.roofline`).
``attrkit bench SETTING`` records the same columns beside its metrics (and dattri's times with
``--compare dattri``). Writes ``{out}/roofline.json`` and the markdown page.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import attrkit
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.runner.choices import parse_methods
from attrkit_bench.runner.document import run_benchmark
from attrkit_bench.settings import get_setting
from attrkit_bench.studies.options import names
from attrkit_bench.studies.spec import SPECS_DIR

__all__ = ["add_arguments", "markdown", "measure", "run"]


def measure(setting: str, specs: list[Any] | None) -> dict[str, Any]:
    """The result document of ``setting``'s methods (``specs``, default its spec file), with the roofline."""
    chosen = get_setting(setting)
    problem = chosen.prepare(default_cache_dir(chosen.name), False)
    registry = attrkit.default_registry()
    texts = [str(SPECS_DIR / f"{setting}.json")] if specs is None else [json.dumps(s) for s in specs]

    def say(run: Any) -> None:
        limit = run.roofline
        print(f"  {run.label}: {run.seconds:.2f} s" + (f", limit {limit['limit']:.3f} s ({limit['multiple']:.1f}×)"
                                                       if limit else ""), flush=True)

    return run_benchmark(problem, parse_methods(texts, registry), [], registry=registry, on_run=say)


def markdown(documents: list[dict[str, Any]]) -> str:
    """One table per setting: time, limit, multiple, and how the work was counted."""
    out = []
    for d in documents:
        r = d["info"]["roofline"]
        out += [f"### {d['setting']} (n = {r['n_train']}, targets = {r['n_targets']}, p = {r['parameters']})", "",
                f"float32 GEMM {r['gemm_gflops']:.1f} GFLOP/s, gradient pass {r['pass_examples_per_s']:.0f} examples/s, "
                f"forward {r.get('forward_examples_per_s', float('nan')):.0f} examples/s, "
                f"{d['info']['torch_threads']} threads", "",
                "| method | time (s) | limit (s) | × limit | GFLOP | examples | counted |", "|---|---|---|---|---|---|---|"]
        out += [f"| {x['label']} | {x['seconds']:.2f} | {x['roofline']['limit']:.3f} | {x['roofline']['multiple']:.1f} | "
                f"{x['roofline']['gflop']:.2f} | {x['roofline']['examples']} | {x['roofline']['counted']} |"
                for x in d["runs"] if x.get("roofline")]
        out.append("")
    return "\n".join(out)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--settings``, ``--out``, ``--markdown``."""
    parser.add_argument("--settings", help="comma-separated settings (default: the spec's)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="the markdown page (default: DIR/ROOFLINE.md)")


def run(args: argparse.Namespace) -> int:
    """Measure every setting and write the JSON and the page; returns 0."""
    documents = [measure(s, args.spec.get("methods", {}).get(s))
                 for s in names(args.settings, args.spec["settings"])]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "roofline.json").write_text(json.dumps(documents, indent=1, default=str))
    page = args.markdown or args.out / "ROOFLINE.md"
    page.write_text(markdown(documents))
    print(markdown(documents))
    print(f"results: {args.out / 'roofline.json'}, {page}")
    return 0
