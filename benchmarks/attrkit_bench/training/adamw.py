"""Seeded, deterministic minibatch AdamW with warm-up and cosine decay (the sequence settings).

The transformer counterpart of :mod:`attrkit_bench.training.sgd`'s SGD: same contract (a
fresh model from ``make_model`` under ``seed``, batches from a generator seeded with
``seed``, one intra-op thread, the same arguments give the same weights), with the
optimiser small transformers need to learn in a few epochs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import attrs
import torch

from attrkit_bench.training.sgd import epoch_order, one_thread, seeded_model
from attrkit_bench.types import LossFn

__all__ = ["AdamWRecipe", "learning_rate", "run_adamw", "train_adamw"]


@attrs.frozen(kw_only=True)
class AdamWRecipe:
    """How a sequence model is trained: AdamW on the mean per-example loss.

    The learning rate rises linearly from ``lr / warmup`` to ``lr`` over the first
    ``warmup`` steps, then follows a cosine down to ``final_lr_fraction * lr`` at the last step.

    Attributes:
        lr: peak learning rate.
        weight_decay: AdamW's decoupled weight decay (on every parameter).
        betas: AdamW's moment coefficients.
        batch_size: examples per step (the last batch of an epoch may be smaller).
        epochs: passes over the training data, each in a fresh seeded order.
        warmup: steps of linear warm-up.
        final_lr_fraction: the last step's learning rate as a fraction of ``lr``.
    """

    lr: float = attrs.field(default=3e-3, validator=attrs.validators.gt(0))
    weight_decay: float = attrs.field(default=0.01, validator=attrs.validators.ge(0))
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.99), converter=tuple)
    batch_size: int = attrs.field(default=32, validator=attrs.validators.ge(1))
    epochs: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    warmup: int = attrs.field(default=20, validator=attrs.validators.ge(0))
    final_lr_fraction: float = attrs.field(default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)])


def learning_rate(recipe: AdamWRecipe, step: int, total: int) -> float:
    """The learning rate of step ``step`` (0-based) of ``total``: warm-up, then cosine decay."""
    if step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    progress = (step - recipe.warmup) / max(1, total - recipe.warmup - 1)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return recipe.lr * (recipe.final_lr_fraction + (1 - recipe.final_lr_fraction) * cosine)


def train_adamw(
    make_model: Callable[[], torch.nn.Module],
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: AdamWRecipe,
    seed: int,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    keep: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Train a fresh model with AdamW; the same arguments always give the same weights.

    ``make_model`` runs under ``torch.manual_seed(seed)`` inside
    :func:`torch.random.fork_rng` (the caller's global RNG is untouched); batches follow a
    ``torch.Generator`` seeded with ``seed``; training runs on one intra-op thread (faster
    for benchmark-sized models on a shared machine, and independent of its core count).
    As in :func:`~attrkit_bench.training.sgd.sgd_epochs`, ``keep`` drops examples from each
    epoch's seeded permutation of all ``n`` without changing the order of the rest (the
    schedule's length follows the kept count).

    Args:
        make_model: builds the untrained model.
        loss_fn: ``loss_fn(model, (x, y)) -> Tensor[b]`` per-example loss; its mean is minimised.
        x: ``Tensor[n, ...]`` inputs.
        y: ``Tensor[n, ...]`` labels (next tokens for a language model).
        recipe: the optimiser settings.
        seed: fixes initialisation and batch order.
        on_epoch: called as ``on_epoch(epoch, model)`` after each epoch (1-based, model in
            eval mode), e.g. to keep checkpoints.
        keep: ``BoolTensor[n]``, train only on these examples; ``None``: all.

    Returns:
        The trained model, in eval mode.
    """
    n = x.shape[0] if keep is None else int(keep.sum())

    def epoch(model: torch.nn.Module, generator: torch.Generator) -> Iterator[torch.Tensor]:
        for batch in epoch_order(x.shape[0], generator, keep).split(recipe.batch_size):
            yield loss_fn(model, (x[batch], y[batch]))

    return run_adamw(make_model, recipe, n, seed, epoch, on_epoch)


def run_adamw(
    make_model: Callable[[], torch.nn.Module],
    recipe: AdamWRecipe,
    n: int,
    seed: int,
    epoch: Callable[[torch.nn.Module, torch.Generator], Iterator[torch.Tensor]],
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
) -> torch.nn.Module:
    """The loop of :func:`train_adamw`, for any batching: a seeded fresh model, AdamW on its
    trainable parameters with :func:`learning_rate`'s schedule, on one intra-op thread.

    Args:
        make_model: builds the untrained model (under ``torch.manual_seed(seed)``).
        recipe: the optimiser settings.
        n: examples per epoch (the schedule has ``epochs * ceil(n / batch_size)`` steps).
        seed: fixes initialisation and the ``generator`` handed to ``epoch``.
        epoch: ``epoch(model, generator)`` yields each batch's per-example loss ``Tensor[b]``
            of one epoch, in its order; their means are minimised, one step each.
        on_epoch: called as ``on_epoch(epoch, model)`` after each epoch (1-based, eval mode).

    Returns:
        The trained model, in eval mode.
    """
    model = seeded_model(make_model, seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe.lr,
                                  betas=recipe.betas, weight_decay=recipe.weight_decay)
    total = recipe.epochs * math.ceil(n / recipe.batch_size)
    step = 0
    model.train()
    with one_thread():
        for number in range(1, recipe.epochs + 1):
            for losses in epoch(model, generator):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(recipe, step, total)
                optimizer.zero_grad(set_to_none=True)
                losses.mean().backward()
                optimizer.step()
                step += 1
            if on_epoch is not None:
                model.eval()
                on_epoch(number, model)
                model.train()
    return model.eval()
