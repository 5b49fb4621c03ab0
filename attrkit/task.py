"""``AttributionTask``: the model, its loss, the target to attribute and its checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import attrs
import torch

from attrkit.context import Member
from attrkit.errors import CheckpointError

if TYPE_CHECKING:
    from attrkit.properties import Property

__all__ = ["AttributionTask", "LossFn"]

#: ``loss_fn(model, batch) -> Tensor[b]``: one loss-like value per example.
LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
Checkpoint = Union[Mapping[str, torch.Tensor], str, os.PathLike]


def _check_properties(task: AttributionTask, attribute: attrs.Attribute, value: Any) -> None:
    from attrkit.properties import Property  # lazily: properties imports functional, which imports this module

    if value is None:
        return
    if isinstance(value, Property) or not isinstance(value, Sequence) or not value:
        raise ValueError("properties must be a non-empty list of attrkit.properties.Property (or None)")
    bad = [type(p).__name__ for p in value if not isinstance(p, Property)]
    if bad:
        raise ValueError(
            f"properties must hold attrkit.properties.Property values, got {', '.join(bad)}; "
            "wrap a function as Property(name=..., fn=...) or use mean_loss / accuracy_surrogate / loss_gap"
        )


def _check_checkpoints(task: AttributionTask, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (str, os.PathLike, Mapping)) or not isinstance(value, Sequence):
        raise CheckpointError("checkpoints must be a list of state_dicts or file paths")
    if not value:
        raise CheckpointError("checkpoints is an empty list; pass None to use the model's current weights")
    for i in range(len(value)):
        task.checkpoint_state(i)


@attrs.define(kw_only=True, eq=False)
class AttributionTask:
    """What to attribute: a model, its per-example loss and a loss-like target.

    Args:
        model: the trained ``torch.nn.Module``. attrkit never changes its weights;
            gradients are taken in eval mode (batch-norm uses running statistics).
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, the per-example training loss,
            written with plain ``model(x)`` calls (use ``reduction="none"``).
        target_fn: same signature; the loss-like quantity attributed on test data
            (lower is better). Defaults to ``loss_fn``. For classification the
            negated correct-class margin is :func:`attrkit.negated_margin`.
        checkpoints: state_dicts or ``torch.save`` file paths of ``model``; each is one
            ensemble member. Defaults to the model's current weights. Every checkpoint
            is checked against the model when the task is built.
        properties: :class:`~attrkit.properties.Property` functions ``g(θ)`` (mean test
            loss, accuracy surrogate, loss gap...) to attribute with
            ``attributor.attribute()`` (no test loader): ``Tensor[n_properties, n_train]``.

    Sign convention: ``scores[t, i] > 0`` means training example ``i`` is a proponent
    of test example ``t``: training on it lowers ``target_fn`` at ``t``.

    Raises:
        CheckpointError: a checkpoint whose keys or shapes do not fit ``model``.
        ValueError: ``properties`` is not a non-empty list of ``Property``.
    """

    model: torch.nn.Module = attrs.field(validator=attrs.validators.instance_of(torch.nn.Module))
    loss_fn: LossFn = attrs.field(validator=attrs.validators.is_callable())
    target_fn: LossFn | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.is_callable())
    )
    checkpoints: Sequence[Checkpoint] | None = attrs.field(default=None, validator=_check_checkpoints)
    properties: Sequence[Property] | None = attrs.field(default=None, validator=_check_properties)

    @property
    def target(self) -> LossFn:
        """The function attributed on test data: ``target_fn`` or else ``loss_fn``."""
        return self.target_fn if self.target_fn is not None else self.loss_fn

    @property
    def device(self) -> torch.device:
        """Device of the model's first parameter (CPU for a parameter-free model)."""
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def current_state(self) -> dict[str, torch.Tensor]:
        """``{name: Tensor}`` of every parameter and buffer, detached, as in the model now."""
        state = {n: p.detach() for n, p in self.model.named_parameters()}
        state.update({n: b.detach() for n, b in self.model.named_buffers()})
        return state

    def checkpoint_state(self, index: int) -> dict[str, torch.Tensor]:
        """Full state of checkpoint ``index``, checked against the model.

        Buffers the checkpoint does not hold (non-persistent ones) come from the model.

        Raises:
            CheckpointError: missing or unexpected keys, or mismatched shapes.
        """
        raw = self.checkpoints[index]
        where = f"checkpoints[{index}]"
        if not isinstance(raw, Mapping):
            try:
                raw = torch.load(raw, map_location="cpu", weights_only=True)
            except (OSError, RuntimeError) as exc:
                raise CheckpointError(f"{where}: cannot load {raw!s}: {exc}") from exc
            if not isinstance(raw, Mapping):
                raise CheckpointError(f"{where}: file holds a {type(raw).__name__}, expected a state_dict")
        expected = self.model.state_dict()
        missing = sorted(set(expected) - set(raw))
        unexpected = sorted(set(raw) - set(expected))
        wrong = [
            f"{k}: checkpoint {tuple(raw[k].shape)} vs model {tuple(v.shape)}"
            for k, v in expected.items()
            if k in raw and (not isinstance(raw[k], torch.Tensor) or raw[k].shape != v.shape)
        ]
        if missing or unexpected or wrong:
            parts = [f"{where} does not fit the model"]
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            if wrong:
                parts.append(f"shape mismatch {wrong}")
            raise CheckpointError("; ".join(parts) + " (was it saved from a different architecture?)")
        state = self.current_state()
        device = self.device
        state.update({k: v.detach().to(device=device, dtype=state[k].dtype) for k, v in raw.items()})
        return state

    def members(self) -> list[Member]:
        """One member per checkpoint (weight 1), or the current weights when there are none."""
        if self.checkpoints is None:
            return [Member(state=self.current_state(), weight=1.0, label="model")]
        return [
            Member(state=self.checkpoint_state(i), weight=1.0, label=f"checkpoint {i}")
            for i in range(len(self.checkpoints))
        ]
