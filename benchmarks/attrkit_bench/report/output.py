"""What a study writes: the environment it ran in, its JSON result and its markdown page."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import attrkit
from attrkit_bench.compare.dattri import dattri_version
from attrkit_bench.report.pages import markdown

__all__ = ["environment", "write_results"]


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


def write_results(document: Mapping[str, Any], out: Path, stem: str, page_path: Path | None) -> None:
    """Write ``{out}/{stem}[-quick].json`` and its markdown page; print the page and both paths.

    Args:
        document: the results (with a ``quick`` flag), rendered by :func:`attrkit_bench.report.pages.markdown`.
        out: folder of the JSON file (created when missing).
        stem: base name of the files (``"influence"``).
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
