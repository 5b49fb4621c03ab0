"""Property functions: a whole-model quantity ``g(θ)`` to attribute instead of per-test targets.

A :class:`Property` is loss-like (lower is better), like every target in attrkit:
``scores[j, i] > 0`` means training example (or group) ``i`` is a proponent of property
``j`` — training on it lowers ``g``. Declare properties on the task
(``AttributionTask(..., properties=[...])``) and call ``attributor.attribute()`` with no
test loader to get ``Tensor[n_properties, n_train or n_groups]``; a gradient method
differentiates ``g`` w.r.t. the parameters its gradient source selects, at each member.

The helpers evaluate ``g`` over a loader with plain ``model(x)`` calls; batches are
moved to the model's device. For ``g`` = the mean of a per-example target, the
property's scores are the mean over those examples of the per-example scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch.func import functional_call, grad

from attrkit.data import batch_size, to_device
from attrkit.errors import DataLoaderError, LossShapeError
from attrkit.functional.gradients import eval_mode
from attrkit.targets import negated_margin

__all__ = ["Property", "accuracy_surrogate", "loss_gap", "mean_loss", "property_gradient"]

#: ``fn(model) -> Tensor[]``: a differentiable, loss-like scalar.
PropertyFn = Callable[[torch.nn.Module], torch.Tensor]


@attrs.frozen(kw_only=True)
class Property:
    """A named, loss-like scalar function of the model.

    Attributes:
        name: shown in reports (``"mean test loss"``).
        fn: ``fn(model) -> Tensor[]``, differentiable in the model's parameters, written
            with plain ``model(x)`` calls (attrkit swaps the weights in).

    Example:
        >>> prop = Property(name="weight norm", fn=lambda model: model.weight.square().sum())
    """

    name: str = attrs.field(validator=[attrs.validators.instance_of(str), attrs.validators.min_len(1)])
    fn: PropertyFn = attrs.field(validator=attrs.validators.is_callable())

    def __call__(self, model: torch.nn.Module) -> torch.Tensor:
        """``Tensor[]``: the property's value for ``model``.

        Raises:
            LossShapeError: ``fn`` does not return a scalar tensor.
        """
        value = self.fn(model)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise LossShapeError(f"property {self.name!r} must return a scalar Tensor[] (e.g. a mean), got {got}")
        return value


class _BoundProperty(torch.nn.Module):
    """``prop(model)`` as a module, so ``functional_call`` can swap its weights."""

    def __init__(self, model: torch.nn.Module, prop: Property):
        super().__init__()
        self.model = model
        self.prop = prop

    def forward(self) -> torch.Tensor:
        return self.prop(self.model)


def property_gradient(
    model: torch.nn.Module, prop: Property, state: Mapping[str, torch.Tensor], names: Sequence[str]
) -> torch.Tensor:
    """``∇θ g``: the gradient of a property w.r.t. the named parameters, at ``state``.

    One ``torch.func.grad`` of ``prop(model)`` through ``functional_call`` with the
    weights in ``state`` swapped in (the model's own are not used or changed), in eval
    mode (dropout off, batch-norm on running statistics).

    Args:
        model: the module ``prop`` calls.
        prop: the property ``g``.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        names: parameters to differentiate (the others are held fixed).

    Returns:
        ``Tensor[p]`` in the parameters' dtype: the gradients in ``names`` order, each
        flattened (the ``per-example`` layout).

    Raises:
        LossShapeError: ``prop`` does not return a scalar.
    """
    bound = _BoundProperty(model, prop)
    chosen = set(names)
    fixed = {f"model.{k}": v for k, v in state.items() if k not in chosen}

    def value(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return functional_call(bound, {**fixed, **{f"model.{k}": v for k, v in params.items()}}, ())

    with eval_mode(model):
        grads = grad(value)({n: state[n] for n in names})
    return torch.cat([grads[n].reshape(-1) for n in names])


def _device(model: torch.nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _mean(model: torch.nn.Module, loader: Iterable[Any], fn: Callable[[torch.nn.Module, Any], torch.Tensor]) -> torch.Tensor:
    """``Tensor[]``: the mean of ``fn``'s per-example values over ``loader``."""
    total, count = None, 0
    for batch in loader:
        b = batch_size(batch)
        values = fn(model, to_device(batch, _device(model)))
        if not isinstance(values, torch.Tensor) or values.shape != (b,):
            got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise LossShapeError(f"a property's per-example function must return Tensor[{b}], got {got}")
        total = values.sum() if total is None else total + values.sum()
        count += b
    if not count:
        raise DataLoaderError("a property's loader yielded no example")
    return total / count


def mean_loss(loader: Iterable[Any], loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor], name: str = "mean loss") -> Property:
    """``g(θ) = (1/n) Σ_{z ∈ loader} loss_fn(θ, z)``, the mean per-example loss over ``loader``.

    Args:
        loader: fixed batches (e.g. a test ``DataLoader``), iterated on every evaluation.
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, as the task's.
        name: the property's name.

    Returns:
        The :class:`Property`. Its scores are the mean over the loader's examples of
        the per-example scores with ``loss_fn`` as the target (the gradient is linear).
    """
    return Property(name=name, fn=lambda model: _mean(model, loader, loss_fn))


def _error_probability(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    return torch.sigmoid(negated_margin(model, batch))


def accuracy_surrogate(loader: Iterable[Any], name: str = "expected error") -> Property:
    """A differentiable stand-in for the error rate (1 − accuracy) over ``loader``.

    ``g(θ) = (1/n) Σ σ(−margin) = (1/n) Σ (1 − p_θ(y | x))``, the mean of the sigmoid of
    the negated correct-class margin ``logsumexp_{c≠y} z_c − z_y``
    (:func:`attrkit.negated_margin`), which equals one minus the softmax probability of
    the correct class: the expected 0-1 error of the model's predictive distribution.
    It lies in ``[0, 1]``; lower means more accurate.

    Args:
        loader: classification batches ``(x, y, ...)`` or dicts with ``"labels"``.
        name: the property's name.

    Returns:
        The :class:`Property`.
    """
    return Property(name=name, fn=lambda model: _mean(model, loader, _error_probability))


def loss_gap(
    loader_a: Iterable[Any],
    loader_b: Iterable[Any],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    name: str = "loss gap",
) -> Property:
    """``g(θ) = mean loss on loader_a − mean loss on loader_b`` (e.g. a fairness gap between
    two subpopulations); lowering it helps ``a`` relative to ``b``.

    Args:
        loader_a, loader_b: the two sets of batches.
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``.
        name: the property's name.

    Returns:
        The :class:`Property`.
    """
    return Property(name=name, fn=lambda model: _mean(model, loader_a, loss_fn) - _mean(model, loader_b, loss_fn))
