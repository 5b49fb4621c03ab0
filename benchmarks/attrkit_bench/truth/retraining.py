"""The retraining engine: ground-truth jobs run in parallel worker processes, cached on disk.

A ground truth is many independent retrainings (LDS subsets, leave-one-out removals).
:func:`run_jobs` makes job ``i`` with ``job(i)`` unless its file already exists, in up
to ``workers`` spawned processes (each on one intra-op thread, the way training runs
anyway), and loads every file in order. Each file is written atomically by the process
that made it (:func:`~attrkit_bench.cache.load_or_create`), so a killed run loses only
the jobs in flight and a rerun resumes. A job's result depends only on its index (the
training seed is derived from it), never on the worker or the number of workers: the
ground truth is deterministic.

``workers`` defaults to ``$ATTRKIT_BENCH_WORKERS``, else the number of CPU cores. With
one worker (or one missing job) jobs run in this process; with more, ``job`` must be
picklable: a :func:`functools.partial` of a module-level function over tensors and
plain values, not a closure or a lambda.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from attrkit.plugin import progress
from attrkit_bench.cache import load_or_create

__all__ = ["Job", "Retrain", "default_workers", "derived_seed", "run_jobs"]

#: ``job(index) -> artifact``: one retraining, a dict of tensors and plain values.
Job = Callable[[int], dict[str, Any]]
#: ``retrain(keep BoolTensor[n_train], seed) -> (values Tensor[n_targets], state_dict)``:
#: train on the kept examples with ``seed``; the target values (loss-like) and the weights.
Retrain = Callable[[torch.Tensor, int], tuple[torch.Tensor, dict[str, torch.Tensor]]]

_INSTALLED: Job | None = None


def derived_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. ``("lds", setting_seed, model)``)."""
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def default_workers() -> int:
    """``$ATTRKIT_BENCH_WORKERS`` if set (a positive integer), else the CPU count."""
    text = os.environ.get("ATTRKIT_BENCH_WORKERS")
    if text is None:
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"ATTRKIT_BENCH_WORKERS must be a positive integer, got {text!r}")
    return int(text)


def _timed(job: Job, index: int) -> dict[str, Any]:
    start = time.perf_counter()
    artifact = job(index)
    return {**artifact, "seconds": time.perf_counter() - start}


def _install(job: Job) -> None:
    """Worker initialiser: keep ``job`` for the tasks, train on one thread, no progress bars."""
    global _INSTALLED
    _INSTALLED = job
    torch.set_num_threads(1)
    os.environ["ATTRKIT_PROGRESS"] = "0"


def _make(index: int, path: str) -> None:
    assert _INSTALLED is not None, "worker started without a job"
    load_or_create(Path(path), lambda: _timed(_INSTALLED, index))


def _require_picklable(job: Job) -> None:
    try:
        pickle.dumps(job)
    except Exception as exc:  # pickling raises many types (PicklingError, AttributeError, TypeError)
        raise TypeError(
            f"ground-truth jobs run in worker processes and must be picklable, got {job!r} ({exc}); "
            "make it a functools.partial of a module-level function, or pass workers=1"
        ) from exc


def _run_parallel(job: Job, missing: list[tuple[int, Path]], workers: int, desc: str) -> None:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_install,
                                                initargs=(job,)) as pool:
        futures = [pool.submit(_make, index, str(path)) for index, path in missing]
        try:
            for future in progress(concurrent.futures.as_completed(futures), desc, total=len(futures)):
                future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def run_jobs(job: Job, paths: Sequence[Path], *, workers: int | None = None, desc: str = "retraining") -> tuple[
        list[dict[str, Any]], int]:
    """Make the missing artifacts ``paths[i] = job(i)`` and load them all.

    Each artifact also gets ``"seconds"``, the wall time of its job when it was made.

    Args:
        job: makes artifact ``i``; picklable when more than one worker runs.
        paths: one cache file per job, in index order.
        workers: processes to use; ``None``: :func:`default_workers`.
        desc: the progress bar's label.

    Returns:
        ``(artifacts in index order, how many were made by this call)``.

    Raises:
        TypeError: several workers and a job that cannot be pickled.
        ValueError: ``workers`` below 1.
    """
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    missing = [(i, Path(p)) for i, p in enumerate(paths) if not Path(p).exists()]
    workers = min(workers, len(missing))
    if workers > 1:
        _require_picklable(job)
        _run_parallel(job, missing, workers, f"{desc} ({workers} processes)")
    else:
        for index, path in progress(missing, desc, total=len(missing)):
            load_or_create(path, lambda: _timed(job, index))  # noqa: B023 (called at once)
    artifacts = [torch.load(p, map_location="cpu", weights_only=True) for p in paths]
    return artifacts, len(missing)
