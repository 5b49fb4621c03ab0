"""Metrics: ``lds`` (linear datamodeling score)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import ArgumentError, Metric, MetricResult, hookimpl
from attrkit.functional.ranking import pearson_columns, spearman_columns


@attrs.frozen(kw_only=True)
class LDSConfig:
    """Config of ``lds``.

    Attributes:
        correlation: ``"spearman"`` (as in the TRAK paper) or ``"pearson"``.
    """

    correlation: str = attrs.field(
        default="spearman", validator=attrs.validators.in_(("spearman", "pearson")), metadata={"examples": ("spearman", "pearson")}
    )


class LDS(Metric):
    """Linear datamodeling score (Park et al., 2023).

    For each target ``t``, the correlation across retrained models ``s`` between the
    predicted effect ``Σ_{i ∈ S_s} scores[t, i]`` and the *negated* target value of the
    model trained on ``S_s`` (sign convention: proponents lower the target).

    Ground truth: ``subsets`` ``BoolTensor[n_models, n_train]`` (training subset of each
    model) and ``values`` ``Tensor[n_models, n_test]`` (each model's target values).
    ``value`` is the mean over targets with a defined correlation.
    """

    name: ClassVar[str] = "lds"
    Config: ClassVar[type] = LDSConfig
    needs: ClassVar[frozenset[str]] = frozenset({"subsets", "values"})
    higher_is_better: ClassVar[bool] = True
    #: Ground-truth entries indexed by target, and the axis of that index.
    target_axes: ClassVar[Mapping[str, int]] = {"values": 1}

    def evaluate(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> MetricResult:
        """LDS of ``scores`` (``[n_test, n_train]``).

        Raises:
            KeyError: ``ground_truth`` lacks ``subsets`` or ``values``.
            ValueError: shapes that do not line up.
        """
        missing = sorted(self.needs - set(ground_truth))
        if missing:
            raise KeyError(f"lds needs ground truth {missing}; got keys {sorted(ground_truth)}")
        subsets = torch.as_tensor(ground_truth["subsets"]).double()
        values = torch.as_tensor(ground_truth["values"]).double()
        if subsets.shape[1] != scores.shape[1] or values.shape != (subsets.shape[0], scores.shape[0]):
            raise ArgumentError(
                f"lds shapes do not line up: scores {tuple(scores.shape)} [n_test, n_train], subsets "
                f"{tuple(subsets.shape)} [n_models, n_train], values {tuple(values.shape)} [n_models, n_test]"
            )
        predicted = subsets @ scores.double().T
        corr = spearman_columns if self.config.correlation == "spearman" else pearson_columns
        per_target = corr(predicted, -values).float()
        defined = per_target[~per_target.isnan()]
        value = float(defined.mean()) if defined.numel() else float("nan")
        details = {"n_models": int(subsets.shape[0]), "n_targets": int(defined.numel())}
        return MetricResult(value=value, per_target=per_target, details=details)

    @classmethod
    def example_inputs(cls, n_test: int, n_train: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Seeded scores and ground truth of 12 random half-subsets whose (negated) values
        follow the scores plus noise, for the conformance kit."""
        gen = torch.Generator().manual_seed(0)
        scores = torch.randn(n_test, n_train, generator=gen)
        subsets = torch.rand(12, n_train, generator=gen) < 0.5
        values = -(subsets.double() @ scores.double().T) + 0.5 * torch.randn(12, n_test, generator=gen, dtype=torch.float64)
        return scores, {"subsets": subsets, "values": values}


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [LDS]
