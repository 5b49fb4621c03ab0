"""The checks study's table: the whole benchmark and each method, checks on and off, medians."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

__all__ = ["markdown"]


def markdown(document: Mapping[str, Any]) -> str:
    """The overhead table (medians of the repeats) and a line on how it was measured."""
    seconds, methods = document["seconds"], document["methods"]
    on, off = (statistics.median(seconds[m]) for m in ("on", "off"))
    lines = ["| part | checks on (s) | checks off (s) | overhead |", "|---|---|---|---|",
             f"| whole benchmark ({document['setting']}) | {on:.2f} | {off:.2f} | {100 * (on / off - 1):+.1f} % |"]
    for label, times in methods["on"].items():
        a, b = statistics.median(times), statistics.median(methods["off"][label])
        lines.append(f"| {label}: fit + attribute | {a:.3f} | {b:.3f} | {100 * (a / b - 1):+.1f} % |")
    lines.append(f"medians of {document['repeats']} runs each, alternating; load average {document['load_average']}")
    return "\n".join(lines)
