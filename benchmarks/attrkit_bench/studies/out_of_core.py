"""The out-of-core study: TRAK on a synthetic training set replicated to n examples, its features
on disk and streamed under a memory budget.

    attrkit bench out-of-core [--n 1000000] [--dim 512] [--budget-mib 1024] [--out DIR] [--spec FILE]

A seeded MLP (32-64-10, p = 2826) is trained on ``--base`` Gaussian-blob examples; example
``i`` of the training set is base example ``i mod base``. The spec file's method (TRAK with
``--projector`` at ``--dim``, ``gauss-newton``; every default in
``benchmarks/specs/out-of-core.json``) is fitted with an on-disk store and ``memory_budget``, then scores
``--targets`` test examples (``attribute``, one test batch) and finds their top 10
(``top_k``). Each phase's wall time and peak RSS rise are recorded, and the scores are
checked against an in-memory TRAK on the base set: with ``λ = 0`` and ``n`` a multiple of
``base``, ``ΦᵀΦ`` is ``n / base`` times the base set's, so
``score[t, i] = score_base[t, i mod base] · base / n``. Writes ``{out}/out_of_core.json`` and
a markdown page (``--markdown``, default ``{out}/OUT_OF_CORE.md``) with an extrapolation to
``10^8`` examples on N GPUs (see :mod:`attrkit_bench.report.out_of_core`).
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

import attrkit
from attrkit_bench.memory import measured
from attrkit_bench.report.output import environment, write_results
from attrkit_bench.studies.spec import fill

__all__ = ["Replicated", "add_arguments", "run", "stream"]

_MIB = 2**20
#: Training columns whose scores are checked against the in-memory base-set run.
_CHECKED = 20_000


class Replicated:
    """Fixed-order batches ``(x, y)`` of ``n`` examples, example ``i`` being base example ``i mod base``.

    Records when each pass over it starts and ends (``passes``: ``[start, end]`` in
    ``time.perf_counter`` seconds), which times the phases of ``fit``.

    Args:
        x: ``Tensor[base, d]`` inputs; y: ``LongTensor[base]`` labels.
        n: examples in all.
        batch: examples per batch (the last may be short).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n: int, batch: int):
        self.x, self.y, self.n, self.batch = x, y, n, batch
        self.passes: list[list[float]] = []

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.passes.append([time.perf_counter(), math.nan])
        for start in range(0, self.n, self.batch):
            index = torch.arange(start, min(self.n, start + self.batch)) % self.x.shape[0]
            yield self.x[index], self.y[index]
        self.passes[-1][1] = time.perf_counter()


def _problem(base: int, targets: int, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, tuple]:
    """A trained 32-64-10 tanh MLP, its ``base`` training examples and ``targets`` test examples."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(10, 32, generator=gen) * 0.4
    y = torch.randint(0, 10, (base + targets,), generator=gen)
    x = centers[y] + torch.randn(base + targets, 32, generator=gen)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    params = list(model.parameters())
    for _ in range(5):  # plain SGD epochs
        for start in range(0, base, 128):
            loss = torch.nn.functional.cross_entropy(model(x[start : start + 128]), y[start : start + 128])
            with torch.no_grad():
                for param, grad in zip(params, torch.autograd.grad(loss, params)):
                    param -= 0.3 * grad
    return model.eval(), x[:base], y[:base], (x[base:], y[base:])


def stream(spec: Mapping[str, Any], n: int, budget: int, folder: Path, batch: int, base: int, targets: int) -> dict:
    """Fit ``spec`` (TRAK), attribute and top-k under the budget; the numbers of the JSON document's ``run``.

    Raises:
        ValueError: ``n`` is not a multiple of ``base`` (the score check needs it).
    """
    if n % base:
        raise ValueError(f"--n ({n}) must be a multiple of --base ({base}) for the score check")
    model, x, y, test = _problem(base, targets)
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    train, store = Replicated(x, y, n, batch), folder / "store"
    shutil.rmtree(store, ignore_errors=True)
    trak, fit_s, fit_mib = measured(lambda: attrkit.compose(spec, task).fit(train, store=store, memory_budget=budget))
    fit_end = time.perf_counter()
    q_pass, feature_pass = train.passes[0], train.passes[1]
    side = trak.features[0]
    test_batches = [test]
    scores, attr_s, attr_mib = measured(lambda: trak.attribute(test_batches))
    top, top_s, top_mib = measured(lambda: trak.top_k(test_batches, k=10))
    reference = attrkit.compose(spec, task).fit(Replicated(x, y, base, batch)).attribute(test_batches)
    columns = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:_CHECKED]
    expected = reference[:, columns % base] * (base / n)
    error = float((scores[:, columns] - expected).abs().max() / expected.abs().max())
    top_ok = torch.allclose(top.proponent_scores, scores.topk(10, dim=1).values, rtol=1e-5, atol=0.0)
    stored = sum(p.stat().st_size for p in store.rglob("*.npy"))
    shutil.rmtree(store)
    return {
        "streamed": not side.resident, "feature_bytes": side.n * side.width * side.dtype.itemsize,
        "store_bytes": stored,
        "fit": {"seconds": fit_s, "peak_mib": fit_mib, "q_pass_s": q_pass[1] - q_pass[0],
                "features_pass_s": feature_pass[1] - feature_pass[0], "solver_s": fit_end - feature_pass[1]},
        "attribute": {"seconds": attr_s, "peak_mib": attr_mib, "output_mib": scores.numel() * 4 / _MIB},
        "top_k": {"seconds": top_s, "peak_mib": top_mib, "k": 10},
        "check": {"columns": min(n, _CHECKED), "max_rel_error_vs_in_memory_base": error,
                  "top_k_matches_attribute": top_ok},
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The sizes, budget and projector (defaults: the spec's), ``--out``, ``--markdown`` and ``--threads``."""
    parser.add_argument("--n", type=int, help="training examples, a multiple of --base (default: the spec's)")
    parser.add_argument("--dim", type=int, help="projection dimension k (default: the spec's)")
    parser.add_argument("--budget-mib", type=float, help="fit's memory_budget, MiB (default: the spec's)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), metavar="DIR",
                        help="folder of the JSON result and of the feature store (removed after)")
    parser.add_argument("--markdown", type=Path, metavar="FILE", help="the markdown page (default: DIR/OUT_OF_CORE.md)")
    parser.add_argument("--projector", help="projector name (default: the spec's, sjlt, the fastest on CPU here)")
    parser.add_argument("--batch", type=int, help="training examples per batch (= per stored chunk; default: the spec's)")
    parser.add_argument("--base", type=int, help="distinct training examples (default: the spec's)")
    parser.add_argument("--targets", type=int, help="test examples scored, one test batch (default: the spec's)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")


def run(args: argparse.Namespace) -> int:
    """Run the study; writes the JSON document and the markdown page, prints the page."""
    torch.set_num_threads(args.threads)
    given = {"n": args.n, "dim": args.dim, "budget_mib": args.budget_mib, "projector": args.projector,
             "batch": args.batch, "base": args.base, "targets": args.targets}
    sizes = {key: args.spec[key] if value is None else value for key, value in given.items()}
    budget = int(sizes["budget_mib"] * _MIB)
    spec = fill(args.spec["method"], sizes)
    numbers = stream(spec, sizes["n"], budget, args.out, sizes["batch"], sizes["base"], sizes["targets"])
    document = {
        "quick": False, "environment": environment(with_dattri=False),
        "settings": {"n": sizes["n"], "dim": sizes["dim"], "budget_bytes": budget, "projector": sizes["projector"],
                     "batch": sizes["batch"], "base": sizes["base"], "targets": sizes["targets"],
                     "command": args.command},
        "run": numbers,
    }
    write_results(document, args.out, "out_of_core", args.markdown)
    return 0
