"""Factored per-example gradients: which layers are factored, and their factors, computed.

:func:`plan_factors` splits the selected parameters into factored layers (exactly
``nn.Linear``, ``nn.Conv1d/2d`` with ``groups=1``) and *fallback* parameters (embeddings,
norms, attention's own weights, weights shared between modules); :func:`factored_gradients`
computes a block's :class:`~attrkit.functional.gradient_factors.FactoredGradients` (the
representation is described there).

Factors are taken exactly as :func:`per_example_gradients` takes gradients: one example
at a time under ``torch.func.vmap``, in eval mode, at the given state, so examples never
interact. Output gradients come from a zero tensor added to each layer's output by a
forward hook (gradient w.r.t. that tensor == gradient w.r.t. the output). Each call first
runs one example through plain autograd and checks that its factors reproduce the exact
weight gradients, so a weight also used outside its module's forward is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F
from torch.utils._pytree import tree_map

from attrkit.data import batch_size
from attrkit.errors import AttrkitError, FactorisationError, LossShapeError
from attrkit.functional.gradient_factors import FactoredGradients, LayerFactors
from attrkit.functional.gradients import BoundLoss, eval_mode, per_example_gradients, warn_untraceable

__all__ = ["FactorPlan", "FactorisationError", "factored_gradients", "plan_factors"]

_CONV = (torch.nn.Conv1d, torch.nn.Conv2d)


@attrs.frozen(kw_only=True)
class FactorPlan:
    """Which selected parameters are factored, and which fall back to exact gradients.

    Attributes:
        names: every selected parameter, in model order.
        layers: ``(module, weight or None, bias or None)`` per factored layer, model order.
        fallback: the other selected parameters, in model order.
        fallback_modules: ``"name (Type)"`` of each module owning a fallback parameter.
    """

    names: tuple[str, ...]
    layers: tuple[tuple[str, str | None, str | None], ...]
    fallback: tuple[str, ...]
    fallback_modules: tuple[str, ...]


def _factorable(module: torch.nn.Module) -> bool:
    # exact types: subclasses (e.g. attention's out_proj) may have their weight used elsewhere
    return type(module) is torch.nn.Linear or (type(module) in _CONV and module.groups == 1)


def plan_factors(model: torch.nn.Module, names: Sequence[str]) -> FactorPlan:
    """Split the selected parameters ``names`` into factored layers and fallback parameters.

    A weight or bias is factored when its module is exactly ``nn.Linear``,
    ``nn.Conv1d`` or ``nn.Conv2d`` (``groups=1``) and no other module holds it.

    Args:
        model: the model.
        names: selected parameter names, in model order (``select_parameters``).

    Returns:
        The :class:`FactorPlan`.
    """
    chosen, owners = set(names), {}
    modules = dict(model.named_modules())
    for module in modules.values():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(id(module))
    layers, factored = [], set()
    for mname, module in modules.items():
        if not _factorable(module):
            continue

        def own(attr: str) -> str | None:
            param, name = getattr(module, attr), f"{mname}.{attr}" if mname else attr
            return name if param is not None and name in chosen and len(owners[id(param)]) == 1 else None

        weight, bias = own("weight"), own("bias")
        if weight or bias:
            layers.append((mname, weight, bias))
            factored.update(n for n in (weight, bias) if n)
    fallback = tuple(n for n in names if n not in factored)
    owner_names = dict.fromkeys(n.rpartition(".")[0] for n in fallback)
    described = tuple(f"{m or '<root>'} ({type(model.get_submodule(m)).__name__})" for m in owner_names)
    return FactorPlan(names=tuple(names), layers=tuple(layers), fallback=fallback, fallback_modules=described)


def _conv_columns(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[n, C, *spatial] -> [n, L, C * prod(kernel)]``: the (padded) patch each output sees."""
    n = len(module.kernel_size)
    if module.padding == "same":
        pads = [(d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for d, k in zip(module.dilation, module.kernel_size)]
    else:
        pads = [(p, p) for p in ((0,) * n if module.padding == "valid" else module.padding)]
    if n == 1:  # a Conv1d is a Conv2d over a height of 1
        x, pads = x.unsqueeze(-2), [(0, 0), *pads]
    flat = [p for pair in reversed(pads) for p in pair]
    if any(flat):
        x = F.pad(x, flat, mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
    lift = lambda v: (1,) * (2 - n) + tuple(v)  # noqa: E731
    cols = F.unfold(x, lift(module.kernel_size), dilation=lift(module.dilation), stride=lift(module.stride))
    return cols.transpose(1, 2)


def _positions(module: torch.nn.Module, x: torch.Tensor, g: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked per-example input ``x`` and output gradient ``g`` -> ``[b, T, d_in]``, ``[b, T, d_out]``."""
    if not isinstance(module, _CONV):
        return x.reshape(b, -1, x.shape[-1]), g.reshape(b, -1, g.shape[-1])
    spatial = 2 if isinstance(module, torch.nn.Conv2d) else 1
    cols = _conv_columns(module, x.reshape(-1, *x.shape[-spatial - 1 :]))
    grads = g.reshape(b, -1, module.out_channels, math.prod(g.shape[-spatial:])).transpose(-1, -2)
    return cols.reshape(b, -1, cols.shape[-1]), grads.reshape(b, -1, module.out_channels)


def _run(model: torch.nn.Module, plan: FactorPlan, bound: BoundLoss, params: Mapping[str, torch.Tensor], example: Any,
         perturb: Callable[[int, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, list[int], list[torch.Tensor]]:
    """``fn`` on one example (a batch of 1) with a forward hook on each planned layer that
    records the call (layer index) and its input and adds ``perturb(call, output)`` to its
    output. Returns ``(value, calls, inputs)``."""
    calls: list[int] = []
    inputs: list[torch.Tensor] = []

    def hook(layer: int) -> Callable[..., torch.Tensor]:
        def record(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            calls.append(layer)
            inputs.append(args[0])
            return output + perturb(len(calls) - 1, output)

        return record

    handles = [model.get_submodule(m).register_forward_hook(hook(i)) for i, (m, _, _) in enumerate(plan.layers)]
    try:
        out = functional_call(bound, params, (example,))
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, torch.Tensor) or out.shape != (1,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LossShapeError(
            f"loss_fn/target_fn must return one value per example, Tensor[b]; for a batch of 1 it "
            f"returned shape {got}. Use reduction='none' and do not average over the batch."
        )
    return out[0], calls, inputs


def _layers(model: torch.nn.Module, plan: FactorPlan, calls: Sequence[int], xs: Sequence[torch.Tensor],
            gs: Sequence[torch.Tensor], b: int) -> tuple[LayerFactors, ...]:
    """Per-call stacked inputs/output gradients -> one :class:`LayerFactors` per layer (calls
    of one module are concatenated along positions)."""
    found: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {i: [] for i in range(len(plan.layers))}
    for layer, x, g in zip(calls, xs, gs, strict=True):
        module = model.get_submodule(plan.layers[layer][0])
        found[layer].append(_positions(module, x, g, b))
    out = []
    for i, (mname, weight, bias) in enumerate(plan.layers):
        module = model.get_submodule(mname)
        d_in = module.weight[0].numel() if weight else 0
        d_out = module.weight.shape[0]
        xs_i = [x[..., :d_in] for x, _ in found[i]] or [module.weight.new_zeros(b, 0, d_in)]
        gs_i = [g for _, g in found[i]] or [module.weight.new_zeros(b, 0, d_out)]
        inputs, grads = (parts[0] if len(parts) == 1 else torch.cat(parts, 1) for parts in (xs_i, gs_i))
        out.append(LayerFactors(module=mname, weight=weight, bias=bias, inputs=inputs, output_grads=grads))
    return tuple(out)


def _probe(model: torch.nn.Module, bound: BoundLoss, params: dict[str, torch.Tensor], plan: FactorPlan,
           example: Any) -> tuple[list[int], list[torch.Tensor]]:
    """One example through plain autograd: the layer calls, a zero of each call's output
    shape, and a check that the factors reproduce the weights' exact gradients.

    Raises:
        FactorisationError: a factored parameter also gets gradient from elsewhere.
    """
    trainable = [n for layer in plan.layers for n in layer[1:] if n]
    params = {**params, **{f"model.{n}": params[f"model.{n}"].detach().requires_grad_() for n in trainable}}
    zeros: list[torch.Tensor] = []

    def perturb(call: int, out: torch.Tensor) -> torch.Tensor:
        zeros.append(torch.zeros_like(out, requires_grad=True))
        return zeros[-1]

    value, calls, inputs = _run(model, plan, bound, params, example, perturb)
    wanted = zeros + [params[f"model.{n}"] for n in trainable]
    found = torch.autograd.grad(value, wanted, allow_unused=True) if value.requires_grad else [None] * len(wanted)
    found = [torch.zeros_like(w) if g is None else g for g, w in zip(found, wanted)]
    exact = dict(zip(trainable, found[len(zeros) :]))
    inputs = [x.detach().unsqueeze(0) for x in inputs]
    tol = math.sqrt(torch.finfo(value.dtype).eps)
    for layer in _layers(model, plan, calls, inputs, [g.unsqueeze(0) for g in found[: len(zeros)]], 1):
        # round-off is relative to ‖g‖ ‖[a, 1]‖, a bound on ‖Σ_t g_tᵀ [a_t, 1]‖
        scale = layer.output_grads.norm() * (layer.inputs.norm() ** 2 + layer.output_grads.shape[1]).sqrt()
        for name, got in layer.materialize().items():
            if (got.reshape(-1) - exact[name].reshape(-1)).norm() > tol * scale:
                raise FactorisationError(
                    f"factored gradients: {name!r} gets gradient from outside the forward of module "
                    f"{layer.module!r} (e.g. F.linear(x, module.weight) elsewhere); leave it out of the "
                    "gradient source's `params`, or use the 'per-example' gradient source"
                )
    return calls, [z.detach() for z in zeros]


def _one_at_a_time(
    model: torch.nn.Module, plan: FactorPlan, bound: BoundLoss, params: Mapping[str, torch.Tensor], batch: Any,
    zeros: Sequence[torch.Tensor], calls: Sequence[int],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``(output gradients, inputs)`` per layer call, each ``Tensor[b, ...]``: what the ``vmap`` in
    :func:`factored_gradients` computes, by a loop of plain autograd over the examples.

    Raises:
        FactorisationError: an example calls the layers in another order or number than the first.
    """
    grads: list[list[torch.Tensor]] = [[] for _ in zeros]
    inputs: list[list[torch.Tensor]] = [[] for _ in zeros]
    for i in range(batch_size(batch)):
        perturbations = [torch.zeros_like(z, requires_grad=True) for z in zeros]
        with torch.enable_grad():
            value, seen, xs = _run(model, plan, bound, params, tree_map(lambda t: t[i : i + 1], batch),
                                   lambda call, out: perturbations[call] if call < len(calls) else 0 * out)
            if seen != list(calls):
                raise FactorisationError(f"factored gradients: example {i} calls the layers in another order or "
                                         "number than example 0; use the 'per-example' gradient source")
            found = torch.autograd.grad(value, perturbations, allow_unused=True)
        for j, (g, x) in enumerate(zip(found, xs)):
            grads[j].append(torch.zeros_like(zeros[j]) if g is None else g)
            inputs[j].append(x.detach()[0])
    return tuple(torch.stack(g) for g in grads), tuple(torch.stack(x) for x in inputs)


def factored_gradients(
    model: torch.nn.Module,
    fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    state: Mapping[str, torch.Tensor],
    batch: Any,
    plan: FactorPlan,
) -> FactoredGradients:
    """Per-example gradients of ``fn`` as per-layer factors plus exact fallback gradients.

    Memory: ``b * T * (d_in + d_out)`` per factored layer and ``b * q`` for the ``q``
    fallback entries, instead of ``b * p``.

    Args:
        model: the module ``fn`` calls (its weights are not used or changed).
        fn: ``fn(model, batch) -> Tensor[b]``, one value per example.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        batch: a tensor, tuple/list or dict of tensors with ``b`` examples.
        plan: ``plan_factors(model, names)`` for the selected parameters ``names``.

    Returns:
        :class:`FactoredGradients` of shape ``(b, p)``; ``materialize()`` equals
        ``per_example_gradients(model, fn, state, batch, plan.names)``.

    Raises:
        LossShapeError: ``fn`` does not return one value per example.
        FactorisationError: a factored weight also gets gradient outside its module's forward.
    """
    b = batch_size(batch)
    sizes = {n: state[n].numel() for n in plan.names}
    if plan.fallback:
        dense = per_example_gradients(model, fn, state, batch, plan.fallback)
    else:
        dense = state[plan.names[0]].new_zeros(b, 0)
    layers: tuple[LayerFactors, ...] = ()
    if plan.layers:
        bound = BoundLoss(model, fn)
        params = {f"model.{k}": v for k, v in state.items()}
        with eval_mode(model):
            calls, zeros = _probe(model, bound, params, plan, tree_map(lambda t: t[:1], batch))

            def one(perturbations: tuple[torch.Tensor, ...], example: Any) -> tuple[torch.Tensor, tuple[Any, ...]]:
                single = tree_map(lambda t: t.unsqueeze(0), example)
                perturb = lambda i, out: perturbations[i] if i < len(calls) else 0 * out  # noqa: E731
                value, seen, inputs = _run(model, plan, bound, params, single, perturb)
                if seen != calls:
                    raise FactorisationError(
                        f"factored gradients: the layers were called in a different order or number under "
                        f"torch.func.vmap ({len(seen)} calls) than for one example ({len(calls)}); the model "
                        "needs data-independent control flow (or use the 'per-example' gradient source)"
                    )
                return value, tuple(inputs)

            grads, inputs = ((), ())
            if calls:  # zero perturbations, one per layer call: their gradients are the output gradients
                try:
                    grads, inputs = vmap(grad(one, has_aux=True))(tuple(z.expand(b, *z.shape) for z in zeros), batch)
                except AttrkitError:
                    raise
                except Exception as exc:  # model code vmap cannot trace: one example at a time, plain autograd
                    grads, inputs = _one_at_a_time(model, plan, bound, params, batch, zeros, calls)
                    warn_untraceable(exc)
        layers = _layers(model, plan, calls, inputs, grads, b)
    return FactoredGradients(names=plan.names, sizes=sizes, layers=layers, dense=dense, dense_names=plan.fallback)
