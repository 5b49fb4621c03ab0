"""LDS ground truth: models retrained on seeded random subsets.

Made by the retraining engine (:func:`~attrkit_bench.truth.retraining.run_jobs`): one
cached file per retrained model, jobs in parallel processes, resumable, deterministic.
A :data:`~attrkit_bench.truth.retraining.Retrain` callable trains the setting's model on
the kept examples with a seed and returns the attributed targets' values and the model's state.

LDS follows dattri's protocol: ``n_models`` models on seeded random subsets; the first
half may serve as ensemble members (:attr:`LDSGroundTruth.members`), the second half
scores LDS (:meth:`LDSGroundTruth.as_mapping`), so no model both builds and judges an
attribution.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from attrkit_bench.problem import MEMBER_KINDS
from attrkit_bench.truth.retraining import Retrain, derived_seed, run_jobs

__all__ = ["LDSGroundTruth", "lds_ground_truth"]

@attrs.frozen(kw_only=True)
class LDSGroundTruth:
    """The retrained models of the LDS protocol, and what making them cost.

    Attributes:
        subsets: ``BoolTensor[n_models, n_train]``, the training subset of each model.
        values: ``Tensor[n_models, n_targets]``, each model's target values (loss-like).
        members: the ``state_dict`` of each of the first ``n_models // 2`` models (the
            second half's weights are not kept: only their values score LDS).
        seconds: wall seconds of all retrainings, summed over the jobs that made them
            (cached files keep their own time), i.e. single-process cost.
        created: how many models this call retrained (the rest came from the cache).
        wall_seconds: wall time of this call (loading included).
    """

    subsets: torch.Tensor = attrs.field(repr=False)
    values: torch.Tensor = attrs.field(repr=False)
    members: list[dict[str, torch.Tensor]] = attrs.field(repr=False)
    seconds: float
    created: int
    wall_seconds: float

    @property
    def split(self) -> int:
        """Models ``0..split-1`` are members, ``split..n_models-1`` score LDS."""
        return self.subsets.shape[0] // 2

    def as_mapping(self) -> dict[str, torch.Tensor]:
        """``{"subsets", "values"}`` of the second half, the ground truth the ``lds`` metric reads."""
        return {"subsets": self.subsets[self.split:], "values": self.values[self.split:]}

    def facts(self) -> dict[str, Any]:
        """The report's facts: model counts, subset size, cost (summed, per model, wall), models retrained now."""
        n = self.subsets.shape[0]
        return {
            "n_models": n,
            "lds_models": n - self.split,
            "subset_size": int(self.subsets[0].sum()),
            "ground_truth_seconds": self.seconds,
            "retrain_seconds": self.seconds / n,
            "ground_truth_wall_seconds": self.wall_seconds,
            "ground_truth_retrained": self.created,
        }

    def summary(self, unit: str) -> str:
        """One line for the terminal; ``unit`` names the training examples (``"windows"``)."""
        n = self.subsets.shape[0]
        return (f"LDS ground truth: {n} models on {int(self.subsets[0].sum())} {unit} each (first {self.split} "
                f"ensemble members, last {n - self.split} score LDS), {self.seconds:.1f} s of retraining, "
                f"{self.seconds / n:.2f} s per model ({self.created} retrained now, {self.wall_seconds:.1f} s wall)")

    def members_of(self, kind: str, k: int, trajectory: Callable[[], list[dict[str, torch.Tensor]]]) -> list[
            dict[str, torch.Tensor]]:
        """``k`` ensemble members of ``kind`` (see :data:`~attrkit_bench.problem.MEMBER_KINDS`):
        ``independent``, the first ``k`` of :attr:`members`; ``trajectory``, ``trajectory()``.

        Raises:
            ValueError: an unknown kind, or more independent members than the first half holds.
        """
        if kind == "trajectory":
            return trajectory()
        if kind != "independent":
            raise ValueError(f"unknown member kind {kind!r}; known: {', '.join(MEMBER_KINDS)}")
        if not 1 <= k <= self.split:
            raise ValueError(f"{k} independent members asked, the setting has {self.split} (the first half of n_models)")
        return self.members[:k]


def _lds_job(retrain: Retrain, seed: int, n_train: int, subset_size: int, n_members: int, model: int) -> dict[
        str, Any]:
    """Model ``model`` of the protocol; its ``state_dict`` is kept only if it is one of the ``n_members`` members."""
    model_seed = derived_seed("lds", seed, model)
    generator = torch.Generator().manual_seed(model_seed)
    keep = torch.zeros(n_train, dtype=torch.bool)
    keep[torch.randperm(n_train, generator=generator)[:subset_size]] = True
    values, state = retrain(keep, model_seed)
    return {"subset": keep, "values": values, **({"state_dict": state} if model < n_members else {})}


def lds_ground_truth(
    retrain: Retrain,
    *,
    n_train: int,
    subset_size: int,
    n_models: int,
    seed: int,
    cache_dir: Path,
    prefix: str,
    workers: int | None = None,
) -> LDSGroundTruth:
    """Retrain ``n_models`` models on seeded random subsets, reusing cached ones.

    Model ``s`` keeps ``subset_size`` of the ``n_train`` examples drawn with a generator
    seeded by ``derived_seed("lds", seed, s)`` and is trained with that seed, so it
    depends only on ``s`` and the recipe: raising ``n_models`` keeps the models already
    made (those that become members are retrained once more, for their weights: only
    members' weights are saved). Each is saved to ``{cache_dir}/{prefix}-{s:04d}.pt``;
    ``prefix`` must identify the recipe (e.g. hold its cache key).

    Args:
        retrain: trains one model (picklable when ``workers`` > 1).
        n_train: size of the full training set.
        subset_size: examples per retrained model.
        n_models: number of retrained models (even: half members, half LDS).
        seed: the setting's seed.
        cache_dir: folder of the cache files.
        prefix: file name prefix.
        workers: processes (see :func:`~attrkit_bench.truth.retraining.run_jobs`).
    """
    start = time.perf_counter()
    n_members = n_models // 2
    job = functools.partial(_lds_job, retrain, seed, n_train, subset_size, n_members)
    paths = [cache_dir / f"{prefix}-{s:04d}.pt" for s in range(n_models)]
    artifacts, created = run_jobs(job, paths, workers=workers, desc=f"LDS ground truth ({n_models} models)")
    stateless = [paths[s] for s in range(n_members) if "state_dict" not in artifacts[s]]
    if stateless:  # LDS models of a smaller n_models, members now: retrain them for their weights
        for path in stateless:
            path.unlink()
        artifacts, more = run_jobs(job, paths, workers=workers, desc=f"LDS members' weights ({len(stateless)} models)")
        created += more
    return LDSGroundTruth(
        subsets=torch.stack([a["subset"] for a in artifacts]),
        values=torch.stack([a["values"] for a in artifacts]),
        members=[a["state_dict"] for a in artifacts[:n_members]],
        seconds=sum(float(a["seconds"]) for a in artifacts),
        created=created,
        wall_seconds=time.perf_counter() - start,
    )
