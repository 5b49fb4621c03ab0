"""The ``loo`` metric: correlation of scores with actual leave-one-out retraining effects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import Metric, MetricResult, hookimpl
from attrkit.functional.ground_truth import GroundTruthError, require_entries, shape_mismatch
from attrkit.functional.removal import loo_correlation


@attrs.frozen(kw_only=True)
class LOOConfig:
    """Config of ``loo``.

    Attributes:
        correlation: ``"pearson"`` (the usual choice for LOO) or ``"spearman"``.
    """

    correlation: str = attrs.field(
        default="pearson",
        validator=attrs.validators.in_(("pearson", "spearman")),
        metadata={"examples": ("pearson", "spearman")},
    )


class LOO(Metric):
    """Leave-one-out correlation: do scores predict the effect of removing one example?

    Removing training example ``i`` and retraining changes target ``t`` by
    ``values[j, t] - base[t]`` (``i = indices[j]``); by the sign convention a proponent
    (``scores[t, i] > 0``) raises the target when removed. ``per_target[t]`` is the
    correlation across the removed examples of ``scores[t, indices]`` with those
    changes; ``value`` is its mean over targets where it is defined (a constant side
    gives ``nan``, left out). Higher is better; 1 = scores proportional to the effects.

    Ground truth: ``indices`` ``LongTensor[m]`` (training examples removed one at a
    time), ``values`` ``Tensor[m, n_test]`` (target of each retrained model), ``base``
    ``Tensor[n_test]`` (target of the model trained on everything).

    Example:
        >>> scores = torch.tensor([[1.0, 2.0, 3.0]])
        >>> truth = {"indices": torch.tensor([0, 2]), "values": torch.tensor([[1.5], [2.5]]), "base": torch.tensor([1.0])}
        >>> round(LOO(LOOConfig()).evaluate(scores, truth).value, 6)
        1.0
    """

    name: ClassVar[str] = "loo"
    Config: ClassVar[type] = LOOConfig
    needs: ClassVar[frozenset[str]] = frozenset({"indices", "values", "base"})
    higher_is_better: ClassVar[bool] = True
    #: Ground-truth entries indexed by target, and the axis of that index.
    target_axes: ClassVar[Mapping[str, int]] = {"values": 1, "base": 0}

    def evaluate(self, scores: torch.Tensor, ground_truth: Mapping[str, Any]) -> MetricResult:
        """LOO correlation of ``scores`` (``Tensor[n_test, n_train]``).

        Raises:
            MissingGroundTruthError: ``ground_truth`` lacks ``indices``, ``values`` or ``base``.
            GroundTruthError: shapes that do not line up, or indices outside ``0..n_train-1``.
        """
        require_entries(self.name, self.needs, ground_truth)
        indices = torch.as_tensor(ground_truth["indices"]).cpu()
        values = torch.as_tensor(ground_truth["values"]).cpu()
        base = torch.as_tensor(ground_truth["base"]).cpu()
        n_test = scores.shape[0] if scores.dim() == 2 else -1
        if scores.dim() != 2 or indices.dim() != 1 or values.shape != (indices.numel(), n_test) or base.shape != (n_test,):
            raise shape_mismatch(
                self.name,
                scores=(scores, "[n_test, n_train]"),
                indices=(indices, "[m]"),
                values=(values, "[m, n_test]"),
                base=(base, "[n_test]"),
            )
        n_train = scores.shape[1]
        if indices.dtype != torch.long or (indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < n_train):
            raise GroundTruthError(
                f"loo: ground truth 'indices' must be a LongTensor of training indices in 0..{n_train - 1}, got {indices.tolist()}"
            )
        per_target = loo_correlation(scores.detach().cpu(), indices, values, base, self.config.correlation).float()
        defined = per_target[~per_target.isnan()]
        value = float(defined.mean()) if defined.numel() else float("nan")
        details = {"n_removed": indices.numel(), "n_targets": int(defined.numel())}
        return MetricResult(value=value, per_target=per_target, details=details)

    @classmethod
    def example_inputs(cls, n_test: int, n_train: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """Seeded scores and LOO ground truth on every other training example (effects =
        scores plus noise), for the conformance kit."""
        gen = torch.Generator().manual_seed(0)
        scores = torch.randn(n_test, n_train, generator=gen)
        indices = torch.arange(0, n_train, 2)
        base = torch.randn(n_test, generator=gen)
        values = base + scores[:, indices].T + 0.5 * torch.randn(indices.numel(), n_test, generator=gen)
        return scores, {"indices": indices, "values": values, "base": base}


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [LOO]
