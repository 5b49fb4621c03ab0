"""Gradient-similarity methods: ``grad-dot``, ``grad-cos`` and ``tracin`` (TracInCP).

All three are the shared score formula of :class:`~attrkit.engine.GradientAttributor`
with no preconditioner; they differ only in normalisation (``grad-cos``) and in the member
weights (``tracin``: the learning rate of each checkpoint).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import attrs

from attrkit.plugin import (
    ArgumentError,
    AttributionTask,
    GradientAttributor,
    Member,
    Part,
    SpecError,
    as_float,
    hookimpl,
    member_count,
)


@attrs.frozen(kw_only=True)
class GradSimilarityConfig:
    """``grad-dot`` and ``grad-cos`` have no parameters of their own."""


class GradDot(GradientAttributor):
    """``score(t, i) = Σ_m w_m <P ∇target_t, P ∇loss_i>`` (Charpiat et al., 2019).

    A first-order estimate of how much one gradient step on ``i`` lowers the target
    at ``t``. Slots: gradients, projector, grouper, ensemble.

    Example:
        >>> scores = attrkit.compose({"method": "grad-dot"}, task).fit(train).attribute(test)  # doctest: +SKIP
    """

    name: ClassVar[str] = "grad-dot"
    Config: ClassVar[type] = GradSimilarityConfig


class GradCos(GradientAttributor):
    """Cosine of the (projected) target and training gradients, in ``[-1, 1]`` per member.

    Robust to examples with outsized gradient norms. With a grouper, each group's
    summed gradient is normalised.
    """

    name: ClassVar[str] = "grad-cos"
    Config: ClassVar[type] = GradSimilarityConfig
    normalize: ClassVar[bool] = True


def _learning_rates(value: object) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not hasattr(value, "__iter__"):  # one rate for every checkpoint
        rates = (as_float(value, "learning_rates"),)  # refuses a bool
    else:
        rates = tuple(as_float(v, f"learning_rates[{i}]") for i, v in enumerate(value))  # type: ignore[union-attr]
    if not rates or any(not 0 < r < float("inf") for r in rates):
        raise ArgumentError(f"learning rates must be positive finite numbers, got {list(rates)}")
    return rates


@attrs.frozen(kw_only=True)
class TracInConfig:
    """Config of ``tracin``.

    Attributes:
        learning_rates: ``η_m`` of each checkpoint, in checkpoint order; one number is
            used for every checkpoint; ``None`` means 1 for each.
    """

    learning_rates: tuple[float, ...] | None = attrs.field(
        default=None, converter=_learning_rates, metadata={"examples": (None, (0.5,))}
    )


class TracIn(GradientAttributor):
    """TracInCP (Pruthi et al., 2020): ``score(t, i) = Σ_m η_m <∇target_t(θ_m), ∇loss_i(θ_m)>``.

    The members are the checkpoints of the training run (the task's checkpoints, or any
    ensemble's members), each weighted by its learning rate ``η_m`` times the member's own
    weight. With one checkpoint and ``η = 1`` it is ``grad-dot``. Slots: gradients,
    projector, grouper, ensemble.

    Example:
        >>> task = attrkit.AttributionTask(model=model, loss_fn=loss, checkpoints=[s1, s2, s3])  # doctest: +SKIP
        >>> attrkit.compose({"method": "tracin", "learning_rates": [0.1, 0.05, 0.01]}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "tracin"
    Config: ClassVar[type] = TracInConfig

    @classmethod
    def check(cls, config: TracInConfig, task: AttributionTask, parts: Mapping[str, Part]) -> list[str]:
        """One learning rate, or one per member, when the member count is known before fitting."""
        rates, count = config.learning_rates, member_count(task, parts)
        if rates is None or count is None or len(rates) in (1, count):
            return []
        return [f"method.learning_rates: {len(rates)} learning rates for {count} checkpoints (ensemble members); "
                "give one per member, in order, or a single rate for all"]

    def members(self) -> list[Member]:
        """The ensemble's (or task's) members with weights multiplied by the learning rates.

        Raises:
            SpecError: as many learning rates as members is required (or exactly one).
        """
        members = super().members()
        rates = self.config.learning_rates or (1.0,)
        if len(rates) == 1:
            rates = rates * len(members)
        if len(rates) != len(members):
            raise SpecError([f"method.learning_rates: {len(rates)} learning rates for {len(members)} checkpoints"])
        return [attrs.evolve(m, weight=m.weight * r) for m, r in zip(members, rates)]


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [GradDot, GradCos, TracIn]
