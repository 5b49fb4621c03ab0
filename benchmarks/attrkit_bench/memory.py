"""Peak memory of a block of code: process RSS sampled in a thread, plus CUDA's peak; and a timed call."""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch

__all__ = ["PeakMemory", "measured"]

_MIB = 2.0**20
_STATM = "/proc/self/statm"


def _rss_bytes() -> int:
    """Resident set size of this process now, in bytes (Linux ``/proc``)."""
    with open(_STATM, "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_freed_memory() -> None:
    """Hand memory that is free but kept by glibc's allocator back to the OS, where possible.

    Otherwise memory freed by earlier work stays resident, and the next block's
    allocations reuse it without raising the RSS: its peak would be under-reported.
    """
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return
    trim(0)


def _max_rss_bytes() -> int:
    """The process's lifetime peak RSS (``getrusage``), in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakMemory:
    """Context manager: how far memory rose above its level at entry, at the peak.

    Where ``/proc/self/statm`` exists (Linux) a background thread samples the RSS
    every ``interval`` seconds and at exit; on entry, free memory that glibc still
    holds is first returned to the OS, so that reusing it is not missed. Elsewhere
    the rise of ``getrusage``'s lifetime peak is reported, which reads 0 when the
    block stays below an earlier peak of the process (``source`` says which was used).

    Args:
        interval: sampling period in seconds.
        device: when a CUDA device, also record ``torch.cuda.max_memory_allocated``
            on it above the allocation at entry.

    Attributes (after exit):
        peak_mib: peak RSS minus RSS at entry, MiB (>= 0).
        cuda_peak_mib: peak CUDA allocation minus allocation at entry, MiB; ``None`` off CUDA.
        source: ``"statm"`` or ``"getrusage"``.

    Example:
        >>> with PeakMemory() as mem:
        ...     x = torch.ones(2**20)
        >>> mem.peak_mib >= 0
        True
    """

    def __init__(self, interval: float = 0.002, device: torch.device | None = None) -> None:
        self.interval = interval
        self.device = device
        self.source = "statm" if os.path.exists(_STATM) else "getrusage"
        self.peak_mib = 0.0
        self.cuda_peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0
        self._peak = 0
        self._cuda_start = 0

    def _sample(self) -> None:
        self._peak = max(self._peak, _rss_bytes())

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _on_cuda(self) -> bool:
        return self.device is not None and self.device.type == "cuda"

    def __enter__(self) -> PeakMemory:
        if self._on_cuda():
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda_start = torch.cuda.memory_allocated(self.device)
        if self.source == "statm":
            _release_freed_memory()
            self._start = self._peak = _rss_bytes()
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="attrkit-bench-memory", daemon=True)
            self._thread.start()
        else:
            self._start = _max_rss_bytes()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self._sample()
            peak = self._peak
        else:
            peak = _max_rss_bytes()
        self.peak_mib = max(peak - self._start, 0) / _MIB
        if self._on_cuda():
            torch.cuda.synchronize(self.device)
            self.cuda_peak_mib = (torch.cuda.max_memory_allocated(self.device) - self._cuda_start) / _MIB


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``(fn(), wall seconds, peak RSS rise in MiB)`` of one call, timed inside :class:`PeakMemory`."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
    return out, seconds, memory.peak_mib
