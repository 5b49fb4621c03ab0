"""What every comparison benchmark writes: the environment, a JSON file and a markdown page."""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

import attrkit
from attrkit_bench.dattri_compare import dattri_version

__all__ = ["add_run_arguments", "environment", "write_results"]


def add_run_arguments(parser: argparse.ArgumentParser, page: str, threads: int | None = None) -> None:
    """The options every comparison benchmark takes: ``--out``, ``--markdown``, ``--cache``,
    ``--threads`` (default ``threads``, else every core) and ``--quick``."""
    parser.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR",
                        help="folder of the JSON result (default: ./bench-out)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help=f"the markdown page (default: DIR/{page})")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="folder of cached models and ground truth (default: $ATTRKIT_CACHE/bench/SETTING)")
    default = threads or os.cpu_count() or 1
    parser.add_argument("--threads", type=int, default=default, help=f"torch intra-op threads (default: {default})")
    parser.add_argument("--quick", action="store_true", help="every size shrunk: a smoke run of the same code")


def environment(with_dattri: bool) -> dict[str, Any]:
    """The machine and library versions a result was measured with (JSON-able)."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "attrkit": attrkit.__version__,
        "dattri": dattri_version() if with_dattri else None,
    }


def write_results(
    document: Mapping[str, Any],
    out: Path,
    stem: str,
    markdown: Callable[[Mapping[str, Any]], str],
    page_path: Path | None,
) -> None:
    """Write ``{out}/{stem}[-quick].json`` and the markdown page; print the page and both paths.

    Args:
        document: the results (with a ``quick`` flag).
        out: folder of the JSON file (created when missing).
        stem: base name of the files (``"influence"``).
        markdown: renders ``document`` as a markdown page.
        page_path: where the page goes; ``None`` for ``{out}/{STEM}.md``.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}{'-quick' if document['quick'] else ''}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    page = markdown(document)
    report = page_path or out / f"{stem.upper()}.md"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(page + "\n")
    print(page)
    print(f"results: {path}, {report}")
