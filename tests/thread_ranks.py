"""Ranks as threads of one process, standing in for a ``torch.distributed`` process group in tests.

:func:`threaded` swaps :mod:`attrkit.distributed`'s collectives for ones over a barrier (a real
process group needs spawned processes, seconds each); ``ranks.run(fn)`` runs ``fn(rank)`` on
every rank at once.
"""

import threading

from attrkit import distributed
from attrkit.functional import curvature


class Ranks:
    """``size`` ranks as threads of this process: :mod:`attrkit.distributed`'s collectives over a barrier
    (a real process group needs spawned processes, seconds each)."""

    def __init__(self, size):
        self.size, self.local = size, threading.local()
        self.barrier, self.slots = threading.Barrier(size, timeout=60), [None] * size

    def world(self):
        return (self.local.rank, self.size)

    def all_ranks(self, value):
        self.slots[self.local.rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out

    def sum_over_ranks(self, tensors, counts=()):
        parts = self.all_ranks(([t.clone() for t in tensors], list(counts)))
        for i, tensor in enumerate(tensors):
            tensor.copy_(sum(part[0][i] for part in parts))
        return [sum(part[1][j] for part in parts) for j in range(len(counts))]

    def run(self, fn):
        """``[fn(r) on rank r for every r]``, the ranks running at once."""
        out, errors = [None] * self.size, []

        def one(rank):
            self.local.rank = rank
            try:
                out[rank] = fn(rank)
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)
                self.barrier.abort()

        threads = [threading.Thread(target=one, args=(r,)) for r in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return out


def threaded(monkeypatch, size=2):
    """``size`` thread ranks standing in for the process group; ``vmap`` and forward-mode AD (``jvp``,
    in the HVPs), whose state is process-wide, are taken by one rank at a time."""
    ranks, lock = Ranks(size), threading.RLock()
    for name in ("world", "all_ranks", "sum_over_ranks"):
        monkeypatch.setattr(distributed, name, getattr(ranks, name))

    def locked(fn):
        def run(*args, **kwargs):
            with lock:
                return fn(*args, **kwargs)

        return run

    for name in ("hvp", "gnvp", "vmap"):
        monkeypatch.setattr(curvature, name, locked(getattr(curvature, name)))
    return ranks


def structure_broken_on_rank_1(monkeypatch, ranks):
    """Make rank 1's batches unusable for the structured curvature (``batch_factors`` raises
    ``Unusable`` there), to check that every rank then falls back together."""
    from attrkit.functional import structured_factors

    factors = structured_factors.batch_factors

    def broken_on_rank_1(*args):
        if ranks.local.rank == 1:
            raise structured_factors.Unusable("rank 1's batches")
        return factors(*args)

    monkeypatch.setattr(structured_factors, "batch_factors", broken_on_rank_1)
