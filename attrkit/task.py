"""``AttributionTask``: the model, its loss, the target to attribute and its checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import attrs
import torch

from attrkit.context import Member
from attrkit.errors import ArgumentError, CheckpointError
from attrkit.finite import check_state
from attrkit.properties import Property
from attrkit.types import LossFn

__all__ = ["AttributionTask", "LossFn"]

Checkpoint = Union[Mapping[str, torch.Tensor], str, os.PathLike]


def _check_properties(task: AttributionTask, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, Property) or not isinstance(value, Sequence) or not value:
        raise ArgumentError("properties must be a non-empty list of attrkit.properties.Property (or None)")
    bad = [type(p).__name__ for p in value if not isinstance(p, Property)]
    if bad:
        raise ArgumentError(
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
        Files are read with ``torch.load(weights_only=True)``: a file holding pickled objects
        (a whole model, an optimizer) is refused, never executed. Tensors given in memory
        are copied, so later changes to the caller's state dict do not reach the member.

        Raises:
            CheckpointError: an unreadable file, something other than a state dict, missing
                or unexpected keys, non-tensor values or mismatched shapes.
            NonFiniteError: NaN or infinite weights.
        """
        raw = self.checkpoints[index]
        where = f"checkpoints[{index}]"
        if isinstance(raw, (str, os.PathLike)):
            raw = _load(raw, where)
        elif not isinstance(raw, Mapping):
            raise CheckpointError(f"{where} is a {type(raw).__name__}; expected a state_dict (model.state_dict()) or "
                                  "the path of a file saved with torch.save(model.state_dict(), path)")
        else:
            raw = {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in raw.items()}
        expected = self.model.state_dict()
        missing = sorted(set(expected) - set(raw))
        unexpected = sorted(set(raw) - set(expected))
        wrong = [
            f"{k}: checkpoint {_shape(raw[k])} vs model {tuple(v.shape)}"
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
            nested = [k for k in ("state_dict", "model", "model_state_dict") if isinstance(raw.get(k), Mapping)]
            hint = (f"; it nests a state dict under {nested[0]!r}: pass checkpoint[{nested[0]!r}]" if nested
                    else " (was it saved from a different architecture?)")
            raise CheckpointError("; ".join(parts) + hint)
        state = self.current_state()
        device = self.device
        state.update({k: v.detach().to(device=device, dtype=state[k].dtype) for k, v in raw.items()})
        check_state(state, where)
        return state

    def members(self) -> list[Member]:
        """One member per checkpoint (weight 1), or the current weights when there are none."""
        if self.checkpoints is None:
            return [Member(state=self.current_state(), weight=1.0, label="model")]
        return [
            Member(state=self.checkpoint_state(i), weight=1.0, label=f"checkpoint {i}")
            for i in range(len(self.checkpoints))
        ]


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}, not a tensor"


def _load(path: str | os.PathLike, where: str) -> Mapping[str, Any]:
    """The state dict saved at ``path``, read without executing code.

    Raises:
        CheckpointError: unreadable, holding pickled objects, or not a mapping.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot load {path!s}: {exc}") from exc
    except Exception as exc:  # pickle's errors advise weights_only=False, which would run the file's code
        raise CheckpointError(
            f"{where}: {path!s} is not a plain state_dict file ({type(exc).__name__}); attrkit loads checkpoints "
            "with torch.load(weights_only=True) and never runs code from a file. Save the weights alone: "
            "torch.save(model.state_dict(), path)"
        ) from exc
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{where}: {path!s} holds a {type(raw).__name__}, expected a state_dict "
                              "(torch.save(model.state_dict(), path))")
    return raw
