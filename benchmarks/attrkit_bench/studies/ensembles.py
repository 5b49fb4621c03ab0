"""The ensembles study: TRAK over independent, dropout and LoRA members, TracInCP, Grad-Dot/Cos, RPS.

    attrkit bench ensembles [--settings mnist-lr,mnist-mlp] [--compare dattri]
                            [--out DIR] [--markdown FILE] [--quick] [--spec FILE]

For each setting, every row of the spec file (``benchmarks/specs/ensembles.json``) is
composed on the setting's trained model (with its members as the task's checkpoints where
it has some), timed from ``fit`` to ``attribute`` on every target, its peak memory measured
and its LDS computed. The cost of producing the members (training time, cached after the
first run) is reported beside. With ``--compare dattri``, dattri 0.3.0's TRAK, TracIn and
RPS run on the same members, loaders and targets in the same process, right after
attrkit's run of the same row.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

import attrkit
from attrkit.functional import resolve_linear_layer
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.compare.dattri import require_dattri
from attrkit_bench.compare.ensembles import dattri_rps, dattri_tracin, dattri_trak
from attrkit_bench.problem import Problem
from attrkit_bench.report.output import environment, write_results
from attrkit_bench.settings import get_classifier
from attrkit_bench.studies.options import add_run_arguments, names
from attrkit_bench.studies.spec import fill, variant
from attrkit_bench.studies.trials import measure
from attrkit_bench.training import members as produce

__all__ = ["Row", "add_arguments", "rows", "run", "run_setting"]


@attrs.frozen(kw_only=True)
class Row:
    """One table row.

    Attributes:
        label: the row's name.
        spec: the attrkit spec.
        members: ``None`` (the trained model), ``"independent"``, ``"trajectory"`` or ``"lora"``.
        dattri: ``"trak"``, ``"tracin"``, ``"rps"`` or ``None`` (no counterpart).
        needs_dropout: only on models with ``nn.Dropout``.
    """

    label: str
    spec: dict[str, Any]
    members: str | None = None
    dattri: str | None = None
    needs_dropout: bool = False


def _counts(spec: Mapping[str, Any], quick: bool) -> dict[str, int]:
    """``{"members": …, "checkpoints": …}``: the ensembles' sizes (``quick``: the quick ones)."""
    return {name: variant(spec, quick)[name] for name in ("members", "checkpoints")}


def rows(spec: Mapping[str, Any], quick: bool = False) -> list[Row]:
    """The rows of the study's ``spec``, in table order, with its member counts filled in."""
    return [Row(**fill(entry, _counts(spec, quick))) for entry in spec["rows"]]


def _members(row: Row, problem: Problem, cache_dir: Path, counts: Mapping[str, int],
             quick: bool) -> produce.Members | None:
    if row.members is None:
        return None
    declaration = get_classifier(problem.name)
    config = declaration.quick if quick else declaration.full
    k = counts["checkpoints"] if row.members == "trajectory" else counts["members"]
    return getattr(produce, row.members)(declaration, config, problem, cache_dir, k)


def _rates(problem: Problem, n: int) -> list[float]:
    return [float(problem.info["config"]["recipe"]["lr"])] * n


def _ours(row: Row, problem: Problem, made: produce.Members | None) -> Callable[[], torch.Tensor]:
    spec = dict(row.spec)
    if row.members == "trajectory":
        spec["method"] = {"name": "tracin", "learning_rates": _rates(problem, len(made.states))}
    model = made.template if made is not None and made.template is not None else problem.model
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy, checkpoints=made.states if made else None)
    return lambda: attrkit.compose(spec, task).fit(problem.train).attribute(problem.targets)


def _theirs(row: Row, problem: Problem, made: produce.Members | None) -> Callable[[], torch.Tensor]:
    """dattri's counterpart of ``row``, with the projection dimension and dampings of the row's spec."""
    states = made.states if made is not None else [problem.model.state_dict()]
    if row.dattri == "trak":
        dim, lam = row.spec["projector"]["dim"], row.spec["solver"]["regularization"]
        return dattri_trak(problem.model, states, problem.train, problem.targets, dim, lam)
    if row.dattri == "tracin":
        return dattri_tracin(problem.model, states, _rates(problem, len(states)), problem.train, problem.targets)
    lam = row.spec["method"]["regularization"]
    return dattri_rps(problem.model, resolve_linear_layer(problem.model), problem.train, problem.targets, lam)


def run_setting(name: str, spec: Mapping[str, Any], cache_dir: Path, *, quick: bool, compare: bool) -> dict[str, Any]:
    """Prepare setting ``name``, produce the members and run every row of ``spec`` (and dattri's).

    Returns:
        The setting's JSON entry: ``setting``, ``info``, ``rows`` (label, spec, member
        cost, attrkit trial, dattri trial).
    """
    metric = attrkit.metric("lds")
    counts = _counts(spec, quick)
    problem = get_classifier(name).setting().prepare(cache_dir, quick)
    print(problem.summary, flush=True)
    n = len(problem.targets.dataset)
    has_dropout = any(isinstance(m, torch.nn.Dropout) for m in problem.model.modules())
    out = []
    for row in rows(spec, quick):
        record: dict[str, Any] = {"label": row.label, "spec": row.spec, "members": row.members,
                                  "dattri_counterpart": row.dattri}
        if row.needs_dropout and not has_dropout:
            record["skipped"] = "the model has no nn.Dropout layer"
            out.append(record)
            continue
        made = _members(row, problem, cache_dir, counts, quick)
        record["member_seconds"] = made.seconds if made else 0.0
        record["members_cached"] = made.cached if made else None
        ours, _ = measure(_ours(row, problem, made), problem, metric, n, None)
        record["attrkit"] = attrs.asdict(ours)
        if compare and row.dattri is not None:
            theirs, _ = measure(_theirs(row, problem, made), problem, metric, n, None)
            record["dattri"] = attrs.asdict(theirs)
        lds = f"{ours.lds:.3f}" if ours.lds is not None else ours.status
        print(f"  {row.label}: LDS {lds}, {ours.seconds:.1f} s, members {record['member_seconds']:.1f} s", flush=True)
        out.append(record)
    return {"setting": name, "info": dict(problem.info), "rows": out}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--settings``, ``--compare`` and the options of every study (:func:`add_run_arguments`)."""
    parser.add_argument("--settings", metavar="NAME,NAME", help="comma-separated settings (default: the spec's)")
    parser.add_argument("--compare", choices=["dattri"], help="also run dattri's TRAK, TracIn and RPS")
    add_run_arguments(parser, "ENSEMBLES.md")


def run(args: argparse.Namespace) -> int:
    """Run the ensembles study; returns 0, or 2 on a usage error or a missing package."""
    settings = names(args.settings, args.spec["settings"])
    try:
        for name in settings:
            get_classifier(name)
        if args.compare:
            require_dattri()
    except (LookupError, ImportError) as exc:
        print(f"attrkit bench ensembles: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        entries = [run_setting(n, args.spec, args.cache or default_cache_dir(n), quick=args.quick,
                               compare=args.compare == "dattri") for n in settings]
    except ImportError as exc:
        print(f"attrkit bench ensembles: {exc}", file=sys.stderr)
        return 2
    document = {
        "command": args.command,
        "quick": args.quick,
        "total_seconds": time.perf_counter() - started,
        "environment": environment(args.compare == "dattri"),
        "settings": entries,
    }
    write_results(document, args.out, "ensembles", args.markdown)
    return 0
