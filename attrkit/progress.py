"""Progress bars for long loops: ``tqdm`` when installed, silent iteration otherwise.

A progress bar never changes a result, so falling back to none is not a silent
backend swap. ``ATTRKIT_PROGRESS=0`` hides them; by default they show on a terminal.
:func:`note` says one line (e.g. where ``fit`` keeps the training features) through the
same channel — stderr, without breaking a bar being drawn — under the same rule.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

__all__ = ["enabled", "length_of", "note", "progress"]

T = TypeVar("T")

#: Attributes through which a wrapper of batches exposes what it wraps (checked loaders, views).
_WRAPPED = ("batches", "loader")


def enabled() -> bool:
    """Whether bars and notes show: ``ATTRKIT_PROGRESS`` (``0``, ``false``, ``no`` or empty hide
    them), else whether stderr is a terminal."""
    flag = os.environ.get("ATTRKIT_PROGRESS")
    if flag is not None:
        return flag.strip().lower() not in ("0", "false", "no", "off", "")
    return sys.stderr.isatty()



def length_of(items: Any, depth: int = 4) -> int | None:
    """How many items one pass over ``items`` yields, when known without iterating: ``len``,
    the batch sizes a checked loader recorded, or the same of what a view wraps; else ``None``.
    Only for the total of a bar."""
    for _ in range(depth):
        try:
            return len(items)
        except TypeError:
            pass
        sizes = getattr(items, "sizes", None)
        if isinstance(sizes, list):
            return len(sizes)
        items = next((getattr(items, a) for a in _WRAPPED if getattr(items, a, None) is not None), None)
        if items is None:
            return None
    return None


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar labelled ``desc`` when enabled."""
    if enabled():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, desc=desc, total=total, leave=False)
            return
    yield from items


def note(message: str) -> None:
    """Say ``message`` (one line) on stderr when bars are enabled, above any bar being drawn."""
    if not enabled():
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(message, file=sys.stderr, flush=True)
    else:
        tqdm.write(message, file=sys.stderr)
