"""Hypothesis strategies drawing specs from a live registry.

Parameter values come from each config field's ``metadata["examples"]`` (else its
default), so a new component is exercised with no extra work.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import strategies as st

from attrkit.config import field_examples
from attrkit.protocols import SLOTS
from attrkit.registry import Registry

__all__ = ["component_values", "specs"]


def component_values(registry: Registry, kind: str, name: str) -> st.SearchStrategy[dict[str, Any]]:
    """``{"name": name, **params}`` with every parameter drawn from its examples."""
    fields = attrs.fields(registry.get(kind, name).cls.Config)
    params = {f.alias: st.sampled_from(field_examples(f)) for f in fields if field_examples(f)}
    return st.fixed_dictionaries({"name": st.just(name), **params})


@st.composite
def specs(draw: st.DrawFn, registry: Registry, kinds: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """A spec dict: a registered method, and for each slot it uses either nothing
    (its default) or a registered, available component of that kind.

    Args:
        registry: where names come from.
        kinds: optional ``{kind: [allowed names]}`` to narrow the draw (e.g. for speed).
    """
    kinds = kinds or {}

    def names(kind: str) -> list[str]:
        usable = [n for n in registry.names(kind) if registry.get(kind, n).unavailable is None]
        return [n for n in usable if n in kinds[kind]] if kind in kinds else usable

    method = draw(st.sampled_from(names("method")))
    spec: dict[str, Any] = {"method": draw(component_values(registry, "method", method))}
    for slot in SLOTS:
        if slot in registry.get("method", method).cls.slots and names(slot) and draw(st.booleans()):
            spec[slot] = draw(component_values(registry, slot, draw(st.sampled_from(names(slot)))))
    return spec
