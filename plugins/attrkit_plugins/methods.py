"""Gradient-similarity methods: ``grad-dot`` and ``grad-cos``."""

from __future__ import annotations

from typing import ClassVar

import attrs

from attrkit import hookimpl
from attrkit.gradient_method import GradientAttributor


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


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [GradDot, GradCos]
