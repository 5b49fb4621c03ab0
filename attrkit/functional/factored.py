"""Factored per-example gradients: :func:`factored_gradients` computes a block's
:class:`~attrkit.functional.gradient_factors.FactoredGradients` (the representation is
described there) for a :class:`~attrkit.functional.factored_plan.FactorPlan`.

Two exact ways, chosen per batch: one hooked forward/backward over the whole batch
(:mod:`~attrkit.functional.factored_hooks`; also gives the LayerNorm gradients), used when it
reproduces example 0 run alone; otherwise one example at a time
(:mod:`~attrkit.functional.factored_vmap`). Both run in eval mode, at the given state, so
examples never interact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from attrkit.data import batch_size
from attrkit.errors import FactorisationError
from attrkit.functional.factored_hooks import hooked_factors
from attrkit.functional.factored_plan import FactorPlan, assemble_layers, plan_factors
from attrkit.functional.factored_vmap import vmap_factors
from attrkit.functional.gradient_factors import FactoredGradients
from attrkit.functional.gradients import BoundLoss, eval_mode, per_example_gradients

__all__ = ["FactorPlan", "FactorisationError", "factored_gradients", "plan_factors"]


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
        ``per_example_gradients(model, fn, state, batch, plan.names)`` to round-off.

    Raises:
        LossShapeError: ``fn`` does not return one value per example.
        FactorisationError: a factored weight also gets gradient outside its module's forward.
    """
    b = batch_size(batch)
    sizes = {n: state[n].numel() for n in plan.names}
    bound = BoundLoss(model, fn)
    params = {f"model.{k}": v for k, v in state.items()}
    hooked, layers, norms = None, (), {}
    with eval_mode(model):
        if plan.layers or plan.norms:
            hooked = hooked_factors(model, plan, bound, params, batch, b)
        if hooked is not None:
            layers, norms = hooked.layers, hooked.norms
        elif plan.layers:
            calls, inputs, grads = vmap_factors(model, plan, bound, params, batch)
            layers = assemble_layers(model, plan, calls, inputs, grads, b)
    rest = [n for n in plan.fallback if n not in norms]
    dense = per_example_gradients(model, fn, state, batch, rest) if rest else state[plan.names[0]].new_zeros(b, 0)
    if norms:
        parts = dict(zip(rest, dense.split([sizes[n] for n in rest], 1)))
        parts.update(norms)
        dense = torch.cat([parts[n] for n in plan.fallback], 1)
    return FactoredGradients(names=plan.names, sizes=sizes, layers=layers, dense=dense, dense_names=plan.fallback)
