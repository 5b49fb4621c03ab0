"""Distributed scaling: the same specs on 1 and 2 gloo ranks (spawned here), time and per-rank memory.

    python -m attrkit_bench.scaling [--setting mnist-mlp] [--ranks 1,2] [--out DIR] [--quick]

Each rank prepares the setting (cached models), then runs every spec of :data:`SPECS`:
``fit`` on the training set and ``attribute`` on the targets, timed between barriers, with
the rank's peak RSS rise. Rank 0 checks its scores against the 1-rank run's and records the
largest relative difference.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attrkit
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.memory import PeakMemory
from attrkit_bench.settings import get_setting

__all__ = ["SPECS", "main"]

#: The specs timed: Grad-Dot, TRAK and one IF solver.
SPECS: dict[str, dict[str, Any]] = {
    "grad-dot + gaussian(512)": {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 512}},
    "trak + gaussian(512)": {"method": "trak", "projector": {"name": "gaussian", "dim": 512}},
    "if + ekfac (λ 1e-5)": {"method": "if", "solver": {"name": "ekfac", "regularization": 1e-5}},
}


def _rank(rank: int, size: int, folder: str, setting: str, cache: str, quick: bool) -> None:
    torch.set_num_threads(1)
    os.environ["ATTRKIT_PROGRESS"] = "0"
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=size)
    try:
        problem = get_setting(setting).prepare(Path(cache), quick)
        rows = {}
        for label, spec in SPECS.items():
            dist.barrier()
            start = time.perf_counter()
            with PeakMemory() as memory:
                scores = attrkit.compose(spec, problem.task()).fit(problem.train).attribute(problem.targets)
            dist.barrier()
            rows[label] = {"seconds": time.perf_counter() - start, "peak_mib": memory.peak_mib}
            torch.save(scores, f"{folder}/{label}-{rank}.pt")
        Path(f"{folder}/rows-{rank}.json").write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def run(setting: str, ranks: list[int], cache: Path, quick: bool) -> list[dict[str, Any]]:
    """Every spec at every world size: ``[{ranks, spec, seconds, peak_mib per rank, max_rel_diff}]``."""
    out, reference = [], {}
    for size in ranks:
        with tempfile.TemporaryDirectory() as folder:
            mp.start_processes(_rank, args=(size, folder, setting, str(cache), quick), nprocs=size, start_method="spawn")
            per_rank = [json.loads(Path(f"{folder}/rows-{r}.json").read_text()) for r in range(size)]
            for label in SPECS:
                scores = torch.load(f"{folder}/{label}-0.pt")
                reference.setdefault(label, scores)
                diff = float((scores - reference[label]).abs().max() / reference[label].abs().max())
                out.append({"ranks": size, "spec": label, "seconds": max(r[label]["seconds"] for r in per_rank),
                            "peak_mib": [r[label]["peak_mib"] for r in per_rank], "max_rel_diff": diff})
                print(f"  {size} rank(s) {label}: {out[-1]['seconds']:.2f} s, peak {out[-1]['peak_mib']} MiB, "
                      f"max rel. diff vs 1 rank {diff:.1e}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the scaling benchmark; writes ``{out}/scaling[-quick].json`` and prints a table."""
    parser = argparse.ArgumentParser(prog="python -m attrkit_bench.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--setting", default="mnist-mlp")
    parser.add_argument("--ranks", default="1,2", help="world sizes, comma-separated (the first is the reference)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--cache", type=Path, help="default: $ATTRKIT_CACHE/bench/SETTING")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rows = run(args.setting, [int(r) for r in args.ranks.split(",")], args.cache or default_cache_dir(args.setting),
               args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scaling{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"setting": args.setting, "quick": args.quick, "rows": rows}, indent=2) + "\n")
    print("| ranks | spec | time (s) | peak MiB per rank | max rel. diff vs 1 rank |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['ranks']} | {r['spec']} | {r['seconds']:.2f} | {', '.join(f'{m:.0f}' for m in r['peak_mib'])} | "
              f"{r['max_rel_diff']:.1e} |")
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
