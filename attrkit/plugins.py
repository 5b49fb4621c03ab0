"""Loading plugins from the ``attrkit`` entry-point group into a pluggy manager.

Unlike ``PluginManager.load_setuptools_entrypoints``, one plugin that fails to import
is recorded (which, why) and does not stop the others.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from importlib import metadata
from typing import Any

import attrs
import pluggy

from attrkit import hookspecs
from attrkit.hookspecs import PROJECT

__all__ = ["BLOCK_ENV", "PluginInfo", "load_plugins"]

#: Environment variable naming entry points not to load (comma-separated).
BLOCK_ENV = "ATTRKIT_BLOCK_PLUGINS"


@attrs.frozen
class PluginInfo:
    """Provenance of one plugin: its entry-point name, distribution and version.

    ``error`` is ``None`` for a loaded plugin, else why it failed to load.
    """

    name: str
    distribution: str
    version: str
    error: str | None = None


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=PROJECT), key=lambda ep: ep.name)


def load_plugins(
    entry_points: Iterable[metadata.EntryPoint] | None = None,
    block: Iterable[str] = (),
    extra: Iterable[tuple[str, Any]] = (),
) -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Create the plugin manager and load every plugin.

    Args:
        entry_points: entry points to load (default: the installed ``attrkit`` group).
        block: plugin names not to load, added to those in ``$ATTRKIT_BLOCK_PLUGINS``.
        extra: ``(name, module_or_object)`` plugins registered directly (tests, notebooks).

    Returns:
        The manager and ``{plugin name: PluginInfo}`` for loaded *and* failed plugins.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    blocked = {b.strip() for b in os.environ.get(BLOCK_ENV, "").split(",") if b.strip()} | set(block)
    for name in blocked:
        pm.set_blocked(name)
    infos: dict[str, PluginInfo] = {}
    for ep in _entry_points() if entry_points is None else entry_points:
        if pm.is_blocked(ep.name):
            continue
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken plugin must not break the others
            last = traceback.extract_tb(exc.__traceback__)[-1]
            why = f"{type(exc).__name__}: {exc} (at {last.filename}:{last.lineno})"
            infos[ep.name] = PluginInfo(ep.name, dist, version, error=why)
            continue
        infos[ep.name] = PluginInfo(ep.name, dist, version)
    for name, plugin in extra:
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
            infos[name] = PluginInfo(name, "(registered directly)", "-")
    return pm, infos
