"""Building a component's ``Config`` from spec parameters, collecting every problem.

Component configs are frozen, keyword-only ``attrs`` classes with declarative
validators. A field may carry ``metadata={"examples": (...)}``: small values the
test kit draws from (:mod:`attrkit.testing`); without it, the default is used.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["build_config", "config_to_dict", "field_examples", "params_field", "positive_int", "seed_field"]


def _message(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.replace("\n", " ")


def build_config(config_cls: type, params: Mapping[str, Any], path: str) -> tuple[Any, list[str]]:
    """Instantiate ``config_cls`` from ``params``.

    Args:
        config_cls: a frozen attrs class.
        params: parameter values from the spec.
        path: spec path for messages (``"projector"``).

    Returns:
        ``(config, [])`` on success, else ``(None, problems)`` with one line per
        unknown, missing or invalid parameter (``projector.dim: 'dim' must be >= 1: 0``).
    """
    fields = {f.alias: f for f in attrs.fields(config_cls)}
    problems: list[str] = []
    for key in params:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            allowed = ", ".join(fields) or "none"
            problems.append(f"{path}.{key}: unknown parameter{hint}; allowed: {allowed}")
    for key, field in fields.items():
        if key not in params:
            if field.default is attrs.NOTHING:
                problems.append(f"{path}.{key}: required parameter is missing")
            continue
        value = params[key]
        try:
            if field.converter is not None:
                value = field.converter(value)
            if field.validator is not None:
                field.validator(None, field, value)
        except (TypeError, ValueError) as exc:
            message = _message(exc)
            if repr(params[key]) not in message:
                message += f" (got {params[key]!r})"
            problems.append(f"{path}.{key}: {message}")
    if problems:
        return None, problems
    try:
        return config_cls(**params), []
    except (TypeError, ValueError) as exc:
        return None, [f"{path}: {_message(exc)}"]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """Every field of ``config`` as plain JSON-able values (tuples become lists)."""
    return {f.alias: _plain(getattr(config, f.name)) for f in attrs.fields(type(config))}


def field_examples(field: attrs.Attribute) -> tuple[Any, ...]:
    """Values the test kit may draw for ``field``: its ``examples`` or its default."""
    examples = field.metadata.get("examples")
    if examples is not None:
        return tuple(examples)
    if field.default is attrs.NOTHING:
        return ()
    default = field.default
    return (default.factory() if isinstance(default, attrs.Factory) else default,)


# -- shared fields, so that specs read the same everywhere ---------------------------


def positive_int(default: int, examples: tuple[int, ...] | None = None) -> Any:
    """An ``int >= 1`` field (``dim``, ``chunk_rows``, ``max_iter``...)."""
    return attrs.field(
        default=default,
        validator=[attrs.validators.instance_of(int), attrs.validators.ge(1)],
        metadata={"examples": examples or (default,)},
    )


def seed_field(default: int = 0) -> Any:
    """The ``seed`` field: any ``int``; the test kit draws 0 and 1."""
    return attrs.field(default=default, validator=attrs.validators.instance_of(int), metadata={"examples": (0, 1)})


def _patterns(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def params_field() -> Any:
    """The ``params`` field of gradient sources: ``fnmatch`` patterns of parameter names
    (a string or a list; default ``("*",)``, every parameter)."""
    return attrs.field(
        default=("*",),
        converter=_patterns,
        validator=[attrs.validators.min_len(1), attrs.validators.deep_iterable(attrs.validators.instance_of(str))],
        metadata={"examples": (("*",),)},
    )
