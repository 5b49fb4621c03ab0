"""Ground truth that ships with the repository, so a setting's first run need not retrain.

A bundle is one lzma-compressed file, ``attrkit_bench/shipped/{setting}-{key}.pt.xz`` in
the package, holding cache files of a setting's full run (its trained model, noisy-label
model, LDS and LOO retrainings) by file name, exactly as the retraining engine wrote
them. :func:`unpack` copies the ones missing from a cache folder into it before the
setting looks there; everything else is made as usual. ``key`` is the setting's recipe
key (:func:`~attrkit_bench.cache.recipe_key`), so a changed recipe, data set or
:data:`~attrkit_bench.cache.CACHE_VERSION` finds no bundle and retrains: a bundle can be
stale only by being unused. The test suite checks that the mnist-lr bundle matches the
current recipe and that its artifacts equal fresh retrainings.

Make one with ``attrkit bench ship SETTING`` (it makes whatever of the ground truth is
missing first).
"""

from __future__ import annotations

import io
import lzma
import os
import re
from pathlib import Path
from typing import Any

import torch

from attrkit_bench.cache import save_atomic

__all__ = ["SHIPPED_DIR", "bundle_path", "pack", "unpack"]

#: Where bundles live (inside the package, so an install carries them).
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "shipped"

#: The cache files a bundle holds: ``{setting}-{kind}-{key}...`` for these kinds.
_KINDS = ("model", "noisy", "lds", "loo")


def bundle_path(setting: str, key: str) -> Path:
    """``SHIPPED_DIR / f"{setting}-{key}.pt.xz"``."""
    return SHIPPED_DIR / f"{setting}-{key}.pt.xz"


def pack(setting: str, key: str, cache_dir: Path) -> Path:
    """Bundle the cache files of ``setting`` with recipe ``key`` found in ``cache_dir``.

    Returns:
        The bundle's path (:func:`bundle_path`).

    Raises:
        FileNotFoundError: ``cache_dir`` holds none of them (run the setting first).
    """
    pattern = re.compile(rf"{re.escape(setting)}-({'|'.join(_KINDS)})-{key}(-\d+)?\.pt")
    names = sorted(p.name for p in cache_dir.glob("*.pt") if pattern.fullmatch(p.name))
    if not names:
        raise FileNotFoundError(f"no cache files of {setting} with key {key} in {cache_dir}; run `attrkit bench {setting}`")
    artifacts = {name: torch.load(cache_dir / name, map_location="cpu", weights_only=True) for name in names}
    buffer = io.BytesIO()
    torch.save(artifacts, buffer)
    path = bundle_path(setting, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lzma.compress(buffer.getvalue(), preset=9))
    return path


def unpack(setting: str, key: str, cache_dir: Path) -> int:
    """Write the shipped artifacts of ``setting`` and ``key`` that ``cache_dir`` lacks.

    Each file is written atomically (:func:`~attrkit_bench.cache.save_atomic`), so an
    interrupted unpack leaves whole files only. No bundle for ``key``, or
    ``$ATTRKIT_BENCH_SHIPPED`` set to ``0`` (to retrain, e.g. to time the ground truth):
    nothing happens.

    Returns:
        How many files were written.
    """
    path = bundle_path(setting, key)
    if not path.exists() or os.environ.get("ATTRKIT_BENCH_SHIPPED") == "0":
        return 0
    artifacts: dict[str, dict[str, Any]] = torch.load(io.BytesIO(lzma.decompress(path.read_bytes())),
                                                      map_location="cpu", weights_only=True)
    missing = {name: a for name, a in artifacts.items() if not (cache_dir / name).exists()}
    for name, artifact in missing.items():
        save_atomic(cache_dir / name, artifact)
    return len(missing)
