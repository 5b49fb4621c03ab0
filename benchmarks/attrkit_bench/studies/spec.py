"""A study's spec file: ``benchmarks/specs/{study}.json``, and the templates in it.

A spec file is one JSON object: the study's methods or rows (attrkit specs, plus the
study's own keys) and the defaults of its options. Its ``"quick"`` object holds what
``--quick`` changes (:func:`variant`). A value may name such a size: a string
``"{members}"`` is replaced by the size, and ``{members}`` inside a longer string (a
label) is formatted with it (:func:`fill`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["SPECS_DIR", "fill", "load_spec", "spec_file", "variant"]

#: Where the studies' spec files live: ``benchmarks/specs`` of the source tree.
SPECS_DIR = Path(__file__).resolve().parents[2] / "specs"


def spec_file(study: str) -> Path:
    """``SPECS_DIR / f"{study}.json"``: the spec file a study reads unless ``--spec`` names another."""
    return SPECS_DIR / f"{study}.json"


def load_spec(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path`` (the ``type`` of a study's ``--spec`` option).

    Raises:
        argparse.ArgumentTypeError: the file is missing, not JSON, or not a JSON object.
    """
    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read the spec file {path}: {exc}") from exc
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError(f"the spec file {path} must hold a JSON object, got {type(spec).__name__}")
    return spec


def variant(spec: Mapping[str, Any], quick: bool) -> dict[str, Any]:
    """``spec`` as the run uses it: with ``quick``, its ``"quick"`` object's entries replace its own.

    >>> variant({"members": 10, "quick": {"members": 3}}, quick=True)
    {'members': 3}
    """
    return {**{k: v for k, v in spec.items() if k != "quick"}, **(spec.get("quick", {}) if quick else {})}


def fill(value: Any, values: Mapping[str, Any]) -> Any:
    """``value`` (JSON: dicts, lists, strings, numbers) with its templates filled from ``values``.

    >>> fill({"label": "trak-{k}", "members": "{k}", "dim": 8}, {"k": 3})
    {'label': 'trak-3', 'members': 3, 'dim': 8}
    """
    if isinstance(value, dict):
        return {key: fill(item, values) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, values) for item in value]
    if isinstance(value, str):
        name = value[1:-1]
        if value.startswith("{") and value.endswith("}") and name in values:
            return values[name]
        return value.format(**values) if "{" in value else value
    return value
