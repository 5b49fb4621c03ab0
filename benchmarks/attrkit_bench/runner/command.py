"""The command ``attrkit bench SETTING``: its options, the distributed launch, the printed table and files.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) every rank joins a gloo process
group (NCCL on CUDA) and the methods run in attrkit's distributed mode; rank 0 prepares
the setting first (the others then load it from the cache) and alone prints and writes.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

import attrkit
from attrkit import Registry, SpecError
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.problem import Setting
from attrkit_bench.report.table import format_table
from attrkit_bench.runner.choices import MethodChoice, MetricChoice, parse_methods, parse_metrics, split_specs
from attrkit_bench.runner.document import default_metrics, run_benchmark, write_document
from attrkit_bench.runner.explain import explain_targets, write_explanation
from attrkit_bench.runner.method import MethodRun
from attrkit_bench.settings import get_setting

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``attrkit bench SETTING``."""
    parser.add_argument(
        "--methods",
        action="append",
        metavar="SPEC,SPEC...",
        help="methods to run: registered method or preset names, JSON specs, or JSON files of one spec or a list "
        "(a spec may add \"label\", \"members\": \"independent:10\" or \"trajectory:5\", \"compare\": false and "
        "\"skip\": [\"auc\"]), comma-separated, "
        "repeatable; default: the setting's own list",
    )
    parser.add_argument(
        "--metrics",
        action="append",
        metavar="METRIC,METRIC...",
        help="metrics: lds, loo, auc, brittleness, retraining, pruning, or JSON {\"name\": ..., params}; "
        "default: lds, loo (where the setting has it) and auc",
    )
    parser.add_argument("--compare", choices=["dattri", "kronfluence"],
                        help="also run each method's counterpart in dattri, or kronfluence's EK-FAC / K-FAC beside "
                        "attrkit's if + ekfac / kfac rows (same model, data, target and damping)")
    parser.add_argument("--targets", type=int, metavar="N",
                        help="judge on the setting's first N targets only (default: all of them)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR",
                        help="folder of the JSON result and the plots (default: ./bench-out)")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="folder of cached models and ground truth (default: $ATTRKIT_CACHE/bench/SETTING, "
                        "ATTRKIT_CACHE defaulting to ~/.cache/attrkit)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="processes retraining ground truth (default: $ATTRKIT_BENCH_WORKERS, else every core)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="torch intra-op threads of the attribution runs (default: torch's, every core)")
    parser.add_argument("--explain", type=int, metavar="N",
                        help="also explain the first N targets with the first method: each beside its 5 strongest "
                        "proponents and opponents, written to DIR/SETTING-explain.html (and .png for images)")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--quick", action="store_true", help="every size shrunk: a smoke run of the same code")


@contextmanager
def _process_group() -> Iterator[int]:
    """Join ``torchrun``'s process group when there is one; yields this process's rank (0 alone)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield dist.get_rank() if dist.is_initialized() else 0
        return
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield dist.get_rank()
        dist.barrier()  # no rank tears the group down while another still talks to it
    finally:
        dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    """Run the setting ``args.setting`` with the parsed options.

    Prints the setting's facts and a table (method, each metric, time, peak memory, and
    the counterpart's with ``--compare dattri`` or ``--compare kronfluence``), and writes
    ``{out}/{setting}.json`` plus the PNG plots ``{setting}-vs-time.png`` and
    ``{setting}-bars.png`` (``-quick`` in the names with ``--quick``). With ``--explain N``
    it also writes the first method's explanation of the first ``N`` targets,
    ``{setting}-explain.html`` (and ``.png`` for images) (:mod:`attrkit_bench.runner.explain`). Under the table, one line per column says what
    it measures and which way is better; the output ends with where each file was written.

    Returns:
        0 on success, 2 on a usage error (unknown setting, invalid method or metric spec,
        dattri or kronfluence missing) or when the setting's data needs a package that is not
        installed.
    """
    try:
        setting = get_setting(args.setting)
    except LookupError as exc:
        print(f"attrkit bench: {exc.args[0]}", file=sys.stderr)
        return 2
    registry = attrkit.default_registry()
    texts = [t for group in args.methods for t in split_specs(group)] if args.methods else setting.default_methods
    try:
        choices = parse_methods(texts, registry)
        metric_texts = [t for group in args.metrics or [] for t in split_specs(group)]
        metrics = parse_metrics(metric_texts, registry) if metric_texts else None
    except (SpecError, OSError) as exc:
        print(f"attrkit bench: {exc}", file=sys.stderr)
        return 2
    problems = []
    for choice in choices:
        try:
            attrkit.resolve(choice.spec, registry)
        except SpecError as exc:
            problems.append(f"method {choice.label!r}: {exc}")
    if problems:
        print("attrkit bench: " + "\n".join(problems), file=sys.stderr)
        return 2
    if args.compare:
        from attrkit_bench.compare.dattri import require_dattri
        from attrkit_bench.compare.kronfluence import require_kronfluence

        try:
            require_kronfluence() if args.compare == "kronfluence" else require_dattri()
        except ImportError as exc:
            print(f"attrkit bench: {exc}", file=sys.stderr)
            return 2
    if args.explain is not None and args.explain < 1:
        print(f"attrkit bench: --explain needs N >= 1, got {args.explain}", file=sys.stderr)
        return 2
    if args.workers is not None:
        os.environ["ATTRKIT_BENCH_WORKERS"] = str(args.workers)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    with _process_group() as rank:
        return _run(args, setting, choices, metrics, registry, rank)


def _values(metrics: dict[str, float | None]) -> str:
    """``lds=0.312 auc=0.97`` (``–`` where undefined): a finished run in the log."""
    return " ".join(f"{k}={'–' if v is None else f'{v:.3f}'}" for k, v in metrics.items())


def _compared(run: MethodRun) -> str:
    """`` kronfluence lds=0.345 (9.1 s)`` after a run's own values: its counterpart's, when it ran."""
    for library in ("dattri", "kronfluence"):
        theirs = getattr(run, library)
        if theirs is not None and theirs.seconds is not None:
            return f" {library} {_values(theirs.metrics)} ({theirs.seconds:.1f} s)"
    return ""


def _run(args: argparse.Namespace, setting: Setting, choices: list[MethodChoice], metrics: list[MetricChoice] | None,
         registry: Registry, rank: int) -> int:
    """Prepare the setting (rank 0 first), run the methods, print and write (rank 0)."""
    cache = args.cache or default_cache_dir(setting.name)
    try:
        if rank == 0:
            problem = setting.prepare(cache, args.quick)
        if dist.is_initialized():
            dist.barrier()
        if rank != 0:
            problem = setting.prepare(cache, args.quick)
    except ImportError as exc:  # the setting's data needs an optional package
        print(f"attrkit bench: {exc}", file=sys.stderr)
        return 2
    if metrics is None:
        metrics = parse_metrics(default_metrics(problem), registry)
    say = print if rank == 0 else (lambda *_, **__: None)
    say(problem.summary)
    if any(m.name == "loo" for m in metrics) and "loo" in problem.truths:
        problem.truth("loo")  # made before any method is timed, and before --targets copies the facts
        info = problem.info
        say(f"LOO ground truth: {info['config']['loo_points']} points x {info['config']['loo_seeds']} seeds, "
            f"{info['loo_seconds']:.1f} s of retraining ({info['loo_retrained']} retrained now); "
            f"seed agreement of the effects {info['loo_seed_agreement']:.3f}")
    if args.targets is not None:
        try:
            problem = problem.first_targets(args.targets)
        except ValueError as exc:
            print(f"attrkit bench: --targets: {exc}", file=sys.stderr)
            return 2
    n_targets = problem.info.get("n_targets")
    if args.explain is not None and not 1 <= args.explain <= (n_targets or args.explain):
        print(f"attrkit bench: --explain needs 1 <= N <= {n_targets} (the targets), got {args.explain}",
              file=sys.stderr)
        return 2
    document = run_benchmark(problem, choices, metrics, compare=args.compare or False, registry=registry,
                             on_run=lambda run: say(f"  done: {run.label} ({run.seconds:.1f} s) {_values(run.metrics)}"
                                                    f"{_compared(run)}", flush=True))
    explanation = None if args.explain is None else explain_targets(problem, choices[0], args.explain, registry)
    if rank != 0:
        return 0
    print(format_table(document))
    path = write_document(document, args.out, args.quick)
    written = [f"results: {path}"]  # printed last: where everything went
    if args.no_plots:
        written.append("plots: none (--no-plots)")
    else:
        from attrkit_bench.report.plots import write_plots

        try:
            written += [f"plot: {plot}" for plot in write_plots(document, args.out, path.stem)]
        except ImportError as exc:
            written.append(f"no plots: {exc}")
    if explanation is not None:
        files, no_png = write_explanation(explanation, args.out, path.stem)
        written += [f"explanation: {file}" for file in files]
        if no_png is not None:
            written.append(f"no explanation PNG: {no_png}")
    else:
        written.append(f"explanation: none (--explain N writes {args.out / (path.stem + '-explain.html')}: the "
                       f"first method, {choices[0].label}, on the first N targets)")
    print("written:", *(f"  {line}" for line in written), sep="\n")
    return 0
