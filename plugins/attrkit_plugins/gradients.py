"""Gradient sources: ``per-example`` (``torch.func`` vmap of grad)."""

from __future__ import annotations

from typing import ClassVar

import attrs

from attrkit.plugin import (
    HVP,
    PER_EXAMPLE,
    STRUCTURED,
    ParameterGradients,
    frozen_field,
    hookimpl,
    params_field,
    products_field,
)


@attrs.frozen(kw_only=True)
class PerExampleConfig:
    """Config of ``per-example``.

    Attributes:
        params: ``fnmatch`` patterns of parameter names to differentiate
            (``["fc2.*"]`` for the last layer of a model with ``fc2``); default all the
            trainable ones.
        frozen: include parameters with ``requires_grad=False`` (frozen); by default only
            the trainable parameters are differentiated, and ``params`` chooses among them.
        products: how inner products of these gradients are taken where no projector or
            solver transforms them (grad-dot, grad-cos, TracIn): ``"auto"`` keeps the
            ``nn.Linear`` / ``nn.Conv`` layers where it is cheaper as per-layer factors and
            never forms their gradients, ``"dense"`` forms them, ``"structured"`` keeps every
            such layer as factors (see :func:`attrkit.fields.products_field`). Scores agree to
            float round-off.
    """

    params: tuple[str, ...] = params_field()
    frozen: bool = frozen_field()
    products: str = products_field()


class PerExampleGradients(ParameterGradients):
    """Exact per-example gradients of the loss and the target, ``Tensor[b, p]``.

    Uses ``torch.func.vmap`` over ``grad`` of ``loss_fn(model, batch)`` evaluated one
    example at a time with the member's weights swapped in by ``functional_call``, in
    eval mode (batch-norm uses its running statistics). Memory: ``b * p`` floats per batch.

    Example:
        >>> attrkit.compose({"method": "grad-dot", "gradients": {"name": "per-example", "params": ["fc.*"]}}, task)  # doctest: +SKIP
    """

    name: ClassVar[str] = "per-example"
    Config: ClassVar[type] = PerExampleConfig
    provides: ClassVar[frozenset[str]] = frozenset({PER_EXAMPLE, HVP, STRUCTURED})


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [PerExampleGradients]
