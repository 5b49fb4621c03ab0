"""Method choices from the command line: registered names, preset names, JSON files or JSON text."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from attrkit.errors import SpecError
from attrkit.registry import Registry
from attrkit.spec import Spec

__all__ = ["MethodChoice", "default_label", "parse_methods", "split_specs"]


@attrs.frozen(kw_only=True)
class MethodChoice:
    """One method to benchmark.

    Attributes:
        label: its name in the table and the JSON file.
        spec: what is passed to :func:`attrkit.compose` (a spec dict).
    """

    label: str
    spec: Mapping[str, Any]


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


def _parse_one(text: str, registry: Registry) -> MethodChoice:
    if text.lstrip().startswith("{"):
        data = Spec.loads(text)
    elif Path(text).suffix == ".json" or "/" in text:
        data = Spec.loads(Path(text).read_text())
    elif text in registry.presets:
        return MethodChoice(label=text, spec=dict(registry.presets[text][0]))
    else:
        return MethodChoice(label=text, spec={"method": text})
    if not isinstance(data, dict):
        raise SpecError([f"{text}: a spec must be a JSON object, got {type(data).__name__}"])
    label = data.pop("label", None)
    return MethodChoice(label=label or default_label(Spec.from_dict(data)), spec=data)


def parse_methods(texts: Iterable[str], registry: Registry) -> list[MethodChoice]:
    """Turn each method text into a :class:`MethodChoice`.

    A text is JSON (``{"method": ...}``), a path to a JSON spec file (ending in ``.json``
    or holding a ``/``), a preset name or a method name (``grad-dot`` means
    ``{"method": "grad-dot"}``). A JSON spec may carry a ``"label"`` key, taken out
    before composing. Repeated labels get ``#2``, ``#3``...

    Raises:
        SpecError: invalid JSON or a malformed spec dict.
        OSError: a spec file that cannot be read.
    """
    choices: list[MethodChoice] = []
    seen: dict[str, int] = {}
    for text in texts:
        choice = _parse_one(text, registry)
        seen[choice.label] = seen.get(choice.label, 0) + 1
        if seen[choice.label] > 1:
            choice = attrs.evolve(choice, label=f"{choice.label}#{seen[choice.label]}")
        choices.append(choice)
    return choices
