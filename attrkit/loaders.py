"""Checked passes over the user's batches: the same examples, in the same order, on every pass.

Scores are indexed by position in the loader, and many methods read the training data
several times (TRAK's ``Q``, curvature passes, CG iterations, self-influence). A loader
that yields another order, other values (random augmentation) or fewer batches on a later
pass would scramble columns silently. :class:`CheckedLoader` wraps the user's loader:

* before the first pass, :func:`attrkit.data.check_fixed_order` refuses what can be seen
  without loading data (shuffling, ``drop_last``, random samplers, a ``Dataset``);
* the first complete pass records each batch's size and digest
  (:func:`attrkit.fingerprint.batch_digest`) — the data fingerprint a feature store keeps;
  a re-iterable that is not a plain ``DataLoader`` or list has its first batch drawn once
  more from a second iterator and compared (a random order shows at once);
* every later pass checks the number and sizes of the batches, the digest of the first
  batch and of one more batch (a different one on each pass, so that many passes cover
  them all), and says so when a one-shot iterator (a generator) is exhausted.

A plain ``DataLoader`` over a ``TensorDataset`` in order (default collation, no workers, no pinned
memory) is read by slicing its tensors, a copy per batch: the batches it would yield, value for value
and in the same list, without its Python call per example (:func:`_sliced`); there is nothing random
in it to probe for.

A small training set is not read through the loader again: the first pass keeps the batches
it yielded while they take at most :data:`KEEP_BYTES` (and a sixteenth of the memory available),
and later passes replay them, unless a tensor of one was changed in place since it was yielded (its
version counter moved: the model or ``loss_fn`` writes into its inputs), in which case they are
dropped and the loader is read, as without them. A multi-pass fit then reads the
user's loader once — its per-item indexing and collation cost as much as a small model's
gradients — and every pass sees the same examples by construction. The fit drops them
(:meth:`CheckedLoader.release`) when it ends. Test loaders (read once per call), lists of batches
(already in memory) and one-shot iterators (which still serve one pass only) are never kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset
from torch.utils.data._utils.collate import default_collate

from attrkit import checks
from attrkit.data import batch_size, check_fixed_order
from attrkit.errors import DataLoaderError
from attrkit.fingerprint import batch_digest
from attrkit.memory import available_bytes

__all__ = ["KEEP_BYTES", "CheckedLoader", "checked"]

#: The most bytes of batches the first pass keeps to replay on later passes (see the module docstring).
KEEP_BYTES = 256 * 2**20


def _leaves(batch: Any) -> Iterator[Any]:
    """The leaves of ``batch`` (nested tuples, lists and any ``Mapping``: unlike ``tree_flatten``, which
    keeps a Hugging Face ``BatchEncoding`` as one leaf, this reaches the tensors inside it)."""
    if isinstance(batch, Mapping):
        for value in batch.values():
            yield from _leaves(value)
    elif isinstance(batch, (tuple, list)):
        for value in batch:
            yield from _leaves(value)
    else:
        yield batch


def _nbytes(batch: Any) -> int:
    """Bytes of the tensors and arrays in ``batch``."""
    return sum(x.numel() * x.element_size() if isinstance(x, torch.Tensor) else int(getattr(x, "nbytes", 0))
               for x in _leaves(batch))


def _versions(batch: Any) -> list[int]:
    """The version counters of ``batch``'s tensors: each in-place change (of a tensor or a view of it) adds one."""
    return [x._version for x in _leaves(batch) if isinstance(x, torch.Tensor)]


def _loader_examples(loader: Any) -> int | None:
    """Examples in ``loader`` known without reading it, or ``None``."""
    if isinstance(loader, (list, tuple)):
        try:
            return sum(batch_size(b) for b in loader)
        except Exception:  # noqa: BLE001 - an estimate; the pass will tell
            return None
    dataset = getattr(loader, "dataset", None)
    if dataset is not None:
        try:
            return len(dataset)
        except TypeError:
            pass
    size = getattr(loader, "batch_size", None)
    if isinstance(size, int) and size > 0:
        try:
            return len(loader) * size
        except TypeError:
            pass
    return None


def _sliced(loader: Any) -> Iterator[list[torch.Tensor]] | None:
    """The batches of ``loader`` as copies of slices of its tensors, when it is a plain ``DataLoader``
    over a ``TensorDataset`` that reads it in order with the default collation, no workers and no
    pinned memory: what it yields then (``default_collate`` stacks each example's tensors into a list
    per batch), each tensor contiguous, at one copy per tensor instead of a call per example.
    ``None`` for any other loader (read as it is).
    """
    if type(loader) is not DataLoader or type(loader.dataset) is not TensorDataset:
        return None
    order = loader.batch_sampler
    if (loader.num_workers or loader.pin_memory or loader.collate_fn is not default_collate
            or type(order) is not BatchSampler or type(order.sampler) is not SequentialSampler
            or order.sampler.data_source is not loader.dataset or order.drop_last):
        return None
    tensors, size = loader.dataset.tensors, order.batch_size
    return ([t[start : start + size].clone(memory_format=torch.contiguous_format) for t in tensors]
            for start in range(0, len(loader.dataset), size))


def checked(loader: Iterable[Any], role: str, keep: bool = True) -> CheckedLoader:
    """``loader`` wrapped in a :class:`CheckedLoader` (itself when it already is one).

    Raises:
        DataLoaderError: what :func:`attrkit.data.check_fixed_order` refuses.
    """
    if isinstance(loader, CheckedLoader):
        return loader
    return CheckedLoader(loader, role, keep)


class CheckedLoader:
    """A re-iterable view of ``loader`` that refuses a changing order; see the module docstring.

    Args:
        loader: a ``DataLoader`` with a fixed order, a list of batches, or any re-iterable
            (a one-shot iterator serves a single pass).
        role: ``"train"`` or ``"test"``, for messages.
        keep: whether a small training set's first pass may be kept to replay (pass ``False`` when
            the caller reads it once: keeping would only add its size to the peak memory).

    Attributes:
        sizes: examples per batch, after the first complete pass (else ``None``).
    """

    def __init__(self, loader: Iterable[Any], role: str, keep: bool = True):
        self._checking = checks.enabled()
        if self._checking:
            check_fixed_order(loader, role)
        self.loader, self.role, self.keep = loader, role, keep
        self.sizes: list[int] | None = None
        self._digests: list[str] = []
        self._passes = 0
        self._one_shot = iter(loader) is loader if not isinstance(loader, (list, tuple, DataLoader)) else False
        self._kept: list[Any] | None = None  # the first pass's batches, replayed by later passes
        self._kept_versions: list[list[int]] = []

    @property
    def n_examples(self) -> int | None:
        """Examples in a pass, once one pass is complete."""
        return None if self.sizes is None else sum(self.sizes)

    @property
    def estimated_examples(self) -> int | None:
        """Examples in a pass: exact after a completed pass, else from the loader without reading it
        (a list's batches, ``len(loader.dataset)``, ``len(loader) × batch_size``), else ``None``."""
        return self.n_examples if self.n_examples is not None else _loader_examples(self.loader)

    def digest(self, index: int) -> str | None:
        """Digest of batch ``index`` (of the first pass; during it, once that batch has been read);
        ``None`` with the checks off (:func:`attrkit.checks.disabled`)."""
        return self._digests[index] if self._checking else None

    def data_digest(self) -> str:
        """Digest of every batch of a complete pass, in order.

        Raises:
            DataLoaderError: no pass has completed yet.
        """
        if self.sizes is None:
            raise DataLoaderError(f"the {self.role} loader has not been read through yet")
        return hashlib.sha256("".join(self._digests).encode()).hexdigest()

    @property
    def replaying(self) -> bool:
        """Whether later passes replay the first pass's kept batches instead of reading the loader."""
        return self._kept is not None

    def release(self) -> None:
        """Drop the kept batches: later passes read the loader again (checked as ever)."""
        self._kept, self._kept_versions = None, []

    def _read(self) -> Iterator[Any]:
        """One pass over the user's loader (by slicing, while it is a plain in-order ``TensorDataset`` loader:
        decided at each pass, since a ``DataLoader``'s ``collate_fn`` or ``num_workers`` may be reset)."""
        batches = _sliced(self.loader)
        return batches if batches is not None else iter(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self._passes += 1
        if self.sizes is None:
            return self._first_pass()
        return self._later_pass(self._passes)

    def _first_pass(self) -> Iterator[Any]:
        digests, sizes = [], []
        self._digests = digests
        probe = self._probe()
        keeps = self.keep and self.role == "train" and not self._one_shot and not isinstance(self.loader, (list, tuple))
        free = available_bytes("cpu") if keeps else None  # read only where something may be kept
        room = min(KEEP_BYTES, KEEP_BYTES if free is None else free // 16) if keeps else 0
        kept: list[Any] | None = [] if room else None
        versions: list[list[int]] = []
        for j, batch in enumerate(self._read()):
            digests.append(batch_digest(batch) if self._checking else "")
            sizes.append(batch_size(batch))
            if kept is not None:
                room -= _nbytes(batch)
                if room >= 0:
                    kept.append(batch)
                    versions.append(_versions(batch))
                else:
                    kept = None
            if j == 0 and probe is not None and probe != digests[0]:
                raise DataLoaderError(
                    f"the {self.role} loader yields another first batch each time it is iterated (a random order, or "
                    "random augmentation); scores are indexed by position, so iterate in a fixed order and without "
                    "random transforms"
                )
            yield batch
        if not sizes:
            raise DataLoaderError(f"the {self.role} loader yielded no batch")
        self.sizes, self._kept, self._kept_versions = sizes, kept, versions if kept is not None else []

    def _probe(self) -> str | None:
        """Digest of the first batch of a separate iterator, for re-iterables whose order nothing else shows."""
        if self._one_shot or not self._checking or isinstance(self.loader, (list, tuple)):
            return None
        if _sliced(self.loader) is not None:  # nothing random in a sliced TensorDataset
            return None
        if isinstance(self.loader, DataLoader) and (self.loader.num_workers > 0 or self.loader.batch_sampler is None):
            return None  # workers are costly to start; the sampler itself was checked
        first = next(iter(self.loader), None)
        return None if first is None else batch_digest(first)

    def _later_pass(self, number: int) -> Iterator[Any]:
        sizes, count = self.sizes, len(self.sizes)
        spot = (number - 1) % count
        if self._kept is not None and [_versions(b) for b in self._kept] != self._kept_versions:
            self.release()  # the model or loss_fn changed a kept batch in place: read the loader as ever
        if self._kept is not None:  # unchanged since pass 1, so nothing to check
            yield from self._kept
            return
        seen = 0
        for j, batch in enumerate(self._read()):
            seen = j + 1
            if not self._checking:
                yield batch
                continue
            if j >= count:
                raise DataLoaderError(self._changed(number, f"more than the {count} batches of pass 1"))
            if batch_size(batch) != sizes[j]:
                raise DataLoaderError(self._changed(number, f"a batch {j} of {batch_size(batch)} examples (pass 1: "
                                                            f"{sizes[j]})"))
            if j in (0, spot) and batch_digest(batch) != self._digests[j]:
                raise DataLoaderError(self._changed(number, f"other values in batch {j} than pass 1 (a random order, "
                                                            "or random augmentation?)"))
            yield batch
        if seen == 0 and self._one_shot and self._checking:
            raise DataLoaderError(
                f"the {self.role} data is a one-shot iterator (a generator?), exhausted after its first pass, but this "
                f"method reads it {number} times; pass a re-iterable: a DataLoader or a list of batches"
            )
        if seen != count and self._checking:
            raise DataLoaderError(self._changed(number, f"{seen} batches (pass 1: {count})"))

    def _changed(self, number: int, what: str) -> str:
        return (f"the {self.role} loader changed between passes: pass {number} yielded {what}; scores are indexed "
                "by position, so every pass must yield the same batches in the same order (shuffle=False, no random "
                "transforms, no drop_last)")
