"""The ``attrkit`` command: ``attrkit plugins [NAME]``, ``attrkit docs``, ``attrkit --version``,
and the subcommands packages add."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib import metadata

from attrkit.errors import AttrkitError
from attrkit.plugins import BLOCK_ENV
from attrkit.registry import default_registry

__all__ = ["COMMANDS", "CORE_COMMANDS", "main", "plugin_details", "plugins_json", "plugins_table"]


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


def plugin_details(query: str, as_json: bool = False) -> str:
    """What ``attrkit plugins NAME`` prints: :func:`attrkit.describe.describe` of every
    component ``NAME`` (or ``KIND/NAME``) names, one per kind when several kinds register it.

    Raises:
        LookupError: nothing is registered under ``query`` (the message has close matches).
    """
    from attrkit.describe import describe, description, lookup  # imports compose: only when asked

    registry = default_registry()
    entries = lookup(query, registry)
    if as_json:
        return json.dumps([description(e, registry).to_dict() for e in entries], indent=2)
    texts = [describe(e, registry) for e in entries]
    if len(entries) > 1:
        kinds = " and ".join(f"a {e.kind}" for e in entries)
        which = " or ".join(f"`attrkit plugins {e.kind}/{e.name}`" for e in entries)
        texts.insert(0, f"{query!r} is {kinds}; all are shown below ({which} shows one).")
    return "\n\n".join(texts)


def plugins_json() -> str:
    """``attrkit plugins --json``: ``{kind: [description, ...]}`` of every registered component
    (see :meth:`attrkit.describe.Description.to_dict`)."""
    from attrkit.describe import by_kind

    return json.dumps({kind: [d.to_dict() for d in found] for kind, found in by_kind()}, indent=2)


#: The subcommands of the core itself.
CORE_COMMANDS = ("plugins", "docs")
#: Entry-point group of ``attrkit`` subcommands other packages add (``bench`` comes from ``attrkit_bench``).
COMMANDS = "attrkit.commands"


def _commands() -> dict[str, metadata.EntryPoint]:
    """``{name: entry point}`` of the installed subcommands, ``main(argv) -> int`` each."""
    return {ep.name: ep for ep in metadata.entry_points(group=COMMANDS)}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attrkit`` console script; returns the exit status.

    ``attrkit plugins [NAME]``, ``attrkit docs --out DIR`` and ``attrkit --version`` are the
    core's (:data:`CORE_COMMANDS`); every other subcommand is an entry point of the group
    :data:`COMMANDS` (``attrkit bench`` is the benchmark package's), called with the
    remaining arguments.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = _commands()
    parser = argparse.ArgumentParser(prog="attrkit", description="Composable training data attribution.")
    parser.add_argument("--version", action="version", version=f"attrkit {metadata.version('attrkit')}")
    sub = parser.add_subparsers(dest="command", required=True)
    plugins = sub.add_parser("plugins", help="list every registered component with its plugin and version; "
                                                "with NAME, its parameters, capabilities, flags and an example spec")
    plugins.add_argument("name", nargs="?", help="a component's NAME, or KIND/NAME when several kinds register NAME")
    plugins.add_argument("--json", action="store_true", help="print the descriptions as JSON")
    docs = sub.add_parser("docs", help="write the API reference (Markdown) from the registry and the docstrings")
    docs.add_argument("--out", required=True, help="directory to write the pages into (created if missing)")
    for name, ep in sorted(commands.items()):
        if name in CORE_COMMANDS:  # the core's own commands are not replaced
            continue
        given = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else ep.value
        sub.add_parser(name, help=f"added by {given}: attrkit {name} --help", add_help=False)
    if argv[:1] == ["bench"] and "bench" not in commands:
        print("attrkit bench needs the benchmark package: pip install 'attrkit[bench]'", file=sys.stderr)
        return 2
    args, rest = parser.parse_known_args(argv)
    if args.command in CORE_COMMANDS and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "plugins":
        if args.name is None:
            print(plugins_json() if args.json else plugins_table())
            return 0
        try:
            print(plugin_details(args.name, args.json))
        except (LookupError, AttrkitError) as exc:
            print(f"attrkit plugins: {exc.args[0] if exc.args else exc}", file=sys.stderr)
            return 1
        return 0
    if args.command == "docs":
        from attrkit.docs import write_docs

        pages = write_docs(args.out)
        print(f"wrote {len(pages)} pages to {args.out}: {', '.join(p.name for p in pages)}")
        return 0
    return commands[args.command].load()(rest)


if __name__ == "__main__":
    raise SystemExit(main())
