"""One switch for the safety checks, so that their cost can be measured.

attrkit checks loaders, weights, finiteness and store integrity on every call (see the
README's "What attrkit checks"). :func:`disabled` switches those checks off inside a
``with`` block, and only to measure what they cost (``attrkit bench checks``):
inside it, a shuffled loader, a NaN or a changed model gives silently wrong scores again.
Errors that the checks do not add (a malformed spec, a store of another spec) still occur.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

__all__ = ["disabled", "enabled"]

_ENABLED = [True]


def enabled() -> bool:
    """Whether the safety checks run (``True`` except inside :func:`disabled`)."""
    return _ENABLED[0]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Switch the safety checks off inside the block (for measuring their cost only)."""
    before, _ENABLED[0] = _ENABLED[0], False
    try:
        yield
    finally:
        _ENABLED[0] = before
