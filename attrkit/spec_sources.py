"""What :func:`attrkit.compose` accepts besides a nested spec: spec files and the flat method form.

**Spec files.** A path — an :class:`os.PathLike`, or a string ending in ``.json`` — names a
JSON file holding one spec object. A file holding a *list* of labelled specs (a
benchmark's, like ``benchmarks/specs/mnist-lr.json``) needs the label after a ``#``::

    attrkit.compose("benchmarks/specs/mnist-lr.json#trak-10", task)

(a list of one spec needs none). The keys only ``attrkit bench`` reads (:data:`BENCH_KEYS`:
``label``, ``members``, ``compare``, ``skip``) are left out with a :class:`~attrkit.errors.SpecFileWarning`
naming them — the label that chose the spec excepted — and every problem of a spec read
from a file starts with the file (and label).

**The flat method form.** A top-level key that is not a spec key (:data:`attrkit.spec.KEYS`)
but a parameter of the method's ``Config`` is one of the method's parameters:
``{"method": "tracin", "learning_rates": [0.1, 0.05]}`` means
``{"method": {"name": "tracin", "learning_rates": [0.1, 0.05]}}``. A key that is neither is
refused with the spec keys and the method's parameters.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from attrkit.errors import AttrkitError, SpecError, SpecFileWarning
from attrkit.registry import Registry
from attrkit.spec import KEYS, ComponentSpec

__all__ = ["BENCH_KEYS", "lift_method_params", "read_spec_file", "spec_file"]

#: Keys of a benchmark spec file's entries that only ``attrkit bench`` reads: ``label`` (its
#: name in the tables), ``members`` (``"KIND:COUNT"``: the models the benchmark trains for
#: the ensemble), ``compare`` and ``skip``.
BENCH_KEYS = ("label", "members", "compare", "skip")


def spec_file(spec: Any) -> str | None:
    """``"path"`` or ``"path#label"`` when ``spec`` names a spec file, else ``None``.

    >>> spec_file("benchmarks/specs/mnist-lr.json#trak-10"), spec_file("trak"), spec_file('{"method": "trak"}')
    ('benchmarks/specs/mnist-lr.json#trak-10', None, None)
    """
    if isinstance(spec, os.PathLike):
        return os.fspath(spec)
    if not isinstance(spec, str) or "\n" in spec or spec.lstrip().startswith(("{", "[", '"')):
        return None
    text = spec.strip()
    path, hash_, _ = text.rpartition("#")
    return text if text.endswith(".json") or (hash_ and path.endswith(".json")) else None


def _split(ref: str) -> tuple[str, str | None]:
    path, hash_, label = ref.rpartition("#")
    return (path, label) if hash_ and path.endswith(".json") else (ref, None)


def _kind(data: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(data), "null" if data is None else type(data).__name__)


def _choose(path: str, data: Any, label: str | None) -> Mapping[str, Any]:
    """The spec object of the file's ``data`` that ``label`` chooses."""
    if isinstance(data, Mapping):
        if label and data.get("label") != label:
            raise SpecError([f"{path}: holds one spec, labelled {data.get('label')!r}, not {label!r}"])
        return data
    if not isinstance(data, list):
        raise SpecError([f"{path}: a spec file holds a JSON object (one spec) or a list of labelled specs, "
                         f"got {_kind(data)}"])
    labels = [item.get("label") if isinstance(item, Mapping) else None for item in data]
    named = ", ".join(str(n) for n in labels if n is not None) or "none"
    if not label:
        if len(data) == 1:
            chosen = data[0]
        else:
            raise SpecError([f"{path}: holds {len(data)} specs; choose one by its label, as '{path}#LABEL' "
                             f"(labels: {named})"])
    else:
        found = [item for item, n in zip(data, labels) if n == label]
        if not found:
            close = difflib.get_close_matches(label, [n for n in labels if isinstance(n, str)], n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise SpecError([f"{path}: no spec is labelled {label!r}.{hint} Labels: {named}"])
        if len(found) > 1:
            raise SpecError([f"{path}: {len(found)} specs are labelled {label!r}; a label chooses one spec only"])
        chosen = found[0]
    if not isinstance(chosen, Mapping):
        raise SpecError([f"{path}: every spec of the list must be a JSON object, got {_kind(chosen)}"])
    return chosen


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning issued by this module's caller at the first
    frame outside attrkit (the user's ``compose`` or ``resolve`` call)."""
    package = str(Path(__file__).resolve().parent)
    frame, level = inspect.currentframe(), 0
    while frame is not None and (level < 2 or str(Path(frame.f_code.co_filename).resolve()).startswith(package)):
        frame, level = frame.f_back, level + 1
    return max(level, 1)


def read_spec_file(ref: str) -> dict[str, Any]:
    """The spec a file reference names (see the module docstring), bench-only keys left out.

    Args:
        ref: ``"path"`` or ``"path#label"``.

    Warns:
        SpecFileWarning: naming the :data:`BENCH_KEYS` left out (not the label used).

    Raises:
        SpecError: naming the file: it cannot be read, is not JSON, holds neither a spec object
            nor a list of them, or the label is missing, unknown or not unique.
    """
    path, label = _split(ref)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read the spec file ({exc.strerror or exc})"]) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError([f"{path}: not valid JSON ({exc})"]) from exc
    chosen = _choose(path, data, label)
    ignored = [k for k in BENCH_KEYS if k in chosen and not (k == "label" and label)]
    if ignored:
        shown = ", ".join(f"{k!r} ({json.dumps(chosen[k])})" for k in ignored)
        warnings.warn(
            f"{ref}: ignored the benchmark-only keys {shown}: attrkit bench reads them (with 'members' it "
            "trains the ensemble's models); attrkit.compose takes the members from the task",
            SpecFileWarning, stacklevel=_caller_level(),
        )
    return {k: v for k, v in chosen.items() if k not in BENCH_KEYS}


def _method_fields(method: Any, registry: Registry) -> tuple[str | None, list[str] | None]:
    """``(method name, its Config's parameter names)``; ``None`` for what cannot be known."""
    if isinstance(method, ComponentSpec):
        name = method.name
    elif isinstance(method, Mapping):
        name = method.get("name")
    else:
        name = method
    if not isinstance(name, str):
        return None, None
    try:
        entry = registry.get("method", name)
    except AttrkitError:  # resolve reports the lookup
        return name, None
    return name, [f.alias for f in attrs.fields(entry.cls.Config)]


def _unknown_key(key: str, name: str | None, fields: list[str] | None) -> str:
    line = f"{key}: unknown spec key; allowed keys are {', '.join(KEYS)}"
    if fields is not None:
        line += (f", and the parameters of method {name!r}: {', '.join(fields)}" if fields
                 else f" (method {name!r} has no parameters)")
    close = difflib.get_close_matches(key, [*KEYS, *(fields or [])], n=1)
    if close:
        line += f". Did you mean {close[0]!r}?"
    if key in BENCH_KEYS:
        line += (f". {key!r} is a benchmark key: attrkit.compose ignores it in a spec file "
                 "('file.json#label'), not in a spec given directly")
    return line


def lift_method_params(data: Any, registry: Registry) -> tuple[Any, list[str]]:
    """Move top-level parameters of the method into ``method`` (the flat form).

    Args:
        data: a spec dict (anything else is returned as it is).
        registry: where the method's ``Config`` is found.

    Returns:
        ``(spec dict with only spec keys, problems)``: one line per top-level key that is
        neither a spec key nor a parameter of the method, and per parameter given both at
        the top level and inside ``method``.
    """
    if not isinstance(data, Mapping):
        return data, []
    extra = [k for k in data if k not in KEYS]
    if not extra:
        return data, []
    name, fields = _method_fields(data.get("method"), registry)
    out = {k: v for k, v in data.items() if k in KEYS}
    lifted = {k: data[k] for k in extra if fields is not None and k in fields}
    problems = [_unknown_key(k, name, fields) for k in extra if k not in lifted]
    if lifted:
        method = data["method"]
        params = ({"name": method.name, **method.params} if isinstance(method, ComponentSpec)
                  else dict(method) if isinstance(method, Mapping) else {"name": method})
        for key, value in lifted.items():
            if key in params:
                problems.append(f"method.{key}: given twice, at the top level and inside 'method'; keep one")
            params[key] = value
        out["method"] = params
    return out, problems
