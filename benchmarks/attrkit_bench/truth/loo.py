"""Leave-one-out ground truth: the model retrained without each of a sample of training points.

Made by the retraining engine (:func:`~attrkit_bench.truth.retraining.run_jobs`), like the
LDS ground truth (:mod:`attrkit_bench.truth.lds`): one cached file per retraining,
resumable, deterministic.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import attrs
import torch

from attrkit_bench.truth.retraining import Retrain, derived_seed, run_jobs

__all__ = ["LOOGroundTruth", "loo_ground_truth"]


@attrs.frozen(kw_only=True)
class LOOGroundTruth:
    """Leave-one-out effects on a fixed sample of training points, averaged over seeds.

    Attributes:
        indices: ``LongTensor[m]``, the removed training points (sorted).
        values: ``Tensor[m, n_targets]``, target values without each point, mean over seeds.
        base: ``Tensor[n_targets]``, target values of the full-data models, mean over seeds.
        seed_agreement: mean over pairs of seeds of the Pearson correlation between their
            effects ``values - base`` (all points and targets flattened): how much of the
            LOO signal is reproducible rather than training noise (1 = identical).
        seconds: summed wall seconds of the retrainings.
        created: retrainings made by this call.
    """

    indices: torch.Tensor = attrs.field(repr=False)
    values: torch.Tensor = attrs.field(repr=False)
    base: torch.Tensor = attrs.field(repr=False)
    seed_agreement: float
    seconds: float
    created: int

    def as_mapping(self) -> dict[str, torch.Tensor]:
        """``{"indices", "values", "base"}``, the ground truth the ``loo`` metric reads."""
        return {"indices": self.indices, "values": self.values, "base": self.base}


def _loo_job(retrain: Retrain, n_train: int, points: torch.Tensor, seeds: list[int], index: int) -> dict[str, Any]:
    """Job ``index = j * len(seeds) + s``: seed ``s`` without point ``j - 1`` (``j = 0``: no removal)."""
    j, s = divmod(index, len(seeds))
    keep = torch.ones(n_train, dtype=torch.bool)
    if j:
        keep[points[j - 1]] = False
    return {"values": retrain(keep, seeds[s])[0]}


def _agreement(effects: torch.Tensor) -> float:
    flat = effects.flatten(1).double()
    flat = flat - flat.mean(1, keepdim=True)
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-300)
    corr = flat @ flat.T
    n = corr.shape[0]
    return float((corr.sum() - corr.diagonal().sum()) / (n * (n - 1))) if n > 1 else float("nan")


def loo_ground_truth(
    retrain: Retrain,
    *,
    n_train: int,
    n_points: int,
    n_seeds: int,
    seed: int,
    cache_dir: Path,
    prefix: str,
    workers: int | None = None,
) -> LOOGroundTruth:
    """Retrain without each of ``n_points`` sampled training points, with ``n_seeds`` seeds.

    The points are a seeded sample of the training set; seed ``s`` is
    ``derived_seed("loo", seed, s)``. ``retrain`` should perturb training as little as
    possible when one point goes (same initialisation, same order of the rest; see
    :func:`~attrkit_bench.training.sgd.sgd_epochs`). Cost: ``(n_points + 1) · n_seeds``
    retrainings, each cached in ``{cache_dir}/{prefix}-{index:05d}.pt``.
    """
    if n_points < 2 or n_points > n_train or n_seeds < 1:
        raise ValueError(f"need 2 <= n_points <= n_train ({n_train}) and n_seeds >= 1, got {n_points}, {n_seeds}")
    generator = torch.Generator().manual_seed(derived_seed("loo-points", seed))
    points = torch.randperm(n_train, generator=generator)[:n_points].sort().values
    seeds = [derived_seed("loo", seed, s) for s in range(n_seeds)]
    job = functools.partial(_loo_job, retrain, n_train, points, seeds)
    count = (n_points + 1) * n_seeds
    paths = [cache_dir / f"{prefix}-{i:05d}.pt" for i in range(count)]
    artifacts, created = run_jobs(job, paths, workers=workers, desc=f"LOO ground truth ({count} models)")
    values = torch.stack([a["values"] for a in artifacts]).reshape(n_points + 1, n_seeds, -1)
    effects = (values[1:] - values[:1]).transpose(0, 1)  # [n_seeds, m, n_targets]
    return LOOGroundTruth(
        indices=points,
        values=values[1:].mean(1),
        base=values[0].mean(0),
        seed_agreement=_agreement(effects),
        seconds=sum(float(a["seconds"]) for a in artifacts),
        created=created,
    )
