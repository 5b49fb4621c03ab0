"""The ``attrkit`` command: ``attrkit plugins`` and ``attrkit bench``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from attrkit.registry import default_registry

__all__ = ["main", "plugins_table"]


def plugins_table() -> str:
    """Every component by kind with its plugin, distribution and version, and failed plugins."""
    registry = default_registry()
    lines = []
    for kind, named in registry.components().items():
        lines.append(f"{kind}:")
        if not named:
            lines.append("  (none registered)")
        width = max((len(n) for n in named), default=0)
        for name, entry in named.items():
            why = entry.unavailable
            status = f"  [unavailable: {why}]" if why else ""
            lines.append(f"  {name:<{width}}  {entry}{status}")
    if registry.presets:
        lines.append("presets:")
        for name, (_, info) in sorted(registry.presets.items()):
            lines.append(f"  {name}  {info.name} ({info.distribution} {info.version})")
    for name, why in sorted(registry.failed.items()):
        lines.append(f"plugin {name!r} failed to load: {why}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attrkit`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="attrkit", description="Composable training data attribution.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list every registered component with its plugin and version")
    sub.add_parser("bench", help="run an attribution benchmark (attrkit bench --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "plugins":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(plugins_table())
        return 0
    try:
        from attrkit_bench.cli import main as bench_main
    except ImportError as exc:
        print(f"attrkit bench needs the benchmark package: pip install 'attrkit[bench]' ({exc})", file=sys.stderr)
        return 2
    return bench_main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
