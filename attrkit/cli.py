"""The ``attrkit`` command: ``attrkit plugins``, ``attrkit --version``, and the subcommands packages add."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import metadata

from attrkit.plugins import BLOCK_ENV
from attrkit.registry import default_registry

__all__ = ["COMMANDS", "main", "plugins_table"]


def plugins_table() -> str:
    """Every component by kind with its plugin, distribution and version, then the presets,
    the names refused because several plugins give them, and the plugins that failed to
    import, are broken or are blocked, each with the fix."""
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
    if registry.conflicts:
        lines.append(f"conflicts (registered for none; uninstall one plugin or block one with {BLOCK_ENV}=name):")
        for (kind, name), providers in registry.conflicts.items():
            lines.append(f"  {kind} {name!r}: {' and '.join(map(str, providers))}")
    imported = {n: i.error for n, i in registry.plugins.items() if i.error is not None}
    for name, why in sorted(imported.items()):
        lines.append(f"plugin {name!r} failed to load: {why}")
    for name, why in registry.broken.items():
        lines.append(
            f"plugin {registry.plugins[name]} is broken, none of its components or presets are registered: "
            f"{why}. Fix it, uninstall it or block it ({BLOCK_ENV}={name})."
        )
    for name, how in registry.blocked.items():
        lines.append(f"plugin {registry.plugins[name]} is blocked by {how}, so it is not loaded")
    return "\n".join(lines)


#: Entry-point group of ``attrkit`` subcommands other packages add (``bench`` comes from ``attrkit_bench``).
COMMANDS = "attrkit.commands"


def _commands() -> dict[str, metadata.EntryPoint]:
    """``{name: entry point}`` of the installed subcommands, ``main(argv) -> int`` each."""
    return {ep.name: ep for ep in metadata.entry_points(group=COMMANDS)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attrkit`` console script; returns the exit status.

    ``attrkit plugins`` and ``attrkit --version`` are the core's; every other subcommand is an
    entry point of the group :data:`COMMANDS` (``attrkit bench`` is the benchmark package's),
    called with the remaining arguments.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    parser = argparse.ArgumentParser(prog="attrkit", description="Composable training data attribution.")
    parser.add_argument("--version", action="version", version=f"attrkit {metadata.version('attrkit')}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("plugins", help="list every registered component with its plugin and version")
    for name, ep in sorted(commands.items()):
        given = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.value
        sub.add_parser(name, help=f"added by {given}: attrkit {name} --help", add_help=False)
    if argv[:1] == ["bench"] and "bench" not in commands:
        print("attrkit bench needs the benchmark package: pip install 'attrkit[bench]'", file=sys.stderr)
        return 2
    args, rest = parser.parse_known_args(argv)
    if args.command == "plugins":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        print(plugins_table())
        return 0
    return commands[args.command].load()(rest)


if __name__ == "__main__":
    raise SystemExit(main())
