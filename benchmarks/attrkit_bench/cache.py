"""On-disk cache of benchmark artifacts: content keys and atomic, resumable files."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["cached_fit", "default_cache_dir", "fingerprint", "load_or_create", "recipe_key", "save_atomic"]

#: Bumped whenever the code that makes a cached artifact changes its result.
CACHE_VERSION = 2


def default_cache_dir(setting: str) -> Path:
    """``$ATTRKIT_CACHE/bench/<setting>``, with ``ATTRKIT_CACHE`` defaulting to ``~/.cache/attrkit``."""
    root = os.environ.get("ATTRKIT_CACHE") or Path.home() / ".cache" / "attrkit"
    return Path(root) / "bench" / setting


def fingerprint(*tensors: torch.Tensor) -> str:
    """SHA-256 (hex) of the dtypes, shapes and bytes of ``tensors``: identifies a data set."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def recipe_key(recipe: Any) -> str:
    """12 hex characters identifying ``recipe`` (JSON-able) and :data:`CACHE_VERSION`.

    Put into cache file names, so a changed recipe never reuses stale files.
    """
    text = json.dumps({"version": CACHE_VERSION, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def load_or_create(path: Path, create: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """Load the dict saved at ``path``, or make it with ``create()`` and save it.

    The file is written by :func:`save_atomic`, so an interrupted run leaves either a
    whole file or none, and a rerun resumes.

    Args:
        path: the cache file (its folder is created when missing).
        create: makes the artifact: a dict of tensors and plain values.

    Returns:
        ``(artifact, created)``: ``created`` is ``True`` when ``create`` ran.
    """
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True), False
    artifact = create()
    save_atomic(path, artifact)
    return artifact, True


def cached_fit(path: Path, fit: Callable[[], torch.nn.Module]) -> tuple[dict[str, Any], bool]:
    """:func:`load_or_create` of ``{"state_dict", "seconds"}``: the weights ``fit()`` trains and its wall time."""

    def timed() -> dict[str, Any]:
        start = time.perf_counter()
        state = fit().state_dict()
        return {"state_dict": state, "seconds": time.perf_counter() - start}

    return load_or_create(path, timed)


def save_atomic(path: Path, artifact: dict[str, Any]) -> None:
    """``torch.save(artifact, path)`` through a temporary name and ``os.replace``: a reader
    (or a rerun after a kill) sees a whole file or none. Creates the folder when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(artifact, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
