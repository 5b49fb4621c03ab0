"""Memory estimates before large allocations: refuse what cannot fit, with the numbers and the fix.

``available_bytes(device)`` reads what the machine has free now (``MemAvailable`` of
``/proc/meminfo`` on Linux, the CUDA allocator's free memory on a GPU); ``require``
raises :class:`~attrkit.errors.InsufficientMemoryError` before an allocation larger than
that, instead of letting the allocator ask the operating system for 64 GB.
"""

from __future__ import annotations

import os

import torch

from attrkit.errors import InsufficientMemoryError

__all__ = ["DEFAULT_FRACTION", "available_bytes", "format_bytes", "require"]

#: Share of the memory available that attrkit's default budgets take: a fit's training features
#: (:mod:`attrkit.budget`) and the structured curvature's cached factors
#: (:mod:`attrkit.functional.structured_matvec`).
DEFAULT_FRACTION = 0.25

#: Allocations below this size are not checked (reading the free memory costs more than they risk).
_ALWAYS_AVAILABLE = 256 * 2**20


def format_bytes(nbytes: float) -> str:
    """``nbytes`` in B, KiB, MiB, GiB or TiB, three significant digits."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.3g} {unit}"
        nbytes /= 1024
    return f"{nbytes:.3g} TiB"


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Bytes that can be allocated now on ``device``, or ``None`` when unknown."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require(nbytes: int, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """Refuse an allocation of ``nbytes`` that exceeds what ``device`` has available.

    Args:
        nbytes: bytes about to be allocated.
        what: what they are for (``"the projection of a batch of 64 examples to dim=10**9"``).
        fix: how to need less (``"lower projector.dim"``).
        device: where they would be allocated.

    Allocations under 256 MiB are let through without reading the free memory.

    Raises:
        InsufficientMemoryError: ``nbytes`` is more than is available.
    """
    if nbytes < _ALWAYS_AVAILABLE:
        return
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise InsufficientMemoryError(
            f"{what} needs {format_bytes(nbytes)}, more than the {format_bytes(free)} available on "
            f"{torch.device(device)}; {fix}"
        )
