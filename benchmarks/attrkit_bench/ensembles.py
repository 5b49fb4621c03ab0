"""Ensemble benchmark: TRAK over independent, dropout and LoRA members, TracInCP, Grad-Dot/Cos, RPS.

    python -m attrkit_bench.ensembles [--settings mnist-lr,mnist-mlp] [--compare dattri]
                                      [--out DIR] [--markdown FILE] [--quick]
    attrkit bench ensembles ...        (the same)

For each setting, every row of :func:`rows` is composed on the setting's trained model
(with its members as the task's checkpoints where it has some), timed from ``fit`` to
``attribute`` on every target, its peak memory measured and its LDS computed. The cost of
producing the members (training time, cached after the first run) is reported beside.
With ``--compare dattri``, dattri 0.3.0's TRAK, TracIn and RPS run on the same members,
loaders and targets in the same process, right after attrkit's run of the same row.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

import attrkit
from attrkit.functional.last_layer import resolve_linear_layer
from attrkit.targets import cross_entropy
from attrkit_bench import members as produce
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.dattri_compare import require_dattri
from attrkit_bench.dattri_ensembles import dattri_rps, dattri_tracin, dattri_trak
from attrkit_bench.ensemble_report import markdown
from attrkit_bench.influence_runs import measure
from attrkit_bench.output import add_run_arguments, environment, write_results
from attrkit_bench.problem import Problem
from attrkit_bench.settings import mnist_lr, mnist_mlp

__all__ = ["Row", "main", "rows", "run_setting"]

#: Projection dimension of every TRAK row, and TRAK's damping (the paper's: none).
TRAK_DIM, TRAK_LAMBDA = 512, 0.0
#: Members of the TRAK-M rows, checkpoints of TracInCP, RPS's L2 strength (dattri's default).
MEMBERS, CHECKPOINTS, RPS_LAMBDA = 10, 5, 3e-3
_DECLARATIONS = {"mnist-lr": mnist_lr.DECLARATION, "mnist-mlp": mnist_mlp.DECLARATION}


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


def rows(quick: bool = False) -> list[Row]:
    """The rows, in table order (``quick``: 3 members and 2 checkpoints)."""
    k, c = (3, 2) if quick else (MEMBERS, CHECKPOINTS)
    trak = {"method": "trak", "projector": {"name": "gaussian", "dim": TRAK_DIM, "seed": 0},
            "solver": {"name": "gauss-newton", "regularization": TRAK_LAMBDA}}
    return [
        Row(label="grad-dot", spec={"method": "grad-dot"}),
        Row(label="grad-cos", spec={"method": "grad-cos"}),
        Row(label="trak-1", spec=trak, dattri="trak"),
        Row(label=f"trak-{k} independent", spec={**trak, "ensemble": "checkpoints"}, members="independent",
            dattri="trak"),
        Row(label=f"trak-{k} dropout", spec={**trak, "ensemble": {"name": "dropout", "members": k, "seed": 0}},
            needs_dropout=True),
        Row(label=f"trak-{k} lora", spec={**trak, "ensemble": "lora"}, members="lora"),
        Row(label=f"tracin-{c}", spec={"method": "tracin", "ensemble": "checkpoints"}, members="trajectory",
            dattri="tracin"),
        Row(label="rps", spec={"method": {"name": "rps", "regularization": RPS_LAMBDA}}, dattri="rps"),
    ]


def _members(row: Row, problem: Problem, cache_dir: Path, quick: bool) -> produce.Members | None:
    if row.members is None:
        return None
    declaration = _DECLARATIONS[problem.name]
    config = declaration.quick if quick else declaration.full
    k = {"trajectory": CHECKPOINTS, "independent": MEMBERS, "lora": MEMBERS}[row.members]
    if quick:
        k = 2 if row.members == "trajectory" else 3
    return getattr(produce, row.members)(declaration, config, problem, cache_dir, k)


def _rates(problem: Problem, n: int) -> list[float]:
    return [float(problem.info["config"]["recipe"]["lr"])] * n


def _ours(row: Row, problem: Problem, made: produce.Members | None) -> Callable[[], torch.Tensor]:
    spec = dict(row.spec)
    if row.members == "trajectory":
        spec["method"] = {"name": "tracin", "learning_rates": _rates(problem, len(made.states))}
    model = made.template if made is not None and made.template is not None else problem.model
    task = attrkit.AttributionTask(model=model, loss_fn=cross_entropy, checkpoints=made.states if made else None)
    return lambda: attrkit.compose(spec, task).fit(problem.train).attribute(problem.targets)


def _theirs(row: Row, problem: Problem, made: produce.Members | None) -> Callable[[], torch.Tensor]:
    states = made.states if made is not None else [problem.model.state_dict()]
    if row.dattri == "trak":
        return dattri_trak(problem.model, states, problem.train, problem.targets, TRAK_DIM, TRAK_LAMBDA)
    if row.dattri == "tracin":
        return dattri_tracin(problem.model, states, _rates(problem, len(states)), problem.train, problem.targets)
    return dattri_rps(problem.model, resolve_linear_layer(problem.model), problem.train, problem.targets, RPS_LAMBDA)


def run_setting(name: str, cache_dir: Path, *, quick: bool, compare: bool) -> dict[str, Any]:
    """Prepare setting ``name``, produce the members and run every row (and dattri's).

    Returns:
        The setting's JSON entry: ``setting``, ``info``, ``rows`` (label, spec, member
        cost, attrkit trial, dattri trial).
    """
    entry = attrkit.default_registry().get("metric", "lds")
    metric = entry.cls(entry.cls.Config())
    problem = _DECLARATIONS[name].setting().prepare(cache_dir, quick)
    print(problem.summary, flush=True)
    n = len(problem.targets.dataset)
    has_dropout = any(isinstance(m, torch.nn.Dropout) for m in problem.model.modules())
    out = []
    for row in rows(quick):
        record: dict[str, Any] = {"label": row.label, "spec": row.spec, "members": row.members,
                                  "dattri_counterpart": row.dattri}
        if row.needs_dropout and not has_dropout:
            record["skipped"] = "the model has no nn.Dropout layer"
            out.append(record)
            continue
        made = _members(row, problem, cache_dir, quick)
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attrkit_bench.ensembles", description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="mnist-lr,mnist-mlp", metavar="NAME,NAME",
                        help="comma-separated settings (default: mnist-lr,mnist-mlp)")
    parser.add_argument("--compare", choices=["dattri"], help="also run dattri's TRAK, TracIn and RPS")
    add_run_arguments(parser, "ENSEMBLES.md")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ensemble benchmark; returns 0, or 2 on a usage error or a missing package."""
    args = _parser().parse_args(argv)
    names = [n.strip() for n in args.settings.split(",") if n.strip()]
    unknown = [n for n in names if n not in _DECLARATIONS]
    try:
        if unknown:
            raise LookupError(f"no ensemble benchmark for {unknown}; known: {', '.join(_DECLARATIONS)}")
        if args.compare:
            require_dattri()
    except (LookupError, ImportError) as exc:
        print(f"attrkit bench ensembles: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    try:
        settings = [run_setting(n, args.cache or default_cache_dir(n), quick=args.quick,
                                compare=args.compare == "dattri") for n in names]
    except ImportError as exc:
        print(f"attrkit bench ensembles: {exc}", file=sys.stderr)
        return 2
    document = {
        "command": "python -m attrkit_bench.ensembles " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "quick": args.quick,
        "total_seconds": time.perf_counter() - started,
        "environment": environment(args.compare == "dattri"),
        "settings": settings,
    }
    write_results(document, args.out, "ensembles", markdown, args.markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
