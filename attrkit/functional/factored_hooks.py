"""A whole batch's factors from one ordinary forward and backward, with hooks (no ``vmap``).

In eval mode, with ``fn`` giving one value per example and examples that do not interact,
the gradient of ``Σ_i f_i`` with respect to example ``i``'s output of a layer is example
``i``'s own output gradient. So forward hooks that record each planned layer's input and add
a zero tensor to its output give every example's factors in one pass over the batch. Stock
Hugging Face models, whose attention-mask code ``vmap`` cannot trace, run as they are, and
padded positions get zero output gradients, as they do alone.

``nn.LayerNorm`` weights and biases (the plan's norms) get exact per-example gradients from
the same pass: ``∂f_i/∂γ = Σ_t g_t ⊙ x̂_t`` and ``∂f_i/∂β = Σ_t g_t``, with ``x̂_t`` the
normalised input and ``g_t`` the output gradient at position ``t``.

The pass is trusted only when it reproduces example 0 run alone: the same layer calls, every
call's tensors with the batch first, factors and norm gradients equal to example 0's exact
gradients, and the batch's row 0 equal to the lone run to round-off. Otherwise
:func:`hooked_factors` returns ``None`` and the caller takes gradients one example at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import torch
from torch.func import functional_call
from torch.nn import functional as F
from torch.utils._pytree import tree_map

from attrkit.functional.factored_plan import FactorPlan, assemble_layers, check_factors, plan_factors
from attrkit.functional.gradient_factors import FactoredGradients, LayerFactors
from attrkit.functional.bound import BoundLoss

__all__ = ["HookedFactors", "hooked_factors", "close_to_round_off", "hooked_gradients", "hooked_output_jacobians"]


@attrs.frozen(kw_only=True, eq=False)
class _Pass:
    """One hooked forward/backward: per call, the module index (layers, then norms), its
    input and the gradient at its output (each ``Tensor[b, ...]``), and exact gradients."""

    calls: list[int]
    inputs: list[torch.Tensor]
    grads: list[torch.Tensor]
    exact: dict[str, torch.Tensor]


@attrs.frozen(kw_only=True, eq=False)
class HookedFactors:
    """A batch's factored layers and the norms' per-example gradients.

    Attributes:
        layers: one :class:`LayerFactors` per planned layer, model order.
        norms: ``{parameter: Tensor[b, numel]}`` for every selected parameter of the plan's norms.
    """

    layers: tuple[LayerFactors, ...]
    norms: dict[str, torch.Tensor]


def _hooked(model: torch.nn.Module, modules: Sequence[str], bound: BoundLoss, params: Mapping[str, torch.Tensor],
            batch: Any, b: int, exact: Sequence[str] = (), rows: int | None = None) -> _Pass | None:
    """``Σ fn`` over ``batch`` forward and backward with a hook on each of ``modules``, plus the
    exact gradients of the parameters ``exact``; ``None`` unless ``fn`` gives ``Tensor[b]``.

    With ``rows``, ``fn`` gives ``Tensor[b, rows]`` instead and the backward is batched over its
    columns (``is_grads_batched``): each gradient gets a leading ``rows`` axis, entry ``k`` being
    that of ``Σ_i fn(i)[k]``; ``None`` when the output has another shape."""
    calls: list[int] = []
    inputs: list[torch.Tensor] = []
    zeros: list[torch.Tensor] = []

    def hook(index: int):  # noqa: ANN202
        def record(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            calls.append(index)
            inputs.append(args[0].detach())
            zeros.append(torch.zeros_like(output, requires_grad=True))
            return output + zeros[-1]

        return record

    leaves = {n: params[f"model.{n}"].detach().requires_grad_() for n in exact}
    handles = [model.get_submodule(m).register_forward_hook(hook(i)) for i, m in enumerate(modules)]
    try:
        with torch.enable_grad():
            out = functional_call(bound, {**params, **{f"model.{n}": t for n, t in leaves.items()}}, (batch,))
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(out, torch.Tensor) or out.shape != ((b,) if rows is None else (b, rows)):
        return None
    wanted = zeros + list(leaves.values())
    if not out.requires_grad:
        found = [None] * len(wanted)
    elif rows is None:
        found = torch.autograd.grad(out.sum(), wanted, allow_unused=True)
    else:
        cotangents = torch.eye(rows, dtype=out.dtype, device=out.device)[:, None, :].expand(rows, b, rows)
        found = torch.autograd.grad(out, wanted, cotangents, allow_unused=True, is_grads_batched=True)
    lead = () if rows is None else (rows,)
    found = [w.new_zeros(*lead, *w.shape) if g is None else g.detach() for g, w in zip(found, wanted)]
    return _Pass(calls=calls, inputs=inputs, grads=found[: len(zeros)], exact=dict(zip(exact, found[len(zeros) :])))


def _norm_gradients(model: torch.nn.Module, plan: FactorPlan, found: _Pass, b: int) -> dict[str, torch.Tensor]:
    """``{parameter: Tensor[b, numel]}`` of the norms from their calls' inputs and output gradients."""
    offset, out = len(plan.layers), {}
    for index, (mname, weight, bias) in enumerate(plan.norms):
        module = model.get_submodule(mname)
        shape = tuple(module.normalized_shape)
        for name in (weight, bias):
            if name is not None:
                out[name] = module.weight.new_zeros(b, math.prod(shape))
        for call, x, g in zip(found.calls, found.inputs, found.grads):
            if call != offset + index:
                continue
            g = g.reshape(b, -1, *shape)
            if weight is not None:
                normed = F.layer_norm(x, shape, eps=module.eps).reshape(g.shape)
                out[weight] += (g * normed).sum(1).reshape(b, -1)
            if bias is not None:
                out[bias] += g.sum(1).reshape(b, -1)
    return out


def _layer_calls(plan: FactorPlan, found: _Pass) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
    keep = [i for i, call in enumerate(found.calls) if call < len(plan.layers)]
    return [found.calls[i] for i in keep], [found.inputs[i] for i in keep], [found.grads[i] for i in keep]


def close_to_round_off(got: torch.Tensor, want: torch.Tensor) -> bool:
    """``‖got − want‖ <= √eps (‖want‖ + √eps)`` in ``want``'s dtype: equal up to round-off."""
    tol = math.sqrt(torch.finfo(want.dtype).eps)
    return bool((got - want).norm() <= tol * (want.norm() + tol))


def hooked_factors(model: torch.nn.Module, plan: FactorPlan, bound: BoundLoss, params: dict[str, torch.Tensor],
                   batch: Any, b: int) -> HookedFactors | None:
    """Every example's factors and norm gradients from one hooked pass over ``batch`` (``b``
    examples), or ``None`` when that pass does not reproduce example 0 run alone (examples
    that interact, tensors without the batch first, a norm weight used elsewhere, ``fn`` not
    giving one value per example). Call in eval mode.

    Raises:
        FactorisationError: a factored weight also gets gradient outside its module's forward.
    """
    modules = [m for m, _, _ in plan.layers] + [m for m, _, _ in plan.norms]
    wanted = [n for layer in plan.layers + plan.norms for n in layer[1:] if n]
    lone = _hooked(model, modules, bound, params, tree_map(lambda t: t[:1], batch), 1, exact=wanted)
    if lone is None:
        return None
    calls, inputs, grads = _layer_calls(plan, lone)
    check_factors(assemble_layers(model, plan, calls, inputs, grads, 1), lone.exact)
    norms = _norm_gradients(model, plan, lone, 1)
    if not all(close_to_round_off(norms[n][0], lone.exact[n].reshape(-1)) for n in norms):
        return None
    found = lone if b == 1 else _hooked(model, modules, bound, params, batch, b)
    if found is None or found.calls != lone.calls:
        return None
    for tensors, alone in ((found.inputs, lone.inputs), (found.grads, lone.grads)):
        for x, y in zip(tensors, alone):
            if x.shape != (b, *y.shape[1:]) or not close_to_round_off(x[:1], y):
                return None
    calls, inputs, grads = _layer_calls(plan, found)
    return HookedFactors(layers=assemble_layers(model, plan, calls, inputs, grads, b),
                         norms=_norm_gradients(model, plan, found, b))


def hooked_gradients(model: torch.nn.Module, bound: BoundLoss, params: dict[str, torch.Tensor], batch: Any,
                     names: Sequence[str], b: int) -> torch.Tensor | None:
    """``Tensor[b, p]``: per-example gradients of the parameters ``names`` from one hooked pass,
    when every one of them belongs to a factored layer or a norm and the pass is trusted
    (:func:`hooked_factors`); else ``None``. Call in eval mode.

    Raises:
        FactorisationError: a factored weight also gets gradient outside its module's forward.
    """
    plan = plan_factors(model, names)
    norm_names = {n for layer in plan.norms for n in layer[1:] if n}
    if not set(plan.fallback) <= norm_names:
        return None
    found = hooked_factors(model, plan, bound, params, batch, b)
    if found is None:
        return None
    sizes = {n: params[f"model.{n}"].numel() for n in names}
    dense = [found.norms[n] for n in plan.fallback]
    like = params[f"model.{names[0]}"]
    grads = FactoredGradients(names=tuple(names), sizes=sizes, layers=found.layers, dense_names=plan.fallback,
                              dense=torch.cat(dense, 1) if dense else like.new_zeros(b, 0))
    return grads.materialize()


def hooked_output_jacobians(model: torch.nn.Module, plan: FactorPlan, bound: BoundLoss, params: dict[str, torch.Tensor],
                            batch: Any, b: int, rows: int) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
    """Per planned layer, its inputs ``Tensor[b, d_in]`` and the Jacobians ``Tensor[b, rows, d_out]`` of
    every example's ``rows`` outputs (``bound`` gives ``Tensor[b, rows]``) in the layer's output,
    from one hooked forward and one backward batched over the ``rows`` outputs; ``None`` when
    the output has another shape or a layer is called other than once with ``Tensor[b, d]``
    tensors. Call in eval mode, with examples that do not interact.

    Not checked against a lone example here: the caller compares a row with
    :func:`hooked_factors`'s (which is) before trusting it.
    """
    found = _hooked(model, [m for m, _, _ in plan.layers], bound, params, batch, b, rows=rows)
    if found is None or found.calls != list(range(len(plan.layers))):
        return None
    if any(x.dim() != 2 or x.shape[0] != b or g.dim() != 3 or g.shape[:2] != (rows, b)
           for x, g in zip(found.inputs, found.grads)):
        return None
    return found.inputs, [g.transpose(0, 1) for g in found.grads]
