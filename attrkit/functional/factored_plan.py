"""Which selected parameters are factored (:func:`plan_factors`), and how recorded layer
inputs and output gradients become per-example factors (:func:`assemble_layers`).

A weight or bias is factored when its module is exactly ``nn.Linear``, ``nn.Conv1d`` or
``nn.Conv2d`` (``groups=1``) and no other module holds it. Every other selected parameter is
a *fallback* parameter with exact per-example gradients; among them, those of exactly
``nn.LayerNorm`` modules (the plan's *norms*) can come from the same hooked pass as the
factors (:mod:`attrkit.functional.factored_hooks`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import attrs
import torch
from torch.nn import functional as F

from attrkit.errors import FactorisationError
from attrkit.functional.gradient_factors import LayerFactors

__all__ = ["FactorPlan", "assemble_layers", "check_factors", "plan_factors"]

_CONV = (torch.nn.Conv1d, torch.nn.Conv2d)


@attrs.frozen(kw_only=True)
class FactorPlan:
    """Which selected parameters are factored, and which fall back to exact gradients.

    Attributes:
        names: every selected parameter, in model order.
        layers: ``(module, weight or None, bias or None)`` per factored layer, model order.
        fallback: the other selected parameters, in model order.
        fallback_modules: ``"name (Type)"`` of each module owning a fallback parameter.
        norms: ``(module, weight or None, bias or None)`` per ``nn.LayerNorm`` whose selected
            parameters (all in ``fallback``) it alone holds, model order.
    """

    names: tuple[str, ...]
    layers: tuple[tuple[str, str | None, str | None], ...]
    fallback: tuple[str, ...]
    fallback_modules: tuple[str, ...]
    norms: tuple[tuple[str, str | None, str | None], ...] = ()


def _factorable(module: torch.nn.Module) -> bool:
    # exact types: subclasses (e.g. attention's out_proj) may have their weight used elsewhere
    return type(module) is torch.nn.Linear or (type(module) in _CONV and module.groups == 1)


def plan_factors(model: torch.nn.Module, names: Sequence[str]) -> FactorPlan:
    """Split the selected parameters ``names`` into factored layers and fallback parameters.

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
    layers, norms, factored = [], [], set()
    for mname, module in modules.items():
        factorable = _factorable(module)
        if not factorable and not (type(module) is torch.nn.LayerNorm and module.elementwise_affine):
            continue

        def own(attr: str) -> str | None:
            param, name = getattr(module, attr), f"{mname}.{attr}" if mname else attr
            return name if param is not None and name in chosen and len(owners[id(param)]) == 1 else None

        weight, bias = own("weight"), own("bias")
        if (weight or bias) and factorable:
            layers.append((mname, weight, bias))
            factored.update(n for n in (weight, bias) if n)
        elif weight or bias:
            norms.append((mname, weight, bias))
    fallback = tuple(n for n in names if n not in factored)
    owner_names = dict.fromkeys(n.rpartition(".")[0] for n in fallback)
    described = tuple(f"{m or '<root>'} ({type(model.get_submodule(m)).__name__})" for m in owner_names)
    return FactorPlan(names=tuple(names), layers=tuple(layers), fallback=fallback, fallback_modules=described,
                      norms=tuple(norms))


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


def assemble_layers(model: torch.nn.Module, plan: FactorPlan, calls: Sequence[int], xs: Sequence[torch.Tensor],
                    gs: Sequence[torch.Tensor], b: int) -> tuple[LayerFactors, ...]:
    """One :class:`LayerFactors` per planned layer from its calls' recorded inputs ``xs`` and
    output gradients ``gs`` (each ``Tensor[b, ...]``; ``calls[i]`` is the layer index of call
    ``i``). Calls of one module are concatenated along positions."""
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


def check_factors(layers: Sequence[LayerFactors], exact: Mapping[str, torch.Tensor]) -> None:
    """Check that one example's factors ``layers`` (``b = 1``) reproduce its exact weight gradients.

    Raises:
        FactorisationError: a factored parameter also gets gradient from outside its module's forward.
    """
    for layer in layers:
        tol = math.sqrt(torch.finfo(layer.output_grads.dtype).eps)
        # round-off is relative to ‖g‖ ‖[a, 1]‖, a bound on ‖Σ_t g_tᵀ [a_t, 1]‖
        scale = layer.output_grads.norm() * (layer.inputs.norm() ** 2 + layer.output_grads.shape[1]).sqrt()
        for name, got in layer.materialize().items():
            if (got.reshape(-1) - exact[name].reshape(-1)).norm() > tol * scale:
                raise FactorisationError(
                    f"factored gradients: {name!r} gets gradient from outside the forward of module "
                    f"{layer.module!r} (e.g. F.linear(x, module.weight) elsewhere); leave it out of the "
                    "gradient source's `params`, or use the 'per-example' gradient source"
                )
