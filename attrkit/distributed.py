"""Distributed mode: the ranks of a ``torch.distributed`` process group share the work.

It is on whenever a default process group with more than one rank is initialised
(``torch.distributed.init_process_group``) and off otherwise; the spec does not change.
Off, every function here is the identity, so single-process results are untouched.

Sharding is by the index ``j`` of a batch of the fixed-order training loader: rank ``r``
of ``size`` processes the batches with ``j % size == r`` (every rank still iterates the
loader, skipping the others' batches). Batch ``j`` holds the same examples whatever the
number of ranks, so per-example results reassembled in batch order, and sums reduced
over ranks, equal those of one process up to the order of floating-point additions.

Split over the ranks (each rank does its shard; sums are all-reduced):

- per-example training features (``GradientAttributor.fit``): each rank computes *and
  keeps* only its batches' features (a store on disk may be shared: each chunk is
  written by its owner); they are never gathered. Reductions over them are all-reduced:
  ``ΦᵀΦ`` and ``R`` of ``Φ = QR`` for the ``gauss-newton`` solver, group sums for a
  grouper (the ``[n_groups, k]`` group features are then held by every rank);
- curvature statistics of parameter-space solvers: dataset Hessian / Gauss-Newton
  products (CG iterations, Arnoldi, explicit Hessians assembled from them), K-FAC /
  EK-FAC factors, LiSSA's sampled-batch products (each rank takes a part of every
  sample) and DataInf's per-example sums (and its default damping);
- scores: each rank scores its own training columns (its batches' examples, or a
  contiguous block of the groups, :func:`columns`) against the query side, which every
  rank computes whole, and the blocks are gathered (:func:`gather_columns`); ``top_k``
  merges each rank's candidates (:func:`gather_top_k`);
- ``self_influence``: each rank takes its batches when every solver solves locally
  (no solver, feature-space solvers, ``explicit``, ``arnoldi``; a solver's
  ``local_solve``) and the values are gathered; with groups, the group sums of
  gradients and features are split and all-reduced.

Not split (every rank does it whole, with the same result):

- the query side (test gradients, properties, solves) — ranks must run collective
  solves (CG, LiSSA, DataInf) on the same vectors in lock-step; for the same reason
  ``self_influence`` with such a solver takes every batch on every rank;
- TRAK's ``Q`` weights, groupers' assignments, LiSSA's gathered training set, and group
  gradients (``group`` source: its ``group_gradients`` takes the whole loader);
- ``rps``, which is not a ``GradientAttributor``: it runs whole on every rank.

Every call is collective: all ranks must call ``fit``, ``attribute``, ``top_k`` and
``self_influence`` with the same data, in the same order, and the training loader must
have at least as many batches as there are ranks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from attrkit.errors import ArgumentError

__all__ = [
    "all_ranks", "columns", "gather_chunks", "gather_columns", "gather_top_k", "owns", "shard", "sum_over_ranks",
    "world",
]


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
        parts = all_ranks({j: t.detach().cpu() for j, t in local.items()})
        merged = {j: t for part in parts for j, t in part.items()}
    missing = [j for j in range(count) if j not in merged]
    if missing:
        raise ArgumentError(f"no rank supplied training-feature chunks {missing[:5]} (of {count}); "
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


def gather_columns(block: torch.Tensor, spans: Sequence[tuple[int, int]], n: int) -> torch.Tensor:
    """``Tensor[m, n]``: every rank's block of score columns, each put at its global columns.

    Args:
        block: ``Tensor[m, c_r]``, this rank's columns, in the order of ``spans``.
        spans: the global ``[start, stop)`` ranges of ``block``'s columns (lengths sum to ``c_r``).
        n: the number of columns in all; every column is some rank's.

    Returns:
        ``block`` itself when off; else on the CPU, in ``block``'s dtype.
    """
    if world() is None:
        return block
    out = torch.empty(block.shape[0], n, dtype=block.dtype)
    for part, where in all_ranks((block.detach().cpu(), list(spans))):
        start = 0
        for a, b in where:
            out[:, a:b] = part[:, start : start + b - a]
            start += b - a
    return out


def all_ranks(value: Any) -> list[Any]:
    """Every rank's ``value`` (any picklable object), in rank order; ``[value]`` when off.

    Tensors should be on the CPU (they travel through ``all_gather_object``).
    """
    if world() is None:
        return [value]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, value)
    return parts


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
    found = [part for part in all_ranks(None if best is None else (best[0].cpu(), best[1].cpu())) if part is not None]
    if not found:
        return None
    values, index = torch.cat([v for v, _ in found], 1), torch.cat([i for _, i in found], 1)
    keep = values.topk(min(k, values.shape[1]), dim=1, largest=largest).indices
    return values.gather(1, keep), index.gather(1, keep)
