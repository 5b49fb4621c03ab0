"""``attrkit bench ship SETTING``: make a setting's ground truth and bundle it into the package.

Whatever of the ground truth the cache lacks is made by retraining (never from the bundle it
replaces), then bundled by :func:`attrkit_bench.truth.shipped.pack`; ``$ATTRKIT_CACHE``
picks the cache.
"""

from __future__ import annotations

import argparse
import os

from attrkit_bench.cache import default_cache_dir
from attrkit_bench.settings import get_setting
from attrkit_bench.truth.shipped import pack

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The setting."""
    parser.add_argument("setting", help="the setting whose ground truth to bundle (e.g. mnist-lr)")


def run(args: argparse.Namespace) -> int:
    """Make and bundle; prints the bundle's path and size, returns 0."""
    cache_dir = default_cache_dir(args.setting)
    os.environ["ATTRKIT_BENCH_SHIPPED"] = "0"  # made by retraining, never from the bundle it replaces
    problem = get_setting(args.setting).prepare(cache_dir, False)
    if "loo" in problem.truths:
        problem.truth("loo")
    path = pack(args.setting, problem.info["cache_key"], cache_dir)
    print(f"{path}: {path.stat().st_size / 2**20:.2f} MiB")
    return 0
