"""What the sequence settings share: document split, windows, GPT training, caching, LDS.

A setting is a :class:`SequenceSetting`: a name, a corpus loader and two recipes (full and
quick). Its :meth:`~SequenceSetting.prepare` holds out a seeded ``held_out_fraction`` of
the corpus's documents (plays, chorales), cuts every document into non-overlapping windows
of ``block + 1`` tokens (a window never spans two documents), and draws ``n_train``
training windows from the other documents and ``n_targets`` target windows from the
held-out ones, both seeded. An example is a window: inputs its first ``block`` tokens,
labels its last ``block``. A :class:`~attrkit_bench.models.gpt.GPT` is trained with seeded AdamW
(:func:`~attrkit_bench.training.adamw.train_adamw`) on the mean next-token cross-entropy
:func:`~attrkit_bench.models.gpt.sequence_loss`, which is also the attributed target: the loss of
held-out continuations. The LDS ground truth retrains ``n_models`` models on seeded random
subsets (the first half are ensemble members, the second half score LDS), in parallel
processes (:mod:`attrkit_bench.truth.retraining`); the main model and every retrained one are
cached in their own file, keyed by the recipe and the corpus's tokens, so a rerun loads
them and an interrupted run resumes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from pathlib import Path

import attrs
import torch
from torch.utils.data import DataLoader, TensorDataset

from attrkit_bench.cache import cached_fit, recipe_key
from attrkit_bench.data.corpus import Corpus, split_windows, unigram_loss
from attrkit_bench.models.gpt import GPT, GPTConfig, sequence_loss
from attrkit_bench.problem import Declaration, Problem
from attrkit_bench.training.adamw import AdamWRecipe, train_adamw
from attrkit_bench.training.sgd import cached_trajectory, per_example_loss
from attrkit_bench.truth.lds import lds_ground_truth

__all__ = [
    "DEFAULT_METHODS", "LOADER_BATCH_SIZE", "SequenceConfig", "SequenceSetting", "decode_window", "fit_gpt",
    "retrain_losses",
]

#: Methods the sequence settings run by default: those that compose with an embedding + attention
#: model and a per-sequence loss. TRAK attributes the task's loss (its default, the classification
#: margin, needs ``(x, y)`` class labels) without the classification re-weighting; ``rps`` and
#: ``last-layer`` gradients do not apply (the head sees ``[b, T, d]``, not one vector per example).
DEFAULT_METHODS = (
    "grad-dot",
    "grad-cos",
    '{"method": "if", "solver": {"name": "ekfac"}}',
    '{"method": {"name": "trak", "target": "task", "reweight": false}, "projector": {"name": "gaussian", "dim": 1024}}',
    '{"method": "tracin", "members": "trajectory:3"}',
)
#: Windows per batch of the attribution loaders (never changes scores; bounds per-example gradient memory).
LOADER_BATCH_SIZE = 64


@attrs.frozen(kw_only=True)
class SequenceConfig:
    """A sequence setting's recipe; everything but ``n_models`` goes into the cache key.

    Attributes:
        n_train: training windows, drawn from the training documents.
        n_targets: target windows, drawn from the held-out documents.
        n_models: retrained models of the LDS protocol (model ``s`` does not depend on it):
            the first half are ensemble members, the second half score LDS.
        subset_fraction: fraction of the training windows each retrained model sees.
        held_out_fraction: fraction of the documents held out (at least one, and one kept).
        block: tokens of context per window (a window holds ``block + 1`` tokens).
        layers: transformer blocks.
        heads: attention heads.
        width: model width.
        recipe: AdamW settings, shared by the main and the retrained models.
        seed: fixes the split, the windows drawn, the main model and every retrained model.
    """

    n_train: int = attrs.field(default=4000, validator=attrs.validators.ge(2))
    n_targets: int = attrs.field(default=200, validator=attrs.validators.ge(1))
    n_models: int = attrs.field(default=100, validator=attrs.validators.ge(4))
    subset_fraction: float = attrs.field(default=0.5, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    held_out_fraction: float = attrs.field(default=0.15, validator=[attrs.validators.gt(0), attrs.validators.lt(1)])
    block: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    layers: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    heads: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    width: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    recipe: AdamWRecipe = attrs.field(factory=AdamWRecipe)
    seed: int = 0

    @property
    def subset_size(self) -> int:
        """Training windows per retrained model."""
        return round(self.subset_fraction * self.n_train)

    def gpt(self, vocab_size: int) -> GPTConfig:
        """The model's shape for a vocabulary of ``vocab_size`` tokens."""
        return GPTConfig(vocab_size=vocab_size, block=self.block, layers=self.layers, heads=self.heads,
                         width=self.width)


def fit_gpt(
    model: GPTConfig,
    recipe: AdamWRecipe,
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    keep: torch.Tensor | None = None,
) -> GPT:
    """A :class:`GPT` of shape ``model`` trained on inputs ``x`` and labels ``y`` (``LongTensor[n, block]``).

    See :func:`~attrkit_bench.training.adamw.train_adamw` for ``seed``, ``on_epoch`` and ``keep``.
    """
    return train_adamw(functools.partial(GPT, model), sequence_loss, x, y, recipe, seed, on_epoch, keep)


def retrain_losses(
    keep: torch.Tensor,
    seed: int,
    *,
    model: GPTConfig,
    recipe: AdamWRecipe,
    x: torch.Tensor,
    y: torch.Tensor,
    target_x: torch.Tensor,
    target_y: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Train on the windows ``keep`` (``BoolTensor[n_train]``) selects, with ``seed``.

    The ground truth's ``retrain(keep, seed)`` once the keyword arguments are bound with
    :func:`functools.partial`: picklable, so retraining jobs can run in worker processes.

    Returns:
        ``(Tensor[n_targets] the held-out windows' losses, state_dict)``.
    """
    trained = fit_gpt(model, recipe, x, y, seed, keep=keep)
    return per_example_loss(trained, sequence_loss, target_x, target_y), trained.state_dict()


@attrs.frozen(kw_only=True)
class SequenceSetting(Declaration):
    """A benchmark setting: a small GPT trained on windows of a tokenised corpus.

    Attributes:
        name: the setting's name (``"shakespeare-gpt"``); prefixes its cache files.
        load: ``load(cache_dir) -> Corpus``, the whole corpus (may cache its parse there).
        full: the full benchmark's recipe.
        quick: the same code path with every size shrunk (tests, smoke runs).
        description: one line for ``attrkit bench --list``.
        size: one line giving the full run's sizes and times.
        default_methods: method specs ``attrkit bench NAME`` runs by default.
        source: names the data in the report.
    """

    name: str
    load: Callable[[Path], Corpus] = attrs.field(repr=False)
    full: SequenceConfig
    quick: SequenceConfig
    description: str
    size: str
    default_methods: tuple[str, ...]
    source: str

    def prepare(self, cache_dir: Path, config: SequenceConfig | None = None, corpus: Corpus | None = None) -> Problem:
        """Train (or load) the model and make (or load) the LDS ground truth.

        Args:
            cache_dir: folder of the cached main model and retrained models (and of the
                corpus's parse, for loaders that cache one). File names hold a key of
                ``config`` (without ``n_models``) and of the corpus's tokens.
            config: the recipe; defaults to ``full``.
            corpus: the documents; defaults to ``load(cache_dir)`` (tests pass synthetic text).

        Returns:
            The problem: the trained model (eval mode), loaders over the ``n_train``
            training windows and the ``n_targets`` held-out windows as ``(inputs, labels)``
            batches of ``LongTensor[b, block]``, LDS ground truth of the second half of
            ``n_models`` models, and ``members`` (the first half, or the main run's epochs).

        Raises:
            ImportError: ``corpus`` is not given and the package holding the data is not installed.
            ValueError: the corpus is too small for ``config`` (see :func:`~attrkit_bench.data.corpus.split_windows`).
        """
        config = config or self.full
        source = self.source if corpus is None else "given"
        corpus = corpus if corpus is not None else self.load(cache_dir)
        train, targets, held_out = split_windows(corpus, block=config.block, n_train=config.n_train,
                                                 n_targets=config.n_targets,
                                                 held_out_fraction=config.held_out_fraction, seed=config.seed)
        x, y = train[:, :-1].contiguous(), train[:, 1:].contiguous()
        target_x, target_y = targets[:, :-1].contiguous(), targets[:, 1:].contiguous()
        recipe = attrs.asdict(config, filter=lambda a, _: a.name != "n_models")
        key = recipe_key({"setting": self.name, "config": recipe, "data": corpus.fingerprint()})
        shape = config.gpt(corpus.vocab_size)

        main, model_made = cached_fit(cache_dir / f"{self.name}-model-{key}.pt",
                                      lambda: fit_gpt(shape, config.recipe, x, y, config.seed))
        with torch.random.fork_rng(devices=[]):
            model = GPT(shape)
        model.load_state_dict(main["state_dict"])
        model.eval()

        retrain = functools.partial(retrain_losses, model=shape, recipe=config.recipe, x=x, y=y,
                                    target_x=target_x, target_y=target_y)
        truth = lds_ground_truth(retrain, n_train=config.n_train, subset_size=config.subset_size,
                                 n_models=config.n_models, seed=config.seed, cache_dir=cache_dir,
                                 prefix=f"{self.name}-lds-{key}")
        held_out_loss = float(per_example_loss(model, sequence_loss, target_x, target_y).mean())
        info = {
            "data": source,
            "documents": len(corpus.documents),
            "held_out_documents": held_out,
            "vocab_size": corpus.vocab_size,
            "n_train": config.n_train,
            "n_targets": config.n_targets,
            "block": config.block,
            **truth.facts(),
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "config": attrs.asdict(config),
            "cache_key": key,
            "cache_dir": str(cache_dir),
            "train_seconds": float(main["seconds"]),
            "model_from_cache": not model_made,
            "train_loss": float(per_example_loss(model, sequence_loss, x, y).mean()),
            "held_out_loss": held_out_loss,
            "held_out_perplexity": math.exp(held_out_loss),
            "unigram_loss": unigram_loss(y, target_y, corpus.vocab_size),
        }
        summary = (
            f"{self.name}: {config.n_train} train / {config.n_targets} held-out windows of {config.block} tokens, "
            f"{info['n_parameters']:,} params; held-out loss {held_out_loss:.3f} nats/token (perplexity "
            f"{info['held_out_perplexity']:.2f}; unigram {info['unigram_loss']:.3f}), trained in "
            f"{info['train_seconds']:.1f} s{' (cached)' if info['model_from_cache'] else ''}\n"
            f"{truth.summary('windows')}"
        )

        def members(kind: str, k: int) -> list[dict[str, torch.Tensor]]:
            return truth.members_of(kind, k, lambda: cached_trajectory(
                cache_dir / f"{self.name}-trajectory{k}-{key}.pt",
                lambda save: fit_gpt(shape, config.recipe, x, y, config.seed, on_epoch=save), config.recipe.epochs, k))

        return Problem(
            name=self.name,
            model=model,
            loss_fn=sequence_loss,
            train=DataLoader(TensorDataset(x, y), batch_size=LOADER_BATCH_SIZE, shuffle=False),
            targets=DataLoader(TensorDataset(target_x, target_y), batch_size=LOADER_BATCH_SIZE, shuffle=False),
            ground_truth=truth.as_mapping(),
            info=info,
            summary=summary,
            members=members,
            display={"kind": "text", "decode": functools.partial(decode_window, corpus)},
        )


def decode_window(corpus: Corpus, item: tuple[torch.Tensor, torch.Tensor]) -> str:
    """The text of one window ``(inputs[block], labels[block])``: its ``block + 1`` tokens decoded."""
    inputs, labels = item
    return corpus.decode(torch.cat([inputs, labels[-1:]]))

