"""``fit(..., nonfinite="skip")``: training examples with non-finite values, left out.

The default policy raises an error naming the first non-finite example
(:mod:`attrkit.finite`). With ``"skip"``, such an example is treated as absent from the
training set, everywhere and in the open:

* :func:`scan` finds, before any other pass, the examples whose inputs or training-side
  values (loss; TRAK's margin) are NaN or infinite at some member; examples whose
  *gradient* turns out non-finite while their features are computed join them;
* the passes that fit a projector or a solver read :class:`WithoutSkipped`, a view of
  the loader without those examples, so the curvature never sees them;
* their feature rows are zero, so their score columns are exactly 0, and ``top_k`` never
  returns them; a :class:`~attrkit.errors.NonFiniteWarning` names them, and the fitted
  attributor lists them in ``attributor.skipped``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from attrkit import distributed
from attrkit.data import batch_size, to_device
from attrkit.errors import NonFiniteWarning
from attrkit.finite import nonfinite_rows
from attrkit.functional.gradients import evaluate

__all__ = ["WithoutSkipped", "announce", "scan"]


def _input_rows(batch: Any) -> torch.Tensor:
    """``BoolTensor[b]``: examples of ``batch`` with a non-finite floating input."""
    bad = torch.zeros(batch_size(batch), dtype=torch.bool)
    for leaf in tree_flatten(batch)[0]:
        if isinstance(leaf, torch.Tensor) and leaf.is_floating_point() and leaf.dim():
            bad[nonfinite_rows(leaf).cpu()] = True
    return bad


def scan(
    model: torch.nn.Module, fns: Iterable[Callable[..., torch.Tensor]], states: Iterable[tuple[Mapping[str, Any], Any]],
    loader: Iterable[Any], device: torch.device,
) -> set[int]:
    """Indices of training examples with a non-finite input, or a non-finite value of some ``fn``
    at some member (one forward pass per member and function; this rank's batches, gathered).

    Args:
        model: the task's model.
        fns: training-side functions ``fn(model, batch) -> Tensor[b]``.
        states: ``(state, patch context)`` per member (``member.applied(model)``).
        loader: the training batches.
        device: where to evaluate.
    """
    fns, states = list(fns), list(states)
    found: set[int] = set()
    offset = 0
    for j, batch in enumerate(loader):
        size = batch_size(batch)
        if distributed.owns(j):
            bad = _input_rows(batch)
            batch = to_device(batch, device)
            for state, applied in states:
                with applied:
                    for fn in fns:
                        bad[nonfinite_rows(evaluate(model, fn, state, batch)).cpu()] = True
            found.update(offset + int(i) for i in bad.nonzero().squeeze(1))
        offset += size
    return set().union(*distributed.all_ranks(found))


def announce(skipped: torch.Tensor, n: int) -> None:
    """Warn that ``skipped`` (``LongTensor``) of ``n`` training examples were left out."""
    if len(skipped):
        shown = ", ".join(str(int(i)) for i in skipped[:10]) + (" …" if len(skipped) > 10 else "")
        warnings.warn(
            f"nonfinite='skip': {len(skipped)} of {n} training examples have non-finite inputs, losses or gradients "
            f"and were left out (their scores are 0; attributor.skipped lists them): {shown}",
            NonFiniteWarning, stacklevel=3,
        )


class WithoutSkipped:
    """A re-iterable view of fixed-order batches with the examples in ``skipped`` removed.

    Args:
        loader: the training batches.
        skipped: global indices of the examples to drop (read at each pass, so it may grow).
    """

    def __init__(self, loader: Iterable[Any], skipped: set[int]):
        self.loader, self.skipped = loader, skipped

    def __iter__(self) -> Iterator[Any]:
        offset = 0
        for batch in self.loader:
            size = batch_size(batch)
            drop = [i - offset for i in self.skipped if offset <= i < offset + size]
            offset += size
            if not drop:
                yield batch
            elif len(drop) < size:
                keep = torch.ones(size, dtype=torch.bool)
                keep[drop] = False
                yield tree_map(lambda t: t[keep.to(t.device)] if isinstance(t, torch.Tensor) else t, batch)
