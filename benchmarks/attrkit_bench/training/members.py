"""Ensemble members for the benchmark, each kind cached with what it cost to produce.

* ``independent``: ``k`` models trained from scratch on the whole training set with the
  setting's recipe and seeds ``seed + 1 .. seed + k`` (TRAK-M's ensemble);
* ``trajectory``: the main model's own training run, replayed with its seed, keeping
  ``k`` evenly spaced epoch checkpoints (TracInCP); the last one is the main model;
* ``lora``: ``k`` rank-``r`` LoRA adapters trained on top of the main model
  (:func:`attrkit.functional.train_lora_adapters`), a few epochs each.

Dropout-mask members need no production at all. Each artifact is one cache file keyed by
the setting's cache key and the member recipe; ``seconds`` is the training time when made.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from attrkit import cross_entropy
from attrkit.functional import add_lora, train_lora_adapters
from attrkit_bench.cache import load_or_create, recipe_key
from attrkit_bench.problem import Problem
from attrkit_bench.settings.classifier import ClassifierConfig, ClassifierSetting
from attrkit_bench.training.sgd import SGDRecipe, sgd_epochs, train_model, trajectory_states

__all__ = ["LORA_RANK", "LORA_RECIPE", "Members", "independent", "lora", "trajectory"]

#: Rank of the LoRA adapters.
LORA_RANK = 4
#: How each adapter is trained (on the whole training set, from the main model).
LORA_RECIPE = SGDRecipe(epochs=3)


@attrs.frozen(kw_only=True)
class Members:
    """Produced members.

    Attributes:
        states: one full state dict per member (of ``template``'s architecture).
        seconds: training time of all members when they were produced.
        cached: loaded from the cache in this run.
        template: the model the states belong to when it is not the problem's (LoRA).
    """

    states: list[dict[str, torch.Tensor]] = attrs.field(repr=False)
    seconds: float
    cached: bool
    template: torch.nn.Module | None = attrs.field(default=None, repr=False)


def _data(problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    return problem.train.dataset.tensors  # type: ignore[attr-defined]


def _cached(path: Path, produce: Any) -> tuple[dict[str, Any], bool]:
    def timed() -> dict[str, Any]:
        start = time.perf_counter()
        states = produce()
        return {"states": states, "seconds": time.perf_counter() - start}

    artifact, made = load_or_create(path, timed)
    return artifact, not made


def _path(cache_dir: Path, problem: Problem, kind: str, recipe: dict[str, Any]) -> Path:
    return cache_dir / f"{problem.name}-{kind}-{recipe_key({'setting': problem.info['cache_key'], **recipe})}.pt"


def independent(declaration: ClassifierSetting, config: ClassifierConfig, problem: Problem, cache_dir: Path,
                k: int) -> Members:
    """``k`` models trained from scratch on the whole training set (seeds ``seed+1..seed+k``)."""
    x, y = _data(problem)
    make = declaration.constructor(problem)

    def produce() -> list[dict[str, torch.Tensor]]:
        return [train_model(make, cross_entropy, x, y, config.recipe, config.seed + j).state_dict()
                for j in range(1, k + 1)]

    artifact, cached = _cached(_path(cache_dir, problem, "independent", {"k": k}), produce)
    return Members(states=artifact["states"], seconds=float(artifact["seconds"]), cached=cached)


def trajectory(declaration: ClassifierSetting, config: ClassifierConfig, problem: Problem, cache_dir: Path,
               k: int) -> Members:
    """``k`` checkpoints at evenly spaced epochs of the main model's training run (replayed).

    ``seconds`` is the time of the replayed run: what a user pays who saves checkpoints
    anyway is nothing extra.
    """
    x, y = _data(problem)

    def produce() -> list[dict[str, torch.Tensor]]:
        make = declaration.constructor(problem)
        return trajectory_states(
            lambda save: train_model(make, cross_entropy, x, y, config.recipe, config.seed, on_epoch=save),
            config.recipe.epochs, k)

    artifact, cached = _cached(_path(cache_dir, problem, "trajectory", {"k": k}), produce)
    return Members(states=artifact["states"], seconds=float(artifact["seconds"]), cached=cached)


def lora(declaration: ClassifierSetting, config: ClassifierConfig, problem: Problem, cache_dir: Path,
         k: int) -> Members:
    """``k`` LoRA adapters (rank :data:`LORA_RANK`, every Linear) trained with :data:`LORA_RECIPE`."""
    x, y = _data(problem)

    def train(model: torch.nn.Module, seed: int) -> None:
        sgd_epochs(model, cross_entropy, x, y, LORA_RECIPE, seed)

    base = problem.model  # a bare Linear (logistic regression) is wrapped: add_lora replaces submodules
    base = torch.nn.Sequential(base) if type(base) in (torch.nn.Linear, torch.nn.Conv2d) else base

    def produce() -> list[dict[str, torch.Tensor]]:
        return train_lora_adapters(base, k, train, rank=LORA_RANK, seed=config.seed + 1)[1]

    recipe = {"k": k, "rank": LORA_RANK, "recipe": attrs.asdict(LORA_RECIPE)}
    artifact, cached = _cached(_path(cache_dir, problem, "lora", recipe), produce)
    template = add_lora(copy.deepcopy(base), LORA_RANK, seed=config.seed + 1)
    return Members(states=artifact["states"], seconds=float(artifact["seconds"]), cached=cached, template=template)
