"""A base for gradient sources over parameters chosen by name patterns.

Plugins subclass it (plugins may not import one another, so the shared part lives here).
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from attrkit.context import Member
from attrkit.data import to_device
from attrkit.errors import SpecError
from attrkit.functional.factored import factored_gradients, plan_factors
from attrkit.functional.gradient_factors import FactoredGradients
from attrkit.functional.gradients import flat_dimension, per_example_gradients, select_parameters
from attrkit.task import AttributionTask
from attrkit.protocols import GradientSource

__all__ = ["ParameterGradients", "restrict_gradients"]


class ParameterGradients(GradientSource):
    """Exact per-example gradients w.r.t. the parameters matching ``config.params``.

    Subclasses set ``name``, ``Config`` (with a ``params`` field, see
    :func:`attrkit.fields.params_field`, and a ``frozen`` one,
    :func:`attrkit.fields.frozen_field`) and ``provides``; they may override ``_grads``
    to return another representation of the same gradients (e.g. factored).

    Only trainable parameters (``requires_grad=True``) are selected unless
    ``config.frozen`` is true (see :func:`attrkit.functional.gradients.select_parameters`).
    """

    def __init__(self, config: Any):
        super().__init__(config)
        #: Extra patterns every selected name must also match (set by :func:`restrict_gradients`).
        self.only: tuple[str, ...] | None = None

    def names(self, task: AttributionTask) -> list[str]:
        """The selected parameter names, in model order.

        Raises:
            SpecError: no parameter matches ``config.params``, or only frozen ones do
                (``requires_grad=False``, and ``config.frozen`` is false), or none of those
                also matches the restriction of :func:`restrict_gradients`.
        """
        names = select_parameters(task.model, self.config.params, frozen=self.config.frozen)
        if self.only is None:
            return names
        kept = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in self.only)]
        if not kept:
            raise SpecError([
                f"ensemble: differentiates only parameters matching {list(self.only)}, and none of the gradient "
                f"source's selection does ({', '.join(names)}); for 'lora', the model needs LoRA layers "
                "(attrkit.functional.train_lora_adapters)"
            ])
        return kept

    def dimension(self, task: AttributionTask) -> int:
        """Number of selected parameter entries, ``p``."""
        return flat_dimension(task.model, self.names(task))

    def _grads(self, task: AttributionTask, fn: Any, member: Member, batch: Any) -> Any:
        return per_example_gradients(task.model, fn, member.state, to_device(batch, task.device), self.names(task))

    def factors(self, task: AttributionTask, fn: Any, member: Member, batch: Any) -> FactoredGradients:
        """The per-example gradients of ``fn`` as per-layer factors plus exact fallback gradients
        (:func:`attrkit.functional.factored_gradients`), for sources that provide ``STRUCTURED``:
        ``materialize()`` equals :meth:`loss_gradients` (of ``fn``) to round-off."""
        plan = plan_factors(task.model, self.names(task))
        return factored_gradients(task.model, fn, member.state, to_device(batch, task.device), plan)

    def loss_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]`` (or a subclass's equivalent): per-example gradients of ``task.loss_fn``."""
        return self._grads(task, task.loss_fn, member, batch)

    def target_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]`` (or a subclass's equivalent): per-example gradients of ``task.target``."""
        return self._grads(task, task.target, member, batch)


def restrict_gradients(source: Any, patterns: Sequence[str], who: str) -> ParameterGradients:
    """A copy of ``source`` that differentiates only parameters also matching ``patterns``.

    Used by ensembles whose members differ only in some parameters (``lora``: the adapters).

    Raises:
        SpecError: ``source`` does not select parameters by name (e.g. ``last-layer``).
    """
    if not isinstance(source, ParameterGradients):
        raise SpecError([
            f"ensemble {who!r} differentiates only the parameters matching {list(patterns)}, which needs a "
            f"gradient source that selects parameters by name (per-example, factored, group); "
            f"{source.name!r} does not"
        ])
    out = copy.copy(source)
    out.only = tuple(patterns)
    return out
