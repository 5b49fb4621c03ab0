"""The engine study's tables: one per measurement, its rows' keys as columns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrkit_bench.report.markdown import table

__all__ = ["markdown"]

#: The measurements, in page order (``gradient_cost`` is one row).
SECTIONS = ("projectors", "factored_vs_dense", "fit_memory", "gradient_cost")


def _cell(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _rows_table(rows: Sequence[Mapping[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return table(keys, [[_cell(r.get(k, "")) for k in keys] for r in rows])


def markdown(document: Mapping[str, Any]) -> str:
    """A ``## name`` section and table per measurement."""
    return "\n".join(
        f"\n## {name}\n\n{_rows_table(document[name] if name != 'gradient_cost' else [document[name]])}"
        for name in SECTIONS)
