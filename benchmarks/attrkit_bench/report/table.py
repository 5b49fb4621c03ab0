"""The result document of ``attrkit bench SETTING`` as a fixed-width text table or a markdown table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrkit_bench.report.markdown import number, table

__all__ = ["TITLES", "format_table", "markdown_table", "page", "table_rows"]

#: Column titles of the metrics.
TITLES = {"lds": "LDS", "loo": "LOO", "auc": "noisy AUC", "brittleness": "brittleness",
          "retraining": "retraining", "pruning": "pruning"}


def table_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: method, each metric, time (s), peak mem (MiB), and with dattri its
    score-based metrics, time and the time ratio dattri / attrkit (above 1: attrkit faster)."""
    metrics = [m["name"] for m in document["metrics"]]
    runs: Sequence[Mapping[str, Any]] = document["runs"]
    compared = any(run.get("dattri") for run in runs)
    dattri_metrics = [m for m in metrics if m in ("lds", "loo")]
    header = ["method", *(TITLES.get(m, m) for m in metrics), "time (s)", "peak mem (MiB)"]
    if compared:
        header += [f"dattri {TITLES[m]}" for m in dattri_metrics] + ["dattri (s)", "dattri/attrkit time"]
    rows = []
    for run in runs:
        row = [run["label"], *(number(run["metrics"].get(m)) for m in metrics), f"{run['seconds']:.2f}",
               f"{run['peak_mib']:.0f}"]
        theirs = run.get("dattri")
        if compared and theirs and theirs["seconds"] is not None:
            row += [number(theirs["metrics"].get(m)) for m in dattri_metrics]
            row += [f"{theirs['seconds']:.2f}", f"{theirs['seconds'] / run['seconds']:.2f}"]
        elif compared:
            row += ["–"] * len(dattri_metrics) + ["–", "–"]
        rows.append(row)
    return header, rows


def format_table(document: Mapping[str, Any]) -> str:
    """The runs as a fixed-width text table (see :func:`table_rows`), with dattri's reasons below."""
    header, rows = table_rows(document)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    notes = [f"  {run['label']}: dattri: {run['dattri']['reason']}" for run in document["runs"]
             if run.get("dattri") and run["dattri"]["reason"]]
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows), *notes])


def markdown_table(document: Mapping[str, Any]) -> str:
    """The runs as a markdown table (see :func:`table_rows`)."""
    return table(*table_rows(document))


def page(document: Mapping[str, Any]) -> str:
    """``SETTING[ (quick)]:``, a blank line and :func:`markdown_table`: a result file as ``attrkit bench report`` prints it."""
    return f"{document['setting']}{' (quick)' if document.get('quick') else ''}:\n\n{markdown_table(document)}\n"
