"""``attrkit bench``: run a setting, a study or a tool, or list them all.

``attrkit bench SETTING [options]`` runs methods on a setting (:mod:`attrkit_bench.runner`);
``attrkit bench STUDY [options]`` runs a study from its spec file and ``attrkit bench TOOL``
a tool (:mod:`attrkit_bench.commands`); ``attrkit bench --list`` lists the three. The
``attrkit`` command reaches :func:`main` through the entry-point group ``attrkit.commands``.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import textwrap

from attrkit_bench.commands import STUDIES, TOOLS, Command
from attrkit_bench.report.table import TITLES, legend
from attrkit_bench.runner import command as setting_command
from attrkit_bench.settings import SETTINGS
from attrkit_bench.studies.spec import load_spec, spec_file

__all__ = ["listing", "main"]


def _epilog() -> str:
    """What the table's columns measure (the lines printed under it), then the studies, tools and launch."""
    columns = [textwrap.fill(line, 100, initial_indent="  ", subsequent_indent="    ") for line in legend(list(TITLES))]
    rest = (f"Studies: {', '.join(STUDIES)}; tools: {', '.join(TOOLS)} (attrkit bench NAME --help for each). "
            "Distributed: torchrun --nproc-per-node N -m attrkit bench SETTING ...")
    return "\n".join(["What the table's columns measure (the same lines are printed under it):", *columns, "",
                      "Written: DIR/SETTING.json (every run in full), DIR/SETTING-vs-time.png and DIR/SETTING-bars.png "
                      "(plots),", "and with --explain N DIR/SETTING-explain.html (+ .png for images).", "",
                      textwrap.fill(rest, 100)])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attrkit bench",
        description="Benchmark attribution methods on a setting: every metric, wall time and peak memory.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("setting", nargs="?", help="the setting to run (see --list)")
    parser.add_argument("--list", action="store_true", help="list the settings, studies and tools and exit")
    setting_command.add_arguments(parser)
    return parser


def _rows(names_and_lines: list[tuple[str, list[str]]]) -> list[str]:
    width = max(len(name) for name, _ in names_and_lines)
    return [f"{(name if i == 0 else '').ljust(width)}  {line}"
            for name, lines in names_and_lines for i, line in enumerate(lines)]


def listing() -> str:
    """What ``attrkit bench --list`` prints: each setting (with its sizes), each study and each tool."""
    return "\n".join([
        "settings (attrkit bench SETTING):",
        *_rows([(s.name, [s.description, f"size: {s.size}"]) for s in SETTINGS.values()]),
        "",
        "studies (attrkit bench STUDY; spec files in benchmarks/specs):",
        *_rows([(c.name, [c.description]) for c in STUDIES.values()]),
        "",
        "tools:",
        *_rows([(c.name, [c.description]) for c in TOOLS.values()]),
    ])


def _command(command: Command, argv: list[str]) -> int:
    """Parse ``argv`` for ``command`` (a study also gets ``--spec``) and run it."""
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"attrkit bench {command.name}", description=command.description)
    if command.name in STUDIES:
        default = spec_file(command.name)
        parser.add_argument("--spec", type=load_spec, default=str(default), metavar="FILE",
                            help=f"the study's spec file (default: {default})")
    module.add_arguments(parser)
    parser.set_defaults(command=shlex.join(["attrkit", "bench", command.name, *argv]))
    return module.run(parser.parse_args(argv))


def main(argv: list[str]) -> int:
    """Run ``attrkit bench`` with ``argv`` (the arguments after ``bench``).

    Returns:
        The command's exit status: 0 on success, 2 on a usage error (unknown setting,
        invalid spec, a missing optional package).
    """
    named = (STUDIES.get(argv[0]) or TOOLS.get(argv[0])) if argv else None
    if named is not None:
        return _command(named, argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.list:
        print(listing())
        return 0
    if args.setting is None:
        parser.error("a setting, a study or a tool is required (or --list)")
    return setting_command.run(args)
