"""A base for gradient sources over parameters chosen by name patterns.

Plugins subclass it (plugins may not import one another, so the shared part lives here).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from attrkit.context import Member
from attrkit.data import to_device
from attrkit.functional.gradients import flat_dimension, per_example_gradients, select_parameters
from attrkit.task import AttributionTask

__all__ = ["ParameterGradients"]


class ParameterGradients:
    """Exact per-example gradients w.r.t. the parameters matching ``config.params``.

    Subclasses set ``name``, ``Config`` (with a ``params`` field, see
    :func:`attrkit.config.params_field`) and ``provides``; they may override ``_grads``
    to return another representation of the same gradients (e.g. factored).
    """

    kind: ClassVar[str] = "gradients"
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: Any):
        self.config = config

    def names(self, task: AttributionTask) -> list[str]:
        """The selected parameter names, in model order (raises ``ValueError`` if none match)."""
        return select_parameters(task.model, self.config.params)

    def dimension(self, task: AttributionTask) -> int:
        """Number of selected parameter entries, ``p``."""
        return flat_dimension(task.model, self.names(task))

    def _grads(self, task: AttributionTask, fn: Any, member: Member, batch: Any) -> Any:
        return per_example_gradients(task.model, fn, member.state, to_device(batch, task.device), self.names(task))

    def loss_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]`` (or a subclass's equivalent): per-example gradients of ``task.loss_fn``."""
        return self._grads(task, task.loss_fn, member, batch)

    def target_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]`` (or a subclass's equivalent): per-example gradients of ``task.target``."""
        return self._grads(task, task.target, member, batch)
