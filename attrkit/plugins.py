"""Loading plugins from the ``attrkit`` entry-point group, and calling their hooks.

Every plugin is isolated from the others. Unlike
``PluginManager.load_setuptools_entrypoints``, a plugin that fails to import is
recorded (which, why) and does not stop the others; :func:`collect` then calls each
plugin's hooks one at a time and checks what they return, so a plugin whose hook
raises or returns something invalid is *broken* (it contributes nothing, with the
reason recorded) while the others are unaffected. Blocked plugins are recorded too,
and a block name that matches no installed plugin warns.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import reprlib
import traceback
import warnings
from collections.abc import Iterable, Mapping, Sequence
from importlib import metadata
from typing import Any

import attrs
import pluggy

from attrkit import hookspecs
from attrkit.errors import PluginWarning
from attrkit.hookspecs import PROJECT
from attrkit.protocols import BASES, KINDS, REQUIRED_FLAGS

__all__ = [
    "BLOCK_ENV",
    "PRESET",
    "Contribution",
    "PluginInfo",
    "collect",
    "component_problems",
    "describe_exception",
    "load_plugins",
]

#: Environment variable naming entry points not to load (comma-separated).
BLOCK_ENV = "ATTRKIT_BLOCK_PLUGINS"
#: The kind under which preset names are claimed in :attr:`Contribution.claimed`.
PRESET = "preset"

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_DIRECT = "(registered directly)"


@attrs.frozen
class PluginInfo:
    """Provenance of one plugin: its entry-point name, distribution and version.

    Attributes:
        name: the entry-point name, the name used to block it.
        distribution: the distribution that installs it (``"(registered directly)"``
            for a plugin passed as ``extra=``).
        version: the distribution's version.
        error: ``None`` for a plugin that imported, else why it failed to import.
        blocked: ``None`` for a plugin that was not blocked, else how it was
            (``"ATTRKIT_BLOCK_PLUGINS"``, ``"the block= argument"`` or both).
    """

    name: str
    distribution: str
    version: str
    error: str | None = None
    blocked: str | None = None

    def __str__(self) -> str:
        return f"{self.name!r} ({self.distribution} {self.version})"


@attrs.define
class Contribution:
    """What one plugin's hooks returned, checked.

    Attributes:
        plugin: the plugin's provenance.
        components: the valid component classes it returned.
        presets: ``{preset name: spec}`` it returned.
        claimed: every ``(kind, name)`` readable in what it returned, valid or not
            (presets as ``(PRESET, name)``), so that a lookup can name the plugin.
        problems: what is wrong, one line each; empty for a usable plugin. A plugin
            with problems is broken and must not be registered at all.
    """

    plugin: PluginInfo
    components: list[type] = attrs.field(factory=list)
    presets: dict[str, Mapping[str, Any]] = attrs.field(factory=dict)
    claimed: list[tuple[str, str]] = attrs.field(factory=list)
    problems: list[str] = attrs.field(factory=list)


def describe_exception(exc: BaseException) -> str:
    """``"Type: message (at file:line)"``, the line being where ``exc`` was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def component_problems(cls: Any) -> list[str]:
    """Everything that keeps ``cls`` from being a component class; ``[]`` when valid."""
    if not isinstance(cls, type):
        return ["not a class (attrkit_components returns classes, not instances or modules)"]
    problems = []
    kind = getattr(cls, "kind", None)
    if kind not in KINDS:
        problems.append(f"kind must be one of {list(KINDS)}, got {kind!r}")
    elif not issubclass(cls, BASES[kind]):
        problems.append(f"a {kind} must subclass attrkit.plugin.{BASES[kind].__name__}, which declares every flag of "
                        "its kind with its default")
    else:
        missing = [flag for flag in REQUIRED_FLAGS.get(kind, ()) if not hasattr(cls, flag)]
        if missing:
            problems.append(f"a {kind} must declare {', '.join(missing)}")
        if inspect.isabstract(cls):
            problems.append(f"it does not implement {', '.join(sorted(cls.__abstractmethods__))}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        problems.append(f"name must be lowercase words joined by hyphens, got {name!r}")
    if not attrs.has(getattr(cls, "Config", None)):
        problems.append("Config must be a frozen attrs class")
    for attr in ("requires", "provides"):
        if not isinstance(getattr(cls, attr, None), frozenset):
            problems.append(f"{attr} must be a frozenset of capability names")
    return problems


def _check_components(returned: Any, found: Contribution) -> None:
    if isinstance(returned, (str, bytes)) or not isinstance(returned, Sequence):
        kind = type(returned).__name__
        found.problems.append(
            f"attrkit_components() must return a list of component classes, got {kind} {reprlib.repr(returned)}"
        )
        return
    for i, cls in enumerate(returned):
        problems = component_problems(cls)
        kind, name = getattr(cls, "kind", None), getattr(cls, "name", None)
        if kind in KINDS and isinstance(name, str):
            if (kind, name) in found.claimed:
                problems.append(f"a second class for {kind} {name!r}")
            found.claimed.append((kind, name))
        if problems:
            found.problems.append(f"attrkit_components()[{i}] {cls!r}: {'; '.join(problems)}")
        else:
            found.components.append(cls)


def _check_presets(returned: Any, found: Contribution) -> None:
    if not isinstance(returned, Mapping):
        kind = type(returned).__name__
        found.problems.append(
            f"attrkit_presets() must return a dict {{preset name: spec dict}}, got {kind} {reprlib.repr(returned)}"
        )
        return
    for name, spec in returned.items():
        if not isinstance(name, str) or not _NAME.match(name):
            found.problems.append(
                f"attrkit_presets(): preset name must be lowercase words joined by hyphens, got {name!r}"
            )
            continue
        found.claimed.append((PRESET, name))
        if isinstance(spec, Mapping):
            found.presets[name] = spec
        else:
            given = f"{type(spec).__name__} {reprlib.repr(spec)}"
            found.problems.append(f"attrkit_presets()[{name!r}] must be a spec dict, got {given}")


_HOOKS = {"attrkit_components": _check_components, "attrkit_presets": _check_presets}


def collect(pm: pluggy.PluginManager, plugins: Mapping[str, PluginInfo]) -> dict[str, Contribution]:
    """Call every plugin's hooks one at a time and check what they return.

    Args:
        pm: the manager :func:`load_plugins` returned.
        plugins: ``{plugin name: PluginInfo}`` for every plugin registered in ``pm``.

    Returns:
        ``{plugin name: Contribution}`` for every plugin that implements a hook. A hook
        that raises, or returns something invalid, adds a line to ``problems`` that
        names the hook and what was wrong (the exception, with file and line).
    """
    found: dict[str, Contribution] = {}
    for hook, check in _HOOKS.items():
        for impl in getattr(pm.hook, hook).get_hookimpls():
            contribution = found.setdefault(impl.plugin_name, Contribution(plugins[impl.plugin_name]))
            try:
                returned = impl.function()
            except Exception as exc:  # one broken plugin must not break the others
                contribution.problems.append(f"{hook}() raised {describe_exception(exc)}")
                continue
            try:
                check(returned, contribution)
            except Exception as exc:  # e.g. a class whose attributes raise when read
                contribution.problems.append(f"reading what {hook}() returned raised {describe_exception(exc)}")
    return found


def _blocked(block: Iterable[str]) -> dict[str, str]:
    """``{plugin name: how it is blocked}`` from ``$ATTRKIT_BLOCK_PLUGINS`` and ``block``."""
    env = {b.strip() for b in os.environ.get(BLOCK_ENV, "").split(",") if b.strip()}
    arg = {b.strip() for b in ([block] if isinstance(block, str) else block) if b.strip()}
    how = {name: BLOCK_ENV for name in env}
    for name in arg:
        how[name] = f"{BLOCK_ENV} and the block= argument" if name in env else "the block= argument"
    return how


def _warn_unknown_blocks(blocked: Mapping[str, str], known: Iterable[str]) -> None:
    known = sorted(set(known))
    for name in sorted(set(blocked) - set(known)):
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        warnings.warn(
            f"{blocked[name]} names plugin {name!r}, but no installed attrkit plugin has that name, so it blocks "
            f"nothing.{hint} Installed plugins: {', '.join(known) or 'none'}. Fix: spell it as `attrkit plugins` "
            "does, or remove it.",
            PluginWarning,
            stacklevel=3,
        )


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=PROJECT), key=lambda ep: ep.name)


def load_plugins(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    block: Iterable[str] = (),
    extra: Iterable[tuple[str, Any]] = (),
) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Create the plugin manager and load every plugin that is not blocked.

    Args:
        entry_points: entry points to load (default: the installed ``attrkit`` group).
        block: plugin names not to load, added to those in ``$ATTRKIT_BLOCK_PLUGINS``.
        extra: ``(name, module_or_object)`` plugins registered directly (tests, notebooks).

    Returns:
        The manager and ``{plugin name: PluginInfo}`` for loaded, failed *and* blocked
        plugins.

    Warns:
        PluginWarning: a blocked name matches no entry point and no ``extra`` plugin
            (with close matches and the installed names).
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = _blocked(block)
    for name in blocked:
        pm.set_blocked(name)
    entry_points = _entry_points() if entry_points is None else list(entry_points)
    extra = list(extra)
    _warn_unknown_blocks(blocked, [ep.name for ep in entry_points] + [name for name, _ in extra])
    infos: dict[str, PluginInfo] = {}
    for ep in entry_points:
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        infos[ep.name] = _register(pm, ep.name, ep.load, dist, version, blocked.get(ep.name))
    for name, plugin in extra:
        infos[name] = _register(pm, name, lambda plugin=plugin: plugin, _DIRECT, "-", blocked.get(name))
    return pm, infos


def _register(
    pm: pluggy.PluginManager, name: str, load: Any, dist: str, version: str, blocked: str | None
) -> PluginInfo:
    """Import and register one plugin; a failure is recorded, not raised."""
    if blocked is not None:
        return PluginInfo(name, dist, version, blocked=blocked)
    try:
        pm.register(load(), name=name)
    except Exception as exc:  # a broken plugin must not break the others
        return PluginInfo(name, dist, version, error=describe_exception(exc))
    return PluginInfo(name, dist, version)
