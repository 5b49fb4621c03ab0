"""PNG plots of a result document: each metric against wall time, and per-setting bars.

matplotlib (extra ``bench``) is imported lazily; without it :func:`write_plots` says so
and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrkit_bench.table import TITLES

__all__ = ["write_plots"]


def _metrics(document: Mapping[str, Any]) -> list[str]:
    names = [m["name"] for m in document["metrics"]]
    return [m for m in names if any(run["metrics"].get(m) is not None for run in document["runs"])]


def write_plots(document: Mapping[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Write ``{stem}-vs-time.png`` (one panel per metric: value against wall seconds, log
    scale, one labelled point per method, dattri's as hollow markers) and ``{stem}-bars.png``
    (one bar group per metric, a bar per method).

    Returns:
        The paths written (none when no metric has a value).

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"plots need matplotlib: pip install 'attrkit[bench]' ({exc})") from exc
    metrics, runs = _metrics(document), document["runs"]
    if not metrics:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics, strict=True):
        for i, run in enumerate(runs):
            color = plt.cm.tab20(i % 20)
            if run["metrics"].get(metric) is not None:
                axis.scatter(run["seconds"], run["metrics"][metric], color=color, label=run["label"])
            theirs = run.get("dattri") or {}
            if theirs.get("metrics", {}).get(metric) is not None:
                axis.scatter(theirs["seconds"], theirs["metrics"][metric], facecolors="none", edgecolors=color)
        axis.set(xscale="log", xlabel="wall time (s)", ylabel=TITLES.get(metric, metric), title=document["setting"])
        axis.grid(alpha=0.3)
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="center right", fontsize=7)
    figure.tight_layout(rect=(0, 0, 0.87, 1))
    scatter = out_dir / f"{stem}-vs-time.png"
    figure.savefig(scatter, dpi=120)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(metrics) * len(runs) / 2), 4))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        values = [run["metrics"].get(m) or 0.0 for m in metrics]
        axis.bar([j + i * width for j in range(len(metrics))], values, width, label=run["label"])
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], [TITLES.get(m, m) for m in metrics])
    axis.set(title=f"{document['setting']}: every method, every metric", ylabel="value (higher is better)")
    axis.legend(fontsize=7, ncol=2)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    bars = out_dir / f"{stem}-bars.png"
    figure.savefig(bars, dpi=120)
    plt.close(figure)
    return [scatter, bars]
