"""Factors one example at a time: ``torch.func.vmap`` over the examples, or, for model code
``vmap`` cannot trace, a loop of plain autograd (the path when one hooked pass over the batch
cannot be trusted; see :mod:`attrkit.functional.factored_hooks`).

Output gradients come from a zero tensor added to each layer's output by a forward hook
(gradient w.r.t. that tensor == gradient w.r.t. the output). Each call first runs one example
through plain autograd and checks that its factors reproduce the exact weight gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from attrkit.data import batch_size
from attrkit.errors import AttrkitError, FactorisationError, LossShapeError
from attrkit.functional.factored_plan import FactorPlan, assemble_layers, check_factors
from attrkit.functional.bound import BoundLoss
from attrkit.functional.gradients import warn_untraceable

__all__ = ["vmap_factors"]


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
    inputs = [x.detach().unsqueeze(0) for x in inputs]
    layers = assemble_layers(model, plan, calls, inputs, [g.unsqueeze(0) for g in found[: len(zeros)]], 1)
    check_factors(layers, dict(zip(trainable, found[len(zeros) :])))
    return calls, [z.detach() for z in zeros]


def _one_at_a_time(
    model: torch.nn.Module, plan: FactorPlan, bound: BoundLoss, params: Mapping[str, torch.Tensor], batch: Any,
    zeros: Sequence[torch.Tensor], calls: Sequence[int],
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``(output gradients, inputs)`` per layer call, each ``Tensor[b, ...]``: what the ``vmap`` in
    :func:`vmap_factors` computes, by a loop of plain autograd over the examples.

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


def vmap_factors(model: torch.nn.Module, plan: FactorPlan, bound: BoundLoss, params: dict[str, torch.Tensor],
                 batch: Any) -> tuple[list[int], tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """``(calls, inputs, output gradients)`` of the planned layers, per call ``Tensor[b, ...]``,
    one example at a time (``vmap``; a plain-autograd loop, with one warning, where ``vmap``
    cannot trace the model). Call in eval mode.

    Raises:
        FactorisationError: a factored weight also gets gradient outside its module's forward,
            or examples call the layers differently.
        LossShapeError: ``fn`` does not return one value per example.
    """
    b = batch_size(batch)
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

    if not calls:
        return calls, (), ()
    try:  # zero perturbations, one per layer call: their gradients are the output gradients
        grads, inputs = vmap(grad(one, has_aux=True))(tuple(z.expand(b, *z.shape) for z in zeros), batch)
    except AttrkitError:
        raise
    except Exception as exc:  # model code vmap cannot trace: one example at a time, plain autograd
        grads, inputs = _one_at_a_time(model, plan, bound, params, batch, zeros, calls)
        warn_untraceable(exc)
    return calls, inputs, grads
