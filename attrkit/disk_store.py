"""The on-disk feature store: one ``.npy`` file per chunk, written atomically, verified when read.

:class:`DiskStore` writes each chunk (one training batch's features) to its own ``.npy``
file atomically (temporary file, then ``os.replace``), so a killed ``fit`` leaves only
whole chunks and a rerun resumes after the last one, giving bit-identical features.

What a disk store trusts, and how it checks it:

* ``store.json`` holds a *fingerprint* of everything the features depend on but the
  data: the resolved spec, every member's weights and the identity of the loss and
  target functions (:func:`attrkit.store.fingerprint`). Another fingerprint is refused.
* Each chunk has a sidecar ``chunk-J.json``: its member and index, rows, width, dtype,
  the SHA-256 of its bytes and the digest of the training batch it was computed from.
  Resuming compares the batch digest with the batch the loader yields now (other data
  of the same size, other labels, another order: refused), and every chunk's bytes are
  checked against its checksum when first read and again whenever its file changes
  (flipped bytes, a truncated file, a chunk copied over another: refused).
* Every refusal is a :class:`~attrkit.errors.StoreMismatchError` (its subclass
  :class:`~attrkit.errors.StoreCorruptError` for damaged or missing files) naming the
  file and the fix. With ``on_mismatch="recompute"`` a fit recomputes what does not
  match instead (and, for another fingerprint, starts the store afresh).

Several processes (the ranks of a distributed run) may open one :class:`DiskStore`
at once: its ``store.json`` is created with ``os.link`` (atomic, fails when it exists)
and then read back and checked by every process, and every write goes through a
temporary file of its own. Chunks are read back through memory maps, so a few rows of
a chunk cost a few rows of RAM (see :class:`attrkit.feature_matrix.FeatureMatrix`).

When ``fit`` is given no store and the features outgrow the memory budget, they go to a
:class:`TemporaryStore` (a disk store in a fresh folder under ``ATTRKIT_TMPDIR`` or
:func:`tempfile.gettempdir`, deleted when no attributor uses it any more, or at interpreter
exit), through a :class:`SpillingStore`: in memory until told to spill.

Per-chunk files, rather than one preallocated ``[n, k]`` file per member: a chunk is
complete exactly when its files exist (no separate "done" flags to keep in step with
the data), ``n`` need not be known before the first batch, and ranks write disjoint
files without coordinating.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from attrkit.errors import ArgumentError, MemoryBudgetError, StoreCorruptError, StoreMismatchError
from attrkit.store import FeatureStore, MemoryStore

__all__ = ["MISMATCH_POLICIES", "TMPDIR_VAR", "DiskStore", "SpillingStore", "TemporaryStore", "temporary_root"]

#: The environment variable naming the folder temporary stores are made in (default: the system's).
TMPDIR_VAR = "ATTRKIT_TMPDIR"

#: What ``fit`` does with a store that does not match: refuse it, or recompute what differs.
MISMATCH_POLICIES = ("error", "recompute")
_FIX = "use a new folder, delete this one, or pass fit(..., on_mismatch='recompute') to recompute what differs"


class DiskStore(FeatureStore):
    """Chunks as ``.npy`` files under ``root/member-M/chunk-J.npy`` (with a ``.json`` sidecar),
    written atomically and verified when read; see the module docstring.

    Args:
        root: the store's folder (created if missing); processes may share it.
        key: fingerprint of what is stored (see :func:`fingerprint`).
        on_mismatch: ``"error"`` (refuse what does not match) or ``"recompute"``.

    Raises:
        StoreMismatchError: ``root`` holds features with another fingerprint, or is a file.
        StoreCorruptError: ``store.json`` is unreadable.
    """

    on_disk: ClassVar[bool] = True
    #: Whether each write is flushed to the disk (``fsync``) before it is renamed into place.
    sync: ClassVar[bool] = True
    #: Whether each chunk's SHA-256 is recorded at write and checked at its first read.
    checksums: ClassVar[bool] = True

    def __init__(self, root: str | os.PathLike, key: str, on_mismatch: str = "error"):
        if on_mismatch not in MISMATCH_POLICIES:
            raise ArgumentError(f"on_mismatch must be one of {MISMATCH_POLICIES}, got {on_mismatch!r}")
        self.root, self.key, self.on_mismatch = Path(root), key, on_mismatch
        self._verified: dict[Path, tuple[int, int, int]] = {}
        if self.root.exists() and not self.root.is_dir():
            raise StoreMismatchError(f"store path {self.root} is a file, not a folder; pass a folder (it is created "
                                     "if missing)")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreMismatchError(f"cannot create the store folder {self.root}: {exc}") from exc
        found = self._read_fingerprint()
        if found != key and on_mismatch == "recompute":
            self._clear()
            found = self._read_fingerprint()
        if found != key:
            raise StoreMismatchError(
                f"{self.root} holds features of another spec, model or loss function (fingerprint "
                f"{str(found)[:12]}…, expected {key[:12]}…); {_FIX}"
            )

    def _read_fingerprint(self) -> str | None:
        meta = self.root / "store.json"
        if not meta.exists():
            _atomic_write(meta, lambda f: f.write(json.dumps({"fingerprint": self.key}).encode()), exclusive=True)
        try:
            found = json.loads(meta.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            if self.on_mismatch == "recompute":
                return None
            raise StoreCorruptError(f"{meta} is not a readable attrkit store file ({exc}); {_FIX}") from exc
        return found.get("fingerprint") if isinstance(found, dict) else None

    def _clear(self) -> None:
        """Delete this store's own files (``store.json`` and the ``member-*`` folders), nothing else."""
        for folder in self.root.glob("member-*"):
            shutil.rmtree(folder, ignore_errors=True)
        (self.root / "store.json").unlink(missing_ok=True)

    def _path(self, member: int, chunk: int) -> Path:
        return self.root / f"member-{member}" / f"chunk-{chunk:07d}.npy"

    def has(self, member: int, chunk: int, data: str | None = None, rows: int | None = None) -> bool:
        """Whether the chunk is complete and intact and was computed from ``data`` (a batch of ``rows``).

        Raises:
            StoreMismatchError: it was computed from another batch (``on_mismatch="error"``).
            StoreCorruptError: its files are damaged (``on_mismatch="error"``).
        """
        path = self._path(member, chunk)
        if not path.exists() or not path.with_suffix(".json").exists():
            return False
        try:
            meta = self._verify(member, chunk)
            if rows is not None and meta.get("rows") != rows:
                raise StoreMismatchError(
                    f"the store's chunk {chunk} of member {member} holds {meta.get('rows')} rows but batch {chunk} has "
                    f"{rows} examples: it was written with another batching ({path}); use the same batch size, or "
                    f"{_FIX}"
                )
            if data is not None and meta.get("data") != data:
                raise StoreMismatchError(
                    f"{path} was computed from another training batch {chunk} than the loader yields now (other "
                    f"data, labels or order of the same size); {_FIX}"
                )
        except StoreMismatchError:
            if self.on_mismatch == "recompute":
                return False
            raise
        return True

    def put(self, member: int, chunk: int, features: torch.Tensor, data: str | None = None) -> None:
        path = self._path(member, chunk)
        path.parent.mkdir(exist_ok=True)
        array = np.ascontiguousarray(features.detach().cpu().numpy())
        digest = hashlib.sha256(memoryview(array).cast("B")).hexdigest() if self.checksums else None
        meta = {"member": member, "chunk": chunk, "rows": int(array.shape[0]), "width": int(array.shape[1]),
                "dtype": array.dtype.str, "sha256": digest, "data": data}
        _atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()), sync=self.sync)
        _atomic_write(path, lambda f: np.save(f, array), sync=self.sync)
        self._verified.pop(path, None)

    def _verify(self, member: int, chunk: int) -> dict[str, Any]:
        """The chunk's sidecar, after checking the chunk file against it (once per version of the file).

        Raises:
            StoreCorruptError: a missing, unreadable, truncated or altered file, or a sidecar of
                another chunk.
        """
        path = self._path(member, chunk)
        try:
            stat = path.stat()
            meta = json.loads(path.with_suffix(".json").read_text())
        except FileNotFoundError as exc:
            raise StoreCorruptError(
                f"{exc.filename} is missing (deleted after it was written?); fit again with the same store to "
                "recompute it"
            ) from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StoreCorruptError(f"{path.with_suffix('.json')} is unreadable ({exc}); {_FIX}") from exc
        signature = (stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if self._verified.get(path) == signature:
            return meta
        if not isinstance(meta, dict) or (meta.get("member"), meta.get("chunk")) != (member, chunk):
            raise StoreCorruptError(f"{path.with_suffix('.json')} does not describe chunk {chunk} of member {member} "
                                    f"(copied from elsewhere?); {_FIX}")
        mapped = self._map(path)
        expected = (meta.get("rows"), meta.get("width"), meta.get("dtype"))
        if (mapped.ndim, *mapped.shape, mapped.dtype.str) != (2, *expected):
            raise StoreCorruptError(
                f"{path} holds a {mapped.dtype} array of shape {mapped.shape}, but was written as "
                f"{_dtype_name(expected[2])} ({expected[0]}, {expected[1]}) (replaced or altered); {_FIX}"
            )
        if self.checksums and hashlib.sha256(memoryview(np.ascontiguousarray(mapped)).cast("B")).hexdigest() != meta.get(
                "sha256"):
            raise StoreCorruptError(f"{path} does not match its checksum (altered, or copied from another chunk); "
                                    f"{_FIX}")
        self._verified[path] = signature
        return meta

    def _map(self, path: Path) -> np.ndarray:
        """A read-only memory map of one chunk file (checked separately).

        Raises:
            StoreCorruptError: missing or not a readable ``.npy`` file (e.g. truncated).
        """
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError as exc:
            raise StoreCorruptError(f"{path} is missing (deleted after fit?); fit again with the same store to "
                                    "recompute it") from exc
        except (OSError, ValueError, EOFError) as exc:
            raise StoreCorruptError(f"{path} is not a readable chunk file ({exc}; truncated?); {_FIX}") from exc

    def _checked(self, member: int, chunk: int) -> np.ndarray:
        self._verify(member, chunk)
        return self._map(self._path(member, chunk))

    def get(self, member: int, chunk: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._checked(member, chunk)))

    def meta(self, member: int, chunk: int) -> tuple[int, int, torch.dtype]:
        """``(b_j, k, dtype)``, after verifying the chunk."""
        mapped = self._checked(member, chunk)
        return int(mapped.shape[0]), int(mapped.shape[1]), torch.from_numpy(np.empty(0, mapped.dtype)).dtype

    def read_into(self, member: int, chunk: int, start: int, stop: int, out: torch.Tensor) -> None:
        """Copy rows ``start:stop`` of one chunk into ``out`` (a contiguous CPU tensor) through a
        memory map: only those rows are read, with no intermediate copy (the whole chunk is read
        once more when its file changed since it was verified).

        Raises:
            StoreCorruptError: the chunk is missing, altered, or of another dtype than ``out``.
        """
        mapped = self._checked(member, chunk)
        if mapped.dtype != out.numpy().dtype:
            raise StoreCorruptError(f"{self._path(member, chunk)} holds {mapped.dtype} features, the other chunks "
                                    f"{out.numpy().dtype}; {_FIX}")
        np.copyto(out.numpy(), mapped[start:stop], casting="no")


def _dtype_name(code: Any) -> str:
    try:
        return np.dtype(code).name
    except TypeError:
        return repr(code)


def _atomic_write(path: Path, write: Any, exclusive: bool = False, sync: bool = True) -> None:
    """Write ``path`` whole or not at all, through a temporary file unique to this call.

    ``exclusive``: create ``path`` only if it does not exist (``os.link``, atomic); when
    another process created it first, keep theirs. Otherwise replace it (``os.replace``).
    ``sync``: flush the file to the disk first (``fsync``), so that it survives a crash.
    """
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            if sync:
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


def temporary_root() -> Path:
    """The folder temporary stores are made in: ``ATTRKIT_TMPDIR`` (created if missing), else
    :func:`tempfile.gettempdir`.

    Raises:
        MemoryBudgetError: ``ATTRKIT_TMPDIR`` cannot be created or is not a folder.
    """
    given = os.environ.get(TMPDIR_VAR)
    if not given:
        return Path(tempfile.gettempdir())
    root = Path(given).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MemoryBudgetError(f"the environment variable {TMPDIR_VAR}={given!r} names no usable folder for "
                                f"temporary feature stores ({exc}); point it to a writable folder, or unset "
                                "it") from exc
    return root


def _remove_folder(folder: str, owner: int) -> None:
    """Delete ``folder`` and everything in it, from the process that made it only (not a forked child)."""
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


class TemporaryStore(DiskStore):
    """A :class:`DiskStore` in a fresh folder ``attrkit-*`` of :func:`temporary_root`, deleted with
    everything in it when this object is garbage-collected (no feature matrix reads it any more:
    its attributor was deleted or fitted again) or at interpreter exit, whichever comes first.

    Writes are not ``fsync``-ed and chunks carry no SHA-256 (shapes and dtypes are still checked):
    nothing resumes from a temporary store, and its folder (``mkdtemp``: private to this user)
    lives only as long as the process that wrote it.

    Attributes:
        root: the folder.

    Raises:
        MemoryBudgetError: the folder cannot be created.
    """

    sync: ClassVar[bool] = False
    checksums: ClassVar[bool] = False

    def __init__(self, parent: str | os.PathLike | None = None):
        parent = Path(parent) if parent is not None else temporary_root()
        try:
            folder = tempfile.mkdtemp(prefix="attrkit-", dir=parent)
        except OSError as exc:
            raise MemoryBudgetError(f"cannot create a temporary feature store in {parent} ({exc}); set "
                                    f"{TMPDIR_VAR} to a writable folder, or pass fit(..., store=<folder>)") from exc
        self._remove = weakref.finalize(self, _remove_folder, folder, os.getpid())
        try:
            super().__init__(folder, uuid.uuid4().hex)
        except OSError as exc:
            raise MemoryBudgetError(f"cannot create a temporary feature store in {folder} ({exc}); set {TMPDIR_VAR} "
                                    "to a writable folder with free space, or pass fit(..., store=<folder>)") from exc

    def put(self, member: int, chunk: int, features: torch.Tensor, data: str | None = None) -> None:
        """Write one chunk.

        Raises:
            MemoryBudgetError: it cannot be written (the disk is full), naming the folder and the fixes.
        """
        try:
            super().put(member, chunk, features, data)
        except OSError as exc:
            raise MemoryBudgetError(
                f"cannot write the training features to the temporary store {self.root} ({exc}); they exceed the "
                f"memory budget and are streamed from there: set {TMPDIR_VAR} to a folder with more free space, pass "
                "fit(..., store=<folder>), or raise memory_budget"
            ) from exc

    def remove(self) -> None:
        """Delete the folder now (reading a chunk afterwards fails)."""
        self._remove()


class SpillingStore(FeatureStore):
    """Chunks in memory until :meth:`spill`, then in a :class:`TemporaryStore` (those already held
    are moved there): what ``fit`` uses without a ``store``, so that features that outgrow the
    memory budget are streamed instead of refused.

    Args:
        parent: where the temporary store is made (default :func:`temporary_root`).

    Attributes:
        temporary: the :class:`TemporaryStore` after :meth:`spill`, else ``None``.
    """

    def __init__(self, parent: str | os.PathLike | None = None):
        self._parent = parent
        self._memory: MemoryStore | None = MemoryStore()
        self._data: dict[tuple[int, int], str | None] = {}
        self.temporary: TemporaryStore | None = None

    @property
    def on_disk(self) -> bool:  # type: ignore[override]
        """Whether the chunks are in the temporary store."""
        return self.temporary is not None

    @property
    def _inner(self) -> FeatureStore:
        return self.temporary if self.temporary is not None else self._memory

    def spill(self) -> TemporaryStore:
        """Move every chunk held in memory to a new temporary store, and write new chunks there (idempotent).

        Raises:
            MemoryBudgetError: the temporary folder cannot be created.
        """
        if self.temporary is None:
            store = TemporaryStore(self._parent)
            for (member, chunk), data in list(self._data.items()):
                store.put(member, chunk, self._memory.get(member, chunk), data)
                self._memory.release(member, chunk)
            self.temporary, self._memory, self._data = store, None, {}
        return self.temporary

    def has(self, member: int, chunk: int, data: str | None = None, rows: int | None = None) -> bool:
        return self._inner.has(member, chunk, data, rows)

    def put(self, member: int, chunk: int, features: torch.Tensor, data: str | None = None) -> None:
        if self.temporary is None:
            self._data[(member, chunk)] = data
        self._inner.put(member, chunk, features, data)

    def get(self, member: int, chunk: int) -> torch.Tensor:
        return self._inner.get(member, chunk)

    def meta(self, member: int, chunk: int) -> tuple[int, int, torch.dtype]:
        return self._inner.meta(member, chunk)

    def read_into(self, member: int, chunk: int, start: int, stop: int, out: torch.Tensor) -> None:
        self._inner.read_into(member, chunk, start, stop, out)

    def release(self, member: int, chunk: int | None = None) -> None:
        if self.temporary is None:
            self._memory.release(member, chunk)
            for key in [k for k in self._data if k[0] == member and chunk in (None, k[1])]:
                del self._data[key]
