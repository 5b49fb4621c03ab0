"""Ground truth of the removal metrics (``brittleness``, ``retraining``, ``pruning``).

These metrics choose which training examples to remove from the scores they judge, so
their retrainings cannot be made in advance: each metric calls back into the setting.
:class:`RemovalTruth` answers those calls by training the setting's model on the kept
examples (main seed, same order of the rest) and caches each answer on disk under a
hash of the keep mask, so a method's second run and other methods choosing the same
removal set retrain nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from attrkit_bench.cache import load_or_create
from attrkit_bench.training.sgd import accuracy

__all__ = ["RemovalTruth"]


class RemovalTruth:
    """Retrain-on-a-subset callbacks for the removal metrics, cached by keep mask.

    Args:
        train_keep: ``train_keep(keep BoolTensor[n_train]) -> model`` (eval mode).
        x_targets: ``Tensor[n_targets, ...]``, the attribution targets' inputs.
        test: ``(x_test, y_test)``, where the retrained models' accuracy is measured.
        labels: ``LongTensor[n_targets]``, the trained model's predictions on the targets.
        cache_dir: folder of the cache files.
        prefix: file name prefix identifying the setting's recipe (holds its cache key).
    """

    def __init__(
        self,
        train_keep: Callable[[torch.Tensor], torch.nn.Module],
        x_targets: torch.Tensor,
        test: tuple[torch.Tensor, torch.Tensor],
        labels: torch.Tensor,
        cache_dir: Path,
        prefix: str,
    ):
        self._train_keep = train_keep
        self._x_targets = x_targets
        self._test = test
        self.labels = labels
        self._cache_dir = cache_dir
        self._prefix = prefix
        self.retrains = 0

    def _facts(self, keep: torch.Tensor) -> dict[str, Any]:
        keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
        digest = hashlib.sha256(keep.numpy().tobytes()).hexdigest()[:16]

        def make() -> dict[str, Any]:
            model = self._train_keep(keep)
            with torch.no_grad():
                predictions = model(self._x_targets).argmax(dim=1)
            return {"predictions": predictions, "accuracy": accuracy(model, *self._test)}

        facts, made = load_or_create(self._cache_dir / f"{self._prefix}-{digest}.pt", make)
        self.retrains += made
        return facts

    def retrain_predict(self, keep: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``LongTensor[b]``: predictions on target rows ``targets`` after training on ``keep``."""
        return self._facts(keep)["predictions"][targets]

    def retrain(self, keep: torch.Tensor) -> float:
        """Test accuracy in [0, 1] after training on ``keep``."""
        return float(self._facts(keep)["accuracy"])

    def truths(self) -> dict[str, Callable[[], dict[str, Any]]]:
        """``{"brittleness", "retraining", "pruning"}`` ground-truth makers for :class:`~attrkit_bench.problem.Problem`."""
        removal = {"retrain": self.retrain}
        return {
            "brittleness": lambda: {"retrain_predict": self.retrain_predict, "labels": self.labels},
            "retraining": lambda: removal,
            "pruning": lambda: removal,
        }
