"""Declarative specs: which component fills each slot, with which parameters.

A spec is a plain dict, a JSON string or a :class:`Spec`::

    {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 256, "seed": 0}}

Each value is a registered name or ``{"name": ..., **params}``. Specs are frozen and
hashable (a cache key, a provenance record) and round-trip through dicts and JSON.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from attrkit.errors import SpecError
from attrkit.protocols import SLOTS

__all__ = ["ComponentSpec", "FrozenDict", "Spec", "not_an_object"]

KEYS = ("method", *SLOTS)


class FrozenDict(Mapping[str, Any]):
    """An immutable, hashable mapping (nested lists become tuples)."""

    __slots__ = ("_data", "_hash")

    def __init__(self, data: Mapping[str, Any] = ()):
        self._data = {str(k): _freeze(v) for k, v in dict(data).items()}
        self._hash = hash(tuple(sorted(self._data.items(), key=lambda kv: kv[0])))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._data) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


_JSON_TYPES = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}


def not_an_object(data: Any) -> str:
    """The problem line for JSON text that parses to something other than an object.

    >>> not_an_object([1, 2])
    'spec: JSON text must be an object like {"method": ...}, got a list'
    """
    line = f'spec: JSON text must be an object like {{"method": ...}}, got {_JSON_TYPES.get(type(data), type(data).__name__)}'
    if isinstance(data, str):
        line += f"; to name a preset or a method, pass the name without JSON quotes: {data!r}"
    return line


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return FrozenDict(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


@attrs.frozen(kw_only=True)
class ComponentSpec:
    """One slot's choice: a registered ``name`` and its ``params``."""

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    params: FrozenDict = attrs.field(factory=FrozenDict, converter=FrozenDict)

    @classmethod
    def from_value(cls, value: Any, path: str) -> ComponentSpec:
        """Parse ``"name"`` or ``{"name": ..., **params}``.

        Raises:
            SpecError: the value is neither, or has no string ``name``.
        """
        if isinstance(value, ComponentSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, Mapping):
            params = dict(value)
            name = params.pop("name", None)
            if isinstance(name, str):
                return cls(name=name, params=params)
            raise SpecError([f"{path}: a component given as a dict needs a string 'name', got {name!r}"])
        raise SpecError([f"{path}: expected a name or {{'name': ..., **params}}, got {type(value).__name__} {value!r}"])

    def to_value(self) -> str | dict[str, Any]:
        """The plain form: the name alone when there are no params."""
        return {"name": self.name, **_thaw(self.params)} if self.params else self.name


@attrs.frozen(kw_only=True)
class Spec:
    """A whole attributor: the method and the components filling its slots.

    Slots left ``None`` take the method's defaults when composed.
    """

    method: ComponentSpec
    gradients: ComponentSpec | None = None
    projector: ComponentSpec | None = None
    solver: ComponentSpec | None = None
    grouper: ComponentSpec | None = None
    ensemble: ComponentSpec | None = None

    @classmethod
    def collect(cls, data: Mapping[str, Any]) -> tuple[dict[str, ComponentSpec], list[str]]:
        """Parse what can be parsed of ``data``: ``({key: ComponentSpec}, problems)``.

        The composer uses this to report spec-shape problems together with the
        registry's (unknown names, bad parameters) in one error.
        """
        if not isinstance(data, Mapping):
            return {}, [f"spec: expected a dict, got {type(data).__name__}"]
        problems: list[str] = []
        for key in data:
            if key not in KEYS:
                problems.append(
                    f"{key}: unknown spec key; allowed keys are {', '.join(KEYS)} (a method's parameter at the top "
                    "level, the flat form, is read by attrkit.compose and attrkit.resolve, which know the "
                    "method's parameters: attrkit.resolve(spec).spec is the nested Spec)"
                )
        if data.get("method") is None:
            problems.append("method: missing; every spec names a method (e.g. 'grad-dot')")
        parts: dict[str, ComponentSpec] = {}
        for key in KEYS:
            if data.get(key) is None:
                continue
            try:
                parts[key] = ComponentSpec.from_value(data[key], key)
            except SpecError as exc:
                problems.extend(exc.problems)
        return parts, problems

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spec:
        """Build from a plain dict, reporting every problem at once.

        Raises:
            SpecError: unknown keys, a missing method, or malformed component values.
        """
        parts, problems = cls.collect(data)
        if problems:
            raise SpecError(problems)
        return cls(**parts)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        """Parse a JSON document, which must be an object (see :meth:`from_dict`).

        Raises:
            SpecError: invalid JSON, JSON that is not an object (``[1, 2]``, ``"trak"``),
                or any problem :meth:`from_dict` finds.
        """
        data = cls.loads(text)
        if not isinstance(data, Mapping):
            raise SpecError([not_an_object(data)])
        return cls.from_dict(data)

    @classmethod
    def parse(cls, spec: Spec | Mapping[str, Any] | str) -> Spec:
        """Accept a :class:`Spec`, a dict or a JSON string."""
        if isinstance(spec, Spec):
            return spec
        if isinstance(spec, str):
            return cls.from_json(spec)
        return cls.from_dict(spec)

    @classmethod
    def loads(cls, text: str) -> Any:
        """The plain data of a JSON spec (raises :class:`SpecError` on invalid JSON)."""
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError([f"spec: not valid JSON ({exc})"]) from exc

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with only the slots that are set."""
        return {k: getattr(self, k).to_value() for k in KEYS if getattr(self, k) is not None}

    def to_json(self, **kwargs: Any) -> str:
        """JSON text of :meth:`to_dict` (keys sorted, so equal specs give equal text)."""
        return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

    def slots(self) -> dict[str, ComponentSpec]:
        """``{slot: ComponentSpec}`` of the slots that are set (``method`` excluded)."""
        return {k: getattr(self, k) for k in SLOTS if getattr(self, k) is not None}
