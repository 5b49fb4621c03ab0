"""The scaling study: the same specs on 1 and 2 gloo ranks (spawned here), time and per-rank memory.

    attrkit bench scaling [--setting mnist-mlp] [--ranks 1,2] [--out DIR] [--quick] [--spec FILE]

Each rank prepares the setting (cached models), then runs every spec of the spec file
(``benchmarks/specs/scaling.json``): ``fit`` on the training set and ``attribute`` on the
targets, timed between barriers, with the rank's peak RSS rise. Rank 0 checks its scores
against the first world size's run and records the largest relative difference. Prints a
table and writes ``{out}/scaling[-quick].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attrkit
from attrkit_bench.cache import default_cache_dir
from attrkit_bench.memory import PeakMemory
from attrkit_bench.report.scaling import markdown
from attrkit_bench.settings import get_setting

__all__ = ["add_arguments", "run", "scale"]


def _rank(rank: int, size: int, folder: str, setting: str, cache: str, quick: bool,
          specs: Mapping[str, Mapping[str, Any]]) -> None:
    torch.set_num_threads(1)
    os.environ["ATTRKIT_PROGRESS"] = "0"
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=size)
    try:
        problem = get_setting(setting).prepare(Path(cache), quick)
        rows = {}
        for label, spec in specs.items():
            dist.barrier()
            start = time.perf_counter()
            with PeakMemory() as memory:
                scores = attrkit.compose(dict(spec), problem.task()).fit(problem.train).attribute(problem.targets)
            dist.barrier()
            rows[label] = {"seconds": time.perf_counter() - start, "peak_mib": memory.peak_mib}
            torch.save(scores, f"{folder}/{label}-{rank}.pt")
        Path(f"{folder}/rows-{rank}.json").write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def scale(setting: str, ranks: list[int], cache: Path, quick: bool,
          specs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every spec at every world size: ``[{ranks, spec, seconds, peak_mib per rank, max_rel_diff}]``."""
    out, reference = [], {}
    for size in ranks:
        with tempfile.TemporaryDirectory() as folder:
            mp.start_processes(_rank, args=(size, folder, setting, str(cache), quick, specs), nprocs=size,
                               start_method="spawn")
            per_rank = [json.loads(Path(f"{folder}/rows-{r}.json").read_text()) for r in range(size)]
            for label in specs:
                scores = torch.load(f"{folder}/{label}-0.pt")
                reference.setdefault(label, scores)
                diff = float((scores - reference[label]).abs().max() / reference[label].abs().max())
                out.append({"ranks": size, "spec": label, "seconds": max(r[label]["seconds"] for r in per_rank),
                            "peak_mib": [r[label]["peak_mib"] for r in per_rank], "max_rel_diff": diff})
                print(f"  {size} rank(s) {label}: {out[-1]['seconds']:.2f} s, peak {out[-1]['peak_mib']} MiB, "
                      f"max rel. diff vs 1 rank {diff:.1e}", flush=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--setting``, ``--ranks``, ``--out``, ``--cache`` and ``--quick``."""
    parser.add_argument("--setting", help="the setting (default: the spec's)")
    parser.add_argument("--ranks", help="world sizes, comma-separated; the first is the reference (default: the spec's)")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--cache", type=Path, help="default: $ATTRKIT_CACHE/bench/SETTING")
    parser.add_argument("--quick", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Run the scaling study; writes ``{out}/scaling[-quick].json`` and prints a table."""
    setting = args.setting or args.spec["setting"]
    ranks = [int(r) for r in args.ranks.split(",")] if args.ranks else list(args.spec["ranks"])
    rows = scale(setting, ranks, args.cache or default_cache_dir(setting), args.quick, args.spec["specs"])
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"scaling{'-quick' if args.quick else ''}.json"
    document = {"setting": setting, "quick": args.quick, "rows": rows}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(markdown(document))
    print(f"results: {path}")
    return 0
