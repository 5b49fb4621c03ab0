"""What a registered component takes and gives, written in one place.

``attrkit plugins NAME`` prints :func:`describe`; ``attrkit docs`` (:mod:`attrkit.docs`)
writes the same :class:`Description` into the Markdown API reference. Everything comes
from the component itself: its parameters from its ``Config`` (type, default, the bounds
and choices its validators enforce) with their meaning from the ``Attributes:`` section of
the ``Config`` docstring (or of a ``Config`` base class), its capabilities, the flags of its
kind (the class attributes the kind's base class in :mod:`attrkit.protocols` declares,
``HessianSolver.space``...) and its plugin.

>>> from attrkit.describe import describe, lookup
>>> print(describe(lookup("cg")[0]))  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import inspect
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from attrkit.compose import resolve
from attrkit.config import field_examples
from attrkit.errors import SpecError, UnknownComponentError
from attrkit.parameters import Parameter, default_of, parameters, plain, to_json
from attrkit.protocols import BASES, KINDS, SLOTS, Component
from attrkit.registry import Entry, Registry, default_registry

__all__ = ["TYPICAL_METHODS", "Description", "by_kind", "describe", "description", "lookup", "plain_text"]

#: Methods tried, in this order, to build a slot's example spec; then every other method, by
#: name. Only a preference for readable examples: the first spec that resolves is kept.
TYPICAL_METHODS = ("grad-dot", "if", "trak")


@attrs.frozen(kw_only=True)
class Description:
    """Everything :func:`describe` prints about one registered component.

    Attributes:
        kind, name: where it is registered.
        summary: the class docstring (markup as written).
        plugin, distribution, version: its provenance.
        parameters: one :class:`Parameter` per ``Config`` field, in field order.
        requires, provides: its capabilities, sorted.
        providers: ``{capability it requires: ["kind 'name'", ...]}`` of the registered
            components that provide it.
        flags: ``{flag: value}`` of the flags its kind declares (``space``, ``slots``...).
        example: a spec using it (for a metric: what :func:`attrkit.metric` takes).
        unavailable: ``None``, or why it cannot run on this machine.
    """

    kind: str
    name: str
    summary: str
    plugin: str
    distribution: str
    version: str
    parameters: tuple[Parameter, ...]
    requires: tuple[str, ...]
    provides: tuple[str, ...]
    providers: Mapping[str, tuple[str, ...]]
    flags: Mapping[str, Any]
    example: Mapping[str, Any]
    unavailable: str | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form (``attrkit plugins NAME --json``)."""
        out = attrs.asdict(self, recurse=False)
        out["parameters"] = [p.to_dict() for p in self.parameters]
        out.update(requires=list(self.requires), provides=list(self.provides),
                   providers={k: list(v) for k, v in self.providers.items()},
                   flags={k: plain(v) for k, v in self.flags.items()}, example=plain(self.example))
        return out


# -- flags and examples -------------------------------------------------------------------------

def _flags(cls: type) -> dict[str, Any]:
    """``{flag: value}``: the class attributes the kind's base declares beyond :class:`Component`'s."""
    base = BASES[cls.kind]
    common = set(inspect.get_annotations(Component)) | {"kind"}
    return {name: getattr(cls, name) for name in inspect.get_annotations(base)
            if name not in common and hasattr(cls, name)}


def _candidate_params(entry: Entry) -> list[dict[str, Any]]:
    """Parameters to show in an example, best first: the first field with a JSON-able,
    non-null default (a non-bool one if any); the test kit's first examples that differ
    from the defaults (for configs whose defaults alone are invalid); nothing."""
    fields = attrs.fields(entry.cls.Config)
    shown = [(f.alias, plain(d)) for f in fields for d, required in [default_of(f)] if not required and d is not None]
    shown = [(k, v) for k, v in shown if _jsonable(v)]
    shown.sort(key=lambda kv: 2 if isinstance(kv[1], bool) else 1 if isinstance(kv[1], list) else 0)
    kit = {}
    for f in fields:
        examples, (default, _) = field_examples(f), default_of(f)
        if examples and examples[0] != default and _jsonable(plain(examples[0])):
            kit[f.alias] = plain(examples[0])
    return [dict(shown[:1]), *({k: v} for k, v in kit.items()), kit, {}]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _example(entry: Entry, registry: Registry) -> dict[str, Any]:
    """A spec using ``entry`` that resolves against ``registry``: a method with a parameter
    in the flat form; a slot's component under a method that uses the slot (with a part
    providing what it requires); a metric's ``{"name": ..., **params}``."""
    candidates = _candidate_params(entry)
    if entry.unavailable is not None:  # it cannot resolve here: its first parameter, unchecked
        candidates = candidates[:1]
    if entry.kind in ("method", "metric"):
        key = "method" if entry.kind == "method" else "name"
        for params in candidates:
            spec = {key: entry.name, **params}
            if entry.kind == "metric" or _resolves(spec, registry):
                return spec
        return {key: entry.name}
    methods = registry.components()["method"]
    order = [m for m in TYPICAL_METHODS if m in methods] + [m for m in methods if m not in TYPICAL_METHODS]
    users = [m for m in order if entry.kind in methods[m].cls.slots]
    for params in candidates:
        part: Any = {"name": entry.name, **params} if params else entry.name
        for method in users:
            spec: dict[str, Any] = {"method": method, entry.kind: part}
            for need in sorted(entry.cls.requires):
                if any(need in e.cls.provides for e in _defaults(methods[method], registry)):
                    continue
                givers = [(k, n) for k, named in registry.components().items() if k in SLOTS and k != entry.kind
                          and k in methods[method].cls.slots for n, e in named.items() if need in e.cls.provides]
                if givers:
                    spec.setdefault(*givers[0])
            spec = {k: spec[k] for k in ("method", *SLOTS) if k in spec}
            if entry.unavailable is not None or _resolves(spec, registry):
                return spec
    return {"method": users[0] if users else "...", entry.kind: entry.name}


def _resolves(spec: Mapping[str, Any], registry: Registry) -> bool:
    try:
        resolve(spec, registry)
    except SpecError:
        return False
    return True


def _defaults(method: Entry, registry: Registry) -> list[Entry]:
    out = []
    for slot, name in method.cls.defaults.items():
        try:
            out.append(registry.get(slot, name))
        except LookupError:
            continue
    return out


def _providers(entry: Entry, registry: Registry) -> dict[str, tuple[str, ...]]:
    return {
        need: tuple(f"{k} {n!r}" for k, named in registry.components().items() for n, e in named.items()
                    if need in e.cls.provides)
        for need in sorted(entry.cls.requires)
    }


# -- the public calls ---------------------------------------------------------------------------

def description(entry: Entry, registry: Registry | None = None) -> Description:
    """The structured :class:`Description` of a registered component.

    Args:
        entry: from :meth:`Registry.get` or :func:`lookup`.
        registry: where the example spec and the providers are looked up; default every
            installed plugin.
    """
    registry = registry or default_registry()
    cls = entry.cls
    return Description(
        kind=entry.kind, name=entry.name, summary=inspect.getdoc(cls) or "", plugin=entry.plugin.name,
        distribution=entry.plugin.distribution, version=entry.plugin.version,
        parameters=parameters(cls.Config), requires=tuple(sorted(cls.requires)), provides=tuple(sorted(cls.provides)),
        providers=_providers(entry, registry), flags=_flags(cls), example=_example(entry, registry),
        unavailable=entry.unavailable,
    )


def plain_text(text: str) -> str:
    """Docstring markup for a terminal: ````x```` becomes ```x```, ``:func:`~a.b``` becomes ```b```."""
    text = re.sub(r":\w+:`~[\w.]*?\.?(\w+)`", r"`\1`", text)
    text = re.sub(r":\w+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _value(p: Parameter) -> str:
    return "required" if p.required else to_json(p.default)


def describe(entry: Entry, registry: Registry | None = None) -> str:
    """The text ``attrkit plugins NAME`` prints: summary, parameters (type, default,
    allowed values, meaning), capabilities, flags, plugin and an example spec.

    Args:
        entry: from :meth:`Registry.get` or :func:`lookup`.
        registry: default every installed plugin.
    """
    d = description(entry, registry)
    lines = [f"{d.kind} {d.name!r} — plugin {d.plugin} ({d.distribution} {d.version})"]
    if d.unavailable:
        lines.append(f"  unavailable on this machine: {d.unavailable}")
    lines += ["", *("  " + line if line else "" for line in plain_text(d.summary).splitlines()), ""]
    if d.parameters:
        lines.append("parameters:")
        for p in d.parameters:
            allowed = f"  ({'; '.join(d_ for d_ in p.allowed)})" if p.allowed else ""
            lines.append(f"  {p.name}: {p.type} = {_value(p)}{allowed}")
            lines.append(f"      {plain_text(p.meaning) or '(undocumented)'}")
    else:
        lines.append("parameters: none")
    needs = "; ".join(f"{c} (from {', '.join(d.providers[c]) or 'no registered component'})" for c in d.requires)
    lines.append(f"requires: {needs or 'nothing'}")
    lines.append(f"provides: {', '.join(d.provides) or 'nothing'}")
    if d.flags:
        lines.append("flags: " + ", ".join(f"{k} = {to_json(v)}" for k, v in d.flags.items()))
    call = "attrkit.metric" if d.kind == "metric" else "attrkit.compose"
    lines.append(f"example: {call}({to_json(d.example)}{'' if d.kind == 'metric' else ', task'})")
    return "\n".join(lines)


def lookup(query: str, registry: Registry | None = None) -> list[Entry]:
    """The entries a ``NAME`` or ``KIND/NAME`` names: one per kind that registers ``NAME``
    (``arnoldi`` is a projector and a solver), in :data:`~attrkit.protocols.KINDS` order.

    Raises:
        LookupError: nothing is registered under it (with close matches; for ``KIND/NAME``
            the registry's menu), or ``KIND`` is not a kind.
        PluginConflictError, BrokenPluginError: the name is refused; the message says why.
    """
    registry = registry or default_registry()
    kind, _, name = query.rpartition("/")
    if kind and kind not in KINDS:
        raise LookupError(f"unknown kind {kind!r} in {query!r}; kinds are {', '.join(KINDS)}")
    found = []
    for k in [kind] if kind else KINDS:
        try:
            found.append(registry.get(k, name))
        except UnknownComponentError:
            if kind:
                raise
    if not found:
        raise LookupError(_menu(name, registry))
    return found


def _menu(name: str, registry: Registry) -> str:
    every = sorted({n for named in registry.components().values() for n in named})
    close = difflib.get_close_matches(name, every, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return f"no component is registered as {name!r}.{hint} `attrkit plugins` lists them all."


def by_kind(registry: Registry | None = None) -> Iterable[tuple[str, list[Description]]]:
    """``(kind, [Description, ...])`` for every kind, components by name."""
    registry = registry or default_registry()
    for kind, named in registry.components().items():
        yield kind, [description(e, registry) for e in named.values()]
