"""The scaling study's table: time, peak memory per rank and agreement with one rank, per world size and spec."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["markdown"]


def markdown(document: Mapping[str, Any]) -> str:
    """One row per (world size, spec) of ``document["rows"]``."""
    lines = ["| ranks | spec | time (s) | peak MiB per rank | max rel. diff vs 1 rank |", "|---|---|---|---|---|"]
    lines += [f"| {r['ranks']} | {r['spec']} | {r['seconds']:.2f} | {', '.join(f'{m:.0f}' for m in r['peak_mib'])} | "
              f"{r['max_rel_diff']:.1e} |" for r in document["rows"]]
    return "\n".join(lines)
