"""Metrics that remove training data by importance and retrain: ``retraining`` (remove
the most important data) and ``pruning`` (remove the least important).

Each reads a callable from the ground truth that retrains the user's model on a subset
of the training set, so the metric itself stays model-agnostic. Retraining dominates the
cost: the number of calls is stated on each metric and reported in ``details["retrains"]``.
(``brittleness``, which removes each target's own proponents, lives in its own module.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import ArgumentError, Metric, MetricResult, floats_field, hookimpl, seed_field
from attrkit.functional.ground_truth import GroundTruthError, check_groups, require_entries, shape_mismatch
from attrkit.functional.removal import AGGREGATES, importance, importance_order, keep_mask, top_count


def _open_unit(_instance: Any, attribute: attrs.Attribute, value: tuple[float, ...]) -> None:
    if any(not 0 < v < 1 for v in value):
        raise ArgumentError(f"{attribute.name} must each be in (0, 1), got {list(value)}")


def _fractions_field(default: tuple[float, ...]) -> Any:
    return floats_field(default, validator=_open_unit, examples=((0.1, 0.2),))


def _aggregate_field() -> Any:
    return attrs.field(default="sum", validator=attrs.validators.in_(AGGREGATES), metadata={"examples": AGGREGATES})


@attrs.frozen(kw_only=True)
class RetrainingConfig:
    """Config of ``retraining``.

    Attributes:
        fractions: parts of the training data (or groups) removed, each in ``(0, 1)``;
            ``ceil(fraction · n)`` items are removed.
        aggregate: how the targets' scores make one importance per item: ``"sum"``
            (the mean orders items the same) or ``"rank"`` (mean within-target rank).
        seed: seeds the random order among items of equal importance.
    """

    fractions: tuple[float, ...] = _fractions_field((0.01, 0.05, 0.1, 0.2))
    aggregate: str = _aggregate_field()
    seed: int = seed_field()


@attrs.frozen(kw_only=True)
class PruningConfig:
    """Config of ``pruning``: as :class:`RetrainingConfig`, with default fractions 25/50/75 %.

    Attributes:
        fractions: parts of the training data (or groups) removed — the *least* important
            first — each in ``(0, 1)``; ``ceil(fraction · n)`` items are removed.
        aggregate: how the targets' scores make one importance per item: ``"sum"`` or
            ``"rank"`` (mean within-target rank).
        seed: seeds the random order among items of equal importance.
    """

    fractions: tuple[float, ...] = _fractions_field((0.25, 0.5, 0.75))
    aggregate: str = _aggregate_field()
    seed: int = seed_field()


def _accuracy(retrain: Callable[[torch.Tensor], Any], keep: torch.Tensor, metric: str) -> float:
    out = retrain(keep)
    try:
        return float(out)
    except (TypeError, ValueError):
        raise GroundTruthError(f"{metric}: ground truth 'retrain' must return an accuracy (a float), got {out!r}") from None


def _removal_runs(
    metric: str, config: Any, scores: torch.Tensor, ground_truth: Mapping[str, Any], most_important: bool
) -> tuple[dict[str, Any], Callable[[torch.Tensor], Any], int]:
    """Remove each fraction of the items ranked by importance and retrain.

    Returns ``details`` (fractions, items removed, accuracies, level), the callable and ``n_train``.
    """
    require_entries(metric, {"retrain"}, ground_truth)
    retrain = ground_truth["retrain"]
    if not callable(retrain):
        raise GroundTruthError(f"{metric}: ground truth 'retrain' must be callable keep_mask -> accuracy, got {retrain!r}")
    if scores.dim() != 2:
        raise GroundTruthError(f"{metric}: scores must be Tensor[n_test, n_train] or [n_test, n_groups], got {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise GroundTruthError(f"{metric}: scores must be finite; {int((~torch.isfinite(scores)).sum())} are nan or inf")
    groups = ground_truth.get("groups")
    if groups is not None:
        groups = check_groups(metric, groups)
        if scores.shape[1] != int(groups.max()) + 1:
            raise shape_mismatch(metric, scores=(scores, "[n_test, n_groups]"), groups=(groups, "[n_train] of 0..n_groups-1"))
    n_items = scores.shape[1]
    n_train = n_items if groups is None else groups.numel()
    order = importance_order(importance(scores, config.aggregate), config.seed)
    order = order if most_important else order.flip(0)
    removed, accuracies = [], []
    for fraction in config.fractions:
        k = top_count(fraction, n_items)
        if k >= n_items:
            raise GroundTruthError(f"{metric}: removing {fraction} of {n_items} items leaves nothing to train on")
        removed.append(k)
        accuracies.append(_accuracy(retrain, keep_mask(order[:k], n_train, groups), metric))
    level = "example" if groups is None else "group"
    details = {"fractions": list(config.fractions), "removed": removed, "accuracies": accuracies, "level": level}
    return details, retrain, n_train


def _example_retrain(scores: torch.Tensor) -> Callable[[torch.Tensor], float]:
    """A deterministic stand-in for retraining: accuracy grows with the kept helpful mass."""
    helpful = scores.double().sum(0).clamp(min=0) + 0.1

    def retrain(keep: torch.Tensor) -> float:
        return float(0.5 + 0.5 * helpful[keep].sum() / helpful.sum())

    return retrain


class Retraining(Metric):
    """Retraining score: remove the most important training data, retrain, measure the drop.

    Importance of a training example (or group) is its score aggregated over the targets
    (positive = helps). Removing the ``ceil(f · n)`` most important items for each
    ``f`` in ``fractions`` should hurt test accuracy most when the attribution is right.
    ``value = mean_f (base − accuracy_f)``, with ``base`` the accuracy of the model trained
    on everything; higher is better. Cost: ``len(fractions) + 1`` calls to ``retrain``.

    Ground truth: ``retrain``, a callable ``BoolTensor[n_train] keep_mask -> float``
    accuracy of the model retrained on the kept examples; optionally ``groups``
    ``LongTensor[n_train]``, in which case scores have one column per group and whole
    groups are removed. ``details``: ``base_accuracy``, per-fraction ``removed`` counts,
    ``accuracies`` and ``drops``, ``retrains``.

    Example:
        >>> metric = Retraining(RetrainingConfig(fractions=(0.5,)))
        >>> metric.evaluate(torch.tensor([[3.0, 1.0]]), {"retrain": lambda keep: float(keep[0])}).value
        1.0
    """

    name: ClassVar[str] = "retraining"
    Config: ClassVar[type] = RetrainingConfig
    needs: ClassVar[frozenset[str]] = frozenset({"retrain"})
    higher_is_better: ClassVar[bool] = True

    def evaluate(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> MetricResult:
        """Mean accuracy drop from removing the most important items of ``scores`` (``[n_test, n]``).

        Raises:
            MissingGroundTruthError: ``ground_truth`` lacks ``retrain``.
            GroundTruthError: shapes that do not line up, or ``retrain`` returning no float.
        """
        details, retrain, n_train = _removal_runs(self.name, self.config, scores, ground_truth, most_important=True)
        base = _accuracy(retrain, torch.ones(n_train, dtype=torch.bool), self.name)
        drops = [base - a for a in details["accuracies"]]
        details.update(base_accuracy=base, drops=drops, retrains=len(drops) + 1)
        return MetricResult(value=sum(drops) / len(drops), details=details)

    @classmethod
    def example_inputs(cls, n_test: int, n_train: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Seeded ``Tensor[n_test, n_train]`` scores and a deterministic fake ``retrain``, for the conformance kit."""
        scores = torch.randn(n_test, n_train, generator=torch.Generator().manual_seed(0))
        return scores, {"retrain": _example_retrain(scores)}


class Pruning(Metric):
    """Data pruning: remove the least important training data, retrain, measure accuracy.

    Items are ranked as in ``retraining``; for each ``f`` in ``fractions`` the
    ``ceil(f · n)`` least important are removed. A good attribution keeps accuracy high.
    ``value`` is the mean accuracy over fractions; higher is better. Cost:
    ``len(fractions)`` calls to ``retrain``. Ground truth as for ``retraining``;
    ``details``: per-fraction ``removed`` counts and ``accuracies``, ``retrains``.

    Example:
        >>> metric = Pruning(PruningConfig(fractions=(0.5,)))
        >>> metric.evaluate(torch.tensor([[3.0, 1.0]]), {"retrain": lambda keep: float(keep[0])}).value
        1.0
    """

    name: ClassVar[str] = "pruning"
    Config: ClassVar[type] = PruningConfig
    needs: ClassVar[frozenset[str]] = frozenset({"retrain"})
    higher_is_better: ClassVar[bool] = True

    def evaluate(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> MetricResult:
        """Mean accuracy after removing the least important items of ``scores`` (``[n_test, n]``).

        Raises:
            MissingGroundTruthError: ``ground_truth`` lacks ``retrain``.
            GroundTruthError: shapes that do not line up, or ``retrain`` returning no float.
        """
        details, _, _ = _removal_runs(self.name, self.config, scores, ground_truth, most_important=False)
        accuracies = details["accuracies"]
        details["retrains"] = len(accuracies)
        return MetricResult(value=sum(accuracies) / len(accuracies), details=details)

    @classmethod
    def example_inputs(cls, n_test: int, n_train: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Seeded ``Tensor[n_test, n_train]`` scores and a deterministic fake ``retrain``, for the conformance kit."""
        return Retraining.example_inputs(n_test, n_train)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [Retraining, Pruning]
