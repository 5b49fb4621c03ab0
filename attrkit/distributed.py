"""Distributed mode: the ranks of a ``torch.distributed`` process group share the work.

It is on whenever a default process group with more than one rank is initialised
(``torch.distributed.init_process_group``) and off otherwise; the spec does not change.
Off, every function here is the identity, so single-process results are untouched.

Sharding is by the index ``j`` of a batch of the fixed-order training loader: rank ``r``
of ``size`` processes the batches with ``j % size == r``. Batch ``j`` holds the same
examples whatever the number of ranks, so per-example features reassembled in batch
order, and curvature sums reduced over ranks, equal those of one process up to the
order of floating-point additions.

What is distributed:

- training features (``GradientAttributor.fit``): each rank computes its batches'
  features, and every rank ends with the full ``Tensor[n_train, k]`` in batch order
  (compute split, memory as one process); feature-space solvers, groupers and scoring
  then run identically on every rank;
- curvature statistics of parameter-space solvers: dataset Hessian / Gauss-Newton
  products (CG, Arnoldi, explicit Hessians assembled from them) and K-FAC / EK-FAC
  factors are summed over each rank's batches, then all-reduced.

Anything else that reads the training set (LiSSA's sampled batches, DataInf, TRAK's
``Q``, groupers, group gradients) reads all of it on every rank: correct, not split.

Scores are assembled by columns: each rank scores its contiguous block of training
columns (:func:`columns`) against the query side, which every rank computes whole, and
the blocks are gathered (:func:`gather_columns`); ``top_k`` merges each rank's candidates
(:func:`gather_top_k`). ``self_influence`` is computed whole on every rank: its query side
differs per example, and iterative solvers must run their dataset products in lock-step.
Keeping only the owned columns' features (never gathering them) is the next step.

Every call is collective: all ranks must call ``fit``, ``attribute``, ``top_k`` and
``self_influence`` with the same data, in the same order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["columns", "gather_chunks", "gather_columns", "gather_top_k", "owns", "shard", "sum_over_ranks", "world"]


def world() -> tuple[int, int] | None:
    """``(rank, size)`` of the initialised default process group, or ``None`` when off.

    ``None`` when ``torch.distributed`` is unavailable, not initialised, or has one rank.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    size = dist.get_world_size()
    return (dist.get_rank(), size) if size > 1 else None


def owns(index: int) -> bool:
    """Whether this rank processes training batch ``index`` (always, when off)."""
    ranks = world()
    return ranks is None or index % ranks[1] == ranks[0]


def shard(batches: Iterable[Any]) -> Iterator[Any]:
    """This rank's batches of a fixed-order iterable: those of index ``j % size == rank``.

    The others are still read from ``batches`` (so a loader is iterated once per call)
    but skipped. When off, every batch.
    """
    ranks = world()
    if ranks is None:
        return iter(batches)
    return itertools.islice(batches, ranks[0], None, ranks[1])


def sum_over_ranks(tensors: Sequence[torch.Tensor], counts: Sequence[int] = ()) -> list[int]:
    """All-reduce (sum) ``tensors`` in place and return ``counts`` summed over ranks.

    Args:
        tensors: contiguous partial sums, any shape and float dtype, on the device the
            process group's backend serves (CPU for gloo).
        counts: integers to sum likewise (e.g. examples seen by this rank).

    Returns:
        The summed ``counts`` (``list(counts)`` when off, with ``tensors`` untouched).
    """
    if world() is None:
        return list(counts)
    for tensor in tensors:
        dist.all_reduce(tensor)
    if not counts:
        return []
    device = tensors[0].device if tensors else torch.device("cpu")
    total = torch.tensor(list(counts), dtype=torch.int64, device=device)
    dist.all_reduce(total)
    return [int(c) for c in total.tolist()]


def gather_chunks(local: Mapping[int, torch.Tensor], count: int) -> list[torch.Tensor]:
    """Every rank's chunks, in index order: ``[chunk_0, …, chunk_{count-1}]``.

    Args:
        local: ``{j: Tensor[b_j, k]}``, the chunks this rank computed (``owns(j)``).
        count: the number of chunks in all.

    Returns:
        ``count`` tensors, on this rank's device when off (``local`` as given), else on
        the CPU (exchanged through ``all_gather_object``).

    Raises:
        ValueError: a chunk index in ``0..count-1`` that no rank supplied.
    """
    merged: dict[int, torch.Tensor] = dict(local)
    if world() is not None:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, {j: t.detach().cpu() for j, t in local.items()})
        merged = {j: t for part in parts for j, t in part.items()}
    missing = [j for j in range(count) if j not in merged]
    if missing:
        raise ValueError(f"no rank supplied training-feature chunks {missing[:5]} (of {count}); "
                         "every rank must iterate the same fixed-order train loader")
    return [merged[j] for j in range(count)]


def columns(n: int) -> slice:
    """This rank's contiguous block of ``n`` score columns, ``slice(r n // size, (r + 1) n // size)``.

    Blocks of consecutive ranks are adjacent, cover ``0..n-1`` and differ in width by at
    most one (a block is empty when ``n < size``). ``slice(0, n)`` when off.
    """
    ranks = world()
    if ranks is None:
        return slice(0, n)
    rank, size = ranks
    return slice(rank * n // size, (rank + 1) * n // size)


def gather_columns(block: torch.Tensor) -> torch.Tensor:
    """``Tensor[m, n]``: every rank's ``Tensor[m, c_r]`` block of :func:`columns`, side by side.

    ``block`` itself when off; else on the CPU, in ``block``'s dtype.
    """
    if world() is None:
        return block
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, block.detach().cpu())
    return torch.cat(parts, 1)


def gather_top_k(
    best: tuple[torch.Tensor, torch.Tensor] | None, k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Merge every rank's top-``k`` candidates: ``(values[m, k], indices[m, k])``, sorted.

    Args:
        best: this rank's candidates ``(Tensor[m, c], LongTensor[m, c])`` with global
            column indices, ``c <= k``, or ``None`` when it owns no column.
        k: how many to keep.
        largest: keep the highest values (proponents) or the lowest (opponents).

    Returns:
        ``best`` itself when off; else the merged candidates on the CPU (``None`` only
        when no rank has one).
    """
    if world() is None:
        return best
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, None if best is None else (best[0].cpu(), best[1].cpu()))
    found = [part for part in parts if part is not None]
    if not found:
        return None
    values, index = torch.cat([v for v, _ in found], 1), torch.cat([i for _, i in found], 1)
    keep = values.topk(min(k, values.shape[1]), dim=1, largest=largest).indices
    return values.gather(1, keep), index.gather(1, keep)
