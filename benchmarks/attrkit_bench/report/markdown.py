"""The cells and tables every report is made of."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["number", "table"]


def number(value: float | None, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, ``–`` for ``None`` (undefined, not run).

    >>> number(0.31234), number(None), number(2.5, 1)
    ('0.312', '–', '2.5')
    """
    return "–" if value is None else f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table of ``header`` and ``rows`` (cells already formatted).

    >>> print(table(["a", "b"], [["1", "2"]]))
    | a | b |
    |---|---|
    | 1 | 2 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
