"""Value objects handed between components during ``fit``: members and fit contexts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import torch

    from attrkit.functional.gradient_factors import FactoredGradients
    from attrkit.feature_matrix import FeatureMatrix
    from attrkit.protocols import GradientSource
    from attrkit.task import AttributionTask

__all__ = ["FitContext", "Member"]


@attrs.frozen(kw_only=True)
class Member:
    """One term of the ensemble sum: a full model state, its weight and (optionally) a patch.

    Attributes:
        state: ``{name: Tensor}`` of every parameter and buffer of the task's model.
        weight: ``w_m`` in ``score = Σ_m w_m <…>`` (dimensionless).
        label: human-readable provenance (``"checkpoint 0"``).
        patch: ``patch(model) -> context manager`` that changes how ``model`` computes
            while entered (a dropout ensemble installs its fixed masks); ``None`` for none.
    """

    state: Mapping[str, torch.Tensor] = attrs.field(repr=False)
    weight: float = 1.0
    label: str = "model"
    patch: Callable[[torch.nn.Module], contextlib.AbstractContextManager[Any]] | None = attrs.field(
        default=None, repr=False
    )

    def applied(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Context in which ``model`` computes as this member (a no-op without ``patch``)."""
        return self.patch(model) if self.patch is not None else contextlib.nullcontext()


@attrs.frozen(kw_only=True)
class FitContext:
    """Everything a projector, solver or grouper may read while fitting.

    Attributes:
        task: the attribution task.
        member: the member being fitted.
        train: the (fixed-order) training batches.
        gradients: the spec's gradient source.
        dimension: ``p``, length of one raw gradient vector.
        n_train: number of training examples (of groups, for a solver fitted on group
            features); ``None`` before the training set has been read (a projector's fit).
        features: ``Tensor[n_train, k]`` projected training features, once computed, when
            they are held whole in this process's memory; ``None`` when they are streamed
            from disk (a ``memory_budget`` they exceed) or split over the ranks of a
            distributed run. A feature-space solver that does not declare
            ``streams_features`` is given them anyway, gathered (within the budget).
        feature_matrix: the same features as a :class:`~attrkit.feature_matrix.FeatureMatrix`,
            once computed, always: read it tile by tile (``tiles()``) or through its
            reductions over every rank's rows (``gram()``, ``r_factor()``, ``sum_rows_by()``);
            in distributed mode its tiles hold this rank's rows only (``partitioned``).
        factors: the training set's per-example loss gradients as
            :class:`~attrkit.functional.gradient_factors.FactoredGradients` blocks (re-iterable,
            ``len`` blocks), when the engine holds them as packed factor rows (structured
            products, every layer at one position, nothing skipped); else ``None``. A
            parameter-space solver may fit from them instead of passing over ``train``.
    """

    task: AttributionTask
    member: Member
    train: Iterable[Any] = attrs.field(repr=False)
    gradients: GradientSource
    dimension: int
    n_train: int | None = None
    features: torch.Tensor | None = attrs.field(default=None, repr=False)
    feature_matrix: FeatureMatrix | None = attrs.field(default=None, repr=False)
    factors: Iterable[FactoredGradients] | None = attrs.field(default=None, repr=False)
