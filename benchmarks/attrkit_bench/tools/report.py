"""``attrkit bench report FILE.json...``: result files of settings or studies as markdown (and plots).

Any file ``attrkit bench`` writes is rendered by :func:`attrkit_bench.report.pages.markdown`:
a setting's result as its table, a study's as its page.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attrkit_bench.report.pages import markdown
from attrkit_bench.report.plots import write_plots

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The result files and ``--plots DIR``."""
    parser.add_argument("files", nargs="+", type=Path, help="JSON files written by attrkit bench SETTING or STUDY")
    parser.add_argument("--plots", type=Path, metavar="DIR",
                        help="also draw each file's plots (a setting's, GGDA's) into DIR, named after the file")


def run(args: argparse.Namespace) -> int:
    """Print each file's markdown; returns 0."""
    for path in args.files:
        document = json.loads(path.read_text())
        print(markdown(document))
        if args.plots is not None:
            for plot in write_plots(document, args.plots, path.stem):
                print(f"plot: {plot}")
    return 0
