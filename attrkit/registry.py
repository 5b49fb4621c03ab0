"""The registry: ``(kind, name) -> component class``, with provenance.

Built from the plugin manager's hooks. Conflicts fail at start-up naming both
providers; an unknown name raises :class:`~attrkit.errors.UnknownComponentError`,
whose message lists what exists.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from attrkit.errors import (
    ComponentUnavailableError,
    PluginConflictError,
    PluginValidationError,
    UnknownComponentError,
)
from attrkit.plugins import PluginInfo, load_plugins
from attrkit.protocols import KINDS

__all__ = ["Entry", "Registry", "components", "default_registry", "reset_registry"]

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@attrs.frozen
class Entry:
    """One registered component: its class and the plugin that provides it."""

    kind: str
    name: str
    cls: type = attrs.field(repr=False)
    plugin: PluginInfo

    @property
    def unavailable(self) -> str | None:
        """``None`` when usable on this machine, else the reason and the fix."""
        check = getattr(self.cls, "availability", None)
        return check() if check is not None else None

    def require_available(self) -> None:
        """Raise :class:`ComponentUnavailableError` when the component cannot run here."""
        why = self.unavailable
        if why is not None:
            raise ComponentUnavailableError(f"{self.kind} {self.name!r} ({self.plugin.name}) is unavailable: {why}")

    def __str__(self) -> str:
        return f"{self.plugin.name} ({self.plugin.distribution} {self.plugin.version})"


def _validate(cls: Any, plugin: str) -> None:
    where = f"plugin {plugin!r} returned {cls!r}"
    if not isinstance(cls, type):
        raise PluginValidationError(f"{where}: attrkit_components must return classes")
    kind = getattr(cls, "kind", None)
    if kind not in KINDS:
        raise PluginValidationError(f"{where}: kind must be one of {list(KINDS)}, got {kind!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not _NAME.match(name):
        raise PluginValidationError(f"{where}: name must be lowercase words joined by hyphens, got {name!r}")
    config = getattr(cls, "Config", None)
    if not attrs.has(config):
        raise PluginValidationError(f"{where}: Config must be a frozen attrs class")
    for attr in ("requires", "provides"):
        if not isinstance(getattr(cls, attr, None), frozenset):
            raise PluginValidationError(f"{where}: {attr} must be a frozenset of capability names")


class Registry:
    """Components and presets contributed by a set of plugins.

    Args:
        pm: a pluggy manager with the attrkit hookspecs and plugins registered.
        plugins: ``{plugin name: PluginInfo}``, including plugins that failed to load.

    Raises:
        PluginConflictError: two plugins give the same (kind, name) or preset name.
        PluginValidationError: a plugin returned something that is not a component class.
    """

    def __init__(self, pm: pluggy.PluginManager, plugins: Mapping[str, PluginInfo]):
        self.plugins = dict(plugins)
        self._entries: dict[tuple[str, str], Entry] = {}
        self.presets: dict[str, tuple[Mapping[str, Any], PluginInfo]] = {}
        for impl in pm.hook.attrkit_components.get_hookimpls():
            info = self.plugins[impl.plugin_name]
            for cls in impl.function():
                _validate(cls, impl.plugin_name)
                self._add(Entry(cls.kind, cls.name, cls, info))
        for impl in pm.hook.attrkit_presets.get_hookimpls():
            info = self.plugins[impl.plugin_name]
            for name, spec in impl.function().items():
                if name in self.presets:
                    other = self.presets[name][1].name
                    raise PluginConflictError(f"preset {name!r} is given by both {other!r} and {info.name!r}")
                self.presets[name] = (spec, info)

    def _add(self, entry: Entry) -> None:
        key = (entry.kind, entry.name)
        if key in self._entries:
            other = self._entries[key].plugin
            raise PluginConflictError(
                f"{entry.kind} {entry.name!r} is registered by both {other.name!r} ({other.distribution}) "
                f"and {entry.plugin.name!r} ({entry.plugin.distribution}); uninstall or block one "
                "(ATTRKIT_BLOCK_PLUGINS=name)"
            )
        self._entries[key] = entry

    @property
    def failed(self) -> dict[str, str]:
        """``{plugin name: reason}`` of plugins that could not be loaded."""
        return {n: i.error for n, i in self.plugins.items() if i.error is not None}

    def names(self, kind: str) -> list[str]:
        """Sorted registered names of ``kind``."""
        return sorted(n for k, n in self._entries if k == kind)

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``(kind, name)``.

        Raises:
            UnknownComponentError: with the available names, close matches and plugins.
        """
        try:
            return self._entries[(kind, name)]
        except KeyError:
            available = {n: str(e.plugin.name) for (k, n), e in self._entries.items() if k == kind}
            loaded = [n for n, i in self.plugins.items() if i.error is None]
            raise UnknownComponentError(kind, name, available, loaded, self.failed) from None

    def components(self) -> dict[str, dict[str, Entry]]:
        """``{kind: {name: Entry}}`` for every kind (kinds with nothing map to ``{}``)."""
        out: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        for (kind, name), entry in sorted(self._entries.items()):
            out[kind][name] = entry
        return out


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The registry of every installed plugin, built once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry(*load_plugins())
    return _DEFAULT


def reset_registry(block: Iterable[str] = (), extra: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Rebuild the default registry (after installing plugins, or to block some)."""
    global _DEFAULT
    _DEFAULT = Registry(*load_plugins(block=block, extra=extra))
    return _DEFAULT


def components() -> dict[str, dict[str, Entry]]:
    """``{kind: {name: Entry}}`` of everything registered in the default registry."""
    return default_registry().components()
