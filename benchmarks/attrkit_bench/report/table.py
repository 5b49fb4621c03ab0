"""The result document of ``attrkit bench SETTING`` as a fixed-width text table or a markdown table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrkit_bench.report.markdown import number, table

__all__ = ["HIGHER_IS_BETTER", "MEANINGS", "TITLES", "format_table", "legend", "markdown_table", "page", "table_rows"]

#: The libraries whose counterparts a run may carry (``run[library]``), in column order.
LIBRARIES = ("dattri", "kronfluence")
#: Column titles of the metrics.
TITLES = {"lds": "LDS", "loo": "LOO", "auc": "noisy AUC", "brittleness": "brittleness",
          "retraining": "retraining", "pruning": "pruning"}
#: Whether a higher value of a metric is better (every metric the bench knows: yes).
HIGHER_IS_BETTER = {name: True for name in TITLES}
#: What each column measures, one line each, printed under the table (:func:`legend`) and
#: in ``attrkit bench --help``; the metrics' entries end with their direction.
MEANINGS = {
    "lds": "Spearman correlation between predicted and actual outputs of models retrained on random halves of "
    "the training set (mean over targets); higher is better",
    "loo": "correlation of the scores with the actual effect of leaving one training point out and retraining "
    "(mean over targets); higher is better",
    "auc": "how well self-influence ranks the flipped labels first, on a model trained with 10 % of its labels "
    "flipped (ROC AUC, 0.5 = chance); higher is better",
    "brittleness": "fraction of targets whose prediction flips when their top proponents are removed and the "
    "model retrained; higher is better",
    "retraining": "drop in test accuracy when the highest-scored training points are removed and the model "
    "retrained; higher is better",
    "pruning": "test accuracy kept when the lowest-scored training points are removed and the model retrained; "
    "higher is better",
    "time": "wall seconds of fit + attribute on all targets; lower is better",
    "roofline": "examples differentiated / this machine's gradient pass rate + examples only evaluated / its "
    "forward rate + the method's necessary GEMM flops / its float32 GEMM rate, each rate the faster of two "
    "measurements in this run, before and after the methods (attrkit_bench.roofline), and the time as its "
    "multiple; lower is better",
    "memory": "peak process memory (RSS) above its level at the start of fit + attribute; lower is better",
}


def legend(metrics: Sequence[str]) -> list[str]:
    """``TITLE: meaning`` per metric in ``metrics``, then time, peak memory and what ``–`` means.

    >>> legend(["lds"])[0].startswith("LDS: Spearman correlation")
    True
    """
    lines = [f"{TITLES.get(m, m)}: {MEANINGS[m]}" for m in metrics if m in MEANINGS]
    return [*lines, f"time (s): {MEANINGS['time']}", f"peak mem (MiB): {MEANINGS['memory']}",
            "–: not computed for that method (the JSON file says why; e.g. noisy AUC for methods over members, "
            "which are trained on the clean labels)"]


def _compared(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The libraries (:data:`LIBRARIES`) with a counterpart entry in any run."""
    return [library for library in LIBRARIES if any(run.get(library) for run in runs)]


def table_rows(document: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)``: method, each metric, time (s), peak mem (MiB), the roofline limit and
    the time as its multiple (where the document has them, :mod:`attrkit_bench.roofline`), and
    for each library compared (dattri, kronfluence) its score-based metrics, time, peak memory
    and the time ratio library / attrkit (above 1: attrkit faster); kronfluence's also the
    Pearson correlation ``r`` of its scores with attrkit's."""
    metrics = [m["name"] for m in document["metrics"]]
    runs: Sequence[Mapping[str, Any]] = document["runs"]
    libraries = _compared(runs)
    score_metrics = [m for m in metrics if m in ("lds", "loo")]
    roofline = any(run.get("roofline") for run in runs)
    header = ["method", *(TITLES.get(m, m) for m in metrics), "time (s)", "peak mem (MiB)"]
    header += ["roofline (s)", "× roofline"] if roofline else []
    for library in libraries:
        header += [f"{library} {TITLES[m]}" for m in score_metrics] + [f"{library} (s)", f"{library} peak mem (MiB)"]
        header += [f"{library} r"] if library != "dattri" else []
        header += [f"{library}/attrkit time"]
    rows = []
    for run in runs:
        row = [run["label"], *(number(run["metrics"].get(m)) for m in metrics), f"{run['seconds']:.2f}",
               f"{run['peak_mib']:.0f}"]
        if roofline:
            limit = run.get("roofline")
            row += [f"{limit['limit']:.3f}", f"{limit['multiple']:.1f}"] if limit else ["–", "–"]
        for library in libraries:
            theirs = run.get(library)
            correlation = library != "dattri"
            if theirs and theirs["seconds"] is not None:
                row += [number(theirs["metrics"].get(m)) for m in score_metrics] + [f"{theirs['seconds']:.2f}"]
                row += [number(theirs.get("peak_mib"), 0)]
                row += [number(theirs.get("correlation"), 4)] if correlation else []
                row += [f"{theirs['seconds'] / run['seconds']:.2f}"]
            else:
                row += ["–"] * (len(score_metrics) + 3 + correlation)
        rows.append(row)
    return header, rows


def format_table(document: Mapping[str, Any]) -> str:
    """The runs as a fixed-width text table (see :func:`table_rows`), with the counterparts' reasons and notes
    below, then one line per column saying what it measures and which way is better (:func:`legend`)."""
    header, rows = table_rows(document)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    notes = [f"  {run['label']}: {library}: {run[library].get(key)}" for library in _compared(document["runs"])
             for run in document["runs"] for key in ("reason", "note") if run.get(library) and run[library].get(key)]
    explained = legend([m["name"] for m in document["metrics"]])
    if any(run.get("roofline") for run in document["runs"]):
        explained.append(f"roofline (s), × roofline: {MEANINGS['roofline']}")
        faster = [run["label"] for run in document["runs"] if run.get("roofline") and run["roofline"]["multiple"] < 1]
        if faster:
            notes.append(f"  × roofline: {', '.join(faster)} ran faster than the limit: the rates measured in this "
                         "run understate the machine, so that column is unsound for every row")
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows), *notes,
                      *(f"  {text}" for text in explained)])


def markdown_table(document: Mapping[str, Any]) -> str:
    """The runs as a markdown table (see :func:`table_rows`)."""
    return table(*table_rows(document))


def page(document: Mapping[str, Any]) -> str:
    """``SETTING[ (quick)]:``, a blank line and :func:`markdown_table`: a result file as ``attrkit bench report`` prints it."""
    return f"{document['setting']}{' (quick)' if document.get('quick') else ''}:\n\n{markdown_table(document)}\n"
