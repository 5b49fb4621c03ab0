"""Feature stores: per-member training features, written chunk by chunk.

One chunk per training batch, in loader order. :class:`MemoryStore` keeps them in
RAM; :class:`DiskStore` writes each chunk to its own ``.npy`` file atomically
(temporary file, then ``os.replace``), so a killed ``fit`` leaves only whole chunks
and a rerun resumes after the last one, giving bit-identical features. A fingerprint
(resolved spec, member states) guards against resuming someone else's features.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attrkit.errors import AttrkitError

__all__ = ["DiskStore", "FeatureStore", "MemoryStore", "StoreMismatchError", "fingerprint"]


class StoreMismatchError(AttrkitError, ValueError):
    """A disk store that holds features of another spec or model."""


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

    @abstractmethod
    def has(self, member: int, chunk: int) -> bool:
        """Whether chunk ``chunk`` of ``member`` is complete."""

    @abstractmethod
    def put(self, member: int, chunk: int, features: torch.Tensor) -> None:
        """Store one complete chunk."""

    @abstractmethod
    def get(self, member: int, chunk: int) -> torch.Tensor:
        """One chunk, ``Tensor[b_j, k]``."""

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
        root: the store's folder (created if missing).
        key: fingerprint of what is stored (see :func:`fingerprint`).

    Raises:
        StoreMismatchError: ``root`` already holds features with another fingerprint.
    """

    def __init__(self, root: str | os.PathLike, key: str):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root / "store.json"
        if meta.exists():
            found = json.loads(meta.read_text()).get("fingerprint")
            if found != key:
                raise StoreMismatchError(
                    f"{self.root} holds features of another spec or model (fingerprint {found[:12]}…, "
                    f"expected {key[:12]}…); use a new folder or delete this one"
                )
        else:
            _atomic_write(meta, lambda f: f.write(json.dumps({"fingerprint": key}).encode()))

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


def _atomic_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
