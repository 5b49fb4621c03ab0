"""Gradient sources: ``per-example`` (``torch.func`` vmap of grad)."""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import torch

from attrkit import capabilities, hookimpl
from attrkit.config import params_field
from attrkit.context import Member
from attrkit.data import to_device
from attrkit.functional.gradients import flat_dimension, per_example_gradients, select_parameters
from attrkit.task import AttributionTask


@attrs.frozen(kw_only=True)
class PerExampleConfig:
    """Config of ``per-example``.

    Attributes:
        params: ``fnmatch`` patterns of parameter names to differentiate
            (``["fc2.*"]`` for the last layer of a model with ``fc2``); default all.
    """

    params: tuple[str, ...] = params_field()


class PerExampleGradients:
    """Exact per-example gradients of the loss and the target, ``Tensor[b, p]``.

    Uses ``torch.func.vmap`` over ``grad`` of ``loss_fn(model, batch)`` evaluated one
    example at a time with the member's weights swapped in by ``functional_call``, in
    eval mode (batch-norm uses its running statistics). Memory: ``b * p`` floats per batch.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "gradients": {"name": "per-example", "params": ["fc.*"]}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "per-example"
    kind: ClassVar[str] = "gradients"
    Config: ClassVar[type] = PerExampleConfig
    requires: ClassVar[frozenset[str]] = frozenset()
    provides: ClassVar[frozenset[str]] = frozenset({capabilities.PER_EXAMPLE, capabilities.HVP})

    def __init__(self, config: PerExampleConfig):
        self.config = config

    def _names(self, task: AttributionTask) -> list[str]:
        return select_parameters(task.model, self.config.params)

    def dimension(self, task: AttributionTask) -> int:
        """Number of selected parameter entries, ``p``."""
        return flat_dimension(task.model, self._names(task))

    def _grads(self, task: AttributionTask, fn: Any, member: Member, batch: Any) -> torch.Tensor:
        batch = to_device(batch, task.device)
        return per_example_gradients(task.model, fn, member.state, batch, self._names(task))

    def loss_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]``: per-example gradients of ``task.loss_fn``."""
        return self._grads(task, task.loss_fn, member, batch)

    def target_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]``: per-example gradients of ``task.target``."""
        return self._grads(task, task.target, member, batch)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [PerExampleGradients]
