"""Building a component's ``Config`` from spec parameters, collecting every problem.

Component configs are frozen, keyword-only ``attrs`` classes with declarative
validators. A field may carry ``metadata={"examples": (...)}``: small values the
test kit draws from (:mod:`attrkit.testing`); without it, the default is used. The
fields every spec shares (``dim``, ``seed``, ``regularization``...) are built by the
helpers of :mod:`attrkit.fields`.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["build_config", "config_to_dict", "field_examples", "member_config"]


def _message(exc: Exception) -> str:
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.replace("\n", " ")


def _problem(path: str, key: str, name: str, message: str, given: Any) -> str:
    """``projector.dim must be an int, got True (a bool)``: a message that starts with the
    field's own name is put on its spec path; any other follows ``projector.dim:``."""
    if repr(given) not in message and "got " not in message:
        message += f" (got {given!r})"
    if message.startswith(name) and message[len(name) : len(name) + 1] in (" ", "["):
        return f"{path}.{key}{message[len(name):]}"
    return f"{path}.{key}: {message}"


def build_config(config_cls: type, params: Mapping[str, Any], path: str) -> tuple[Any, list[str]]:
    """Instantiate ``config_cls`` from ``params``.

    Args:
        config_cls: a frozen attrs class.
        params: parameter values from the spec.
        path: spec path for messages (``"projector"``).

    Returns:
        ``(config, [])`` on success, else ``(None, problems)`` with one line per
        unknown, missing or invalid parameter (``projector.dim: 'dim' must be >= 1: 0``,
        ``projector.dim must be an int, got True (a bool)``).
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
            if isinstance(field.converter, attrs.Converter):
                value = field.converter(value, None, field)
            elif field.converter is not None:
                value = field.converter(value)
            if field.validator is not None:
                field.validator(None, field, value)
        except (TypeError, ValueError) as exc:
            problems.append(_problem(path, key, field.name, _message(exc), params[key]))
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


def member_config(config: Any, member: int) -> Any:
    """``config`` for ensemble member ``member``: each field marked ``metadata["per_member"]``
    (a projector's ``seed``, :func:`attrkit.fields.seed_field`) offset by ``member``, so members
    get independent random draws while member 0 keeps the spec's values."""
    shifted = {f.name: getattr(config, f.name) + member for f in attrs.fields(type(config)) if f.metadata.get("per_member")}
    return attrs.evolve(config, **shifted) if member and shifted else config
