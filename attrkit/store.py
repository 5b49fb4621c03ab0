"""Feature stores: per-member training features, written chunk by chunk.

One chunk per training batch, in loader order. :class:`MemoryStore` keeps them in RAM;
:class:`~attrkit.disk_store.DiskStore` writes each chunk to its own ``.npy`` file
atomically and verifies it when read, so a killed ``fit`` resumes bit-identically (its
module says what a disk store checks). :func:`fingerprint` is what a disk store is keyed by.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch

from attrkit.fingerprint import callable_identity, state_digest

__all__ = ["FeatureStore", "MemoryStore", "fingerprint"]


def fingerprint(
    spec: Mapping[str, Any], states: Sequence[Mapping[str, torch.Tensor]], functions: Sequence[Callable[..., Any]] = ()
) -> str:
    """Hex digest of a resolved spec, every member's state and the identity of ``functions``
    (the loss and target; see :func:`attrkit.fingerprint.callable_identity`)."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for state in states:
        digest.update(state_digest(state).encode())
    for fn in functions:
        digest.update(callable_identity(fn).encode())
    return digest.hexdigest()


class FeatureStore(ABC):
    """Chunks ``Tensor[b_j, k]`` of each member's features, keyed by (member, chunk index).

    ``data`` is the digest of what a chunk was computed from (its training batch); a store
    that keeps it refuses (or, with ``on_mismatch="recompute"``, drops) a chunk of other data.
    """

    #: Whether chunks live outside this process's memory (so they can be streamed).
    on_disk: ClassVar[bool] = False

    @abstractmethod
    def has(self, member: int, chunk: int, data: str | None = None, rows: int | None = None) -> bool:
        """Whether chunk ``chunk`` of ``member`` is complete (and was computed from ``data``, a batch of ``rows``)."""

    @abstractmethod
    def put(self, member: int, chunk: int, features: torch.Tensor, data: str | None = None) -> None:
        """Store one complete chunk, computed from ``data``."""

    @abstractmethod
    def get(self, member: int, chunk: int) -> torch.Tensor:
        """One chunk, ``Tensor[b_j, k]``."""

    def meta(self, member: int, chunk: int) -> tuple[int, int, torch.dtype]:
        """``(b_j, k, dtype)`` of a complete chunk."""
        features = self.get(member, chunk)
        return int(features.shape[0]), int(features.shape[1]), features.dtype

    def read_into(self, member: int, chunk: int, start: int, stop: int, out: torch.Tensor) -> None:
        """Copy rows ``start:stop`` of one chunk into ``out`` (``Tensor[stop - start, k]``)."""
        out.copy_(self.get(member, chunk)[start:stop])

    def chunks(self, member: int, count: int) -> Iterator[torch.Tensor]:
        """Chunks ``0..count-1`` of ``member`` in order."""
        return (self.get(member, j) for j in range(count))

    def matrix(self, member: int, count: int) -> torch.Tensor:
        """``Tensor[n, k]``: the member's chunks concatenated."""
        return torch.cat(list(self.chunks(member, count)))

    def release(self, member: int, chunk: int | None = None) -> None:
        """Free the memory of one chunk (``chunk``) or of every chunk of ``member`` held in this
        process, once they have been read for good (a store on disk keeps its files)."""


class MemoryStore(FeatureStore):
    """Chunks held in memory (the default)."""

    def __init__(self) -> None:
        self._chunks: dict[tuple[int, int], torch.Tensor] = {}

    def has(self, member: int, chunk: int, data: str | None = None, rows: int | None = None) -> bool:
        return (member, chunk) in self._chunks

    def put(self, member: int, chunk: int, features: torch.Tensor, data: str | None = None) -> None:
        self._chunks[(member, chunk)] = features.detach()

    def get(self, member: int, chunk: int) -> torch.Tensor:
        return self._chunks[(member, chunk)]

    def release(self, member: int, chunk: int | None = None) -> None:
        for key in [k for k in self._chunks if k[0] == member and chunk in (None, k[1])]:
            del self._chunks[key]
