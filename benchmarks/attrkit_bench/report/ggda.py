"""The GGDA study's markdown: one table per setting."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["markdown", "setting_table"]


def _pointwise(rows: list[Mapping[str, Any]], method: str) -> Mapping[str, Any] | None:
    return next((r for r in rows if r["method"] == method and r["group_size"] == 1), None)


def setting_table(document: Mapping[str, Any]) -> str:
    """One setting's table: every (method, grouper, group size)."""
    info, rows = document["info"], document["rows"]
    lines = [
        f"## {document['setting']}",
        "",
        f"{document['n_train']} training examples, {info['n_parameters']:,} parameters, test accuracy "
        f"{info['test_accuracy']:.4f} (base accuracy when retrained on everything: "
        f"{rows[0]['details'].get('base_accuracy', float('nan')):.4f}).",
        "",
        "| method | grouper | group size | groups | time (s) | speed-up | peak MiB | retraining score | "
        "acc. drop at 1/5/10/20 % |",
        "|" + "---|" * 9,
    ]
    for row in rows:
        base = _pointwise(rows, row["method"])
        speed = base["seconds"] / row["seconds"] if base else float("nan")
        drops = "/".join(f"{d:.3f}" for d in row["details"]["drops"])
        lines.append(f"| {row['method']} | {row['grouper']} | {row['group_size']} | {row['n_groups']} | "
                     f"{row['seconds']:.2f} | {speed:.1f}× | {row['peak_mib']:.0f} | {row['retraining']:.4f} | {drops} |")
    return "\n".join(lines)


def markdown(document: Mapping[str, Any]) -> str:
    """The whole page."""
    env = document["environment"]
    lines = [
        "# Group attribution (GGDA): runtime vs retraining score" + (" (quick run)" if document["quick"] else ""),
        "",
        f"`{document['command']}` — {env['cpu_count']} CPUs, {env['torch_threads']} torch threads, torch "
        f"{env['torch']}, attrkit {env['attrkit']}; {document['total_seconds']:.0f} s in all.",
        "",
        "Each method attributes the mean loss over the setting's targets (a property function) to every "
        "group, on `group` gradients (one batched backward per group) projected to 512 dimensions; time is "
        "`fit` + `attribute`. Retraining score: every point takes its group's score, the top "
        f"{'/'.join(f'{100 * f:g}' for f in document['fractions'])} % of points are removed (whole groups "
        "first), the model is retrained from scratch and the test-accuracy drops are averaged (higher: "
        "the attribution found the points that matter). Speed-up is against the same method at group size 1.",
    ]
    for setting in document["settings"]:
        lines += ["", setting_table(setting)]
    return "\n".join(lines)
