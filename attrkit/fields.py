"""Config fields every component shares, so that specs read the same everywhere.

JSON has one number type and Python's ``bool`` is an ``int``: ``True`` would silently be
``dim=1`` or ``regularization=1.0``. Every numeric field of a registered component is built
from the helpers below, which refuse bools and (for floats) NaN and infinities.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import attrs
from attrkit.errors import ArgumentError, ArgumentTypeError

__all__ = [
    "as_float",
    "as_int",
    "finite",
    "float_field",
    "floats_field",
    "frozen_field",
    "int_field",
    "is_bool",
    "is_int",
    "not_bool",
    "params_field",
    "positive_int",
    "PRODUCTS",
    "products_field",
    "seed_field",
    "to_float",
    "to_floats",
]

def _kind(value: Any) -> str:
    name = type(value).__name__
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"


def as_int(value: Any, name: str) -> int:
    """``value`` if it is an ``int`` and not a ``bool``.

    Raises:
        TypeError: ``dim must be an int, got True (a bool)`` (or ``got 2.5 (a float)``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{name} must be an int, got {value!r} ({_kind(value)})")
    return int(value)


def as_float(value: Any, name: str) -> float:
    """``float(value)`` for an int, a float or a numeric string, never a ``bool``.

    Raises:
        TypeError: a bool or a non-number (``tol must be a number, got True (a bool)``).
        ValueError: a string that is not a number.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({_kind(value)})")
    try:
        return float(value)
    except ValueError:
        raise ArgumentError(f"{name} must be a number, got {value!r} ({_kind(value)})") from None


#: Converter of a float field: :func:`as_float` naming the field.
to_float = attrs.Converter(lambda value, _self, field: as_float(value, field.name), takes_self=True, takes_field=True)


def _floats(value: Any, name: str) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ArgumentTypeError(f"{name} must be a list of numbers, got {value!r} ({_kind(value)})")
    return tuple(as_float(v, f"{name}[{i}]") for i, v in enumerate(value))


#: Converter of a tuple-of-floats field: each entry through :func:`as_float`.
to_floats = attrs.Converter(lambda value, _self, field: _floats(value, field.name), takes_self=True, takes_field=True)


def is_int(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Validator: an ``int`` that is not a ``bool`` (``dim must be an int, got True (a bool)``)."""
    as_int(value, attribute.name)


def is_bool(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Validator: ``True`` or ``False`` (``frozen must be true or false, got 1 (an int)``)."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{attribute.name} must be true or false, got {value!r} ({_kind(value)})")


def not_bool(what: str = "a number") -> Any:
    """A validator refusing bools, for fields whose other checks would take one as an int
    (``key must be an int or a str, got True (a bool)`` with ``what="an int or a str"``)."""

    def check(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool):
            raise ArgumentTypeError(f"{attribute.name} must be {what}, got {value!r} (a bool)")

    return check


def finite(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """Validator: a float (or every float of a tuple) that is neither NaN nor infinite."""
    values = value if isinstance(value, tuple) else (value,)
    if not all(math.isfinite(v) for v in values):
        shown = list(value) if isinstance(value, tuple) else value
        raise ArgumentError(f"{attribute.name} must be finite (not NaN or infinite), got {shown!r}")


def _bounds(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> list[Any]:
    pairs = ((ge, attrs.validators.ge), (gt, attrs.validators.gt), (le, attrs.validators.le), (lt, attrs.validators.lt))
    return [make(bound) for bound, make in pairs if bound is not None]


def int_field(
    default: int | None,
    *,
    ge: int | None = None,
    optional: bool = False,
    examples: tuple[int | None, ...] | None = None,
) -> Any:
    """An ``int`` field (never a bool), optionally ``>= ge`` and optionally ``None``.

    Args:
        default: the default value.
        ge: the smallest value allowed.
        optional: ``None`` is allowed too.
        examples: what the test kit draws; default ``(default,)``.
    """
    validators = [is_int, *_bounds(ge, None, None, None)]
    return attrs.field(
        default=default,
        validator=attrs.validators.optional(validators) if optional else validators,
        metadata={"examples": examples or (default,)},
    )


def float_field(
    default: float | None,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    validator: Any = None,
    optional: bool = False,
    examples: tuple[float | None, ...] | None = None,
) -> Any:
    """A finite ``float`` field: ints and numeric strings are converted, bools, NaN and
    infinities refused (``regularization``, ``tol``, ``scale``, ``cache_mb``...).

    Args:
        default: the default value.
        ge, gt, le, lt: bounds (``>=``, ``>``, ``<=``, ``<``).
        validator: a further check of the converted value.
        optional: ``None`` is allowed too.
        examples: what the test kit draws; default ``(default,)``.
    """
    validators = [finite, *_bounds(ge, gt, le, lt), *([validator] if validator is not None else [])]
    return attrs.field(
        default=default,
        converter=attrs.converters.optional(to_float) if optional else to_float,
        validator=attrs.validators.optional(validators) if optional else validators,
        metadata={"examples": examples or (default,)},
    )


def floats_field(
    default: tuple[float, ...] | None,
    *,
    validator: Any = None,
    optional: bool = False,
    examples: tuple[Any, ...] | None = None,
) -> Any:
    """A non-empty tuple of finite floats (given as a list; bools refused), e.g. ``weights``.

    Args:
        default: the default value.
        validator: a further check of the whole tuple (e.g. every entry in ``(0, 1)``).
        optional: ``None`` is allowed too.
        examples: what the test kit draws; default ``(default,)``.
    """
    validators = [attrs.validators.min_len(1), finite, *([validator] if validator is not None else [])]
    return attrs.field(
        default=default,
        converter=attrs.converters.optional(to_floats) if optional else to_floats,
        validator=attrs.validators.optional(validators) if optional else validators,
        metadata={"examples": examples or (default,)},
    )


def positive_int(default: int, examples: tuple[int, ...] | None = None) -> Any:
    """An ``int >= 1`` field (``dim``, ``chunk_rows``, ``max_iter``...); bools are refused."""
    return int_field(default, ge=1, examples=examples)


def seed_field(default: int = 0, *, per_member: bool = False, ge: int | None = None) -> Any:
    """The ``seed`` field: any ``int`` (not a bool, optionally ``>= ge``); the test kit draws 0 and 1.

    Args:
        default: the spec's seed.
        per_member: the part is drawn anew for every ensemble member, member ``m`` with
            ``seed + m`` (random projections: averaging members then also averages the
            projection noise away, as TRAK does); see :func:`attrkit.config.member_config`.
        ge: the smallest seed allowed.
    """
    metadata = {"examples": (0, 1), **({"per_member": True} if per_member else {})}
    return attrs.field(default=default, validator=[is_int, *_bounds(ge, None, None, None)], metadata=metadata)


def _patterns(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def params_field() -> Any:
    """The ``params`` field of gradient sources: ``fnmatch`` patterns of parameter names
    (a string or a list; default ``("*",)``, every trainable parameter). Patterns select
    among the parameters with ``requires_grad=True`` unless the companion
    :func:`frozen_field` is true (see :func:`attrkit.functional.gradients.select_parameters`)."""
    return attrs.field(
        default=("*",),
        converter=_patterns,
        validator=[attrs.validators.min_len(1), attrs.validators.deep_iterable(attrs.validators.instance_of(str))],
        metadata={"examples": (("*",),)},
    )


def frozen_field() -> Any:
    """The ``frozen`` field of gradient sources, companion of ``params``: ``True`` also
    differentiates parameters with ``requires_grad=False`` (a frozen backbone, LoRA's base
    weights); the default ``False`` differentiates the trainable parameters only."""
    return attrs.field(default=False, validator=is_bool, metadata={"examples": (False, True)})


#: The values of :func:`products_field`.
PRODUCTS = ("auto", "dense", "structured")


def products_field() -> Any:
    """The ``products`` field of gradient sources that provide ``STRUCTURED``: how the engine
    takes inner products with per-example training gradients when no projector, feature-space
    solver or grouper transforms them (:mod:`attrkit.engine.products`). ``"auto"`` (default) keeps
    each factored layer as factors where that is cheaper
    (:func:`~attrkit.functional.structured_products.cheaper_structured`; behind a parameter-space
    solver, :func:`~attrkit.functional.structured_products.cheaper_solved`), ``"dense"`` always
    forms the gradients, ``"structured"`` keeps every factored layer as factors (and refuses a
    composition where it cannot). Scores agree to float round-off either way."""
    return attrs.field(default="auto", validator=attrs.validators.in_(PRODUCTS),
                       metadata={"examples": ("auto", "dense", "structured")})
