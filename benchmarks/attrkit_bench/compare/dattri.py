"""dattri, the library the benchmark compares against: is it installed, which version.

dattri (``pip install "attrkit[compare]"``, dattri 0.3) is optional and imported lazily by
the modules of :mod:`attrkit_bench.compare`; the commands that compare call
:func:`require_dattri` first, so a missing dattri is a usage error before any work.
"""

from __future__ import annotations

import importlib
import importlib.metadata

__all__ = ["dattri_version", "require_dattri"]


def require_dattri() -> None:
    """Import dattri or raise an ``ImportError`` saying how to install it."""
    try:
        importlib.import_module("dattri.algorithm.influence_function")
    except ImportError as exc:
        raise ImportError(f"--compare dattri needs dattri: pip install dattri ({exc})") from exc


def dattri_version() -> str:
    """The installed dattri distribution's version."""
    return importlib.metadata.version("dattri")
