"""``attrkit bench``: run a benchmark setting, list the settings, or run ``attrkit bench influence``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import attrkit
from attrkit.errors import SpecError
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.methods import parse_methods, split_specs
from attrkit_bench.runner import format_table, run_benchmark
from attrkit_bench.settings import SETTINGS, get_setting

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attrkit bench",
        description="Benchmark attribution methods on a setting: LDS, wall time and peak memory.",
        epilog="attrkit bench influence --help: the influence-function solver benchmark; "
        "attrkit bench ensembles --help: TRAK/TracIn/RPS and ensembles; attrkit bench ggda --help: group attribution.",
    )
    parser.add_argument("setting", nargs="?", help="the setting to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the settings and exit")
    parser.add_argument(
        "--methods",
        action="append",
        metavar="SPEC,SPEC...",
        help="methods to run: registered method or preset names, JSON spec files or JSON specs, "
        "comma-separated (may be repeated); default: the setting's own list",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-out"),
        metavar="DIR",
        help="folder of the JSON result (default: ./bench-out)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="folder of cached models and ground truth (default: $ATTRKIT_CACHE/bench/SETTING, "
        "ATTRKIT_CACHE defaulting to ~/.cache/attrkit)",
    )
    parser.add_argument("--quick", action="store_true", help="every size shrunk: a smoke run of the same code")
    return parser


def _list() -> str:
    width = max(len(name) for name in SETTINGS)
    return "\n".join(
        f"{s.name.ljust(width)}  {s.description}\n{' ' * width}  size: {s.size}" for s in SETTINGS.values()
    )


def main(argv: list[str]) -> int:
    """Run ``attrkit bench`` with ``argv`` (the arguments after ``bench``).

    Prints the setting's facts and a table (method, LDS, time, peak memory) and writes
    ``{out}/{setting}.json`` (``{setting}-quick.json`` with ``--quick``).

    ``attrkit bench influence ARGS`` runs :func:`attrkit_bench.influence.main` with ``ARGS``;
    ``attrkit bench ensembles ARGS`` runs :func:`attrkit_bench.ensembles.main`;
    ``attrkit bench ggda ARGS`` runs :func:`attrkit_bench.ggda.main`.

    Returns:
        0 on success, 2 on a usage error (unknown setting, invalid method spec) or
        when the setting's data needs a package that is not installed.
    """
    if argv[:1] == ["influence"]:
        from attrkit_bench.influence import main as influence_main

        return influence_main(argv[1:])
    if argv[:1] == ["ensembles"]:
        from attrkit_bench.ensembles import main as ensembles_main

        return ensembles_main(argv[1:])
    if argv[:1] == ["ggda"]:
        from attrkit_bench.ggda import main as ggda_main

        return ggda_main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        print(_list())
        return 0
    if args.setting is None:
        parser.error("a setting is required (or --list)")
    try:
        setting = get_setting(args.setting)
    except LookupError as exc:
        print(f"attrkit bench: {exc.args[0]}", file=sys.stderr)
        return 2
    registry = attrkit.default_registry()
    texts = [t for group in args.methods for t in split_specs(group)] if args.methods else setting.default_methods
    try:
        choices = parse_methods(texts, registry)
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
    try:
        problem = setting.prepare(args.cache or default_cache_dir(setting.name), args.quick)
    except ImportError as exc:  # the setting's data needs an optional package
        print(f"attrkit bench: {exc}", file=sys.stderr)
        return 2
    print(problem.summary)
    runs, path = run_benchmark(problem, choices, args.out, quick=args.quick, registry=registry)
    print(format_table(runs))
    print(f"results: {path}")
    return 0
