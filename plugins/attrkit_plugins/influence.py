"""Influence functions: ``if`` and ``relatif``.

    score(t, i) = Σ_m w_m · < Precond_m(Proj(∇target_t)), Proj(∇loss_i) >,  Precond = (H + λI)⁻¹

The solver is any registered one. A *parameter-space* solver (explicit, CG, LiSSA, Arnoldi,
K-FAC, EK-FAC, DataInf) is applied to the raw test gradient *before* projection: the
inverse curvature belongs to the parameter space, and with a projection ``P`` the score
is then ``(H⁻¹g_t)ᵀ P Pᵀ g_i``, which estimates ``g_tᵀ H⁻¹ g_i`` because ``E[P Pᵀ] = I``
for the random projectors (and equals it for ``identity``); applying ``H⁻¹`` after
projecting would need ``H`` in feature space, which is what a *feature-space* solver
(``gauss-newton``: ``(ΦᵀΦ + λI)⁻¹``) provides. Each member's test side is solved once per
test batch and reused for every training example; the curvature is fitted on the whole
training set, so scores do not depend on the loader's batch size.

Sign: ``H⁻¹`` of a loss is positive definite near a minimum, so ``score > 0`` means that
up-weighting training example ``i`` lowers the target at ``t`` (a proponent); removing it
raises the target by about ``score / n`` (the classical influence of Koh & Liang, 2017,
with the mean training loss's Hessian).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import Fit, GradientAttributor, float_field, hookimpl, self_influence

SLOTS = frozenset({"gradients", "projector", "solver", "grouper", "ensemble"})
DEFAULTS = {"gradients": "per-example", "projector": "identity", "solver": "cg", "grouper": "singleton"}


@attrs.frozen(kw_only=True)
class InfluenceConfig:
    """``if`` has no parameters of its own: the damping is the solver's ``regularization``."""


class InfluenceFunction(GradientAttributor):
    """Influence functions with any solver, projector, grouper and ensemble.

    Example:
        >>> spec = {"method": "if", "solver": {"name": "cg", "regularization": 1e-3, "max_iter": 10}}
        >>> scores = attrkit.compose(spec, task).fit(train).attribute(test)  # doctest: +SKIP
    """

    name: ClassVar[str] = "if"
    Config: ClassVar[type] = InfluenceConfig
    slots: ClassVar[frozenset[str]] = SLOTS
    defaults: ClassVar[Mapping[str, str]] = DEFAULTS


@attrs.frozen(kw_only=True)
class RelatIFConfig:
    """Config of ``relatif``.

    Attributes:
        eps: floor on the self-influence before its square root (guards a
            non-positive-definite curvature).
    """

    eps: float = float_field(1e-12, gt=0.0)


class RelatIF(GradientAttributor):
    """RelatIF's ℓ-relative influence (Barshan et al., 2020): ``IF(t, i) / sqrt(IF(i, i))``.

    Dividing by the square root of each training point's self-influence removes the
    advantage of outliers with large, poorly-conditioned gradients. ``fit`` costs one more
    pass over the training data (the self-influences). ``self_influence`` returns
    ``sqrt(IF(i, i))``, the method's score of a point for itself.
    """

    name: ClassVar[str] = "relatif"
    Config: ClassVar[type] = RelatIFConfig
    slots: ClassVar[frozenset[str]] = SLOTS
    defaults: ClassVar[Mapping[str, str]] = DEFAULTS

    def column_scale(self, fit: Fit, train: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n]``, ``1 / sqrt(IF(i, i))``: ``fit`` fits as ``if``, then divides every training column
        by ``sqrt(IF(i, i))`` (one more pass over ``train``)."""
        return self_influence(self, fit, train).clamp_min(self.config.eps).rsqrt()

    def self_influence(self, train: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n]``: ``IF(i, i) / sqrt(IF(i, i)) = sqrt(IF(i, i))``."""
        return super().self_influence(train).clamp_min(self.config.eps).sqrt()


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [InfluenceFunction, RelatIF]
