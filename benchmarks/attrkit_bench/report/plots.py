"""PNG plots of a result document: a setting's metrics against wall time and as bars, GGDA's runtime vs fidelity.

matplotlib (extra ``bench``) is imported lazily; without it the functions raise an
``ImportError`` that says how to install it, and write nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from attrkit_bench.report.pages import kind
from attrkit_bench.report.table import HIGHER_IS_BETTER, TITLES

__all__ = ["AXIS_LABELS", "axis_limits", "ggda_plot", "panel_title", "setting_plots", "write_plots"]

#: The value axis of each metric's panel, with its unit.
AXIS_LABELS = {"lds": "LDS (Spearman correlation)", "loo": "LOO (correlation)", "auc": "noisy-label ROC AUC",
               "brittleness": "brittleness (fraction of targets flipped)",
               "retraining": "retraining (test accuracy drop)", "pruning": "pruning (test accuracy kept)"}
#: Libraries whose counterparts a run may carry (``run[library]``), drawn hollow, each with its marker.
_COUNTERPARTS = {"dattri": "o", "kronfluence": "s"}
#: Spans at least this ratio (one decade) put the time axis on a log scale.
_LOG_RATIO = 10.0
#: Margin around the data, as a fraction of its span (of its log span on a log axis).
_MARGIN = 0.08


def panel_title(metric: str) -> str:
    """``"LDS (higher is better)"``: a metric's panel title, its name and direction."""
    return f"{TITLES.get(metric, metric)} ({'higher' if HIGHER_IS_BETTER.get(metric, True) else 'lower'} is better)"


def axis_limits(values: list[float], log: bool = False) -> tuple[float, float]:
    """``(low, high)`` holding every value with a margin of :data:`_MARGIN` of the span on each side
    (of the log span on a log axis); a single value gets a margin of its own size.

    >>> axis_limits([0.2, 0.7])
    (0.16, 0.74)
    >>> axis_limits([1.0, 100.0], log=True)  # doctest: +ELLIPSIS
    (0.69..., 144.5...)
    """
    if log:
        low, high = axis_limits([math.log10(v) for v in values])
        return 10**low, 10**high
    low, high = min(values), max(values)
    pad = _MARGIN * (high - low) if high > low else 0.1 * max(abs(high), 1e-3)
    return round(low - pad, 12), round(high + pad, 12)


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
    """Write ``{stem}-vs-time.png`` (one panel per metric: value against wall seconds, one
    point per method, counterparts (dattri) as hollow markers; each panel titled with its
    metric and direction, :func:`panel_title`; axes fitted to the data with a margin,
    :func:`axis_limits`, time on a log scale when it spans a decade) and ``{stem}-bars.png``
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
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4.4), squeeze=False)
    hollow: set[str] = set()
    for axis, metric in zip(axes[0], metrics, strict=True):
        points = []
        for i, run in enumerate(runs):
            color = plt.cm.tab20(i % 20)
            if run["metrics"].get(metric) is not None:
                points.append((run["seconds"], run["metrics"][metric]))
                axis.scatter(*points[-1], color=color, label=run["label"], zorder=3)
            for library, marker in _COUNTERPARTS.items():
                theirs = run.get(library) or {}
                if theirs.get("seconds") and theirs.get("metrics", {}).get(metric) is not None:
                    points.append((theirs["seconds"], theirs["metrics"][metric]))
                    axis.scatter(*points[-1], marker=marker, facecolors="none", edgecolors=color, zorder=3)
                    hollow.add(library)
        times, values = [t for t, _ in points if t > 0], [v for _, v in points]
        log = bool(times) and max(times) / min(times) >= _LOG_RATIO
        if times:
            axis.set_xlim(*axis_limits(times, log))
        axis.set_ylim(*axis_limits(values))
        axis.set(xscale="log" if log else "linear", title=panel_title(metric), ylabel=AXIS_LABELS.get(metric, metric),
                 xlabel=f"wall time of fit + attribute (s{', log scale' if log else ''}; lower is better)")
        axis.grid(alpha=0.3, which="both" if log else "major")
    others = f" (hollow: {', '.join(sorted(hollow))})" if hollow else ""
    figure.suptitle(f"{document['setting']}: each metric against wall time{others}")
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
