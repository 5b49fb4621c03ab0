"""Method and metric choices from the command line: registered names, preset names, JSON files or JSON text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

import attrkit
from attrkit import Registry, Spec, SpecError
from attrkit.plugin import Metric

__all__ = [
    "BENCH_METRIC_DEFAULTS", "MEMBERS_KEY", "MethodChoice", "MetricChoice", "default_label", "parse_methods",
    "parse_metrics", "split_specs",
]

#: The bench-only key of a method spec naming the members it runs over: ``"KIND:COUNT"``,
#: ``KIND`` one of :data:`attrkit_bench.problem.MEMBER_KINDS` (``"independent:10"``).
MEMBERS_KEY = "members"
#: Metric parameters the benchmark uses unless a ``--metrics`` spec sets them: brittleness
#: retrains per target and ``k``, so it is judged on the first 20 targets.
BENCH_METRIC_DEFAULTS: Mapping[str, Mapping[str, Any]] = {"brittleness": {"max_targets": 20}}


@attrs.frozen(kw_only=True)
class MethodChoice:
    """One method to benchmark.

    Attributes:
        label: its name in the table and the JSON file.
        spec: what is passed to :func:`attrkit.compose` (a spec dict).
        members: ``(kind, count)`` of the ensemble members the setting produces for it
            (the spec's ``"members": "KIND:COUNT"``), or ``None``: the trained model.
        compare: whether ``--compare`` runs its counterpart (the spec's ``"compare":
            false`` turns it off, e.g. where the counterpart would take hours).
        skip: metrics not evaluated for this method (the spec's ``"skip": ["auc"]``, e.g.
            where its self-influence would take hours); the run records why.
    """

    label: str
    spec: Mapping[str, Any]
    members: tuple[str, int] | None = None
    compare: bool = True
    skip: tuple[str, ...] = ()


@attrs.frozen(kw_only=True)
class MetricChoice:
    """One metric to evaluate every method with.

    Attributes:
        name: the registered metric (``"lds"``).
        params: its config values as given (:data:`BENCH_METRIC_DEFAULTS` merged under them).
        metric: the metric, built by :func:`attrkit.metric` (``metric.resolved`` holds its
            full spec and provenance).
    """

    name: str
    params: Mapping[str, Any] = attrs.field(factory=dict)
    metric: Metric = attrs.field(eq=False, repr=False)


def split_specs(text: str) -> list[str]:
    """Split ``--methods`` text at the commas outside JSON braces, brackets and strings.

    >>> split_specs('grad-dot,{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 8}}')
    ['grad-dot', '{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 8}}']
    """
    items, depth, quoted, escaped, start = [], 0, False, False, 0
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            escaped, quoted = char == "\\", char != '"'
        elif char == '"':
            quoted = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def default_label(spec: Spec) -> str:
    """The method's name, then ``+name`` and its parameter values (seeds left out) per set slot.

    >>> default_label(Spec.from_dict({"method": "grad-dot", "projector": {"name": "gaussian", "dim": 512, "seed": 0}}))
    'grad-dot+gaussian-512'
    """
    parts = [spec.method.name]
    for part in spec.slots().values():
        values = [str(v) for k, v in part.params.items() if k != "seed"]
        parts.append("-".join([part.name, *values]))
    return "+".join(parts)


def _members(text: str, value: Any) -> tuple[str, int]:
    kind, _, count = str(value).partition(":")
    if not count.isdigit() or int(count) < 1:
        raise SpecError([f"{text}: '{MEMBERS_KEY}' must be 'KIND:COUNT' such as 'independent:10', got {value!r}"])
    return kind, int(count)


def _choice(text: str, data: Any) -> MethodChoice:
    if not isinstance(data, dict):
        raise SpecError([f"{text}: a spec must be a JSON object, got {type(data).__name__}"])
    label = data.pop("label", None)
    members = data.pop(MEMBERS_KEY, None)
    compare = data.pop("compare", True)
    if not isinstance(compare, bool):
        raise SpecError([f"{text}: 'compare' must be true or false, got {compare!r}"])
    skip = data.pop("skip", [])
    if not isinstance(skip, list) or not all(isinstance(name, str) for name in skip):
        raise SpecError([f"{text}: 'skip' must be a list of metric names such as [\"auc\"], got {skip!r}"])
    return MethodChoice(label=label or default_label(Spec.from_dict(data)), spec=data,
                        members=None if members is None else _members(text, members), compare=compare,
                        skip=tuple(skip))


def _parse_one(text: str, registry: Registry) -> list[MethodChoice]:
    if text.lstrip().startswith("{"):
        return [_choice(text, Spec.loads(text))]
    if Path(text).suffix == ".json" or "/" in text:
        data = Spec.loads(Path(text).read_text())
        return [_choice(text, item) for item in data] if isinstance(data, list) else [_choice(text, data)]
    if text in registry.presets:
        return [MethodChoice(label=text, spec=dict(registry.presets[text][0]))]
    return [MethodChoice(label=text, spec={"method": text})]


def parse_methods(texts: Iterable[str], registry: Registry) -> list[MethodChoice]:
    """Turn each method text into a :class:`MethodChoice`.

    A text is JSON (``{"method": ...}``), a path to a JSON file (ending in ``.json`` or
    holding a ``/``) of one spec or a list of specs, a preset name or a method name
    (``grad-dot`` means ``{"method": "grad-dot"}``). A JSON spec may carry the bench keys
    ``"label"``, ``"members"`` (see :data:`MEMBERS_KEY`), ``"compare"`` and ``"skip"`` (see
    :class:`MethodChoice`), taken out before composing.
    Repeated labels get ``#2``, ``#3``...

    Raises:
        SpecError: invalid JSON or a malformed spec dict.
        OSError: a spec file that cannot be read.
    """
    choices: list[MethodChoice] = []
    seen: dict[str, int] = {}
    for text in texts:
        for choice in _parse_one(text, registry):
            seen[choice.label] = seen.get(choice.label, 0) + 1
            if seen[choice.label] > 1:
                choice = attrs.evolve(choice, label=f"{choice.label}#{seen[choice.label]}")
            choices.append(choice)
    return choices


def parse_metrics(texts: Iterable[str], registry: Registry) -> list[MetricChoice]:
    """Turn each ``--metrics`` text (a metric name or JSON ``{"name": ..., params}``) into a choice.

    Each metric is built here (:func:`attrkit.metric`), so an unknown name or a bad
    parameter fails before any data is loaded.

    Raises:
        SpecError: an unknown metric (with the menu of metrics), invalid JSON or an invalid parameter.
    """
    choices = []
    for text in texts:
        data = Spec.loads(text) if text.lstrip().startswith("{") else {"name": text}
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise SpecError([f"{text}: a metric is a name or a JSON object with a 'name', got {text!r}"])
        name = data.pop("name")
        params = {**BENCH_METRIC_DEFAULTS.get(name, {}), **data}
        metric = attrkit.metric({"name": name, **params}, registry)
        choices.append(MetricChoice(name=name, params=params, metric=metric))
    return choices
