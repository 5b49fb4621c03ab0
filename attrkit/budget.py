"""The memory budget: how many bytes of training features one process may hold at once.

``fit(..., memory_budget=...)`` bounds the training features a process holds: when every
member's features fit, they are held in memory; otherwise they are streamed from an on-disk
store in tiles (:func:`tile_rows` turns the budget into rows per tile). The budget is, in
order of precedence:

* ``fit(memory_budget=...)``: bytes (a positive ``int``), a size with a unit (``"2GiB"``,
  ``"500MB"``), or ``float("inf")`` (or ``"inf"``) for no budget;
* the environment variable ``ATTRKIT_MEMORY_BUDGET``, in the same forms (``inf``: no budget);
* the default (``memory_budget=None``): :data:`DEFAULT_FRACTION` of the memory available at fit
  time where the features are held (:func:`attrkit.memory.available_bytes` of the task's
  device), with tiles of at most :data:`DEFAULT_TILE_BYTES` when streaming.

:func:`resolve_budget` applies these rules and returns a :class:`Budget`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch

from attrkit.errors import MemoryBudgetError
from attrkit.memory import DEFAULT_FRACTION, available_bytes, format_bytes

if TYPE_CHECKING:
    from attrkit.feature_matrix import FeatureMatrix

__all__ = [
    "DEFAULT_FRACTION", "DEFAULT_TILE_BYTES", "ENV_VAR", "INDEX_BYTES", "Budget", "check_budget", "parse_budget",
    "resolve_budget", "tile_rows",
]

#: Bytes per tile row of its global index (``Tile.index``, int64).
INDEX_BYTES = 8
#: The environment variable that sets the budget when ``fit`` is given none.
ENV_VAR = "ATTRKIT_MEMORY_BUDGET"
#: The most bytes one tile of a matrix streamed under the *default* budget occupies (a budget
#: given by the user bounds its tiles itself).
DEFAULT_TILE_BYTES = 256 * 2**20

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12,
          "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_FORMS = ("a positive number of bytes (int), a size with a unit such as '2GiB' or '500MB' (B, kB, MB, GB, TB, KiB, "
          "MiB, GiB, TiB), or inf for no budget")


@attrs.frozen
class Budget:
    """The budget a fit runs under.

    Attributes:
        bytes: the budget, or ``None`` for none (``inf``, or the available memory is unknown).
        source: ``"memory_budget"`` (the argument), ``"ATTRKIT_MEMORY_BUDGET"`` or ``"default"``.
        tile_bytes: the most bytes a tile of a streamed matrix occupies: ``bytes`` when given by
            the user, else ``min(bytes, DEFAULT_TILE_BYTES)``; ``None`` without a budget.
        available: bytes available at fit time (for the default; else ``None``).
        device: where ``available`` was measured (``"cpu"``, ``"cuda:0"``), for the default.
    """

    bytes: int | None
    source: str
    tile_bytes: int | None = None
    available: int | None = None
    device: str | None = None

    def describe(self) -> str:
        """``"budget 5.6 GiB (25% of 22.4 GiB available)"``-like words for messages."""
        if self.bytes is None:
            if self.source == "default":
                return "no budget (the available memory is unknown)"
            return f"no budget ({'memory_budget' if self.source == 'memory_budget' else self.source}=inf)"
        if self.source == "default":
            where = f" on {self.device}" if self.device not in (None, "cpu") else ""
            return (f"budget {format_bytes(self.bytes)} ({DEFAULT_FRACTION:.0%} of {format_bytes(self.available)} "
                    f"available{where})")
        where = "memory_budget" if self.source == "memory_budget" else self.source
        return f"budget {format_bytes(self.bytes)} ({where})"


def parse_budget(value: Any, source: str = "memory_budget") -> int | None:
    """``value`` as a number of bytes, or ``None`` for no budget (``inf``).

    Accepts a positive ``int``, ``float("inf")``, or a string: digits with an optional unit
    (``"2GiB"``, ``"1.5 GB"``, ``"1000000"``) or ``"inf"``.

    Raises:
        MemoryBudgetError: anything else, naming ``source`` and the accepted forms.
    """
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("inf", "+inf", "infinity"):
            return None
        match = _SIZE.match(text)
        if match and match.group(2) in _UNITS:
            nbytes = int(float(match.group(1)) * _UNITS[match.group(2)])
            if nbytes >= 1:
                return nbytes
        raise MemoryBudgetError(f"{source} must be {_FORMS}; got {value!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MemoryBudgetError(f"{source} must be {_FORMS}; got {value!r}")
    return value


def check_budget(memory_budget: Any) -> int | None:
    """``memory_budget`` as bytes, or ``None`` (no budget: ``None`` or ``inf``).

    Raises:
        MemoryBudgetError: not one of the forms of :func:`parse_budget`.
    """
    return None if memory_budget is None else parse_budget(memory_budget)


def resolve_budget(memory_budget: Any, device: torch.device | str = "cpu") -> Budget:
    """The :class:`Budget` of a fit: the argument, else ``ATTRKIT_MEMORY_BUDGET``, else the default
    (:data:`DEFAULT_FRACTION` of :func:`~attrkit.memory.available_bytes` of ``device``, or of the
    CPU's when the device cannot say; no budget when neither can).

    Raises:
        MemoryBudgetError: a malformed argument or environment variable (named, with the forms).
    """
    if memory_budget is not None:
        nbytes = parse_budget(memory_budget)
        return Budget(nbytes, "memory_budget", nbytes)
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        nbytes = parse_budget(env, f"the environment variable {ENV_VAR}")
        return Budget(nbytes, ENV_VAR, nbytes)
    device = torch.device(device)
    available = available_bytes(device)
    if available is None and device.type != "cpu":
        device = torch.device("cpu")
        available = available_bytes(device)
    if available is None:
        return Budget(None, "default")
    nbytes = max(1, int(available * DEFAULT_FRACTION))
    return Budget(nbytes, "default", min(nbytes, DEFAULT_TILE_BYTES), available, str(device))


def tile_rows(matrices: Sequence[FeatureMatrix], extra: int = 0) -> int:
    """Rows per tile when the same rows of ``matrices`` (one per member) are read together.

    All held rows when every matrix is resident or has no budget (reading them costs
    nothing more); else as many as fit in the matrices' ``tile_bytes`` (their budget, or less
    under the default budget) at ``Σ_m row_bytes + 8 + extra`` bytes per row (a row's features
    and their transformed copy, its global index), and at least one row when the budget holds
    one. The memory map of the chunk being read (one batch's rows) comes on top.

    Args:
        matrices: matrices with the same rows and the same budget.
        extra: the caller's working bytes per row (e.g. a float64 copy, a score column).

    Raises:
        MemoryBudgetError: the budget cannot hold one row.
    """
    first = matrices[0]
    if all(x.resident or x.budget is None for x in matrices):
        return max(first.rows, 1)
    per_row = sum(x.row_bytes for x in matrices) + INDEX_BYTES + extra
    if first.budget < per_row:
        raise MemoryBudgetError(
            f"memory_budget={first.budget} bytes cannot hold one tile: a tile row takes {per_row} bytes "
            f"({len(matrices)} member(s) of k={first.width} features, its index and {extra} bytes of working "
            "memory); "
            f"raise memory_budget to at least {per_row}"
        )
    return max(1, min(first.budget, first.tile_bytes or first.budget) // per_row)
