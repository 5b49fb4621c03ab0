"""Seeded, deterministic minibatch SGD for the benchmark models."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import torch

from attrkit_bench.cache import load_or_create
from attrkit_bench.types import LossFn

__all__ = [
    "SGDRecipe", "accuracy", "cached_trajectory", "checkpoint_epochs", "epoch_order", "one_thread", "per_example_loss",
    "retrain_targets", "seeded_model", "sgd_epochs", "train_model", "trajectory_states",
]


@attrs.frozen(kw_only=True)
class SGDRecipe:
    """How a benchmark model is trained: SGD with momentum on the mean per-example loss.

    Attributes:
        lr: learning rate.
        momentum: SGD momentum.
        batch_size: examples per step (the last batch of an epoch may be smaller).
        epochs: passes over the training data, each in a fresh seeded order.
    """

    lr: float = attrs.field(default=0.01, validator=attrs.validators.gt(0))
    momentum: float = attrs.field(default=0.9, validator=[attrs.validators.ge(0), attrs.validators.lt(1)])
    batch_size: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    epochs: int = attrs.field(default=20, validator=attrs.validators.ge(1))


def seeded_model(make_model: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """``make_model()`` under ``torch.manual_seed(seed)`` inside :func:`torch.random.fork_rng`
    (the caller's global RNG is untouched): the same seed always gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_model()


def epoch_order(n: int, generator: torch.Generator, keep: torch.Tensor | None) -> torch.Tensor:
    """``LongTensor``: one epoch's seeded permutation of all ``n`` examples, without those
    ``keep`` (``BoolTensor[n]``) drops; the others keep their relative order, so leaving one
    example out perturbs a training run as little as possible."""
    order = torch.randperm(n, generator=generator)
    return order if keep is None else order[keep[order]]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one intra-op thread (see :func:`train_model` for why)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_model(
    make_model: Callable[[], torch.nn.Module],
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: SGDRecipe,
    seed: int,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    keep: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Train a fresh model; the same arguments always give the same weights.

    ``seed`` fixes both the initialisation (``make_model`` runs under
    ``torch.manual_seed(seed)`` inside :func:`torch.random.fork_rng`, so the caller's
    global RNG is untouched) and the shuffling (see :func:`sgd_epochs`).

    Args:
        make_model: builds the untrained model.
        loss_fn: ``loss_fn(model, (x, y)) -> Tensor[b]`` per-example loss; its mean is minimised.
        x: ``Tensor[n, ...]`` inputs.
        y: ``Tensor[n]`` labels.
        recipe: the optimiser settings.
        seed: fixes initialisation and batch order.
        on_epoch: called as ``on_epoch(epoch, model)`` after each epoch (1-based), e.g.
            to keep checkpoints.
        keep: ``BoolTensor[n]``, train only on these examples (see :func:`sgd_epochs`).

    Returns:
        The trained model, in eval mode.
    """
    return sgd_epochs(seeded_model(make_model, seed), loss_fn, x, y, recipe, seed, on_epoch, keep)


def sgd_epochs(
    model: torch.nn.Module,
    loss_fn: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: SGDRecipe,
    seed: int,
    on_epoch: Callable[[int, torch.nn.Module], None] | None = None,
    keep: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Run ``recipe.epochs`` epochs of SGD on the parameters of ``model`` that require grad.

    Batches follow a ``torch.Generator`` seeded with ``seed``. Training runs on one
    intra-op thread: for benchmark-sized models, synchronising threads costs more than it
    saves (several times slower on a busy machine), and the weights do not depend on the
    machine's core count.

    ``keep`` (``BoolTensor[n]``) removes examples from every epoch's order without
    changing the order of the rest: the seeded permutation of all ``n`` examples is drawn
    and the removed ones are dropped from it. Leaving one example out thus perturbs the
    training run as little as possible (the leave-one-out ground truth relies on it), and
    ``keep`` all ``True`` is the same run as no ``keep``.

    Returns:
        ``model``, trained in place, in eval mode.
    """
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=recipe.lr,
                                momentum=recipe.momentum)
    model.train()
    with one_thread():
        for epoch in range(1, recipe.epochs + 1):
            for batch in epoch_order(x.shape[0], generator, keep).split(recipe.batch_size):
                optimizer.zero_grad(set_to_none=True)
                loss_fn(model, (x[batch], y[batch])).mean().backward()
                optimizer.step()
            if on_epoch is not None:
                model.eval()
                on_epoch(epoch, model)
                model.train()
    return model.eval()


@torch.no_grad()
def per_example_loss(model: torch.nn.Module, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``Tensor[n]``: ``loss_fn`` of ``model`` on each example (no gradients; one thread)."""
    with one_thread():
        return loss_fn(model, (x, y)).detach()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of examples whose arg-max logit is the label, in [0, 1] (one thread)."""
    with one_thread():
        return float((model(x).argmax(dim=1) == y).double().mean())


def checkpoint_epochs(epochs: int, k: int) -> list[int]:
    """``k`` evenly spaced epochs of ``1..epochs`` ending at the last (fewer if ``k > epochs``)."""
    return sorted({round(epochs * (j + 1) / k) for j in range(k)})


def trajectory_states(run: Callable[[Callable[[int, torch.nn.Module], None]], object], epochs: int,
                      k: int) -> list[dict[str, torch.Tensor]]:
    """The state dicts at :func:`checkpoint_epochs` of the training run ``run(on_epoch)``.

    ``run`` trains a model of ``epochs`` epochs, calling ``on_epoch(epoch, model)`` after
    each (as :func:`train_model` does); the last state is the run's final model (TracInCP's
    checkpoints of a training run).
    """
    keep = checkpoint_epochs(epochs, k)
    states: list[dict[str, torch.Tensor]] = []

    def save(epoch: int, model: torch.nn.Module) -> None:
        if epoch in keep:
            states.append({n: t.detach().clone() for n, t in model.state_dict().items()})

    run(save)
    return states


def cached_trajectory(path: Path, run: Callable[[Callable[[int, torch.nn.Module], None]], object], epochs: int,
                      k: int) -> list[dict[str, torch.Tensor]]:
    """:func:`trajectory_states` of ``run``, cached in ``path`` (:func:`~attrkit_bench.cache.load_or_create`)."""
    return load_or_create(path, lambda: {"states": trajectory_states(run, epochs, k)})[0]["states"]


def retrain_targets(
    keep: torch.Tensor,
    seed: int,
    *,
    make_model: Callable[[], torch.nn.Module],
    loss_fn: LossFn,
    recipe: SGDRecipe,
    x: torch.Tensor,
    y: torch.Tensor,
    x_targets: torch.Tensor,
    y_targets: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Train on the examples ``keep`` selects with ``seed``; the targets' loss and the weights.

    A ground-truth ``retrain(keep, seed)`` once the keyword arguments are bound with
    :func:`functools.partial` (picklable when ``make_model`` and ``loss_fn`` are
    module-level functions or partials of them).

    Returns:
        ``(Tensor[n_targets] per-target loss, state_dict)``.
    """
    model = train_model(make_model, loss_fn, x, y, recipe, seed, keep=keep)
    return per_example_loss(model, loss_fn, x_targets, y_targets), model.state_dict()
