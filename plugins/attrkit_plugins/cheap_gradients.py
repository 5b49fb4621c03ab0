"""Gradient sources cheaper than full per-example gradients: ``last-layer`` and ``group``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import (
    GROUP,
    HVP,
    LAST_LAYER,
    PER_EXAMPLE,
    AttributionTask,
    AttrkitError,
    GradientSource,
    Member,
    ParameterGradients,
    Part,
    frozen_field,
    hookimpl,
    params_field,
    to_device,
)
from attrkit.functional.group_gradients import group_gradients
from attrkit.functional.last_layer import (
    last_layer_features,
    last_layer_gradients,
    last_layer_parameters,
    resolve_linear_layer,
)


@attrs.frozen(kw_only=True)
class LastLayerConfig:
    """Config of ``last-layer``.

    Attributes:
        layer: module name of the last ``nn.Linear`` (``"fc2"``); default: the last
            ``nn.Linear`` in ``model.named_modules()``.
        frozen: include the layer's parameters that have ``requires_grad=False``. By
            default only its trainable ones are differentiated (a frozen bias is left
            out), and a layer whose parameters are all frozen is refused.
    """

    layer: str | None = attrs.field(
        default=None,
        validator=attrs.validators.optional([attrs.validators.instance_of(str), attrs.validators.min_len(1)]),
        metadata={"examples": (None,)},
    )
    frozen: bool = frozen_field()


class LastLayerGradients(GradientSource):
    """Exact per-example gradients of the last ``nn.Linear`` layer's weight and bias.

    One forward pass and one backward pass (down to the logits only) per batch give
    the penultimate features ``h [b, d]`` and logit gradients ``dz [b, C]``; the
    gradients are the outer products ``dz ⊗ h`` then ``dz``, ``Tensor[b, C*d + C]``,
    equal to ``per-example`` with ``params=["<layer>.weight", "<layer>.bias"]``.
    As there, parameters with ``requires_grad=False`` are left out unless ``frozen``
    is set (:func:`~attrkit.functional.last_layer.last_layer_parameters`).
    Assumes examples do not interact in eval mode (see
    :func:`attrkit.functional.last_layer.last_layer_features`).

    Example:
        >>> attrkit.compose({"method": "grad-dot", "gradients": "last-layer"}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "last-layer"
    Config: ClassVar[type] = LastLayerConfig
    provides: ClassVar[frozenset[str]] = frozenset({PER_EXAMPLE, LAST_LAYER})

    @classmethod
    def check(cls, config: LastLayerConfig, task: AttributionTask, parts: Mapping[str, Part]) -> list[str]:
        """The model must have the ``nn.Linear`` layer (``layer``, or any), with a parameter to differentiate."""
        try:
            cls(config).names(task)
        except AttrkitError as exc:
            return list(getattr(exc, "problems", [str(exc)]))
        return []

    def layer(self, task: AttributionTask) -> str:
        """Module name of the layer differentiated (``config.layer``, checked, or found)."""
        return resolve_linear_layer(task.model, self.config.layer)

    def names(self, task: AttributionTask) -> list[str]:
        """The layer's differentiated parameter names, in the order of the gradient vectors
        (weight, then bias; trainable ones only unless ``frozen``).

        Raises:
            SpecError: every parameter of the layer is frozen and ``frozen`` is false.
        """
        return last_layer_parameters(task.model, self.layer(task), frozen=self.config.frozen)

    def dimension(self, task: AttributionTask) -> int:
        """``p = C*d + C`` (``C*d`` without bias, ``C`` with a frozen weight) for a layer ``Linear(d, C)``."""
        params = dict(task.model.named_parameters())
        return sum(params[n].numel() for n in self.names(task))

    def last_layer_features(
        self, task: AttributionTask, member: Member, batch: Any, *, target: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h [b, d], dz [b, C])``: the layer's inputs and the gradients of the loss
        (``target=True``: of ``task.target``) w.r.t. its outputs, at ``member``."""
        fn = task.target if target else task.loss_fn
        return last_layer_features(task.model, fn, member.state, to_device(batch, task.device), self.layer(task))

    def _grads(self, task: AttributionTask, member: Member, batch: Any, target: bool) -> torch.Tensor:
        """The layer's gradients, summed over positions when it runs at several per example (a sequence head)."""
        names = self.names(task)
        fn = task.target if target else task.loss_fn
        h, dz = last_layer_features(task.model, fn, member.state, to_device(batch, task.device), self.layer(task),
                                    positions=True)
        return last_layer_gradients(h, dz, bias=names[-1].endswith(".bias"), weight=names[0].endswith(".weight"))

    def loss_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]``: last-layer gradients of ``task.loss_fn`` for each example."""
        return self._grads(task, member, batch, target=False)

    def target_gradients(self, task: AttributionTask, member: Member, batch: Any) -> torch.Tensor:
        """``Tensor[b, p]``: last-layer gradients of ``task.target`` for each example."""
        return self._grads(task, member, batch, target=True)


@attrs.frozen(kw_only=True)
class GroupConfig:
    """Config of ``group``.

    Attributes:
        params: ``fnmatch`` patterns of parameter names to differentiate; default all the
            trainable ones.
        frozen: include parameters with ``requires_grad=False`` (frozen); by default only
            the trainable parameters are differentiated, and ``params`` chooses among them.
    """

    params: tuple[str, ...] = params_field()
    frozen: bool = frozen_field()


class GroupGradients(ParameterGradients):
    """GGDA group gradients on the training side, per-example gradients on the test side.

    :meth:`group_gradients` returns one gradient of the summed training loss per
    group, ``Tensor[n_groups, p]``, from batched forward/backward passes (no
    per-example gradient is formed; see :mod:`attrkit.functional.group_gradients`).
    ``loss_gradients`` / ``target_gradients`` give exact per-example rows (``torch.func``
    vmap of grad), for test examples and for singleton groups.

    Example:
        >>> source = GroupGradients(GroupConfig())  # doctest: +SKIP
        >>> source.group_gradients(task, task.members()[0], train_loader, groups)  # doctest: +SKIP
    """

    name: ClassVar[str] = "group"
    Config: ClassVar[type] = GroupConfig
    provides: ClassVar[frozenset[str]] = frozenset({PER_EXAMPLE, HVP, GROUP})

    def group_gradients(
        self, task: AttributionTask, member: Member, batches: Iterable[Any], groups: torch.Tensor
    ) -> torch.Tensor:
        """``Tensor[n_groups, p]``: gradient of each group's summed ``task.loss_fn``.

        Args:
            task: the attribution task.
            member: the weights to evaluate at.
            batches: the fixed-order training batches.
            groups: ``LongTensor[n_train]``, group indices ``0..n_groups-1`` in loader order.

        Returns:
            ``Tensor[n_groups, p]`` in the model's dtype, ``n_groups = groups.max() + 1``.

        Raises:
            DataLoaderError: the loader holds more or fewer than ``n_train`` examples.
        """
        n_groups = int(groups.max()) + 1 if groups.numel() else 0
        moved = (to_device(batch, task.device) for batch in batches)
        return group_gradients(task.model, task.loss_fn, member.state, self.names(task), moved, groups, n_groups)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [LastLayerGradients, GroupGradients]
