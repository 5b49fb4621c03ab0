"""TRAK (Park et al., 2023): projected margin gradients, a feature-space Gauss-Newton inverse,
and the ensemble average of kernels times the average of the re-weighting ``Q``.

For members ``m = 1..M`` with normalised weights ``w̄_m`` (``Σ w̄_m = 1``):

    score(t, i) = [ Σ_m w̄_m · φ_m(t)ᵀ (Φ_mᵀ Φ_m + λI)⁻¹ φ_m(i) ] · Q̄_i,    Q̄_i = Σ_m w̄_m Q_m(i)

where ``φ_m(z) = Pᵀ ∇θ f(z; θ_m)`` is the projected gradient of the target ``f`` (the
negated correct-class margin by default) at member ``m``, ``Φ_m`` stacks it over the
training set, and ``Q_m(i) = 1 − p_m(y_i | x_i)`` is one minus the probability of the
correct class (for cross-entropy, ``∂loss/∂f``, so ``Q_i φ(i)`` is the loss gradient).

Sign: both sides use the *negated* margin, so their product is TRAK's and a positive score
means that training on ``i`` raises the margin at ``t`` (lowers the loss-like target): a proponent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import AttributionTask, GradientAttributor, Member, hookimpl, negated_margin, progress, to_device
from attrkit.functional.gradients import evaluate


@attrs.frozen(kw_only=True)
class TRAKConfig:
    """Config of ``trak``.

    Attributes:
        target: ``"auto"`` (the negated margin unless the task sets ``target_fn``),
            ``"margin"`` (always the negated margin) or ``"task"`` (the task's target).
        reweight: multiply by ``Q̄`` (one minus the correct-class probability,
            averaged over members); needs classification batches ``(x, y, ...)`` or dicts
            with ``"labels"``.
    """

    target: str = attrs.field(default="auto", validator=attrs.validators.in_(("auto", "margin", "task")))
    reweight: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool),
                                 metadata={"examples": (True, False)})


class TRAK(GradientAttributor):
    """TRAK with any projector, feature-space solver, grouper and ensemble.

    Defaults: ``per-example`` gradients, ``gaussian`` projector (set ``dim``), the
    ``gauss-newton`` solver (set ``regularization``). With the ``identity`` projector and
    one member it is the closed form ``φ_tᵀ (ΦᵀΦ + λI)⁻¹ φ_i · Q_i``. Ensembles (the
    task's checkpoints, ``checkpoints``, ``dropout``, ``lora``) are averaged as in the paper.

    Example:
        >>> spec = {"method": "trak", "projector": {"name": "gaussian", "dim": 2048},
        ...         "ensemble": {"name": "dropout", "members": 10}}
        >>> scores = attrkit.compose(spec, task).fit(train).attribute(test)  # doctest: +SKIP
    """

    name: ClassVar[str] = "trak"
    Config: ClassVar[type] = TRAKConfig
    slots: ClassVar[frozenset[str]] = frozenset({"gradients", "projector", "solver", "grouper", "ensemble"})
    defaults: ClassVar[Mapping[str, str]] = {
        "gradients": "per-example",
        "projector": "gaussian",
        "solver": "gauss-newton",
        "grouper": "singleton",
    }
    train_target: ClassVar[bool] = True

    def __init__(self, config: TRAKConfig, *, task: AttributionTask, parts: Mapping[str, Any], resolved: Any = None):
        margin = config.target == "margin" or (config.target == "auto" and task.target_fn is None)
        task = attrs.evolve(task, target_fn=negated_margin) if margin else task
        super().__init__(config, task=task, parts=parts, resolved=resolved)

    def members(self) -> list[Member]:
        """The members with weights normalised to sum to one (the paper's ensemble average)."""
        members = super().members()
        total = sum(m.weight for m in members)
        return [attrs.evolve(m, weight=m.weight / total) for m in members]

    def example_weights(self, members: list[Member], train: Iterable[Any]) -> torch.Tensor | None:
        """``Q̄ = Σ_m w̄_m (1 − p_m(y_i | x_i))``, ``Tensor[n_train]`` float64 (``None`` without ``reweight``).

        One pass over ``train``: each batch is read once and evaluated at every member.
        """
        if not self.config.reweight:
            return None
        margins: list[list[torch.Tensor]] = [[] for _ in members]
        for batch in progress(train, f"trak: Q ({len(members)} members)"):
            batch = to_device(batch, self.task.device)
            for member, out in zip(members, margins, strict=True):
                with member.applied(self.task.model):
                    out.append(evaluate(self.task.model, negated_margin, member.state, batch))
        total = 0.0
        for member, out in zip(members, margins, strict=True):
            total = total + member.weight * torch.sigmoid(torch.cat(out).double())
        return total


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [TRAK]
