"""Noisy-label metrics: ``auc`` (detecting flipped training labels by self-influence)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import ArgumentError, Metric, MetricResult, float_field, floats_field, hookimpl
from attrkit.functional.detection import detection_curve, group_labels, roc_auc
from attrkit.functional.ground_truth import GroundTruthError, check_groups, require_entries, shape_mismatch


def _in_unit(_instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    bad = [v for v in ([value] if isinstance(value, float) else value) if not 0 < v <= 1]
    if bad:
        raise ArgumentError(f"{attribute.name} must be in (0, 1], got {value!r}")


@attrs.frozen(kw_only=True)
class AUCConfig:
    """Config of ``auc``.

    Attributes:
        fractions: parts of the ranking inspected for the detection curve (``details``),
            each in ``(0, 1]``.
        group_threshold: with group-level scores, a group is positive when at least this
            fraction of its members is flipped; ``None``: when any member is.
    """

    fractions: tuple[float, ...] = floats_field((0.1, 0.2, 0.3), validator=_in_unit)
    group_threshold: float | None = float_field(None, validator=_in_unit, optional=True, examples=(None, 0.5))


class AUC(Metric):
    """Noisy-label detection: ROC AUC of ranking training data by self-influence.

    Training examples whose labels were flipped tend to have high self-influence;
    ranking by it (high = suspicious) and inspecting from the top finds them. ``value``
    is the exact ROC AUC (Mann–Whitney U, ties count one half): 1 = every flipped
    example ranks above every clean one, 0.5 = chance, 0 = reversed.

    Scores: ``Tensor[n]`` or ``Tensor[1, n]`` of self-influence (``attributor.self_influence``),
    ``n`` = ``n_train``, or ``n_groups`` for group-level self-influence.

    Ground truth: ``flipped`` ``BoolTensor[n_train]`` (which labels were flipped) and,
    optionally, ``groups`` ``LongTensor[n_train]``. When ``groups`` is given and the
    scores have one entry per group, a group is positive when any member is flipped (or
    at least ``group_threshold`` of them); otherwise the scores must have ``n_train`` entries.

    ``details``: ``curve``, the fraction of positives found by inspecting the top
    ``fractions`` of the ranking (ties shared out), ``n_positive``, ``n_items``, ``level``.

    Example:
        >>> metric = AUC(AUCConfig())
        >>> metric.evaluate(torch.tensor([0.9, 0.1, 0.5]), {"flipped": torch.tensor([True, False, False])}).value
        1.0
    """

    name: ClassVar[str] = "auc"
    Config: ClassVar[type] = AUCConfig
    needs: ClassVar[frozenset[str]] = frozenset({"flipped"})
    higher_is_better: ClassVar[bool] = True

    def _items(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> tuple[torch.Tensor, str]:
        """Labels of the ranked items (examples or groups) and which level they are at."""
        flipped = torch.as_tensor(ground_truth["flipped"]).cpu()
        if flipped.dim() != 1 or flipped.dtype != torch.bool:
            raise GroundTruthError(
                f"auc: ground truth 'flipped' must be a BoolTensor[n_train], got {flipped.dtype} {tuple(flipped.shape)}"
            )
        if ground_truth.get("groups") is not None:
            groups = check_groups("auc", ground_truth["groups"])
            n_groups = int(groups.max()) + 1 if groups.numel() else 0
            if groups.shape != flipped.shape:
                raise shape_mismatch("auc", flipped=(flipped, "[n_train]"), groups=(groups, "[n_train]"))
            if scores.numel() == n_groups:
                return group_labels(flipped, groups, self.config.group_threshold), "group"
        if scores.numel() != flipped.numel():
            parts = {"scores": (scores, "[n_train] or [n_groups]"), "flipped": (flipped, "[n_train]")}
            raise shape_mismatch("auc", **parts)
        return flipped, "example"

    def evaluate(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> MetricResult:
        """AUC of self-influence ``scores`` (``Tensor[n]`` or ``Tensor[1, n]``).

        Raises:
            MissingGroundTruthError: ``ground_truth`` lacks ``flipped``.
            GroundTruthError: shapes that do not line up, non-finite scores, or labels
                all of one class (AUC undefined).
        """
        require_entries(self.name, self.needs, ground_truth)
        if scores.dim() == 2 and scores.shape[0] == 1:
            scores = scores[0]
        if scores.dim() != 1:
            raise GroundTruthError(
                f"auc: scores must be self-influence Tensor[n] or Tensor[1, n], got shape {tuple(scores.shape)}"
            )
        scores = scores.detach().cpu().double()
        if not torch.isfinite(scores).all():
            raise GroundTruthError(f"auc: scores must be finite; {int((~torch.isfinite(scores)).sum())} are nan or inf")
        labels, level = self._items(scores, ground_truth)
        n_positive = int(labels.sum())
        if n_positive in (0, labels.numel()):
            raise GroundTruthError(f"auc: {n_positive} of {labels.numel()} {level}s are positive; AUC needs both classes")
        curve = detection_curve(scores, labels, self.config.fractions)
        details = {
            "fractions": list(self.config.fractions),
            "curve": [float(c) for c in curve],
            "n_positive": n_positive,
            "n_items": labels.numel(),
            "level": level,
        }
        return MetricResult(value=roc_auc(scores, labels), details=details)

    @classmethod
    def example_inputs(cls, n_test: int, n_train: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Seeded self-influence ``Tensor[n_train]`` and ``{"flipped"}`` (every fourth label
        flipped, scored higher on average), for the conformance kit; ``n_test`` is unused."""
        gen = torch.Generator().manual_seed(0)
        flipped = torch.arange(n_train) % 4 == 0
        return flipped.double() + torch.randn(n_train, generator=gen, dtype=torch.float64), {"flipped": flipped}


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [AUC]
