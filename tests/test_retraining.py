"""The retraining engine: parallel worker processes, on-disk cache, resume, and the LOO ground truth."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from attrkit_bench.training.sgd import SGDRecipe, retrain_targets, train_model
from attrkit_bench.truth.loo import loo_ground_truth
from attrkit_bench.truth.retraining import default_workers, derived_seed, run_jobs
from attrkit.targets import cross_entropy


def _square(scale: float, index: int) -> dict[str, torch.Tensor]:
    return {"value": torch.tensor(scale * index * index)}


def _data(n: int = 40, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=generator)
    return x, (x[:, 0] > 0).long()


def _linear(d: int = 5) -> torch.nn.Module:
    return torch.nn.Linear(d, 2)


def test_parallel_jobs_equal_serial_ones_and_resume(tmp_path: Path) -> None:
    job = functools.partial(_square, 2.0)
    paths = [tmp_path / "par" / f"{i}.pt" for i in range(5)]
    made, created = run_jobs(job, paths, workers=2)
    assert created == 5 and [float(a["value"]) for a in made] == [2.0 * i * i for i in range(5)]
    assert all(a["seconds"] >= 0 for a in made)
    paths[3].unlink()
    again, created = run_jobs(job, paths, workers=2)
    assert created == 1 and [float(a["value"]) for a in again] == [2.0 * i * i for i in range(5)]
    serial, _ = run_jobs(job, [tmp_path / "ser" / f"{i}.pt" for i in range(5)], workers=1)
    assert [float(a["value"]) for a in serial] == [float(a["value"]) for a in made]


def test_unpicklable_jobs_are_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="functools.partial of a module-level function"):
        run_jobs(lambda i: {"value": torch.tensor(i)}, [tmp_path / "a.pt", tmp_path / "b.pt"], workers=2)
    made, _ = run_jobs(lambda i: {"value": torch.tensor(i)}, [tmp_path / "a.pt", tmp_path / "b.pt"], workers=1)
    assert [int(a["value"]) for a in made] == [0, 1]


def test_workers_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTRKIT_BENCH_WORKERS", "3")
    assert default_workers() == 3
    monkeypatch.setenv("ATTRKIT_BENCH_WORKERS", "zero")
    with pytest.raises(ValueError, match="ATTRKIT_BENCH_WORKERS"):
        default_workers()


def test_keep_mask_drops_examples_without_reordering_the_rest() -> None:
    x, y = _data()
    recipe = SGDRecipe(lr=0.1, momentum=0.0, batch_size=40, epochs=3)
    full = train_model(_linear, cross_entropy, x, y, recipe, seed=1)
    everything = train_model(_linear, cross_entropy, x, y, recipe, seed=1, keep=torch.ones(40, dtype=torch.bool))
    assert torch.equal(full.weight, everything.weight)
    keep = torch.ones(40, dtype=torch.bool)
    keep[7] = False
    without = train_model(_linear, cross_entropy, x, y, recipe, seed=1, keep=keep)
    subset = train_model(_linear, cross_entropy, x[keep], y[keep], recipe, seed=1)  # full batch: order is irrelevant
    torch.testing.assert_close(without.weight, subset.weight)


def test_loo_ground_truth_averages_seeds_and_is_resumable(tmp_path: Path) -> None:
    x, y = _data()
    retrain = functools.partial(retrain_targets, make_model=_linear, loss_fn=cross_entropy,
                                recipe=SGDRecipe(lr=0.5, momentum=0.0, batch_size=40, epochs=20), x=x, y=y,
                                x_targets=x[:3], y_targets=y[:3])
    kwargs = dict(n_train=40, n_points=4, n_seeds=2, seed=0, cache_dir=tmp_path, prefix="t")
    truth = loo_ground_truth(retrain, **kwargs)
    assert truth.created == 10 and truth.indices.shape == (4,) and truth.values.shape == (4, 3)
    point, seeds = int(truth.indices[1]), []
    for s in range(2):  # recompute one entry by hand: mean over seeds of the loss without the point
        keep = torch.ones(40, dtype=torch.bool)
        keep[point] = False
        seeds.append(retrain(keep, derived_seed("loo", 0, s))[0])
    torch.testing.assert_close(truth.values[1], torch.stack(seeds).mean(0))
    # full-batch gradient descent is seed-independent but for the initialisation: effects agree across seeds
    assert truth.seed_agreement > 0.5
    again = loo_ground_truth(retrain, **kwargs)
    assert again.created == 0 and torch.equal(again.values, truth.values)
    with pytest.raises(ValueError, match="n_points"):
        loo_ground_truth(retrain, **{**kwargs, "n_points": 41})
