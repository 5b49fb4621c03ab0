"""The options the studies share."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

__all__ = ["add_run_arguments", "names"]


def add_run_arguments(parser: argparse.ArgumentParser, page: str, threads: int | None = None) -> None:
    """The options every study with a markdown page takes: ``--out``, ``--markdown``, ``--cache``,
    ``--threads`` (default ``threads``, else every core) and ``--quick``."""
    parser.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR",
                        help="folder of the JSON result (default: ./bench-out)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help=f"the markdown page (default: DIR/{page})")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="folder of cached models and ground truth (default: $ATTRKIT_CACHE/bench/SETTING)")
    default = threads or os.cpu_count() or 1
    parser.add_argument("--threads", type=int, default=default, help=f"torch intra-op threads (default: {default})")
    parser.add_argument("--quick", action="store_true", help="every size shrunk: a smoke run of the same code")


def names(text: str | None, default: list[str]) -> list[str]:
    """The comma-separated names in ``text`` (blanks dropped), or ``default`` when ``text`` is ``None``."""
    return list(default) if text is None else [n.strip() for n in text.split(",") if n.strip()]
