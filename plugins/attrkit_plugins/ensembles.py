"""Ensembles: ``checkpoints``, ``dropout`` (fixed masks on one model) and ``lora`` (adapters).

An ensemble turns the task into the members the score formula sums over,
``score = Σ_m w_m <…>_m``. Any gradient method composes with any of them.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Mapping
from typing import ClassVar

import attrs
import torch

from attrkit.plugin import (
    ArgumentError,
    AttributionTask,
    Ensemble,
    Member,
    Part,
    SpecError,
    float_field,
    floats_field,
    hookimpl,
    positive_int,
    seed_field,
)
from attrkit.functional.dropout_masks import dropout_modules, fixed_dropout_masks
from attrkit.functional.lora import LORA_PATTERNS, lora_parameter_names


def _weights_field() -> attrs.Attribute:
    def check(instance: object, attribute: attrs.Attribute, value: tuple[float, ...]) -> None:
        if any(not w > 0 for w in value):
            raise ArgumentError(f"'{attribute.name}' must be a non-empty list of positive numbers, got {list(value)}")

    return floats_field(None, validator=check, optional=True)


def _checkpoint_problems(task: AttributionTask, weights: tuple[float, ...] | None, who: str) -> list[str]:
    """Why ``task``'s checkpoints cannot be the members of ensemble ``who`` (none: they can)."""
    if task.checkpoints is None:
        return [f"ensemble {who!r} sums over the task's checkpoints, but the task has none: pass "
                "AttributionTask(..., checkpoints=[state_dict, ...])"]
    if weights is not None and len(weights) != len(task.checkpoints):
        n = len(task.checkpoints)
        return [f"ensemble.weights: ensemble {who!r} got {len(weights)} weights for {n} checkpoints"]
    return []


def _checkpoint_members(task: AttributionTask, weights: tuple[float, ...] | None, who: str) -> list[Member]:
    problems = _checkpoint_problems(task, weights, who)
    if problems:
        raise SpecError(problems)
    members = task.members()
    return [attrs.evolve(m, weight=w) for m, w in zip(members, weights or [1.0] * len(members))]


def _checkpoint_count(task: AttributionTask) -> int | None:
    return len(task.checkpoints) if task.checkpoints is not None else None


@attrs.frozen(kw_only=True)
class CheckpointsConfig:
    """Config of ``checkpoints``.

    Attributes:
        weights: one positive weight per checkpoint (``[1, 1, …]`` when not given).
    """

    weights: tuple[float, ...] | None = _weights_field()


class CheckpointEnsemble(Ensemble):
    """The task's checkpoints as members: a training trajectory (TracIn) or independently
    trained models (TRAK-M), each with weight 1 unless ``weights`` says otherwise.

    Example:
        >>> task = attrkit.AttributionTask(model=model, loss_fn=loss, checkpoints=[s0, s1, s2])  # doctest: +SKIP
        >>> attrkit.compose({"method": "trak", "ensemble": "checkpoints"}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "checkpoints"
    Config: ClassVar[type] = CheckpointsConfig

    @classmethod
    def check(cls, config: CheckpointsConfig, task: AttributionTask, parts: Mapping[str, Part]) -> list[str]:
        """The task must have checkpoints, as many as ``weights`` when given."""
        return _checkpoint_problems(task, config.weights, cls.name)

    @classmethod
    def member_count(cls, config: CheckpointsConfig, task: AttributionTask) -> int | None:
        """One member per checkpoint of the task."""
        return _checkpoint_count(task)

    def members(self, task: AttributionTask) -> list[Member]:
        """One member per checkpoint, in order.

        Raises:
            SpecError: the task has no checkpoints, or ``weights`` has the wrong length.
        """
        return _checkpoint_members(task, self.config.weights, self.name)


@attrs.frozen(kw_only=True)
class DropoutConfig:
    """Config of ``dropout``.

    Attributes:
        members: number of masks ``k``.
        p: drop probability for every ``nn.Dropout``; ``None`` uses each module's own.
        seed: member ``j`` uses masks seeded by ``seed + j``.
    """

    members: int = positive_int(10, examples=(2, 3))
    p: float | None = float_field(None, ge=0.0, lt=1.0, optional=True)
    seed: int = seed_field()


class DropoutEnsemble(Ensemble):
    """``k`` fixed, seeded dropout masks on one trained model (weight ``1/k`` each).

    Members share the weights and differ only in which units every ``nn.Dropout`` keeps;
    the masks act at attribution time (in eval mode) and are the same for every example.
    Producing the members costs nothing: no retraining. See
    :func:`attrkit.functional.dropout_masks.fixed_dropout_masks`.

    Example:
        >>> attrkit.compose({"method": "trak", "ensemble": {"name": "dropout", "members": 10}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "dropout"
    Config: ClassVar[type] = DropoutConfig

    @classmethod
    def check(cls, config: DropoutConfig, task: AttributionTask, parts: Mapping[str, Part]) -> list[str]:
        """The model must have ``nn.Dropout`` modules."""
        if dropout_modules(task.model):
            return []
        return [f"ensemble 'dropout' needs nn.Dropout modules in the model, and {type(task.model).__name__} has "
                "none; use the 'checkpoints' or 'lora' ensemble"]

    @classmethod
    def member_count(cls, config: DropoutConfig, task: AttributionTask) -> int | None:
        """``members`` masks."""
        return config.members

    def members(self, task: AttributionTask) -> list[Member]:
        """``members`` copies of the task's current weights, each with its own masks.

        Raises:
            SpecError: the model has no ``nn.Dropout`` module.
        """
        problems = self.check(self.config, task, {})
        if problems:
            raise SpecError(problems)
        state, k = task.current_state(), self.config.members
        return [
            Member(state=state, weight=1.0 / k, label=f"dropout mask {j} (seed {self.config.seed + j})",
                   patch=functools.partial(_masks, seed=self.config.seed + j, p=self.config.p))
            for j in range(k)
        ]


def _masks(model: torch.nn.Module, *, seed: int, p: float | None) -> contextlib.AbstractContextManager[None]:
    """A dropout member's ``patch``: its fixed masks on ``model``."""
    return fixed_dropout_masks(model, seed, p)


@attrs.frozen(kw_only=True)
class LoRAConfig:
    """Config of ``lora``.

    Attributes:
        weights: one positive weight per adapter (``1/k`` each when not given).
    """

    weights: tuple[float, ...] | None = _weights_field()


class LoRAEnsemble(Ensemble):
    """``k`` LoRA adapters trained on one base model; gradients of the adapters only.

    The task's model carries LoRA layers (:func:`attrkit.functional.lora.add_lora`) and
    its checkpoints are the trained adapters' state dicts
    (:func:`attrkit.functional.lora.train_lora_adapters` returns both). Every gradient
    source that selects parameters by name is restricted to the adapter parameters
    (:data:`~attrkit.functional.lora.LORA_PATTERNS`), so features are a few thousand
    numbers per member.

    Example:
        >>> template, adapters = train_lora_adapters(model, 10, my_train_loop)  # doctest: +SKIP
        >>> task = attrkit.AttributionTask(model=template, loss_fn=loss, checkpoints=adapters)  # doctest: +SKIP
        >>> attrkit.compose({"method": "trak", "ensemble": "lora"}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "lora"
    Config: ClassVar[type] = LoRAConfig
    #: The gradient source is restricted to these parameters (see ``restrict_gradients``).
    gradient_params: ClassVar[tuple[str, ...]] = LORA_PATTERNS

    @classmethod
    def check(cls, config: LoRAConfig, task: AttributionTask, parts: Mapping[str, Part]) -> list[str]:
        """The model must have LoRA layers and the task checkpoints (the adapters), as many as ``weights``."""
        problems = [] if lora_parameter_names(task.model) else [
            f"ensemble 'lora': the model needs LoRA layers, and {type(task.model).__name__} has none: build the "
            "task from attrkit.functional.lora.train_lora_adapters (model=template, checkpoints=adapters)"
        ]
        return problems + _checkpoint_problems(task, config.weights, cls.name)

    @classmethod
    def member_count(cls, config: LoRAConfig, task: AttributionTask) -> int | None:
        """One member per adapter checkpoint of the task."""
        return _checkpoint_count(task)

    def members(self, task: AttributionTask) -> list[Member]:
        """One member per adapter checkpoint (weight ``1/k`` unless ``weights`` is given).

        Raises:
            SpecError: the model has no LoRA layers, or the task has no checkpoints.
        """
        if not lora_parameter_names(task.model):
            raise SpecError(self.check(self.config, task, {}))
        n = len(task.checkpoints) if task.checkpoints is not None else 0
        weights = self.config.weights or ((1.0 / n,) * n if n else None)
        members = _checkpoint_members(task, weights, self.name)
        return [attrs.evolve(m, label=f"LoRA adapter {j}") for j, m in enumerate(members)]


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [CheckpointEnsemble, DropoutEnsemble, LoRAEnsemble]
