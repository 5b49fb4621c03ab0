"""LDS ground truth: models retrained on random subsets, each cached in its own file."""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from attrkit.progress import progress
from attrkit_bench.cache import load_or_create

__all__ = ["LDSGroundTruth", "lds_ground_truth", "subset_seed"]

#: ``retrain(indices, seed) -> Tensor[n_targets]``: train on ``indices`` (``LongTensor``,
#: sorted) with ``seed`` and return the target values (loss-like) of the resulting model.
Retrain = Callable[[torch.Tensor, int], torch.Tensor]


@attrs.frozen(kw_only=True)
class LDSGroundTruth:
    """What the LDS metric needs, and what making it cost.

    Attributes:
        subsets: ``BoolTensor[n_models, n_train]``, the training subset of each model.
        values: ``Tensor[n_models, n_targets]``, each model's target values (loss-like).
        seconds: wall seconds spent retraining all models, summed over the runs that
            made them (cached files keep their own time).
        created: how many models this call retrained (the rest came from the cache).
    """

    subsets: torch.Tensor = attrs.field(repr=False)
    values: torch.Tensor = attrs.field(repr=False)
    seconds: float
    created: int

    def as_mapping(self) -> dict[str, torch.Tensor]:
        """``{"subsets", "values"}``, the ground truth the ``lds`` metric reads."""
        return {"subsets": self.subsets, "values": self.values}


def subset_seed(seed: int, model: int) -> int:
    """A 63-bit seed for retrained model ``model``, derived from the setting's ``seed``."""
    return int.from_bytes(hashlib.sha256(f"lds/{seed}/{model}".encode()).digest()[:8], "big") >> 1


def lds_ground_truth(
    retrain: Retrain,
    *,
    n_train: int,
    subset_size: int,
    n_models: int,
    seed: int,
    cache_dir: Path,
    prefix: str,
) -> LDSGroundTruth:
    """Retrain ``n_models`` models on seeded random subsets, reusing cached ones.

    Model ``s`` draws ``subset_size`` of the ``n_train`` examples with a generator seeded
    by ``subset_seed(seed, s)`` and is trained with that seed, so it depends only on
    ``s`` and the recipe: raising ``n_models`` keeps the models already made. Each is
    saved atomically to ``{cache_dir}/{prefix}-{s:04d}.pt``; an interrupted run resumes
    where it stopped. ``prefix`` must identify the recipe (e.g. hold its cache key).

    Args:
        retrain: trains one model and returns its target values.
        n_train: size of the full training set.
        subset_size: examples per retrained model.
        n_models: number of retrained models.
        seed: the setting's seed.
        cache_dir: folder of the cache files.
        prefix: file name prefix.

    Returns:
        The stacked subsets and values.
    """

    def make(model: int) -> dict[str, Any]:
        model_seed = subset_seed(seed, model)
        generator = torch.Generator().manual_seed(model_seed)
        indices = torch.randperm(n_train, generator=generator)[:subset_size].sort().values
        start = time.perf_counter()
        values = retrain(indices, model_seed)
        subset = torch.zeros(n_train, dtype=torch.bool)
        subset[indices] = True
        return {"subset": subset, "values": values, "seconds": time.perf_counter() - start}

    subsets, values, seconds, created = [], [], 0.0, 0
    for model in progress(range(n_models), desc=f"LDS ground truth ({n_models} models)", total=n_models):
        artifact, made = load_or_create(cache_dir / f"{prefix}-{model:04d}.pt", functools.partial(make, model))
        subsets.append(artifact["subset"])
        values.append(artifact["values"])
        seconds += float(artifact["seconds"])
        created += made
    return LDSGroundTruth(subsets=torch.stack(subsets), values=torch.stack(values), seconds=seconds, created=created)
