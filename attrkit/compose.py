"""The composer: spec + task -> a ready attributor, or one error listing every problem."""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from typing import Any, Union

import attrs

from attrkit.config import build_config, config_to_dict
from attrkit.errors import (
    ArgumentTypeError,
    AttrkitError,
    BrokenPluginError,
    PluginConflictError,
    SpecError,
    UnknownComponentError,
)
from attrkit.parts import Part
from attrkit.precheck import check_parts
from attrkit.protocols import SLOTS, Attributor, Metric
from attrkit.registry import Entry, Registry, default_registry
from attrkit.spec import ComponentSpec, Spec, not_an_object
from attrkit.spec_sources import lift_method_params, read_spec_file, spec_file
from attrkit.task import AttributionTask

__all__ = ["Resolved", "compose", "metric", "resolve"]


@attrs.frozen
class Resolved:
    """A spec checked against a registry: the entries and configs of every part.

    Attributes:
        spec: the full spec, every default filled in and every parameter explicit (a
            :class:`Spec`; for a metric, its :class:`ComponentSpec`).
        entries: ``{"method" or slot: Entry}`` (``{"metric": Entry}``).
        configs: ``{"method" or slot: Config instance}`` (``{"metric": …}``).
    """

    spec: Spec | ComponentSpec
    entries: Mapping[str, Entry]
    configs: Mapping[str, Any]

    def parts(self) -> dict[str, Part]:
        """``{slot: Part}``: what a method makes its components from (``method`` excluded)."""
        return {slot: Part(self.entries[slot].cls, self.configs[slot]) for slot in SLOTS if slot in self.entries}

    def provenance(self) -> dict[str, dict[str, str]]:
        """``{part: {"name", "plugin", "distribution", "version"}}`` for result files."""
        return {
            part: {
                "name": e.name,
                "plugin": e.plugin.name,
                "distribution": e.plugin.distribution,
                "version": e.plugin.version,
            }
            for part, e in self.entries.items()
        }


#: What :func:`compose` and :func:`resolve` accept as a spec.
SpecLike = Union[Spec, Mapping[str, Any], str, "os.PathLike[str]"]

#: First characters of text meant as JSON (a registered name starts with a letter).
_JSON_START = tuple('{["-0123456789')


def _unknown_name(name: str, registry: Registry) -> str:
    """The menu for a bare name that is neither a preset nor a method: close matches,
    the presets and the methods (with their plugins)."""
    presets = sorted(registry.presets)
    methods = registry.components()["method"]
    close = difflib.get_close_matches(name, [*presets, *methods], n=3)
    lines = [f"spec: {name!r} is neither a preset nor a registered method name (nor JSON text)."]
    if close:
        lines.append(f"Did you mean: {', '.join(repr(c) for c in close)}?")
    lines.append(f"Presets: {', '.join(presets) or 'none'}.")
    menu = ", ".join(f"{n} ({e.plugin.name})" for n, e in methods.items())
    lines.append(f"Methods: {menu or 'none'}.")
    lines.append('A spec is a dict, JSON text like {"method": "grad-dot"}, a preset name or a method name.')
    return " ".join(lines)


def _text_parts(text: str, registry: Registry) -> tuple[dict[str, ComponentSpec], list[str]]:
    """``({key: ComponentSpec}, problems)`` of JSON text, a preset name or a method name.

    Text that parses as JSON must be an object; text that fails to parse but starts like
    JSON (``{``, ``[``, ``"``, a digit, ``-``) gets the parser's error; anything else is a
    name: a preset, else a method's bare name (``"trak"`` means ``{"method": "trak"}``).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith(_JSON_START):
            return {}, [f"spec: not valid JSON ({exc})"]
    else:
        return _dict_parts(data, registry) if isinstance(data, Mapping) else ({}, [not_an_object(data)])
    name = text.strip()
    if name in registry.presets:
        return _dict_parts(registry.presets[name][0], registry)
    try:
        registry.get("method", name)
    except UnknownComponentError:
        return {}, [_unknown_name(name, registry)]
    except AttrkitError:  # a name the registry refuses (two plugins give it...): the lookup says why
        pass
    return Spec.collect({"method": name})


def _dict_parts(data: Any, registry: Registry) -> tuple[dict[str, ComponentSpec], list[str]]:
    """``({key: ComponentSpec}, problems)`` of a spec dict, in the nested or the flat method form."""
    data, lifted = lift_method_params(data, registry)
    parts, problems = Spec.collect(data)
    return parts, lifted + problems


def _spec_parts(spec: SpecLike, registry: Registry) -> tuple[dict[str, ComponentSpec], list[str]]:
    """``({key: ComponentSpec}, problems)`` of a Spec, dict, spec file, JSON text, preset or method name."""
    if isinstance(spec, Spec):
        return {"method": spec.method, **spec.slots()}, []
    ref = spec_file(spec)
    if ref is not None:
        return _dict_parts(read_spec_file(ref), registry)
    if isinstance(spec, str):
        return _text_parts(spec, registry)
    return _dict_parts(spec, registry)


def _from(spec: SpecLike, problems: list[str]) -> list[str]:
    """``problems``, each starting with the spec file (and label) when ``spec`` names one."""
    ref = spec_file(spec)
    return problems if ref is None else [f"{ref}: {p}" for p in problems]


def resolve(spec: SpecLike, registry: Registry | None = None) -> Resolved:
    """Check ``spec`` against the registry and fill in every default.

    Args:
        spec: anything :func:`compose` takes: a :class:`Spec`, a dict (nested or in the flat
            method form), a spec file (``"specs.json#label"``), JSON text, a preset name or a
            method name.
        registry: defaults to every installed plugin.

    Raises:
        SpecError: listing every problem: unknown names (with the menu), names
            refused because two plugins give them or their plugin is broken, slots the
            method does not use, unknown or invalid parameters, capabilities that
            no part provides, and components unavailable on this machine; for a spec
            file, each problem starts with the file.
    """
    registry = registry or default_registry()
    try:
        given, problems = _spec_parts(spec, registry)
    except (PluginConflictError, BrokenPluginError) as exc:  # a preset name that is refused
        raise SpecError(_from(spec, [f"spec: {exc}"])) from None

    def lookup(kind: str, part: str, name: str) -> Entry | None:
        try:
            entry = registry.get(kind, name)
        except (UnknownComponentError, PluginConflictError, BrokenPluginError) as exc:
            problems.append(f"{part}: {exc}")
            return None
        why = entry.unavailable
        if why is not None:
            problems.append(f"{part}: {kind} {name!r} is unavailable on this machine: {why}")
        return entry

    chosen: dict[str, ComponentSpec] = {}
    method = lookup("method", "method", given["method"].name) if "method" in given else None
    if method is not None:
        chosen["method"] = given["method"]
        accepted = method.cls.slots
        for slot, part in given.items():
            if slot == "method":
                continue
            if slot not in accepted:
                uses = ", ".join(s for s in SLOTS if s in accepted) or "no other component"
                problems.append(
                    f"{slot}: method {method.name!r} does not use a {slot} ({part.name!r} given); "
                    f"it uses: {uses}"
                )
        for slot in SLOTS:
            if slot not in accepted:
                continue
            part = given.get(slot) or method.cls.defaults.get(slot)
            if part is not None:
                chosen[slot] = ComponentSpec.from_value(part, slot)
    else:  # still check the slots, so that one error lists every problem
        chosen.update({slot: part for slot, part in given.items() if slot != "method"})

    entries: dict[str, Entry] = {}
    configs: dict[str, Any] = {}
    for part, cspec in chosen.items():
        entry = method if part == "method" else lookup(part, part, cspec.name)
        if entry is None:
            continue
        entries[part] = entry
        config, config_problems = build_config(entry.cls.Config, cspec.params, part)
        problems.extend(config_problems)
        if config is not None:
            configs[part] = config

    provided = set().union(*(e.cls.provides for e in entries.values())) if entries else set()
    for part, entry in entries.items():
        for need in sorted(entry.cls.requires - provided):
            givers = [
                f"{kind} {name!r}"
                for kind, named in registry.components().items()
                for name, e in named.items()
                if need in e.cls.provides
            ]
            hint = f"; provided by {', '.join(givers)}" if givers else "; no registered component provides it"
            problems.append(f"{part}: {entry.kind} {entry.name!r} requires {need!r}, which no part of this spec provides{hint}")

    if problems:
        raise SpecError(_from(spec, problems))
    full = Spec(
        **{
            part: ComponentSpec(name=entries[part].name, params=config_to_dict(configs[part]))
            for part in entries
        }
    )
    return Resolved(spec=full, entries=entries, configs=configs)


def compose(spec: SpecLike, task: AttributionTask, registry: Registry | None = None) -> Attributor:
    """Build the attributor a spec describes for ``task``.

    Args:
        spec: a dict (``{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 256}}``;
            a method's parameters may also sit at the top level: ``{"method": "tracin",
            "learning_rates": [0.1, 0.05]}``), JSON text of such an object, the path of a
            JSON file holding one (``"my-spec.json"``) or a list of labelled specs with the
            label after ``#`` (``"benchmarks/specs/mnist-lr.json#trak-10"``; benchmark-only
            keys are ignored with a :class:`~attrkit.errors.SpecFileWarning`), a preset
            name, a method's bare name (``"trak"`` means ``{"method": "trak"}``) or a :class:`Spec`.
        task: the :class:`AttributionTask`.
        registry: defaults to every installed plugin.

    Returns:
        An unfitted attributor, constructed as ``cls(config, task=task, parts=resolved.parts(),
        resolved=resolved)``: ``attributor.resolved`` records the full spec and the provenance
        of every part.

    Raises:
        SpecError: every problem of the spec, in one error, before any work: those of
            :func:`resolve`, then those the parts' ``check`` hooks decide from the task
            (:mod:`attrkit.precheck`: more parameters than the explicit solver's
            ``max_dim``, an ensemble with no members on this task, ``last-layer`` on a model
            without ``nn.Linear``...).
        TypeError: ``task`` is not an ``AttributionTask``.
    """
    if not isinstance(task, AttributionTask):
        raise ArgumentTypeError(f"task must be an attrkit.AttributionTask, got {type(task).__name__}")
    resolved = resolve(spec, registry)
    problems = check_parts(resolved, task)
    if problems:
        raise SpecError(_from(spec, problems))
    return resolved.entries["method"].cls(resolved.configs["method"], task=task, parts=resolved.parts(),
                                          resolved=resolved)


def metric(spec: str | Mapping[str, Any] | ComponentSpec, registry: Registry | None = None) -> Metric:
    """Build the metric a spec names, checked like a method's spec.

    Args:
        spec: a registered metric name (``"lds"``), ``{"name": "lds", **params}``, or a
            :class:`ComponentSpec`.
        registry: defaults to every installed plugin.

    Returns:
        The metric; ``metric.resolved`` records its full spec (every parameter explicit) and
        the plugin, distribution and version it comes from (``resolved.provenance()``).

    Raises:
        SpecError: every problem at once: an unknown name (with the menu of metrics), unknown
            or invalid parameters, a metric unavailable on this machine.

    Example:
        >>> lds = attrkit.metric({"name": "lds"})  # doctest: +SKIP
        >>> lds.evaluate(scores, ground_truth).value  # doctest: +SKIP
    """
    registry = registry or default_registry()
    cspec = ComponentSpec.from_value(spec, "metric")
    try:
        entry = registry.get("metric", cspec.name)
    except (UnknownComponentError, PluginConflictError, BrokenPluginError) as exc:
        raise SpecError([f"metric: {exc}"]) from None
    problems = [] if entry.unavailable is None else [f"metric: {entry.name!r} is unavailable: {entry.unavailable}"]
    config, config_problems = build_config(entry.cls.Config, cspec.params, "metric")
    if problems or config_problems:
        raise SpecError(problems + config_problems)
    full = ComponentSpec(name=entry.name, params=config_to_dict(config))
    return entry.cls(config, resolved=Resolved(spec=full, entries={"metric": entry}, configs={"metric": config}))
