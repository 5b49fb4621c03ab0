"""Batches and loaders: size, device moves and the fixed-order check.

A batch is a tensor, a tuple/list of tensors, or a dict of tensors (Hugging Face
style); every tensor leaf shares the leading (example) dimension.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)

from attrkit.errors import DataLoaderError

__all__ = ["batch_size", "check_fixed_order", "check_is_loader", "to_device"]

_RANDOM_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)
_KNOWN_FIXED = (SequentialSampler,)


def batch_size(batch: Any) -> int:
    """Number of examples in ``batch`` (the shared leading dimension of its tensors).

    Raises:
        DataLoaderError: no tensor in the batch, a non-tensor leaf, or leaves of
            different lengths.
    """
    leaves, _ = tree_flatten(batch)
    if not leaves:
        raise DataLoaderError("empty batch: expected a tensor, a tuple/list or a dict of tensors")
    bad = [type(x).__name__ for x in leaves if not isinstance(x, torch.Tensor)]
    if bad:
        raise DataLoaderError(
            f"batch leaves must be tensors, got {', '.join(sorted(set(bad)))}; "
            "convert them in the dataset or collate_fn (e.g. tokenise text before batching)"
        )
    sizes = {x.shape[0] if x.dim() else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise DataLoaderError(
            f"every tensor in a batch must share its first (example) dimension, got sizes {sorted(map(str, sizes))}"
        )
    return int(sizes.pop())


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor moved to ``device`` (structure kept)."""
    return tree_map(lambda x: x.to(device) if isinstance(x, torch.Tensor) else x, batch)


def check_fixed_order(loader: Iterable[Any], role: str = "train") -> None:
    """Refuse a loader that would lose examples or yield them in a random order.

    Attribution scores are indexed by position in the loader, so every example must
    come, in the same order on every pass. Checks what can be seen without loading data:
    the loader's type, ``shuffle``/random samplers, ``drop_last``, and any other sampler
    (its indices are drawn twice and compared). :class:`attrkit.loaders.CheckedLoader`
    checks the batches themselves.

    Raises:
        DataLoaderError: not a loader of batches (a ``Dataset``, a tensor, a dict, ``None``),
            a shuffling sampler, ``drop_last=True`` dropping examples, or a sampler whose
            order changes between passes.
    """
    check_is_loader(loader, role)
    if not isinstance(loader, DataLoader):
        return
    samplers = [loader.sampler, getattr(loader.batch_sampler, "sampler", None)]
    for sampler in samplers:
        if isinstance(sampler, _RANDOM_SAMPLERS) or getattr(sampler, "shuffle", False):
            raise DataLoaderError(
                f"the {role} loader shuffles ({type(sampler).__name__}); scores are indexed by "
                "position, so build it with shuffle=False (a fixed order)"
            )
    _check_drop_last(loader, role)
    order = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    if type(order) is BatchSampler:  # the standard batching of a sampler: its sampler decides the order
        order = order.sampler
    if not isinstance(order, _KNOWN_FIXED) and not _same_twice(order):
        raise DataLoaderError(
            f"the {role} loader's sampler ({type(order).__name__}) yields another order on every pass; scores are "
            "indexed by position, so use a sampler with a fixed order (e.g. shuffle=False, or a fixed list of "
            "indices: torch.utils.data.Subset)"
        )


def check_is_loader(loader: Any, role: str) -> None:
    """Refuse objects that are not an iterable of batches, naming what to pass instead.

    Raises:
        DataLoaderError: ``None``, a ``Dataset`` (not a loader), a tensor, a dict, a string
            or a non-iterable.
    """
    fix = f"pass a DataLoader(dataset, batch_size=..., shuffle=False) or a list of batches as the {role} data"
    if loader is None:
        raise DataLoaderError(f"the {role} data is None; {fix}")
    if isinstance(loader, Dataset) and not isinstance(loader, (IterableDataset, list, tuple)):
        raise DataLoaderError(f"the {role} data is a {type(loader).__name__} (a Dataset of single examples), not a "
                              f"loader of batches; {fix}")
    if isinstance(loader, (torch.Tensor, Mapping, str, bytes)):
        raise DataLoaderError(f"the {role} data is a {type(loader).__name__}, not an iterable of batches; {fix}")
    if not isinstance(loader, Iterable):
        raise DataLoaderError(f"the {role} data is a {type(loader).__name__}, which cannot be iterated; {fix}")


def _check_drop_last(loader: DataLoader, role: str) -> None:
    """Refuse ``drop_last=True`` when it drops examples (or when that cannot be known)."""
    batch_sampler = loader.batch_sampler
    if not getattr(batch_sampler, "drop_last", False) and not (batch_sampler is None and loader.drop_last):
        return
    try:
        n, b = len(loader.sampler), (batch_sampler.batch_size if batch_sampler is not None else loader.batch_size)
    except TypeError:
        n = b = None
    if n is not None and b and n % b == 0:
        return
    lost = f"the last {n % b} of {n} examples" if n is not None and b else "the last incomplete batch"
    raise DataLoaderError(
        f"the {role} loader has drop_last=True, which drops {lost}: their "
        f"{'columns' if role == 'train' else 'rows'} would be missing from the scores; build it with drop_last=False"
    )


def _same_twice(order: Iterable[Any], limit: int = 100_000) -> bool:
    """Whether two passes over a sampler give the same first ``limit`` items."""
    try:
        first, second = iter(order), iter(order)
    except TypeError:
        return True
    for a, b in itertools.islice(zip(first, second), limit):
        if a != b:
            return False
    return True
