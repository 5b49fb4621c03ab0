"""Per-example gradients of ``fn(model, batch) -> Tensor[b]`` via ``torch.func``.

``fn`` is written with plain ``model(x)`` calls; the model is re-parametrised with
``torch.func.functional_call`` so that its own weights are never touched. Where ``vmap``
cannot trace the model (stock Hugging Face attention masks), gradients of Linear, Conv and
LayerNorm parameters come from one hooked pass over the batch
(:mod:`attrkit.functional.factored_hooks`), anything else from a loop of plain autograd.
"""

from __future__ import annotations

import warnings
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from attrkit.data import batch_size
from attrkit.errors import AttrkitError, LossShapeError, SpecError, UntraceableWarning
from attrkit.functional.bound import BoundLoss, eval_mode
from attrkit.functional.factored_hooks import hooked_gradients
from attrkit.memory import require

__all__ = [
    "BoundLoss", "eval_mode", "evaluate", "flat_dimension", "per_example_gradients", "select_parameters", "warn_untraceable",
]


def select_parameters(model: torch.nn.Module, patterns: Sequence[str], frozen: bool = False) -> list[str]:
    """Names of the model's trainable parameters matching any ``fnmatch`` pattern, in model order.

    attrkit differentiates the *trainable* parameters (``requires_grad=True``) by default:
    a fine-tuned head on a frozen backbone is attributed through the head only, as it was
    trained. ``patterns`` choose among those; with ``frozen=True`` they choose among every
    parameter, frozen ones (``requires_grad=False``) included.

    Args:
        model: the network.
        patterns: ``fnmatch`` patterns of parameter names (``("*",)``: all of them).
        frozen: also select parameters with ``requires_grad=False``.

    Returns:
        The selected names, in ``model.named_parameters()`` order.

    Raises:
        SpecError: the patterns match no parameter (the message lists the model's
            parameters); they match only frozen ones; or the model has no trainable
            parameter at all. Each message says how to include frozen parameters.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
        >>> _ = model[0].requires_grad_(False)
        >>> select_parameters(model, ["*"])
        ['1.weight', '1.bias']
        >>> select_parameters(model, ["*"], frozen=True)
        ['0.weight', '0.bias', '1.weight', '1.bias']
    """
    params = list(model.named_parameters())
    matched = [(n, p) for n, p in params if any(fnmatch.fnmatchcase(n, pattern) for pattern in patterns)]
    if not matched:
        available = ", ".join(n for n, _ in params) or "none"
        raise SpecError([f"gradients.params: patterns {list(patterns)} match no parameter of the model; it has: {available}"])
    names = [n for n, p in matched if frozen or p.requires_grad]
    if names:
        return names
    fix = (
        "attrkit differentiates trainable parameters by default; set gradients.frozen=true to include frozen "
        "ones, or unfreeze them with requires_grad_(True)"
    )
    trainable = [n for n, p in params if p.requires_grad]
    if not trainable:
        raise SpecError([
            f"gradients.params: the model has no trainable parameter: all {len(params)} have "
            f"requires_grad=False (frozen); {fix}"
        ])
    raise SpecError([
        f"gradients.params: patterns {list(patterns)} match only parameters with requires_grad=False (frozen): "
        f"{', '.join(n for n, _ in matched)}; {fix}; the trainable parameters are: {', '.join(trainable)}"
    ])


def flat_dimension(model: torch.nn.Module, names: Sequence[str]) -> int:
    """``p``: total number of entries of the named parameters."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in names)


def evaluate(
    model: torch.nn.Module,
    fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    state: Mapping[str, torch.Tensor],
    batch: Any,
) -> torch.Tensor:
    """``fn(model, batch)`` with the weights in ``state``, in eval mode, without gradients.

    Returns:
        ``Tensor[b]`` detached (whatever ``fn`` returns, checked to be one value per example).

    Raises:
        LossShapeError: ``fn`` does not return one value per example.
    """
    b = batch_size(batch)
    with eval_mode(model), torch.no_grad():
        out = functional_call(BoundLoss(model, fn), {f"model.{k}": v for k, v in state.items()}, (batch,))
    if not isinstance(out, torch.Tensor) or out.shape != (b,):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LossShapeError(f"loss_fn/target_fn must return one value per example, Tensor[{b}]; got {got}")
    return out


def per_example_gradients(
    model: torch.nn.Module,
    fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    state: Mapping[str, torch.Tensor],
    batch: Any,
    names: Sequence[str],
) -> torch.Tensor:
    """Gradient of ``fn`` for each example of ``batch`` w.r.t. the named parameters.

    Args:
        model: the module ``fn`` calls (its weights are not used or changed).
        fn: ``fn(model, batch) -> Tensor[b]``, one value per example.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        batch: a tensor, tuple/list or dict of tensors with ``b`` examples.
        names: parameters to differentiate (the others are held fixed).

    Returns:
        ``Tensor[b, p]``, parameters concatenated in ``names`` order, each flattened.

    Raises:
        LossShapeError: ``fn`` does not return one value per example.
        DataLoaderError: a malformed batch (non-tensor leaves, ragged sizes).
    """
    b = batch_size(batch)
    bound = BoundLoss(model, fn)
    chosen = set(names)
    fixed = {f"model.{k}": v for k, v in state.items() if k not in chosen}

    def one(params: Mapping[str, torch.Tensor], example: Any) -> torch.Tensor:
        single = tree_map(lambda t: t.unsqueeze(0), example)
        out = functional_call(bound, {**fixed, **{f"model.{k}": v for k, v in params.items()}}, (single,))
        if not isinstance(out, torch.Tensor) or out.shape != (1,):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise LossShapeError(
                f"loss_fn/target_fn must return one value per example, Tensor[b]; for a batch of 1 it "
                f"returned shape {got}. Use reduction='none' and do not average over the batch."
            )
        return out[0]

    trainable = {n: state[n] for n in names}
    p = sum(t.numel() for t in trainable.values())
    require(2 * b * p * next(iter(trainable.values())).element_size(),
            f"per-example gradients of {b} examples over {p} parameters (the gradients and their concatenation)",
            "use smaller batches, select fewer parameters (gradients.params), or a gradient source that does not "
            "form them ('factored' with the 'kronecker' projector, 'last-layer')",
            next(iter(trainable.values())).device)
    with eval_mode(model):
        try:
            grads = vmap(grad(one), in_dims=(None, 0))(trainable, batch)
        except AttrkitError:
            raise
        except Exception as exc:  # model code vmap cannot trace (data-dependent masks, .item())
            hooked = hooked_gradients(model, bound, {**fixed, **{f"model.{k}": v for k, v in trainable.items()}},
                                      batch, names, b)
            if hooked is not None:  # Linear, Conv and LayerNorm parameters only: one hooked pass, exact
                return hooked
            grads = _one_at_a_time(bound, fixed, trainable, batch, b)
            warn_untraceable(exc)
    return torch.cat([grads[n].reshape(b, -1) for n in names], dim=1)


_WARNED: set[str] = set()


def warn_untraceable(exc: BaseException) -> None:
    """Say, once per process, that gradients are taken one example at a time (and why)."""
    if "untraceable" in _WARNED:
        return
    _WARNED.add("untraceable")
    warnings.warn(
        "the model or loss_fn cannot run under torch.func.vmap (e.g. data-dependent control flow in a Hugging Face "
        "attention mask, or .item()); attrkit computes these per-example gradients one example at a time with "
        "plain autograd instead: exact, but slower. To be fast, make the code vmap-traceable, or use a gradient "
        f"source that needs no vmap ('last-layer'). First error: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}",
        UntraceableWarning, stacklevel=3,
    )


def _one_at_a_time(
    bound: BoundLoss, fixed: Mapping[str, torch.Tensor], trainable: Mapping[str, torch.Tensor], batch: Any, b: int
) -> dict[str, torch.Tensor]:
    """``{name: Tensor[b, *shape]}``: what ``vmap(grad(...))`` computes, by a loop of plain autograd
    over the examples (batches of one).

    Raises:
        LossShapeError: ``fn`` does not return one value for a batch of one.
    """
    leaves = {n: t.detach().requires_grad_() for n, t in trainable.items()}
    params = {**fixed, **{f"model.{n}": t for n, t in leaves.items()}}
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in leaves}
    for i in range(b):
        with torch.enable_grad():
            out = functional_call(bound, params, (tree_map(lambda t: t[i : i + 1], batch),))
            if not isinstance(out, torch.Tensor) or out.shape != (1,):
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise LossShapeError(f"loss_fn/target_fn must return one value per example, Tensor[b]; for a batch "
                                     f"of 1 it returned shape {got}. Use reduction='none'.")
            found = torch.autograd.grad(out[0], list(leaves.values()), allow_unused=True)
        for (n, leaf), g in zip(leaves.items(), found):
            rows[n].append(torch.zeros_like(leaf) if g is None else g)
    return {n: torch.stack(r) for n, r in rows.items()}
