"""What an attributor checks about the weights it is fitted at: finite, unchanged during
``fit``, and — when they are the model's own — unchanged until it attributes."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attrkit import checks
from attrkit.context import Member
from attrkit.finite import check_state
from attrkit.task import AttributionTask
from attrkit.weights_guard import WeightsGuard

__all__ = ["FitGuard"]

_DURING_FIX = ("loss_fn and target_fn must not change weights or buffers in place (no optimizer steps, no .data "
               "writes, no model.train() with batch-norm); the features were computed at changing weights, fit again "
               "once it is fixed")
_SINCE_FIX = ("the fitted features describe the weights at fit time; fit again (attributor.fit(train)) to attribute "
              "the model as it is now, or attribute a copy of the model taken before training it further "
              "(copy.deepcopy(model))")


def _model_tensors(task: AttributionTask) -> dict[str, torch.Tensor]:
    tensors = {n: p for n, p in task.model.named_parameters()}
    tensors.update({n: b for n, b in task.model.named_buffers()})
    return tensors


class FitGuard:
    """Checks the members' weights at ``fit`` and remembers them for later calls.

    Args:
        task: the attribution task.
        members: the members being fitted.

    Raises:
        NonFiniteError: a member's weights hold NaN or infinite values.
    """

    def __init__(self, task: AttributionTask, members: Sequence[Member]):
        self._during = self._since = None
        if not checks.enabled():
            return
        unique: dict[int, tuple[str, torch.Tensor]] = {}
        for member in members:
            check_state(member.state, member.label if member.label != "model" else "the model")
            for name, tensor in member.state.items():
                unique.setdefault(id(tensor), (f"{member.label}: {name}", tensor))
        self._during = WeightsGuard(dict(unique.values()))
        self._since = WeightsGuard(_model_tensors(task)) if task.checkpoints is None else None

    def finished(self) -> None:
        """Call at the end of ``fit``.

        Raises:
            ModelChangedError: weights or buffers changed while fitting.
        """
        if self._during is not None:
            self._during.check(None, "during fit", _DURING_FIX)

    def check(self, task: AttributionTask) -> None:
        """Call before attributing: the model's weights must be those fitted at, when the members are them.

        Raises:
            ModelChangedError: naming the parameters or buffers that changed since ``fit``.
        """
        if self._since is not None and checks.enabled():
            self._since.check(_model_tensors(task), "since fit", _SINCE_FIX)
