"""The registry: ``(kind, name) -> component class``, with provenance.

Built from what each plugin's hooks return (:func:`attrkit.plugins.collect`). One bad
plugin never takes the others down, and nothing is resolved silently:

* a *broken* plugin (a hook raised or returned something invalid) registers nothing;
  looking up a name it returned raises :class:`~attrkit.errors.BrokenPluginError`;
* a name given by two plugins is registered for neither; looking it up raises
  :class:`~attrkit.errors.PluginConflictError` naming both (their other names work);
* an unknown name raises :class:`~attrkit.errors.UnknownComponentError`, whose
  message lists what exists, the plugins that failed or are broken, and the blocked ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs
import pluggy

from attrkit.errors import BrokenPluginError, ComponentUnavailableError, PluginConflictError, UnknownComponentError
from attrkit.plugins import BLOCK_ENV, PRESET, Contribution, PluginInfo, collect, describe_exception, load_plugins
from attrkit.protocols import KINDS

__all__ = ["Entry", "Presets", "Registry", "components", "default_registry", "reset_registry"]

#: ``(error class, message)`` raised when a refused name is looked up.
_Refusal = tuple[type[Exception], str]


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
        try:
            return self.cls.availability()
        except Exception as exc:  # a faulty check must not take `attrkit plugins` down
            return f"its availability() check raised {describe_exception(exc)}; report it to {self.plugin}"

    def require_available(self) -> None:
        """Raise :class:`ComponentUnavailableError` when the component cannot run here."""
        why = self.unavailable
        if why is not None:
            raise ComponentUnavailableError(f"{self.kind} {self.name!r} ({self.plugin.name}) is unavailable: {why}")

    def __str__(self) -> str:
        return f"{self.plugin.name} ({self.plugin.distribution} {self.plugin.version})"


class Presets(Mapping[str, tuple[Mapping[str, Any], PluginInfo]]):
    """The registered presets, ``{preset name: (spec, PluginInfo)}``.

    Iterating gives the usable presets. A *refused* name (given by two plugins, or by a
    broken plugin) is still ``in`` it, and looking it up raises the error that says why.
    """

    def __init__(self, usable: Mapping[str, tuple[Mapping[str, Any], PluginInfo]], refused: Mapping[str, _Refusal]):
        self._usable, self._refused = dict(usable), dict(refused)

    def __getitem__(self, name: str) -> tuple[Mapping[str, Any], PluginInfo]:
        if name in self._refused:
            error, message = self._refused[name]
            raise error(message)
        return self._usable[name]

    def __contains__(self, name: object) -> bool:
        return name in self._usable or name in self._refused

    def __iter__(self) -> Iterator[str]:
        return iter(self._usable)

    def __len__(self) -> int:
        return len(self._usable)


def _what(kind: str, name: str) -> str:
    return f"{kind} {name!r}"


def _conflict(kind: str, name: str, providers: Iterable[PluginInfo]) -> str:
    providers = list(providers)
    blocks = " or ".join(f"{BLOCK_ENV}={p.name}" for p in providers)
    return (
        f"{_what(kind, name)} is provided by {len(providers)} plugins: {' and '.join(map(str, providers))}. "
        f"attrkit does not choose between them, so {_what(kind, name)} is not registered (everything "
        f"else they give still works). Fix: uninstall one of them, or block one with {blocks}."
    )


def _broken(kind: str, name: str, plugin: PluginInfo, why: str) -> str:
    return (
        f"{_what(kind, name)} comes from plugin {plugin}, which is broken, so none of its components or "
        f"presets are registered: {why}. Fix the plugin (or upgrade or uninstall it); blocking it with "
        f"{BLOCK_ENV}={plugin.name} silences this."
    )


class Registry:
    """Components and presets contributed by a set of plugins.

    Never raises on a bad plugin: broken plugins, conflicting names and blocked plugins
    are recorded (:attr:`broken`, :attr:`conflicts`, :attr:`blocked`) and reported when
    one of their names is looked up and by ``attrkit plugins``.

    Args:
        pm: a pluggy manager with the attrkit hookspecs and plugins registered.
        plugins: ``{plugin name: PluginInfo}``, including failed and blocked plugins.

    Attributes:
        plugins: ``{plugin name: PluginInfo}`` as given.
        presets: the :class:`Presets`.
        broken: ``{plugin name: what is wrong}`` of plugins whose hooks raised or
            returned something invalid; none of their names is registered.
        conflicts: ``{(kind, name): providers}`` of names given by several plugins,
            registered for none (presets have kind ``"preset"``).
        blocked: ``{plugin name: how it was blocked}``.
    """

    def __init__(self, pm: pluggy.PluginManager, plugins: Mapping[str, PluginInfo]):
        self.plugins = dict(plugins)
        found = collect(pm, self.plugins)
        self.broken = {n: "; ".join(c.problems) for n, c in sorted(found.items()) if c.problems}
        self.blocked = {n: i.blocked for n, i in sorted(self.plugins.items()) if i.blocked is not None}
        self._entries: dict[tuple[str, str], Entry] = {}
        self.conflicts: dict[tuple[str, str], tuple[PluginInfo, ...]] = {}
        self._refused: dict[tuple[str, str], _Refusal] = {}
        presets: dict[str, tuple[Mapping[str, Any], PluginInfo]] = {}
        offers = _offers(c for c in found.values() if not c.problems)
        for (kind, name), given in sorted(offers.items()):
            if len(given) > 1:  # never first-wins: refused for all, and said so
                providers = tuple(sorted((info for info, _ in given), key=lambda info: info.name))
                self.conflicts[(kind, name)] = providers
                self._refused[(kind, name)] = (PluginConflictError, _conflict(kind, name, providers))
            elif kind == PRESET:
                presets[name] = (given[0][1], given[0][0])
            else:
                self._entries[(kind, name)] = Entry(kind, name, given[0][1], given[0][0])
        for plugin, why in self.broken.items():  # a name a usable plugin also gives stays that plugin's
            for kind, name in found[plugin].claimed:
                if (kind, name) not in offers:
                    refusal = (BrokenPluginError, _broken(kind, name, found[plugin].plugin, why))
                    self._refused.setdefault((kind, name), refusal)
        refused_presets = {name: r for (kind, name), r in self._refused.items() if kind == PRESET}
        self.presets = Presets(presets, refused_presets)

    @property
    def failed(self) -> dict[str, str]:
        """``{plugin name: reason}`` of plugins that failed to import or are broken."""
        failed = {n: i.error for n, i in self.plugins.items() if i.error is not None}
        return {**failed, **self.broken}

    def names(self, kind: str) -> list[str]:
        """Sorted registered names of ``kind`` (refused names are not among them)."""
        return sorted(n for k, n in self._entries if k == kind)

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``(kind, name)``.

        Raises:
            PluginConflictError: several plugins give this name; names them and the fix.
            BrokenPluginError: the name comes from a broken plugin; says what is wrong.
            UnknownComponentError: with the available names, close matches, the
                plugins that are installed, failed or broken, and the blocked ones.
        """
        key = (kind, name)
        if key in self._entries:
            return self._entries[key]
        if key in self._refused:
            error, message = self._refused[key]
            raise error(message)
        available = {n: e.plugin.name for (k, n), e in self._entries.items() if k == kind}
        usable = [n for n, i in self.plugins.items() if i.error is None and i.blocked is None and n not in self.broken]
        fixes = {n: f"{why}. Fix it, uninstall it or block it ({BLOCK_ENV}={n})." for n, why in self.failed.items()}
        exc = UnknownComponentError(kind, name, available, usable, fixes)
        if self.blocked:  # the name may come from a blocked plugin: say which, and how to unblock
            exc.args = (f"{exc} {self._blocked_note(kind)}",)
        raise exc

    def _blocked_note(self, kind: str) -> str:
        plugins = ", ".join(f"{self.plugins[n]} by {how}" for n, how in self.blocked.items())
        return (
            f"Blocked plugins, not loaded, so this {kind} may come from one of them: {plugins}. "
            f"Fix: remove the plugin from {BLOCK_ENV} (or from block=) to load it."
        )

    def components(self) -> dict[str, dict[str, Entry]]:
        """``{kind: {name: Entry}}`` for every kind (kinds with nothing map to ``{}``)."""
        out: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
        for (kind, name), entry in sorted(self._entries.items()):
            out[kind][name] = entry
        return out


def _offers(usable: Iterable[Contribution]) -> dict[tuple[str, str], list[tuple[PluginInfo, Any]]]:
    """``{(kind, name): [(plugin, class or preset spec), ...]}`` of what usable plugins give."""
    offers: dict[tuple[str, str], list[tuple[PluginInfo, Any]]] = {}
    for contribution in usable:
        for cls in contribution.components:
            offers.setdefault((cls.kind, cls.name), []).append((contribution.plugin, cls))
        for name, spec in contribution.presets.items():
            offers.setdefault((PRESET, name), []).append((contribution.plugin, spec))
    return offers


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """The registry of every installed plugin, built once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry(*load_plugins())
    return _DEFAULT


def reset_registry(block: Iterable[str] = (), extra: Iterable[tuple[str, Any]] = ()) -> Registry:
    """Rebuild the default registry (after installing plugins, or to block some).

    Args:
        block: plugin names not to load, added to those in ``$ATTRKIT_BLOCK_PLUGINS``.
        extra: ``(name, module_or_object)`` plugins registered directly.

    Returns:
        The new default registry.
    """
    global _DEFAULT
    _DEFAULT = Registry(*load_plugins(block=block, extra=extra))
    return _DEFAULT


def components() -> dict[str, dict[str, Entry]]:
    """``{kind: {name: Entry}}`` of everything registered in the default registry."""
    return default_registry().components()
