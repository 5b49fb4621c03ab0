"""The one way from a result document to markdown: every kind of result file, recognised by its keys.

``attrkit bench SETTING`` writes a document with ``runs``; each study writes its own shape
(:data:`KINDS`). :func:`markdown` renders any of them; the studies write their pages with it
(:func:`attrkit_bench.report.output.write_results`) and ``attrkit bench report FILE.json``
prints them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attrkit_bench.report import checks, engine, ensembles, ggda, influence, out_of_core, scaling, table

__all__ = ["KINDS", "kind", "markdown"]

#: ``(kind, keys it has, renderer)``, the first kind whose keys a document has is its kind.
KINDS: tuple[tuple[str, frozenset[str], Callable[[Mapping[str, Any]], str]], ...] = (
    ("setting", frozenset({"setting", "metrics", "runs"}), table.page),
    ("influence", frozenset({"settings", "lambdas"}), influence.markdown),
    ("ggda", frozenset({"settings", "fractions"}), ggda.markdown),
    ("out-of-core", frozenset({"settings", "run"}), out_of_core.markdown),
    ("ensembles", frozenset({"settings", "command"}), ensembles.markdown),
    ("scaling", frozenset({"setting", "rows", "quick"}), scaling.markdown),
    ("engine", frozenset({"gradient_cost", "projectors"}), engine.markdown),
    ("checks", frozenset({"setting", "repeats", "seconds", "methods"}), checks.markdown),
)


def kind(document: Mapping[str, Any]) -> str:
    """The kind of result ``document`` is: ``"setting"`` or a study's name.

    Raises:
        ValueError: no kind has all its keys in ``document``.
    """
    for name, keys, _ in KINDS:
        if keys <= document.keys():
            return name
    raise ValueError(f"not a result of attrkit bench: its keys {sorted(document)} match none of "
                     f"{', '.join(name for name, _, _ in KINDS)}")


def markdown(document: Mapping[str, Any]) -> str:
    """The markdown of any result document (see :data:`KINDS`)."""
    name = kind(document)
    return next(render for n, _, render in KINDS if n == name)(document)
