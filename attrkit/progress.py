"""Progress bars for long loops: ``tqdm`` when installed, silent iteration otherwise.

A progress bar never changes a result, so falling back to none is not a silent
backend swap. ``ATTRKIT_PROGRESS=0`` hides them; by default they show on a terminal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress"]

T = TypeVar("T")


def _enabled() -> bool:
    flag = os.environ.get("ATTRKIT_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar labelled ``desc`` when enabled."""
    if _enabled():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            yield from tqdm(items, desc=desc, total=total, leave=False)
            return
    yield from items
