"""The ``brittleness`` metric: how few of a target's top proponents must be removed to flip it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import (
    ArgumentError,
    ArgumentTypeError,
    Metric,
    MetricResult,
    as_int,
    hookimpl,
    int_field,
    seed_field,
)
from attrkit.functional.ground_truth import GroundTruthError, require_entries, shape_mismatch
from attrkit.functional.removal import importance_order, keep_mask

#: ``retrain_predict(keep_mask, targets) -> predictions``, see :class:`Brittleness`.
RetrainPredict = Callable[[torch.Tensor, torch.Tensor], Any]


def _sizes(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ArgumentTypeError(f"ks must be a list of ints, got {value!r}")
    return tuple(sorted({as_int(v, f"ks[{i}]") for i, v in enumerate(value)}))


def _positive(_instance: Any, attribute: attrs.Attribute, value: tuple[int, ...]) -> None:
    if any(v < 1 for v in value):
        raise ArgumentError(f"{attribute.name} must each be >= 1, got {list(value)}")


@attrs.frozen(kw_only=True)
class BrittlenessConfig:
    """Config of ``brittleness``.

    Attributes:
        ks: numbers of top proponents removed, tried in increasing order (sorted and
            deduplicated); each must be below ``n_train``.
        max_targets: evaluate only the first this many targets (rows of the scores);
            ``None``: all. Caps the cost, which grows with the number of targets.
        seed: seeds the random order among proponents with equal scores.
    """

    ks: tuple[int, ...] = attrs.field(
        default=(10, 20, 40, 80, 160),
        converter=_sizes,
        validator=[attrs.validators.min_len(1), _positive],
        metadata={"examples": ((2, 4, 8),)},
    )
    max_targets: int | None = int_field(None, ge=1, optional=True, examples=(None, 3))
    seed: int = seed_field()


def _predict(retrain_predict: RetrainPredict, keep: torch.Tensor, targets: list[int]) -> torch.Tensor:
    out = torch.as_tensor(retrain_predict(keep, torch.tensor(targets, dtype=torch.long))).cpu()
    if out.shape != (len(targets),):
        raise GroundTruthError(
            f"brittleness: ground truth 'retrain_predict' must return LongTensor[{len(targets)}] "
            f"(one prediction per target asked), got shape {tuple(out.shape)}"
        )
    return out


class Brittleness(Metric):
    """Brittleness of predictions (Ilyas et al., 2022): removing a target's top proponents
    should flip the model's prediction on it, the fewer removed the better the attribution.

    For each target ``t`` (the first ``max_targets`` rows of the scores) and each ``k`` in
    ``ks``, in increasing order, the ``k`` training examples with the highest
    ``scores[t]`` are removed, the model retrained and ``t`` predicted; the smallest ``k``
    whose prediction differs from ``labels[t]`` is recorded. ``value`` is the fraction of
    targets flipped within the largest ``k``; higher is better.

    Cost: one retraining per (target, k) tried — at most ``n_targets · len(ks)``. A
    target is not retried once flipped, and targets whose removed sets coincide at one
    ``k`` share a single retraining (asked to predict all of them at once).

    Ground truth: ``retrain_predict``, a callable ``(BoolTensor[n_train] keep_mask,
    LongTensor[b] targets) -> LongTensor[b]`` predictions of the model retrained on the
    kept examples for the given target rows; ``labels`` ``LongTensor[n_test]``, the
    current model's predictions. ``per_target``: 1 (flipped), 0 (not), ``nan`` (not
    evaluated). ``details``: ``targets``, ``smallest_k`` per target (``None`` = never
    flipped), ``retrains``.

    Example:
        >>> flips = lambda keep, targets: torch.where(keep[0], 0, 1).expand(len(targets))
        >>> metric = Brittleness(BrittlenessConfig(ks=(1, 2)))
        >>> metric.evaluate(torch.tensor([[2.0, 1.0, 0.0]]), {"retrain_predict": flips, "labels": torch.tensor([0])}).value
        1.0
    """

    name: ClassVar[str] = "brittleness"
    Config: ClassVar[type] = BrittlenessConfig
    needs: ClassVar[frozenset[str]] = frozenset({"retrain_predict", "labels"})
    higher_is_better: ClassVar[bool] = True

    def _check(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> tuple[RetrainPredict, torch.Tensor]:
        require_entries(self.name, self.needs, ground_truth)
        retrain_predict = ground_truth["retrain_predict"]
        if not callable(retrain_predict):
            raise GroundTruthError(f"brittleness: ground truth 'retrain_predict' must be callable, got {retrain_predict!r}")
        labels = torch.as_tensor(ground_truth["labels"]).cpu()
        if scores.dim() != 2 or labels.shape != (scores.shape[0],):
            raise shape_mismatch(self.name, scores=(scores, "[n_test, n_train]"), labels=(labels, "[n_test]"))
        if not torch.isfinite(scores).all():
            raise GroundTruthError(f"brittleness: scores must be finite; {int((~torch.isfinite(scores)).sum())} are nan or inf")
        if max(self.config.ks) >= scores.shape[1]:
            raise GroundTruthError(
                f"brittleness.ks must each be below n_train={scores.shape[1]}, got {list(self.config.ks)}; pass smaller ks"
            )
        return retrain_predict, labels

    def evaluate(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> MetricResult:
        """Fraction of targets whose prediction flips when their top-``k`` proponents go.

        Args:
            scores: ``Tensor[n_test, n_train]``.
            ground_truth: ``{"retrain_predict", "labels"}`` as described on the class.

        Raises:
            MissingGroundTruthError: a needed entry is missing.
            GroundTruthError: shapes that do not line up, ``ks`` too large, or
                ``retrain_predict`` returning the wrong shape.
        """
        retrain_predict, labels = self._check(scores, ground_truth)
        n_test, n_train = scores.shape
        targets = list(range(min(n_test, self.config.max_targets or n_test)))
        orders = {t: importance_order(scores[t], self.config.seed) for t in targets}
        smallest: dict[int, int | None] = dict.fromkeys(targets)
        pending, retrains = list(targets), 0
        for k in self.config.ks:
            shared: dict[tuple[int, ...], list[int]] = {}
            for t in pending:
                shared.setdefault(tuple(sorted(orders[t][:k].tolist())), []).append(t)
            for removed, group in shared.items():
                predictions = _predict(retrain_predict, keep_mask(torch.tensor(removed), n_train), group)
                retrains += 1
                for t, prediction in zip(group, predictions.tolist(), strict=True):
                    if prediction != int(labels[t]):
                        smallest[t] = k
            pending = [t for t in pending if smallest[t] is None]
        flipped = [smallest[t] is not None for t in targets]
        per_target = torch.full((n_test,), float("nan"))
        per_target[targets] = torch.tensor(flipped, dtype=torch.float32)
        value = sum(flipped) / len(targets) if targets else float("nan")
        details = {
            "ks": list(self.config.ks),
            "targets": targets,
            "smallest_k": [smallest[t] for t in targets],
            "n_flipped": sum(flipped),
            "retrains": retrains,
        }
        return MetricResult(value=value, per_target=per_target, details=details)

    @classmethod
    def example_inputs(cls, n_test: int, n_train: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Seeded scores and a deterministic fake ``retrain_predict``, for the conformance kit.

        Target ``t`` flips once the removed examples' true influence on it passes
        ``t``-dependent thresholds; the scores are that influence plus noise.
        """
        gen = torch.Generator().manual_seed(0)
        influence = torch.randn(n_test, n_train, generator=gen)
        labels = torch.arange(n_test) % 2
        thresholds = torch.linspace(1.0, 8.0, n_test)

        def retrain_predict(keep: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            lost = influence[targets][:, ~keep].sum(1)
            return torch.where(lost > thresholds[targets], 1 - labels[targets], labels[targets])

        scores = influence + 0.3 * torch.randn(n_test, n_train, generator=gen)
        return scores, {"retrain_predict": retrain_predict, "labels": labels}


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [Brittleness]
