"""Batches and loaders: size, device moves and the fixed-order check.

A batch is a tensor, a tuple/list of tensors, or a dict of tensors (Hugging Face
style); every tensor leaf shares the leading (example) dimension.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.data import DataLoader, RandomSampler, SubsetRandomSampler, WeightedRandomSampler

from attrkit.errors import DataLoaderError

__all__ = ["batch_size", "check_fixed_order", "to_device"]

_RANDOM_SAMPLERS = (RandomSampler, SubsetRandomSampler, WeightedRandomSampler)


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
    """Refuse a loader that yields examples in a random order.

    Attribution scores are indexed by position in the loader, so the order must be
    the same on every pass.

    Raises:
        DataLoaderError: the loader shuffles (``shuffle=True`` or a random sampler).
    """
    if not isinstance(loader, DataLoader):
        return
    samplers = [loader.sampler, getattr(loader.batch_sampler, "sampler", None)]
    for sampler in samplers:
        if isinstance(sampler, _RANDOM_SAMPLERS) or getattr(sampler, "shuffle", False):
            raise DataLoaderError(
                f"the {role} loader shuffles ({type(sampler).__name__}); scores are indexed by "
                "position, so build it with shuffle=False (a fixed order)"
            )
