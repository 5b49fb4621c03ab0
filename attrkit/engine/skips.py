"""``fit(..., nonfinite=...)``: what happens to training examples with NaN or infinite values.

With ``"raise"`` (the default) the first such example is named in an error
(:mod:`attrkit.finite`). With ``"skip"`` it is treated as absent from the training set,
everywhere and in the open:

* :func:`scan` finds, before any other pass, the examples whose inputs or training-side
  values (loss; TRAK's margin) are NaN or infinite at some member; examples whose
  *gradient* turns out non-finite while their features are computed join them;
* the passes that fit a projector or a solver read :class:`WithoutSkipped`, a view of
  the loader without those examples, so the curvature never sees them;
* their feature rows read as zero (:meth:`Skips.zero_rows`), so their score columns are
  exactly 0, and ``top_k`` never returns them; a :class:`~attrkit.errors.NonFiniteWarning`
  names them, and the fitted attributor lists them in ``attributor.skipped``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map

from attrkit import distributed
from attrkit.data import batch_size, to_device
from attrkit.errors import DataLoaderError, NonFiniteError, NonFiniteWarning
from attrkit.finite import check_policy
from attrkit.functional.gradients import evaluate
from attrkit.functional.nonfinite import nonfinite_rows

__all__ = ["Skips", "WithoutSkipped", "scan"]


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


class Skips:
    """The non-finite policy of one fit and the training examples it leaves out.

    Args:
        policy: ``"raise"`` or ``"skip"``.
        found: examples already known to be non-finite (from :func:`scan`).

    Raises:
        ValueError: another policy.
    """

    def __init__(self, policy: str, found: set[int] = frozenset()):
        self.policy = check_policy(policy)
        self.indices: set[int] = set(found)
        self._mask: tuple[int, torch.Tensor] | None = None

    @property
    def skipping(self) -> bool:
        """Whether non-finite examples are left out (``"skip"``) rather than refused."""
        return self.policy == "skip"

    def view(self, train: Iterable[Any]) -> Iterable[Any]:
        """The training batches the curvature passes read: without the skipped examples."""
        return WithoutSkipped(train, self.indices) if self.skipping else train

    def add(self, rows: Iterable[int]) -> None:
        """Leave out these training examples too."""
        self.indices.update(int(r) for r in rows)

    def zero_rows(self, n: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A :class:`~attrkit.feature_matrix.FeatureMatrix` row transform setting the rows of the
        skipped examples (as they are when a tile is read) to 0, of ``n`` rows in all."""

        def zero(tile: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            if not self.indices:
                return tile
            if self._mask is None or self._mask[0] != len(self.indices):
                mask = torch.zeros(n, dtype=torch.bool)
                mask[torch.tensor(sorted(self.indices))] = True
                self._mask = (len(self.indices), mask)
            drop = self._mask[1][rows].to(tile.device)[:, None]
            return torch.where(drop, torch.zeros((), dtype=tile.dtype, device=tile.device), tile)

        return zero

    def weights(self, weights: torch.Tensor | None, explain: Callable[[int], str]) -> torch.Tensor | None:
        """Per-example weights (TRAK's ``Q``) with the skipped examples' set to 0.

        Args:
            weights: ``Tensor[n_train]`` or ``None``.
            explain: ``explain(i) -> str``: where example ``i`` is and why it is non-finite.

        Raises:
            NonFiniteError: a non-finite weight with ``policy="raise"``.
        """
        if weights is None:
            return None
        bad = nonfinite_rows(weights)
        if self.skipping:
            self.add(bad)
            if not self.indices:
                return weights
            weights = weights.clone()
            weights[torch.tensor(sorted(self.indices))] = 0
            return weights
        if len(bad):
            i = int(bad[0])
            raise NonFiniteError(
                f"{explain(i)} ({float(weights[i])}; {len(bad)} examples in all). Fix or remove it, or pass "
                "fit(..., nonfinite='skip') to leave it out"
            )
        return weights

    def finish(self, pointwise: bool, n_train: int) -> torch.Tensor | None:
        """The skipped examples gathered over the ranks, announced: ``LongTensor`` (sorted), or
        ``None`` with ``policy="raise"``.

        Raises:
            DataLoaderError: examples were skipped and the score columns are groups.
        """
        if not self.skipping:
            return None
        self.add(set().union(*distributed.all_ranks(self.indices)))
        skipped = torch.tensor(sorted(self.indices), dtype=torch.long)
        if len(skipped) and not pointwise:
            raise DataLoaderError(
                f"nonfinite='skip' left out {len(skipped)} training examples, which cannot be done with groups "
                "(a group's column would silently lose members); fix or remove those examples, or attribute single "
                "examples (no grouper)"
            )
        if len(skipped):
            shown = ", ".join(str(int(i)) for i in skipped[:10]) + (" …" if len(skipped) > 10 else "")
            warnings.warn(
                f"nonfinite='skip': {len(skipped)} of {n_train} training examples have non-finite inputs, losses or "
                f"gradients and were left out (their scores are 0; attributor.skipped lists them): {shown}",
                NonFiniteWarning, stacklevel=4,
            )
        return skipped
