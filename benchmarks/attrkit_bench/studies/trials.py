"""Timed, memory-measured, LDS-scored runs of one attribution computation, and the λ search."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit import CurvatureError
from attrkit.plugin import Metric
from attrkit_bench.memory import PeakMemory
from attrkit_bench.problem import Problem

__all__ = ["Trial", "attrkit_scores", "best", "first_targets", "measure"]

#: ``scores() -> Tensor[n_targets, n_train]``: one complete attribution (fit and attribute).
Scores = Callable[[], torch.Tensor]


@attrs.frozen(kw_only=True)
class Trial:
    """One run: a damping value and what it gave.

    Attributes:
        regularization: the damping ``λ`` (``None`` where none applies).
        status: ``"ok"``; ``"refused"`` (attrkit raised a ``CurvatureError``: not positive
            definite, LiSSA diverging, or ``p`` above ``max_dim``); ``"failed"`` (any other
            exception, e.g. out of memory).
        lds: mean Spearman LDS over the run's targets; ``None`` unless ``ok`` or when
            undefined (non-finite scores).
        lds_per_target: ``[n_targets]`` correlations (``None`` where undefined).
        seconds: wall seconds of the run (until the exception when not ``ok``).
        peak_mib: peak RSS above the level at the start, MiB.
        n_targets: targets attributed (the first ``n_targets`` of the setting).
        message: the exception's type and message when not ``ok``.
        extra: solver facts worth keeping (LiSSA's scale and ``λ̂_max``).
    """

    regularization: float | None
    status: str
    lds: float | None
    lds_per_target: list[float | None] | None = attrs.field(repr=False)
    seconds: float
    peak_mib: float
    n_targets: int
    message: str = ""
    extra: Mapping[str, Any] = attrs.field(factory=dict)


def first_targets(problem: Problem, n: int | None) -> DataLoader:
    """The first ``n`` (all when ``None``) targets of ``problem`` as one batch (one solver block)."""
    x, y = problem.targets.dataset.tensors
    n = x.shape[0] if n is None else min(n, x.shape[0])
    return DataLoader(TensorDataset(x[:n], y[:n]), batch_size=n, shuffle=False)


def attrkit_scores(problem: Problem, spec: Mapping[str, Any], train: DataLoader, targets: DataLoader) -> Scores:
    """``scores()`` composing ``spec`` for ``problem`` and running ``fit(train).attribute(targets)``."""

    def run() -> torch.Tensor:
        return attrkit.compose(dict(spec), problem.task()).fit(train).attribute(targets)

    return run


def measure(
    scores: Scores,
    problem: Problem,
    metric: Metric,
    n_targets: int,
    regularization: float | None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[Trial, torch.Tensor | None]:
    """Run ``scores()`` once: wall time, peak memory and LDS on the first ``n_targets`` targets.

    A ``CurvatureError`` is recorded as ``"refused"`` and any other exception as
    ``"failed"`` (type and message kept), so that one bad configuration does not end a
    long benchmark.

    Returns:
        ``(trial, scores)``: scores ``Tensor[n_targets, n_train]``, ``None`` unless ``ok``.
    """
    truth = {"subsets": problem.ground_truth["subsets"], "values": problem.ground_truth["values"][:, :n_targets]}
    gc.collect()
    status, message, result = "ok", "", None
    start = time.perf_counter()
    with PeakMemory() as memory:
        try:
            result = scores()
        except CurvatureError as exc:
            status, message = "refused", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - recorded in the table, the benchmark goes on
            status, message = "failed", f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    lds = per_target = None
    if result is not None:
        evaluated = metric.evaluate(result, truth)
        lds = None if math.isnan(evaluated.value) else evaluated.value
        per_target = [None if math.isnan(v) else v for v in evaluated.per_target.tolist()]
    trial = Trial(regularization=regularization, status=status, lds=lds, lds_per_target=per_target,
                  seconds=seconds, peak_mib=memory.peak_mib, n_targets=n_targets, message=message,
                  extra=dict(extra or {}))
    return trial, result


def best(trials: Sequence[Trial]) -> Trial | None:
    """The ``ok`` trial with the highest LDS (the first on ties); ``None`` when none is ``ok``."""
    ok = [t for t in trials if t.status == "ok" and t.lds is not None]
    return max(ok, key=lambda t: t.lds) if ok else None
