"""A component ``Config``'s parameters, as documentation.

Each field's type and default come from the attrs class, the values its validators allow
are read off them (bounds, ``in_`` choices, lengths, ``None``), and its meaning comes from
the ``Attributes:`` section of the ``Config`` docstring or of a ``Config`` base class
(Google style). :mod:`attrkit.describe` and :mod:`attrkit.docs` show them.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = [
    "SECTIONS",
    "Parameter",
    "allowed_values",
    "default_of",
    "field_meanings",
    "parameters",
    "plain",
    "to_json",
]

#: Section headers of a Google-style docstring (an ``Attributes:`` section ends at the next one).
SECTIONS = ("Args", "Arguments", "Attributes", "Example", "Examples", "Flags", "Note", "Notes", "Raises",
            "Returns", "Yields", "See Also")
@attrs.frozen(kw_only=True)
class Parameter:
    """One ``Config`` field as a user sees it.

    Attributes:
        name: the spec key.
        type: its type as written in the ``Config`` (``list[float]`` for a tuple of floats).
        default: the default value (``None`` when ``required``).
        required: the spec must give it.
        meaning: its entry in the ``Attributes:`` section of the ``Config`` docstring ("" when none).
        allowed: what the validators enforce, one item per check (``">= 1"``,
            ``'one of "hessian", "gauss-newton"'``, ``"null"``).
    """

    name: str
    type: str
    default: Any
    required: bool
    meaning: str
    allowed: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form."""
        return {"name": self.name, "type": self.type, "default": plain(self.default), "required": self.required,
                "meaning": self.meaning, "allowed": list(self.allowed)}


# -- the docstring's Attributes section ---------------------------------------------------------

_ENTRY = re.compile(r"^(?P<names>[A-Za-z_][\w, ]*?)\s*(?:\([^)]*\))?:\s*(?P<text>.*)$")


def _attributes_section(doc: str) -> dict[str, str]:
    """``{name: meaning}`` of the ``Attributes:`` section of a cleaned docstring.

    An entry is ``name: text`` (or ``name (type): text``, or ``a, b: text`` for several
    names) indented under the header; more deeply indented lines continue it.
    """
    out: dict[str, str] = {}
    lines = doc.splitlines()
    for start, line in enumerate(lines):
        if line.strip() != "Attributes:":
            continue
        header = len(line) - len(line.lstrip())
        current: list[str] = []
        indent = None
        for body in lines[start + 1:]:
            if not body.strip():
                continue
            depth = len(body) - len(body.lstrip())
            if depth <= header or body.strip().rstrip(":") in SECTIONS and body.strip().endswith(":"):
                break
            match = _ENTRY.match(body.strip())
            if match and (indent is None or depth == indent):
                indent = depth
                current = [n.strip() for n in match["names"].split(",")]
                for name in current:
                    out[name] = match["text"].strip()
            elif current:
                for name in current:
                    out[name] = f"{out[name]} {body.strip()}".strip()
    return out


def field_meanings(config_cls: type) -> dict[str, str]:
    """``{field name: meaning}`` from the ``Attributes:`` sections of ``config_cls`` and its
    bases (the nearest class that documents a field wins); fields documented nowhere are left out.

    >>> import attrs
    >>> @attrs.frozen
    ... class C:
    ...     '''Attributes:
    ...         dim: output dimension ``k``.
    ...     '''
    ...     dim: int = 1
    >>> field_meanings(C)
    {'dim': 'output dimension ``k``.'}
    """
    names = {f.name for f in attrs.fields(config_cls)} | {f.alias for f in attrs.fields(config_cls)}
    found: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):
        doc = cls.__dict__.get("__doc__")
        if isinstance(doc, str):
            found.update(_attributes_section(inspect.cleandoc(doc)))
    return {name: text for name, text in found.items() if name in names}


# -- validators ---------------------------------------------------------------------------------

#: What the field helpers' plain-function validators check (:mod:`attrkit.fields`).
_FUNCTION_CHECKS = {"is_int": "an int (not a bool)", "is_bool": "true or false", "finite": "finite"}


def to_json(value: Any) -> str:
    """``value`` as JSON text (tuples and sets as lists), else its ``repr``."""
    try:
        return json.dumps(plain(value))
    except (TypeError, ValueError):
        return repr(value)


def plain(value: Any) -> Any:
    """``value`` with mappings as dicts, tuples and sets as (sorted) lists: JSON-able data."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (frozenset, set)):
        return sorted(plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _state(validator: Any) -> dict[str, Any]:
    """The fields of one of attrs' validator objects (they are attrs classes)."""
    return {a.name.lstrip("_"): getattr(validator, a.name) for a in attrs.fields(type(validator))} \
        if attrs.has(type(validator)) else {}


def _checks(validator: Any) -> list[str]:
    if validator is None:
        return []
    if isinstance(validator, (list, tuple)):
        return [c for v in validator for c in _checks(v)]
    state = _state(validator)
    if "validators" in state:  # and_
        return _checks(state["validators"])
    if set(state) == {"validator"}:  # optional
        return [*_checks(state["validator"]), "null"]
    if "options" in state:
        return ["one of " + ", ".join(to_json(o) for o in state["options"])]
    if "bound" in state and "compare_op" in state:
        return [f"{state['compare_op']} {to_json(state['bound'])}"]
    if "min_length" in state:
        return [f"at least {state['min_length']} long"]
    if "max_length" in state:
        return [f"at most {state['max_length']} long"]
    if "member_validator" in state:
        return [f"each: {c}" for c in _checks(state["member_validator"])] + _checks(state.get("iterable_validator"))
    if "type" in state:
        kinds = state["type"] if isinstance(state["type"], tuple) else (state["type"],)
        return ["a " + " or ".join(k.__name__ for k in kinds)]
    return [_FUNCTION_CHECKS[validator.__name__]] if getattr(validator, "__name__", "") in _FUNCTION_CHECKS else []


def allowed_values(field: attrs.Attribute) -> tuple[str, ...]:
    """What ``field``'s validators enforce, one item per check that can be read off them:
    bounds (``">= 1"``), ``in_`` choices (``'one of "a", "b"'``), lengths, ``"null"`` when
    ``None`` is allowed. Type and finiteness checks are left out (the type says it); checks written as
    plain functions other than :mod:`attrkit.fields`' (or in ``__attrs_post_init__``) are
    in the field's meaning, not here."""
    skip = ("a ", "an ", "true or", "finite", "each: a ")
    checks = [c for c in _checks(field.validator) if not c.startswith(skip)]
    return tuple(dict.fromkeys(checks))


def _type(field: attrs.Attribute) -> str:
    text = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return re.sub(r"tuple\[(\w+), \.\.\.\]", r"list[\1]", text or "any")


def default_of(field: attrs.Attribute) -> tuple[Any, bool]:
    """``(default, required)`` of ``field`` (a factory is called)."""
    if field.default is attrs.NOTHING:
        return None, True
    default = field.default
    return (default.factory() if isinstance(default, attrs.Factory) else default), False


def parameters(config_cls: type) -> tuple[Parameter, ...]:
    """One :class:`Parameter` per field of ``config_cls``, in field order."""
    meanings = field_meanings(config_cls)
    out = []
    for f in attrs.fields(config_cls):
        default, required = default_of(f)
        out.append(Parameter(name=f.alias, type=_type(f), default=default, required=required,
                             meaning=meanings.get(f.alias, meanings.get(f.name, "")), allowed=allowed_values(f)))
    return tuple(out)
