"""One method on a prepared problem: time, peak memory and every chosen metric.

An untimed warm-up, then ``fit`` + ``attribute`` on all targets timed under
:class:`~attrkit_bench.memory.PeakMemory`; a run shorter than :data:`REPEAT_UNDER` seconds is
repeated (:data:`REPEATS` runs in all, each from a freshly composed attributor) and the fastest is
reported, as :mod:`timeit` does: on a shared 2-core machine a run's time varies by tens of percent
from run to run (mnist-lr's plain CG, about 4 s, took 3.8 to 5.1 s in four runs). Then each metric
on the scores with the setting's ground truth (``auc`` refits the method on the noisy-label model
and ranks the training points by self-influence). With ``compare`` (``"dattri"`` or
``"kronfluence"``), that library's counterpart (:mod:`attrkit_bench.compare.counterparts`) runs on
the same inputs, timed and measured the same way, and is scored with the score-based metrics
(``lds``, ``loo``); the retraining metrics are not run for it.
"""

from __future__ import annotations

import gc
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
import torch

import attrkit
from attrkit import Registry, distributed
from attrkit_bench.memory import PeakMemory
from attrkit_bench.problem import Problem
from attrkit_bench.runner.choices import MethodChoice, MetricChoice

__all__ = ["SCORE_METRICS", "CounterpartRun", "DattriRun", "MethodRun", "compared_library", "run_method"]

#: Metrics judged on the scores alone (run for dattri's counterparts too).
SCORE_METRICS = ("lds", "loo")
#: A timed run (attrkit's or a counterpart's, the same rule for both) shorter than this many
#: seconds is repeated; the fastest of the runs is reported (peak memory is the first run's).
REPEAT_UNDER = 15.0
#: Timed runs in all when one is repeated.
REPEATS = 3


def fastest(first: float, run: Callable[[], Any]) -> float:
    """The fastest of ``first`` (seconds of a run already timed) and, when it is under
    :data:`REPEAT_UNDER`, of ``REPEATS - 1`` more timed calls of ``run`` (each after a ``gc.collect()``)."""
    best = first
    for _ in range(REPEATS - 1 if first < REPEAT_UNDER else 0):
        gc.collect()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


@attrs.frozen(kw_only=True)
class CounterpartRun:
    """dattri's or kronfluence's counterpart of one method, run on the same inputs.

    Attributes:
        name: the counterpart (dattri's attributor, ``"kronfluence EK-FAC"``), or ``None``
            when there is none.
        reason: why there is none, or the error it raised; ``None`` when it ran.
        metrics: ``{metric: value}`` for the score-based metrics.
        seconds: wall seconds of its whole run (dattri: cache + attribute; kronfluence:
            fit_all_factors + compute_pairwise_scores); the fastest of :data:`REPEATS` runs
            when the first took under :data:`REPEAT_UNDER`.
        peak_mib: peak RSS above the start, MiB.
        cuda_peak_mib: peak CUDA allocation above the start, MiB; ``None`` off CUDA.
        correlation: Pearson correlation of its scores with attrkit's, over every
            ``(target, training example)`` pair; ``None`` when either is not finite.
        note: what it computes differently (kronfluence: the parameters it covers, the
            damping), or ``None``.
    """

    name: str | None
    reason: str | None = None
    metrics: dict[str, float | None] = attrs.field(factory=dict)
    seconds: float | None = None
    peak_mib: float | None = None
    cuda_peak_mib: float | None = None
    correlation: float | None = None
    note: str | None = None


#: The former name of :class:`CounterpartRun` (dattri was the only library compared).
DattriRun = CounterpartRun


def compared_library(compare: bool | str | None) -> str | None:
    """The library ``compare`` names: ``True`` is ``"dattri"`` (the former boolean), falsy is ``None``."""
    if not compare:
        return None
    return "dattri" if compare is True else str(compare)


@attrs.frozen(kw_only=True)
class MethodRun:
    """One method's result on one problem.

    Attributes:
        label: the method's label.
        spec: the full resolved spec, every default explicit (``resolved.spec.to_dict()``).
        provenance: ``{part: {"name", "plugin", "distribution", "version"}}``.
        members: ``"KIND:COUNT"`` of the members it ran over, or ``None``.
        metrics: ``{metric: value}``, ``None`` where the setting has no ground truth for it.
        per_target: ``{metric: [value per target]}`` where the metric has one (``None`` = undefined).
        details: ``{metric: details}`` (e.g. brittleness's smallest ``k`` per target).
        seconds: wall seconds of ``fit`` + ``attribute``; the fastest of :data:`REPEATS` runs
            when the first took under :data:`REPEAT_UNDER`.
        peak_mib: peak process RSS above its level at the start, MiB.
        cuda_peak_mib: peak CUDA allocation above the start, MiB; ``None`` off CUDA.
        memory_source: how ``peak_mib`` was measured (``"statm"`` or ``"getrusage"``).
        dattri: dattri's counterpart, when compared with dattri.
        kronfluence: kronfluence's counterpart, when compared with kronfluence.
        roofline: ``{"limit", "multiple", "gflop", "examples", "counted"}`` where the setting's
            model is counted (:func:`attrkit_bench.roofline.limits`), else ``None``.
    """

    label: str
    spec: dict[str, Any]
    provenance: dict[str, dict[str, str]]
    members: str | None
    metrics: dict[str, float | None]
    per_target: dict[str, list[float | None]] = attrs.field(repr=False)
    details: dict[str, Any] = attrs.field(repr=False)
    seconds: float
    peak_mib: float
    cuda_peak_mib: float | None
    memory_source: str
    dattri: CounterpartRun | None = None
    kronfluence: CounterpartRun | None = None
    roofline: dict[str, Any] | None = None


def _first(loader: Iterable[Any]) -> list[Any]:
    """The loader's first batch, or first batch per rank in distributed mode (each needs one)."""
    ranks = distributed.world()
    return list(itertools.islice(loader, 1 if ranks is None else ranks[1]))


def _clean(values: Iterable[float]) -> list[float | None]:
    return [_number(v) for v in values]


def _number(value: float) -> float | None:
    """``value``, or ``None`` for NaN (JSON has no NaN)."""
    return None if math.isnan(value) else value


def _evaluate(choice: MetricChoice, problem: Problem, scores: torch.Tensor, groups: Any,
              refit: Callable[[], torch.Tensor], members: bool) -> tuple[float | None, list[float | None] | None, Any]:
    """``(value, per-target values, details)`` of one metric; ``(None, None, reason)`` without ground truth
    (``auc`` also for a method over members: the setting has no members trained on the noisy labels)."""
    if choice.name == "auc":
        if problem.noisy is None:
            return None, None, "the setting has no noisy-label task"
        if members:
            return None, None, "not computed: the members are trained on the clean labels, none on the noisy ones"
        truth: dict[str, Any] = {"flipped": problem.noisy.flipped}
        result = choice.metric.evaluate(refit(), truth)
        return _number(result.value), None, result.details
    try:
        truth = dict(problem.truth(choice.name))
    except LookupError as exc:
        return None, None, str(exc)
    if groups is not None:
        truth["groups"] = groups
    result = choice.metric.evaluate(scores, truth)
    per_target = None if result.per_target is None else _clean(result.per_target.tolist())
    return _number(result.value), per_target, result.details


def _states(problem: Problem, choice: MethodChoice) -> list[dict[str, torch.Tensor]] | None:
    if choice.members is None:
        return None
    if problem.members is None:
        raise ValueError(f"method {choice.label!r} asks for members; setting {problem.name!r} produces none")
    return problem.members(*choice.members)


def _correlation(ours: torch.Tensor, theirs: torch.Tensor) -> float | None:
    """Pearson correlation of two score matrices over every entry; ``None`` if not finite or of other shapes."""
    if ours.shape != theirs.shape or not (torch.isfinite(ours).all() and torch.isfinite(theirs).all()):
        return None
    return _number(float(torch.corrcoef(torch.stack([ours.flatten().double(), theirs.flatten().double()]))[0, 1]))


def _counterpart(library: str, choice_spec: dict[str, Any], problem: Problem,
                 states: list[dict[str, torch.Tensor]] | None, metrics: Sequence[MetricChoice],
                 ours: torch.Tensor) -> CounterpartRun:
    from attrkit_bench.compare.counterparts import counterpart

    found = counterpart(choice_spec, problem, states or [problem.model.state_dict()], library)
    if found.scores is None:
        return CounterpartRun(name=None, reason=found.reason)
    gc.collect()
    try:
        with PeakMemory(device=problem.task().device) as memory:
            start = time.perf_counter()
            scores = found.scores()
        seconds = fastest(time.perf_counter() - start, found.scores)
    except Exception as exc:  # the library's failures are reported in the table, not fatal to the run
        return CounterpartRun(name=found.name, reason=f"{type(exc).__name__}: {exc}", note=found.note)
    finite, values = bool(torch.isfinite(scores).all()), {}
    for choice in metrics:
        if choice.name in SCORE_METRICS and (choice.name == "lds" or choice.name in problem.truths):
            truth = problem.truth(choice.name)
            values[choice.name] = _number(choice.metric.evaluate(scores, truth).value) if finite else None
    return CounterpartRun(name=found.name, metrics=values, seconds=seconds, peak_mib=memory.peak_mib,
                          cuda_peak_mib=memory.cuda_peak_mib, correlation=_correlation(scores, ours), note=found.note)


def run_method(problem: Problem, choice: MethodChoice, metrics: Sequence[MetricChoice], registry: Registry | None = None,
               compare: bool | str = False) -> MethodRun:
    """Compose ``choice`` for ``problem``, time fit + attribute, evaluate every metric.

    An untimed warm-up on the first batch of each loader comes first, so one-off
    start-up costs (first calls into ``torch.func``, lazy imports) fall on no method. A run
    under :data:`REPEAT_UNDER` seconds is repeated (:func:`fastest`).

    Args:
        problem: the prepared setting.
        choice: the method, its label and members.
        metrics: the metrics to evaluate.
        registry: where the method's parts are looked up; defaults to every installed plugin.
        compare: also run a counterpart: ``"dattri"`` (or ``True``) or ``"kronfluence"``
            (the library must be installed).

    Raises:
        SpecError: the spec cannot be composed.
        ValueError: the method asks for members the setting cannot produce.
    """
    registry = registry or attrkit.default_registry()
    states = _states(problem, choice)
    task = attrs.evolve(problem.task(), checkpoints=states)
    attrkit.compose(choice.spec, task, registry).fit(_first(problem.train)).attribute(_first(problem.targets))
    attributor = attrkit.compose(choice.spec, task, registry)
    gc.collect()
    with PeakMemory(device=task.device) as memory:
        start = time.perf_counter()
        scores = attributor.fit(problem.train).attribute(problem.targets)
    seconds = time.perf_counter() - start
    groups = getattr(attributor, "groups", None)
    groups = None if groups is None or torch.equal(groups, torch.arange(groups.numel())) else groups
    spec, provenance = attributor.resolved.spec.to_dict(), attributor.resolved.provenance()
    del attributor  # its training features may be most of the memory; the noisy-label refit needs as much
    gc.collect()  # (and what it cached, e.g. projection matrices, goes with it: the repeats start cold)
    seconds = fastest(seconds,
                      lambda: attrkit.compose(choice.spec, task, registry).fit(problem.train).attribute(problem.targets))

    def refit() -> torch.Tensor:
        assert problem.noisy is not None
        noisy = attrs.evolve(task, model=problem.noisy.model)
        return attrkit.compose(choice.spec, noisy, registry).fit(problem.noisy.train).self_influence(problem.noisy.train)

    values, per_target, details = {}, {}, {}
    for metric in metrics:
        if metric.name in choice.skip:
            values[metric.name], details[metric.name] = None, "not computed: the spec says \"skip\""
            continue
        value, targets, detail = _evaluate(metric, problem, scores, groups, refit, states is not None)
        values[metric.name], details[metric.name] = value, detail
        if targets is not None:
            per_target[metric.name] = targets
    library, compared = compared_library(compare), None
    if library is not None and not choice.compare:
        compared = CounterpartRun(name=None, reason="not run (the spec says \"compare\": false)")
    elif library is not None:
        compared = _counterpart(library, spec, problem, states, metrics, scores)
    return MethodRun(
        label=choice.label,
        spec=spec,
        provenance=provenance,
        members=None if choice.members is None else f"{choice.members[0]}:{choice.members[1]}",
        metrics=values,
        per_target=per_target,
        details=details,
        seconds=seconds,
        peak_mib=memory.peak_mib,
        cuda_peak_mib=memory.cuda_peak_mib,
        memory_source=memory.source,
        dattri=compared if library == "dattri" else None,
        kronfluence=compared if library == "kronfluence" else None,
    )
