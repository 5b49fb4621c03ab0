"""Groupers: ``singleton``, ``given``, ``random``, ``kmeans``, ``repr-kmeans`` and ``grad-kmeans``.

A grouper partitions the training set for group attribution (GGDA, Ley et al., 2024):
``assign(context) -> LongTensor[n_train]`` (CPU) with every index ``0..G-1`` used, groups
numbered in order of first appearance in the loader (group 0 holds example 0). All
read only the training batches and the member's weights, never ``context.features``,
so they also serve the group-gradient path, where groups are assigned before any
training gradient is computed.

The sized groupers take exactly one of ``group_size`` (``G = ceil(n / group_size)``
groups: exact sizes for ``random``, sizes of that size on average for the k-means
ones) or ``n_groups``; asking for more groups than training examples is refused.
The k-means groupers whiten their features (per-feature standardisation) and run
:func:`attrkit.functional.kmeans.kmeans`; duplicated feature rows always share a
group, so k-means may return fewer groups than asked for when fewer rows are distinct.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import (
    ArgumentError,
    FitContext,
    Grouper,
    SpecError,
    batch_size,
    float_field,
    hookimpl,
    int_field,
    not_bool,
    positive_int,
    seed_field,
    to_device,
)
from attrkit.functional.kmeans import kmeans
from attrkit.functional.last_layer import last_layer_features, resolve_linear_layer


def _first_appearance(ids: torch.Tensor) -> torch.Tensor:
    """``ids`` (``LongTensor[n]``) renumbered ``0..G-1`` in order of first appearance."""
    _, inverse = torch.unique(ids, return_inverse=True)
    n = ids.numel()
    first = torch.full((int(inverse.max()) + 1 if n else 0,), n, dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(n), reduce="amin")
    rank = torch.empty_like(first)
    rank[torch.argsort(first)] = torch.arange(first.numel())
    return rank[inverse]


def _element(batch: Any, key: int | str, who: str) -> torch.Tensor:
    """Entry ``key`` of a tuple/list or dict batch (a bare tensor batch is entry 0), checked."""
    if isinstance(batch, Mapping):
        if key not in batch:
            raise ArgumentError(f"grouper {who!r}: key={key!r} is not in the batch; its keys are {sorted(map(str, batch))}")
        value = batch[key]
    elif isinstance(batch, (tuple, list)):
        if not isinstance(key, int) or not 0 <= key < len(batch):
            raise ArgumentError(f"grouper {who!r}: key={key!r} must be an index 0..{len(batch) - 1} of the batch tuple")
        value = batch[key]
    elif isinstance(batch, torch.Tensor) and key == 0:
        value = batch
    else:
        raise ArgumentError(f"grouper {who!r}: key={key!r} cannot index a batch of type {type(batch).__name__}")
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch_size(batch):
        raise ArgumentError(f"grouper {who!r}: batch entry {key!r} must be a tensor with one row per example")
    return value.reshape(value.shape[0], -1)


def _key_field(default: int | str) -> Any:
    return attrs.field(
        default=default,
        validator=[not_bool("an int or a str"), attrs.validators.instance_of((int, str))],
        metadata={"examples": (default,)},
    )


def _optional_count(examples: tuple[int | None, ...]) -> Any:
    return int_field(None, ge=1, optional=True, examples=examples)


@attrs.frozen(kw_only=True)
class SingletonConfig:
    """``singleton`` has no parameters."""


class _Grouper(Grouper):
    """What every grouper here shares: kind, capabilities and holding its config."""




class SingletonGrouper(_Grouper):
    """Group ``i`` is training example ``i``: pointwise attribution."""

    name: ClassVar[str] = "singleton"
    Config: ClassVar[type] = SingletonConfig
    singletons: ClassVar[bool] = True

    def assign(self, context: FitContext) -> torch.Tensor:
        """``arange(n_train)``."""
        return torch.arange(context.n_train)


@attrs.frozen(kw_only=True)
class GivenConfig:
    """Config of ``given``.

    Attributes:
        key: the batch entry holding each example's group label: an index into a
            tuple/list batch (default 1, the class label of ``(x, y)`` batches) or a key
            of a dict batch.
    """

    key: int | str = _key_field(1)


class GivenGrouper(_Grouper):
    """Groups given by a label in the training batches: one group per distinct value.

    Values may be any tensor entry with one row per example (a row is one value).

    Example:
        >>> attrkit.compose({"method": "grad-dot", "grouper": {"name": "given", "key": 1}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "given"
    Config: ClassVar[type] = GivenConfig

    def assign(self, context: FitContext) -> torch.Tensor:
        """``LongTensor[n_train]``: distinct label values numbered in order of first appearance."""
        labels = torch.cat([_element(batch, self.config.key, self.name).cpu() for batch in context.train])
        return _first_appearance(torch.unique(labels, dim=0, return_inverse=True)[1])


@attrs.frozen(kw_only=True)
class SizedConfig:
    """Config of ``random``; base of the k-means groupers' configs.

    Attributes:
        group_size: examples per group (``ceil(n_train / group_size)`` groups).
        n_groups: the number of groups. Give exactly one of the two.
        seed: seed of the random draw.
    """

    group_size: int | None = _optional_count((None, 5))
    n_groups: int | None = _optional_count((3, 2, None))
    seed: int = seed_field()

    def __attrs_post_init__(self) -> None:
        if (self.group_size is None) == (self.n_groups is None):
            given = "both" if self.group_size is not None else "neither"
            raise ArgumentError(f"set exactly one of group_size and n_groups (got {given})")

    def count(self, n_train: int) -> int:
        """``G``, the number of groups to form from ``n_train`` examples.

        Raises:
            SpecError: more groups than examples.
        """
        groups = self.n_groups if self.n_groups is not None else math.ceil(n_train / self.group_size)
        if groups > n_train:
            raise SpecError([f"grouper.n_groups: {groups} groups asked for from {n_train} training examples; use at most {n_train}"])
        return groups


class RandomGrouper(_Grouper):
    """A seeded, balanced random partition: group sizes differ by at most one.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "grouper": {"name": "random", "group_size": 64}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "random"
    Config: ClassVar[type] = SizedConfig

    def assign(self, context: FitContext) -> torch.Tensor:
        """``LongTensor[n_train]``: a random permutation dealt round-robin into ``G`` groups."""
        n = context.n_train
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))
        groups = torch.empty(n, dtype=torch.long)
        groups[order] = torch.arange(n) % self.config.count(n)
        return _first_appearance(groups)


@attrs.frozen(kw_only=True)
class KMeansConfig(SizedConfig):
    """Config of ``kmeans``: the sizing and seed of ``random``, plus

    Attributes:
        key: the batch entry holding the inputs (index of a tuple/list batch, key of a
            dict batch; default 0); each example's entry is flattened.
        max_iter: the most Lloyd iterations.
        tol: convergence threshold (relative centre movement, see :func:`~attrkit.functional.kmeans.kmeans`).
    """

    key: int | str = _key_field(0)
    max_iter: int = positive_int(100, (20,))
    tol: float = float_field(1e-4, ge=0.0)


class KMeansGrouper(_Grouper):
    """k-means on the raw inputs (flattened, whitened by per-feature standardisation).

    Example:
        >>> attrkit.compose({"method": "grad-dot", "grouper": {"name": "kmeans", "n_groups": 100}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "kmeans"
    Config: ClassVar[type] = KMeansConfig

    def features(self, context: FitContext) -> torch.Tensor:
        """``Tensor[n_train, d]``: the clustered features (here the flattened inputs)."""
        return torch.cat([_element(to_device(b, context.task.device), self.config.key, self.name) for b in context.train])

    def assign(self, context: FitContext) -> torch.Tensor:
        """``LongTensor[n_train]``: k-means clusters of :meth:`features`, whitened."""
        x = self.features(context)
        config = self.config
        result = kmeans(x, config.count(x.shape[0]), seed=config.seed, max_iter=config.max_iter, tol=config.tol)
        return _first_appearance(result.labels.cpu())


@attrs.frozen(kw_only=True)
class LastLayerKMeansConfig(SizedConfig):
    """Config of ``repr-kmeans`` and ``grad-kmeans``: the sizing and seed of ``random``, plus

    Attributes:
        layer: module name of the model's output ``nn.Linear``; default the last one.
        max_iter: the most Lloyd iterations.
        tol: convergence threshold (relative centre movement).
    """

    layer: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional([attrs.validators.instance_of(str), attrs.validators.min_len(1)]),
        metadata={"examples": (None,)},
    )
    max_iter: int = positive_int(100, (20,))
    tol: float = float_field(1e-4, ge=0.0)


class RepresentationKMeansGrouper(KMeansGrouper):
    """k-means on penultimate representations: the input of the last ``nn.Linear``, at
    the member's weights in eval mode, whitened by per-feature standardisation.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "grouper": {"name": "repr-kmeans", "group_size": 64}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "repr-kmeans"
    Config: ClassVar[type] = LastLayerKMeansConfig
    #: Which output of :func:`~attrkit.functional.last_layer.last_layer_features` is clustered.
    which: ClassVar[int] = 0

    def features(self, context: FitContext) -> torch.Tensor:
        """``Tensor[n_train, d]`` penultimate features (``Tensor[n_train, C]`` logit gradients for ``grad-kmeans``)."""
        task = context.task
        layer = resolve_linear_layer(task.model, self.config.layer)
        state = context.member.state
        return torch.cat(
            [last_layer_features(task.model, task.loss_fn, state, to_device(b, task.device), layer)[self.which] for b in context.train]
        )


class GradientKMeansGrouper(RepresentationKMeansGrouper):
    """Grad-K-Means (GGDA's best grouping): k-means on each example's gradient of the
    training loss w.r.t. the output ``nn.Linear``'s pre-activations (the logits), at the
    member's weights in eval mode, whitened by per-feature standardisation.

    Example:
        >>> attrkit.compose({"method": "trak", "gradients": "group", "grouper": {"name": "grad-kmeans", "group_size": 64}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "grad-kmeans"
    which: ClassVar[int] = 1


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [SingletonGrouper, GivenGrouper, RandomGrouper, KMeansGrouper, RepresentationKMeansGrouper, GradientKMeansGrouper]
