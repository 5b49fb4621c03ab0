"""Setting ``fmnist-cnn``: a small ResNet-9-style CNN on Fashion-MNIST, LDS ground truth.

The seed papers' convolutional settings train a ResNet-9 on CIFAR-10, which ships in no
offline package; Fashion-MNIST does (:func:`~attrkit_bench.data.fashion_mnist.load_fashion_mnist`,
Debian package ``dataset-fashion-mnist``). From its 70,000 images, 4000 train and 1000 test
are drawn stratified; the first 500 test points are the attribution targets; the target is
the per-example cross-entropy. Ground truth: models retrained with the same recipe on
seeded random halves of the training set (``ClassifierConfig.n_models`` of them).

Model (:class:`ResNet9Small`, 29,506 parameters at width 8): David Page's ResNet-9 scaled
down to what trains in seconds on one CPU thread — a prep conv, two conv blocks that each
double the channels and halve the resolution, each followed by one residual block, a
global max-pool and a linear head (``Linear(32, 10)``, the last-layer methods' layer). It
takes the flat ``[b, 784]`` rows of the shared classifier pipeline and unflattens them to
``[b, 1, 28, 28]`` itself.

Normalisation is ``GroupNorm`` (4 channels per group), not ``BatchNorm``: every example is
normalised on its own, so the function trained is exactly the one attributed (no switch to
running statistics in eval mode, no example interacting with its batch), and the
per-example gradients taken under ``torch.func.vmap`` + ``functional_call`` need no
buffers. The convolutions have no bias (the norm's shift takes its place); K-FAC and
EK-FAC factor the convolutions and the head and treat the norms' scales and shifts as
diagonal fallback parameters.

Recipe: SGD (lr 0.005, momentum 0.9, batch 64, 20 epochs, seeded; lr 0.01 and 0.02 ended
1–6 points lower and noisier across seeds). Measured on one thread (CPU time ≈ wall time):
the main model trains in 22 s to a test accuracy of 0.883 (1000 test images), a model on half
the training set in 13.5 s, so 100 ground-truth models take about 23 min of one core.

Default methods: Grad-Dot, Grad-Cos, TRAK, influence functions with EK-FAC, RPS (on the
head) and TracInCP over 5 epoch checkpoints of the main run; each composes on the CNN and
gives finite scores. The ``dropout`` ensemble does not apply (the model has no dropout).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attrkit_bench.data.fashion_mnist import CLASSES, load_fashion_mnist
from attrkit_bench.settings.classifier import ClassifierConfig, ClassifierSetting
from attrkit_bench.training.sgd import SGDRecipe

__all__ = ["CHANNELS_PER_GROUP", "DECLARATION", "FULL", "QUICK", "SETTING", "ResNet9Small", "Residual", "conv_block",
           "make_model", "prepare"]

#: Channels normalised together by each ``GroupNorm`` group.
CHANNELS_PER_GROUP = 4
#: The full benchmark.
FULL = ClassifierConfig(recipe=SGDRecipe(lr=0.005, epochs=20))
#: Same code path, every size shrunk: for tests and smoke runs.
QUICK = ClassifierConfig(n_train=600, n_test=100, n_targets=50, n_models=8, recipe=SGDRecipe(lr=0.005, epochs=10))


def conv_block(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3×3 convolution (padding 1, no bias), ``GroupNorm``, ReLU, then a 2×2 max-pool if ``pool``.

    ``Tensor[b, c_in, h, w] -> Tensor[b, c_out, h, w]`` (``[b, c_out, h // 2, w // 2]`` with ``pool``).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(max(1, c_out // CHANNELS_PER_GROUP), c_out),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``x + block(block(x))``: ResNet-9's residual block of two conv blocks at ``channels``.

    ``Tensor[b, channels, h, w] -> Tensor[b, channels, h, w]``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_block(channels, channels), conv_block(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The input plus the body's output, same shape."""
        return x + self.body(x)


class ResNet9Small(nn.Module):
    """ResNet-9 scaled down: prep, two (conv, pool, residual) stages, global max-pool, linear.

    Channels ``width -> 2·width -> 4·width``; resolution ``side -> side/2 -> side/4``.

    Args:
        side: images are ``side × side`` single-channel (28 for Fashion-MNIST); at least 4.
        n_classes: number of output logits.
        width: channels of the prep conv (8: 29,506 parameters with 10 classes).
    """

    def __init__(self, side: int, n_classes: int, width: int = 8):
        super().__init__()
        self.side = side
        self.prep = conv_block(1, width)
        self.layer1 = nn.Sequential(conv_block(width, 2 * width, pool=True), Residual(2 * width))
        self.layer2 = nn.Sequential(conv_block(2 * width, 4 * width, pool=True), Residual(4 * width))
        self.head = nn.Linear(4 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, side * side]`` flat pixels (row-major) -> ``Tensor[b, n_classes]`` logits."""
        h = self.layer2(self.layer1(self.prep(x.reshape(x.shape[0], 1, self.side, self.side))))
        return self.head(torch.amax(h, dim=(2, 3)))


def make_model(n_features: int, n_classes: int) -> ResNet9Small:
    """The untrained CNN for flat square images of ``n_features`` pixels (784 = 28×28).

    A module-level function, so it pickles (ground-truth retraining may run in workers).

    Raises:
        ValueError: ``n_features`` is not the square of an integer >= 4.
    """
    side = math.isqrt(n_features)
    if side * side != n_features or side < 4:
        raise ValueError(
            f"fmnist-cnn needs flat square images: n_features must be side * side with side >= 4, got {n_features}"
        )
    return ResNet9Small(side, n_classes)


DECLARATION = ClassifierSetting(
    name="fmnist-cnn",
    make_model=make_model,
    full=FULL,
    quick=QUICK,
    description="ResNet-9-style CNN (GroupNorm, 2 residual blocks) on Fashion-MNIST (Debian package files), LDS",
    size=(
        "4000 train / 500 targets, CNN = 29,506 params, test acc 0.883; main model 22 s, "
        "each retrained model on a half 13.5 s (1 thread), ~23 min of one core for 100"
    ),
    default_methods=(
        "grad-dot",
        "grad-cos",
        "trak",
        '{"method": "if", "solver": {"name": "ekfac"}}',
        "rps",
        '{"method": "tracin", "members": "trajectory:5"}',
    ),
    load=load_fashion_mnist,
    source="Fashion-MNIST (Debian package dataset-fashion-mnist)",
    class_names=CLASSES,
)
#: ``prepare(cache_dir, config=FULL, data=None) -> Problem`` (see :meth:`ClassifierSetting.prepare`).
prepare = DECLARATION.prepare
SETTING = DECLARATION.setting()
