"""Feature stores: per-member training features, written chunk by chunk.

One chunk per training batch, in loader order. :class:`MemoryStore` keeps them in
RAM; :class:`DiskStore` writes each chunk to its own ``.npy`` file atomically
(temporary file, then ``os.replace``), so a killed ``fit`` leaves only whole chunks
and a rerun resumes after the last one, giving bit-identical features. A fingerprint
(resolved spec, member states) guards against resuming someone else's features.

Several processes (the ranks of a distributed run) may open one :class:`DiskStore`
at once: its ``store.json`` is created with ``os.link`` (atomic, fails when it exists)
and then read back and checked by every process, and every write goes through a
temporary file of its own. Chunks are read back through memory maps, so a few rows of
a chunk cost a few rows of RAM (see :class:`attrkit.feature_matrix.FeatureMatrix`).

Per-chunk files, rather than one preallocated ``[n, k]`` file per member: a chunk is
complete exactly when its file exists (no separate "done" flags to keep in step with
the data), ``n`` need not be known before the first batch, and ranks write disjoint
files without coordinating.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from attrkit.errors import StoreMismatchError

__all__ = ["DiskStore", "FeatureStore", "MemoryStore", "StoreMismatchError", "fingerprint"]


def fingerprint(spec: Mapping[str, Any], states: list[Mapping[str, torch.Tensor]]) -> str:
    """Hex digest of a resolved spec and every member's parameter values."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for state in states:
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureStore(ABC):
    """Chunks ``Tensor[b_j, k]`` of each member's features, keyed by (member, chunk index)."""

    #: Whether chunks live outside this process's memory (so they can be streamed).
    on_disk: ClassVar[bool] = False

    @abstractmethod
    def has(self, member: int, chunk: int) -> bool:
        """Whether chunk ``chunk`` of ``member`` is complete."""

    @abstractmethod
    def put(self, member: int, chunk: int, features: torch.Tensor) -> None:
        """Store one complete chunk."""

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


class MemoryStore(FeatureStore):
    """Chunks held in memory (the default)."""

    def __init__(self) -> None:
        self._chunks: dict[tuple[int, int], torch.Tensor] = {}

    def has(self, member: int, chunk: int) -> bool:
        return (member, chunk) in self._chunks

    def put(self, member: int, chunk: int, features: torch.Tensor) -> None:
        self._chunks[(member, chunk)] = features.detach()

    def get(self, member: int, chunk: int) -> torch.Tensor:
        return self._chunks[(member, chunk)]


class DiskStore(FeatureStore):
    """Chunks as ``.npy`` files under ``root/member-M/chunk-J.npy``, written atomically.

    Args:
        root: the store's folder (created if missing); processes may share it.
        key: fingerprint of what is stored (see :func:`fingerprint`).

    Raises:
        StoreMismatchError: ``root`` already holds features with another fingerprint.
    """

    on_disk: ClassVar[bool] = True

    def __init__(self, root: str | os.PathLike, key: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / "store.json"
        if not meta.exists():
            _atomic_write(meta, lambda f: f.write(json.dumps({"fingerprint": key}).encode()), exclusive=True)
        found = json.loads(meta.read_text()).get("fingerprint")
        if found != key:
            raise StoreMismatchError(
                f"{self.root} holds features of another spec or model (fingerprint {str(found)[:12]}…, "
                f"expected {key[:12]}…); use a new folder or delete this one"
            )

    def _path(self, member: int, chunk: int) -> Path:
        return self.root / f"member-{member}" / f"chunk-{chunk:07d}.npy"

    def has(self, member: int, chunk: int) -> bool:
        return self._path(member, chunk).exists()

    def put(self, member: int, chunk: int, features: torch.Tensor) -> None:
        path = self._path(member, chunk)
        path.parent.mkdir(exist_ok=True)
        array = features.detach().cpu().numpy()
        _atomic_write(path, lambda f: np.save(f, array))

    def get(self, member: int, chunk: int) -> torch.Tensor:
        return torch.from_numpy(np.load(self._path(member, chunk)))

    def meta(self, member: int, chunk: int) -> tuple[int, int, torch.dtype]:
        """``(b_j, k, dtype)``, read from the file's header only."""
        mapped = np.load(self._path(member, chunk), mmap_mode="r")
        return int(mapped.shape[0]), int(mapped.shape[1]), torch.from_numpy(np.empty(0, mapped.dtype)).dtype

    def read_into(self, member: int, chunk: int, start: int, stop: int, out: torch.Tensor) -> None:
        """Copy rows ``start:stop`` of one chunk into ``out`` (a contiguous CPU tensor) through a
        memory map: only those rows are read, with no intermediate copy."""
        mapped = np.load(self._path(member, chunk), mmap_mode="r")
        np.copyto(out.numpy(), mapped[start:stop], casting="no")


def _atomic_write(path: Path, write: Any, exclusive: bool = False) -> None:
    """Write ``path`` whole or not at all, through a temporary file unique to this call.

    ``exclusive``: create ``path`` only if it does not exist (``os.link``, atomic); when
    another process created it first, keep theirs. Otherwise replace it (``os.replace``).
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
