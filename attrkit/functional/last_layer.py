"""Last-layer features and gradients from one batched forward and backward pass.

For a model whose last ``nn.Linear`` layer maps penultimate features ``h`` to logits
``z = W h + c``, the gradient of an example's loss w.r.t. ``(W, c)`` is the outer
product ``dz ⊗ h`` (and ``dz``), where ``dz = ∂loss/∂z`` of that example. All ``dz``
come from one backward pass of the *summed* loss, which is exact when examples do not
interact — true in eval mode (dropout off, batch-norm on running statistics) for a
``loss_fn`` that returns one independent value per example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.func import functional_call

from attrkit.data import batch_size
from attrkit.errors import ArgumentError, LossShapeError, SpecError
from attrkit.functional.gradients import BoundLoss, eval_mode

__all__ = ["last_layer_features", "last_layer_gradients", "last_layer_parameters", "resolve_linear_layer"]


def resolve_linear_layer(model: torch.nn.Module, layer: str | None = None) -> str:
    """The module name of the model's last ``nn.Linear`` layer, or ``layer`` checked.

    Args:
        model: the network.
        layer: a module name (``"fc2"``, ``"head.out"``); ``None`` picks the last
            ``nn.Linear`` in ``model.named_modules()`` order.

    Returns:
        The layer's module name.

    Raises:
        ValueError: ``model`` has no ``nn.Linear``, or ``layer`` is not the name of one
            (the message lists the model's ``nn.Linear`` layers).
    """
    linears = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    if not linears:
        raise ArgumentError(
            f"last-layer gradients need an nn.Linear output layer, but {type(model).__name__} has none; "
            "use the 'per-example' gradient source with params=[...] instead"
        )
    if layer is None:
        return linears[-1]
    if layer not in linears:
        raise ArgumentError(f"layer {layer!r} is not an nn.Linear module of the model; its nn.Linear layers are: {', '.join(linears)}")
    return layer


def last_layer_parameters(model: torch.nn.Module, layer: str, frozen: bool = False) -> list[str]:
    """The parameters of ``layer`` to differentiate: its trainable ``weight`` and ``bias``.

    As everywhere in attrkit (:func:`attrkit.functional.gradients.select_parameters`),
    parameters with ``requires_grad=False`` are left out unless ``frozen=True``.

    Args:
        model: the network.
        layer: module name of an ``nn.Linear`` (see :func:`resolve_linear_layer`).
        frozen: include frozen parameters.

    Returns:
        ``["<layer>.weight", "<layer>.bias"]``, or the part of it selected.

    Raises:
        SpecError: every parameter of the layer is frozen (and ``frozen`` is false).
    """
    module = model.get_submodule(layer)
    params = [(f"{layer}.{n}", p) for n, p in module.named_parameters(recurse=False)]
    names = [n for n, p in params if frozen or p.requires_grad]
    if names:
        return names
    raise SpecError([
        f"gradients: 'last-layer' differentiates layer {layer!r} ({', '.join(n for n, _ in params)}), whose parameters "
        "all have requires_grad=False (frozen); attrkit differentiates trainable parameters by default; set "
        "gradients.frozen=true to include frozen ones, unfreeze them with requires_grad_(True), or name a trainable "
        "nn.Linear with gradients.layer"
    ])


def last_layer_features(
    model: torch.nn.Module,
    fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    state: Mapping[str, torch.Tensor],
    batch: Any,
    layer: str,
    positions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of ``layer`` and the per-example loss gradient w.r.t. its outputs.

    One forward pass of ``fn`` on the whole batch with the weights in ``state``
    (swapped in by ``functional_call``, in eval mode) and one backward pass of
    ``fn(...).sum()`` down to the layer's output only. Assumes examples do not interact
    in eval mode, so that row ``i`` of ``∂Σ_j loss_j / ∂z`` is ``∂loss_i / ∂z_i``.

    Args:
        model: the module ``fn`` calls (its weights are not used or changed).
        fn: ``fn(model, batch) -> Tensor[b]``, one loss-like value per example.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        batch: a tensor, tuple/list or dict of tensors with ``b`` examples.
        layer: module name of an ``nn.Linear`` that ``fn`` calls exactly once, on a
            ``Tensor[b, d]`` (see :func:`resolve_linear_layer`).
        positions: also accept a layer applied at several positions per example
            (``Tensor[b, ..., d]``, a sequence model's head on every token); ``h`` and ``dz``
            then keep a positions axis, ``[b, T, d]`` and ``[b, T, C]``.

    Returns:
        ``(h, dz)``: ``h`` the layer's input ``Tensor[b, d]`` (penultimate features) and
        ``dz`` the gradient of each example's value w.r.t. its own layer output
        ``Tensor[b, C]``, both detached, in the model's dtype.

    Raises:
        LossShapeError: ``fn`` does not return ``Tensor[b]``.
        ValueError: the layer is not called exactly once on ``Tensor[b, d]``, or ``fn``
            does not depend on its output.
    """
    b = batch_size(batch)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def capture(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        logits = output.detach().requires_grad_(True)
        seen.append((inputs[0].detach(), logits))
        return logits

    bound = BoundLoss(model, fn)
    weights = {f"model.{k}": v.detach() for k, v in state.items()}
    handle = model.get_submodule(layer).register_forward_hook(capture)
    try:
        with eval_mode(model), torch.enable_grad():
            values = functional_call(bound, weights, (batch,))
    finally:
        handle.remove()
    if not isinstance(values, torch.Tensor) or values.shape != (b,):
        got = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise LossShapeError(
            f"loss_fn/target_fn must return one value per example, Tensor[{b}]; got {got}. "
            "Use reduction='none' and do not average over the batch."
        )
    if len(seen) != 1:
        raise ArgumentError(
            f"layer {layer!r} was called {len(seen)} times for one batch; last-layer gradients need it called "
            "exactly once (for a shared or repeated layer use the 'per-example' gradient source)"
        )
    h, logits = seen[0]
    sequence = positions and h.dim() > 2 and h.shape[0] == b
    if not sequence and (h.dim() != 2 or h.shape[0] != b):
        raise ArgumentError(
            f"layer {layer!r} must see one feature vector per example, Tensor[{b}, d]; its input has shape "
            f"{tuple(h.shape)} (for sequence models use the 'per-example' gradient source)"
        )
    if not values.requires_grad:
        raise ArgumentError(f"loss_fn/target_fn does not depend on the output of layer {layer!r}; pick the layer that produces the logits")
    (dz,) = torch.autograd.grad(values.sum(), logits)
    if sequence:
        return h.reshape(b, -1, h.shape[-1]), dz.reshape(b, -1, dz.shape[-1])
    return h, dz


def last_layer_gradients(h: torch.Tensor, dz: torch.Tensor, bias: bool = True, weight: bool = True) -> torch.Tensor:
    """Per-example gradients of a Linear layer's ``weight`` then ``bias``, flattened.

    Args:
        h: ``Tensor[b, d]``, the layer's inputs (or ``[b, T, d]`` at ``T`` positions each).
        dz: ``Tensor[b, C]``, the loss gradients w.r.t. its outputs (or ``[b, T, C]``: the
            gradient is then the sum over positions, ``Σ_t dz_t h_tᵀ``).
        bias: include the bias gradient (``dz`` itself); false when the layer has no
            bias or it is not differentiated.
        weight: include the weight gradient; false when it is not differentiated (frozen).

    Returns:
        ``Tensor[b, C*d + C]`` (``[b, C*d]`` without bias, ``[b, C]`` without weight): row
        ``i`` is ``vec(dz_i h_iᵀ)`` (row-major, as ``weight.reshape(-1)``) followed by ``dz_i``,
        the order the ``per-example`` source uses for ``[layer.weight, layer.bias]``.
    """
    if h.dim() == 3:
        parts = [torch.einsum("btc,btd->bcd", dz, h).reshape(dz.shape[0], -1)] if weight else []
        parts += [dz.sum(1)] if bias else []
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    parts = [(dz.unsqueeze(2) * h.unsqueeze(1)).reshape(dz.shape[0], -1)] if weight else []
    parts += [dz] if bias else []
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
