"""Errors raised inside the user's ``loss_fn`` / ``target_fn``, explained.

Per-example gradients run ``loss_fn`` under ``torch.func`` transforms, where a plain
mistake (float64 inputs to a float32 model, a label out of range, a wrong feature count)
surfaces as a functorch traceback about a vmapped dimension the user never made, and a
function that is fine for training (``.item()``, ``if loss > 0``, ``model.train()``)
cannot be transformed at all. :func:`explain` turns such an exception into a
:class:`~attrkit.errors.LossFunctionError` that names the batch, describes its tensors
and the model's parameters, and gives the likely fix: it runs the function once more on
the same batch *without* transforms to tell a plain error (reported as torch states it)
from one that only per-example differentiation meets. An exception that is not the
user's function's doing (the plain run succeeds and the transform does too) is left as is.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from attrkit.data import to_device
from attrkit.errors import AttrkitError, LossFunctionError
from attrkit.functional.gradients import evaluate, per_example_gradients

__all__ = ["describe_batch", "explain", "user_code", "user_code_pass"]

#: (pattern in the error text, likely fix), first match wins.
_HINTS: tuple[tuple[str, str], ...] = (
    (r"switched the model to training mode|running_mean|running_var|batch ?norm",
     "do not call model.train() (or update buffers in place) inside loss_fn: attrkit evaluates the model in "
     "eval mode, with batch-norm's running statistics"),
    (r"\.item\(\)|data-dependent|control flow|Tensor to a Python|is_nonzero|Boolean value of Tensor",
     "loss_fn uses a tensor's value in Python (.item(), float(t), `if t > 0:`), which per-example gradients "
     "(torch.func.vmap) cannot trace; compute with tensor operations instead (torch.where, torch.clamp), or "
     "use a gradient source that does not vmap the loss ('last-layer', 'group')"),
    (r"same dtype|expected scalar type|dtype|Half|Double|Float but found|must have the same",
     "the inputs' dtype does not match the model's parameters: convert the inputs in the dataset or "
     "collate_fn (x.float() for a float32 model; integer inputs must be cast)"),
    (r"for dimension 0 with size 1\b",
     "loss_fn reads other examples of the batch (an index like batch[1][3], or a reduction over the batch): "
     "per-example gradients call it on one example at a time, so each example's loss must come from that "
     "example alone"),
    (r"[Tt]arget -?\d+ is out of bounds|out of bounds|index .* is out of|IndexError|device-side assert",
     "a label is out of range: for C classes, labels must lie in 0..C-1 (see the label range above)"),
    (r"shapes cannot be multiplied|size mismatch|must match the size|Expected .*input.*size|expected input",
     "the batch's shape does not fit the model (a wrong number of features, or a missing batch dimension)"),
)


def describe_batch(batch: Any, prefix: str = "batch") -> str:
    """``"batch[0]: float64 [64, 784]; batch[1]: int64 [64] values 0..10"``: every tensor leaf."""
    parts: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            text = f"{path}: {str(value.dtype).removeprefix('torch.')} {list(value.shape)}"
            if value.numel() and not value.is_floating_point() and not value.is_complex():
                text += f" values {int(value.min())}..{int(value.max())}"
            elif value.numel() and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                text += " (non-finite values)"
            parts.append(text)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, f"{path}[{key!r}]")
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        else:
            parts.append(f"{path}: {type(value).__name__}")

    walk(batch, prefix)
    return "; ".join(parts) or f"{prefix}: empty"


def _hint(text: str) -> str:
    for pattern, hint in _HINTS:
        if re.search(pattern, text):
            return hint
    return "check loss_fn on this batch outside attrkit: loss_fn(model, batch) must return Tensor[b]"


def _parameters(model: torch.nn.Module) -> str:
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
    return f"model parameters: {', '.join(dtypes) or 'none'}"


def explain(
    exc: BaseException, model: torch.nn.Module, fn: Callable[..., torch.Tensor], state: Mapping[str, torch.Tensor],
    batch: Any, where: str, fn_name: str = "loss_fn",
) -> LossFunctionError | None:
    """The :class:`LossFunctionError` that explains ``exc``, raised while running ``fn`` on ``batch``.

    Args:
        exc: what was raised.
        model, state: the model and the weights it was evaluated at.
        fn: the user's function (``loss_fn(model, batch) -> Tensor[b]``).
        batch: the batch it failed on.
        where: which batch, for the message (``"training batch 3"``).
        fn_name: ``"loss_fn"`` or ``"target_fn"``.

    Returns:
        The error to raise from ``exc``, or ``None`` when ``fn`` runs on ``batch`` both plainly and
        per example (then ``exc`` is not its doing and should propagate unchanged).
    """
    if isinstance(exc, AttrkitError):
        return None
    first = next(model.parameters(), None)
    batch = to_device(batch, first.device if first is not None else torch.device("cpu"))
    try:
        evaluate(model, fn, state, batch)
    except AttrkitError as plain:
        return LossFunctionError(f"{fn_name} failed on {where}: {plain}")
    except Exception as plain:  # the function's own error, without torch.func in the way
        message = f"{type(plain).__name__}: {plain}".strip()
        return LossFunctionError(
            f"{fn_name} failed on {where}: {message}\n  {describe_batch(batch)}; {_parameters(model)}\n"
            f"  likely fix: {_hint(message)}"
        )
    try:
        names = [n for n, p in model.named_parameters() if p.requires_grad] or [n for n, _ in model.named_parameters()]
        if names:
            per_example_gradients(model, fn, state, batch, names[-1:])
    except AttrkitError as transformed:
        return LossFunctionError(f"{fn_name} failed on {where}: {transformed}")
    except Exception as transformed:
        message = f"{type(transformed).__name__}: {transformed}".strip()
        return LossFunctionError(
            f"{fn_name} runs on {where}, but not under per-example differentiation (torch.func.vmap of grad): "
            f"{message}\n  likely fix: {_hint(message)}"
        )
    return None


@contextlib.contextmanager
def user_code(
    model: torch.nn.Module, fn: Callable[..., torch.Tensor], state: Mapping[str, torch.Tensor], batch: Any,
    where: str, fn_name: str = "loss_fn",
) -> Iterator[None]:
    """Run a block that calls ``fn`` on ``batch``; an exception from it is explained (see :func:`explain`).

    Raises:
        LossFunctionError: from the original exception, when ``fn`` is at fault.
    """
    try:
        yield
    except Exception as exc:
        error = explain(exc, model, fn, state, batch, where, fn_name)
        if error is None:
            raise
        raise error from exc


@contextlib.contextmanager
def user_code_pass(
    model: torch.nn.Module, fn: Callable[..., torch.Tensor], state: Mapping[str, torch.Tensor],
    batches: Iterable[Any], fn_name: str = "loss_fn", role: str = "training",
) -> Iterator[None]:
    """Run a block that calls ``fn`` over ``batches`` (a curvature pass, a projector's or a grouper's fit);
    an exception from it is explained on the first batch where ``fn`` fails (see :func:`explain`).

    Raises:
        LossFunctionError: from the original exception, when ``fn`` is at fault on some batch.
    """
    try:
        yield
    except Exception as exc:
        if isinstance(exc, AttrkitError):
            raise
        for j, batch in enumerate(batches):
            error = explain(exc, model, fn, state, batch, f"{role} batch {j}", fn_name)
            if error is not None:
                raise error from exc
        raise
