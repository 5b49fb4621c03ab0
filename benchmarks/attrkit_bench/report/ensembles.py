"""The ensemble benchmark's markdown: one table per setting (attrkit beside dattri)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrkit_bench.report.markdown import number

__all__ = ["markdown"]


def _trial(trial: Mapping[str, Any] | None) -> list[str]:
    if trial is None:
        return ["–", "–", "–"]
    if trial["status"] != "ok":
        return [f"{trial['status']}: {trial['message'][:60]}", number(trial["seconds"], 1), "–"]
    return [number(trial["lds"]), number(trial["seconds"], 1), number(trial["peak_mib"], 0)]


def _row(row: Mapping[str, Any]) -> str:
    if "skipped" in row:
        return f"| {row['label']} | n/a ({row['skipped']}) |" + " – |" * 8
    ours, theirs = row.get("attrkit"), row.get("dattri")
    ratio = "–"
    if ours and theirs and ours["status"] == theirs["status"] == "ok":
        ratio = f"{theirs['seconds'] / ours['seconds']:.2f}"
    cost = "–" if row["members"] is None else f"{row['member_seconds']:.1f}"
    cells = [row["label"], *_trial(ours), cost, *(_trial(theirs) if row["dattri_counterpart"] else
                                                 ["no counterpart", "–", "–"]), ratio]
    return "| " + " | ".join(cells) + " |"


def setting_table(document: Mapping[str, Any]) -> str:
    """One setting's table (``document``: the setting's JSON entry)."""
    info = document["info"]
    head = (f"## {document['setting']}\n\n{info['n_train']} training examples, {info['n_targets']} targets, "
            f"{info['n_parameters']:,} parameters, test accuracy {info['test_accuracy']:.4f}.\n\n")
    header = ("| method | LDS | time (s) | peak MiB | members' training (s) | dattri LDS | dattri time (s) | "
              "dattri peak MiB | dattri/attrkit time |\n|" + "---|" * 9)
    return head + header + "\n" + "\n".join(_row(r) for r in document["rows"])


def markdown(document: Mapping[str, Any]) -> str:
    """The whole page: environment, then a table per setting."""
    env = document["environment"]
    lines = [
        "# Ensembles, TRAK, TracIn and RPS: LDS, time, peak memory" + (" (quick run)" if document["quick"] else ""),
        "",
        f"`{document['command']}` — {env['cpu_count']} CPUs, {env['torch_threads']} torch threads, "
        f"torch {env['torch']}, attrkit {env['attrkit']}, dattri {env['dattri'] or 'not run'}; "
        f"{document['total_seconds']:.0f} s in all.",
        "",
        "Time is `fit` + `attribute` on every target (members' training excluded, shown beside it; it is "
        "cached after the first run). Peak memory is the process RSS above its level at the start of the run.",
    ]
    for setting in document["settings"]:
        lines += ["", setting_table(setting)]
    return "\n".join(lines)
