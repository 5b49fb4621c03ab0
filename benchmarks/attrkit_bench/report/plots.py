"""PNG plots of a result document: a setting's metrics against wall time and as bars, GGDA's runtime vs fidelity.

matplotlib (extra ``bench``) is imported lazily; without it the functions raise an
``ImportError`` that says how to install it, and write nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrkit_bench.report.pages import kind
from attrkit_bench.report.table import TITLES

__all__ = ["ggda_plot", "setting_plots", "write_plots"]


def _metrics(document: Mapping[str, Any]) -> list[str]:
    names = [m["name"] for m in document["metrics"]]
    return [m for m in names if any(run["metrics"].get(m) is not None for run in document["runs"])]


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend.

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(f"plots need matplotlib: pip install 'attrkit[bench]' ({exc})") from exc
    return plt


def write_plots(document: Mapping[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """The plots of any result document that has some (a setting's, GGDA's), named after ``stem``.

    Returns:
        The paths written: :func:`setting_plots`' for a setting, ``{stem}.png`` for GGDA,
        none for the other kinds.

    Raises:
        ImportError: matplotlib is not installed.
    """
    if kind(document) == "setting":
        return setting_plots(document, out_dir, stem)
    if kind(document) == "ggda":
        path = out_dir / f"{stem}.png"
        ggda_plot(document, path)
        return [path]
    return []


def setting_plots(document: Mapping[str, Any], out_dir: Path, stem: str) -> list[Path]:
    """Write ``{stem}-vs-time.png`` (one panel per metric: value against wall seconds, log
    scale, one labelled point per method, dattri's as hollow markers) and ``{stem}-bars.png``
    (one bar group per metric, a bar per method).

    Returns:
        The paths written (none when no metric has a value).

    Raises:
        ImportError: matplotlib is not installed (the message says how to install it).
    """
    plt = _pyplot()
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


def ggda_plot(document: Mapping[str, Any], path: Path) -> None:
    """Write ``path``: runtime (log) vs retraining score, one panel per setting, one series per method and grouper.

    Raises:
        ImportError: matplotlib is not installed.
    """
    plt = _pyplot()
    settings = document["settings"]
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        series: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for row in setting["rows"]:
            pointwise = row["group_size"] == 1
            for grouper in ({row["grouper"]} if not pointwise else {r["grouper"] for r in setting["rows"]} - {"singleton"}):
                series.setdefault((row["method"], grouper), []).append(row)
        for (method, grouper), points in sorted(series.items()):
            points = sorted(points, key=lambda r: r["group_size"])
            ax.plot([p["seconds"] for p in points], [p["retraining"] for p in points],
                    marker="o" if grouper == "grad-kmeans" else "s", linestyle="-" if grouper == "grad-kmeans" else "--",
                    label=f"{method}, {grouper}")
            for p in points:
                ax.annotate(str(p["group_size"]), (p["seconds"], p["retraining"]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("fit + attribute time (s, log scale)")
        ax.set_ylabel("retraining score (mean accuracy drop)")
        ax.set_title(setting["setting"])
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
