"""Finiteness checks at the boundaries of a fit: weights, examples, solver outputs, scores.

One NaN input, loss or weight makes NaN rows, columns or whole score matrices, which
then rank first or last in ``top_k`` and look like answers. These checks stop that at
the boundary where it enters, naming where it is:

* :func:`check_state` — a member's weights (a damaged checkpoint, a diverged run);
* :func:`check_rows` — a batch's gradients or features, naming the example, its batch and
  row, the member, and the cause (:func:`cause`: its input, its loss, or only its gradient);
* :func:`check_scores` — the scores, which can still overflow float32 (losses of 1e30).

``fit(..., nonfinite="skip")`` asks for the documented alternative to an error: see
:data:`POLICIES` and :meth:`attrkit.engine.GradientAttributor.fit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_flatten

from attrkit import checks
from attrkit.data import batch_size, to_device
from attrkit.errors import ArgumentError, NonFiniteError
from attrkit.functional.gradients import evaluate
from attrkit.functional.nonfinite import nonfinite_rows

__all__ = ["POLICIES", "cause", "check_policy", "check_rows", "check_scores", "check_state", "locate", "nonfinite_rows"]

#: ``nonfinite=`` policies: ``"raise"`` an error naming the example, or ``"skip"`` it.
POLICIES = ("raise", "skip")


def check_policy(policy: str) -> str:
    """``policy`` if it is one of :data:`POLICIES`.

    Raises:
        ValueError: another value.
    """
    if policy not in POLICIES:
        raise ArgumentError(f"nonfinite must be one of {POLICIES}, got {policy!r}")
    return policy


def check_state(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse weights (parameters and floating buffers) with NaN or infinite entries.

    Raises:
        NonFiniteError: naming up to five tensors of ``where`` (``"checkpoint 1"``) with their counts.
    """
    if not checks.enabled():
        return
    bad = []
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan = int(torch.isnan(tensor).sum())
            bad.append(f"{name} ({nan} NaN, {int((~torch.isfinite(tensor)).sum()) - nan} infinite)")
    if bad:
        raise NonFiniteError(
            f"{where} has non-finite weights: {', '.join(bad[:5])}{' …' if len(bad) > 5 else ''}; the checkpoint is "
            "damaged or its training diverged: use another checkpoint (scores at these weights would be NaN)"
        )


def cause(model: torch.nn.Module, fn: Callable[..., torch.Tensor], state: Mapping[str, torch.Tensor], batch: Any,
          row: int) -> str:
    """Why example ``row`` of ``batch`` has a non-finite gradient: its input, its loss, or neither."""
    leaves, _ = tree_flatten(batch)
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dim() and leaf.shape[0] > row:
            if not bool(torch.isfinite(leaf[row]).all()):
                return f"it has a non-finite input (tensor {i} of the batch holds NaN or infinite values)"
    try:
        value = evaluate(model, fn, state, batch)[row]
    except Exception:  # the cause is only reported; the gradient was computed without this error
        return "its gradient is non-finite"
    if not bool(torch.isfinite(value)):
        return f"its loss is {float(value)} although its input is finite"
    return (f"its gradient is non-finite although its input and its loss ({float(value):.4g}) are finite (a sqrt or "
            "log at 0 inside loss_fn, a NaN in the branch torch.where does not take, or an overflow)")


def locate(
    model: torch.nn.Module, fn: Callable[..., torch.Tensor], state: Mapping[str, torch.Tensor], batches: Any,
    device: torch.device,
) -> str | None:
    """The first example of ``batches`` whose input or ``fn`` value is non-finite, described, or ``None``.

    One forward pass per batch until it is found: for error messages, when a component
    fitted on the training data (a projector, a solver) reports non-finite values.
    """
    offset = 0
    for j, batch in enumerate(batches):
        leaves = [x for x in tree_flatten(batch)[0] if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim()]
        rows = [nonfinite_rows(x) for x in leaves]
        rows.append(nonfinite_rows(evaluate(model, fn, state, to_device(batch, device))))
        found = sorted({int(r) for part in rows for r in part})
        if found:
            return (f"training example {offset + found[0]} (batch {j}, row {found[0]}) has a non-finite input or "
                    "loss")
        offset += batch_size(batch)
    return None


def check_rows(
    values: torch.Tensor, *, side: str, batch: int, offset: int, member: str, explain: Callable[[int], str],
    policy: str = "raise", skippable: bool = True,
) -> torch.Tensor:
    """Refuse non-finite rows of one batch's gradients or features (``[b, ...]``).

    Args:
        values: the batch's gradients or features.
        side: ``"training"`` or ``"test"``.
        batch: the batch's index in its loader.
        offset: the index of its first example.
        member: the member's label.
        explain: ``explain(row) -> str``, why that row is non-finite (see :func:`cause`).
        policy: ``"raise"``, or ``"skip"`` to return the bad rows instead.
        skippable: whether the caller offers ``nonfinite="skip"`` (the message then says so).

    Returns:
        ``LongTensor[r]`` of the non-finite rows (empty when all are finite; with ``"raise"``, always).

    Raises:
        NonFiniteError: a non-finite row with ``policy="raise"``.
    """
    if not checks.enabled():
        return torch.zeros(0, dtype=torch.long)
    rows = nonfinite_rows(values)
    if not len(rows) or policy == "skip":
        return rows
    first = int(rows[0])
    others = f" ({len(rows)} examples of this batch: {', '.join(str(offset + int(r)) for r in rows[:8])})" \
        if len(rows) > 1 else ""
    skip = ("their scores are then 0" if side == "training" else "their score rows are then NaN")
    fix = f", or pass fit(..., nonfinite='skip') to leave non-finite examples out ({skip})" if skippable else ""
    raise NonFiniteError(
        f"{side} example {offset + first} (batch {batch}, row {first}) has non-finite values at member "
        f"{member!r}{others}: {explain(first)}. Fix or remove it{fix}"
    )


def check_scores(scores: torch.Tensor, *, first_row: int, skipped_rows: torch.Tensor | None = None) -> None:
    """Refuse non-finite scores (``[b, n]`` for test examples ``first_row..``), except the rows skipped on purpose.

    Raises:
        NonFiniteError: naming the first test example and training column, and the likely cause (overflow).
    """
    if not checks.enabled():
        return
    rows = nonfinite_rows(scores)
    if skipped_rows is not None and len(skipped_rows):
        rows = rows[~torch.isin(rows, skipped_rows.cpu())]
    if not len(rows):
        return
    t = int(rows[0])
    i = int((~torch.isfinite(scores[t])).nonzero()[0])
    finite = scores[torch.isfinite(scores)]
    largest = f"; the largest finite |score| is {float(finite.abs().max()):.3g}" if finite.numel() else ""
    raise NonFiniteError(
        f"score [{t}, {i}] (test example {first_row + t}) is {float(scores[t, i])}: the inner "
        f"products of the gradients exceed the float32 range (3.4e38){largest}. Scale the loss (and target) down: "
        "its gradients are too large to score in float32"
    )
