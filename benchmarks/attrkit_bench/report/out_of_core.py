"""The markdown page of the out-of-core benchmark, with its extrapolation to ``10^8`` examples on N GPUs.

The extrapolation takes the measured per-example costs of each phase on this CPU and
three assumptions, stated on the page: the speed-up of the compute on a GPU over this
run (:data:`GPU_SPEEDUP`), the disk bandwidth of each rank (:data:`DISK_BYTES_PER_S`),
and linear scaling over ranks (each rank its batches; the all-reduced ``k × k`` kernel
and the merged top-k candidates are negligible). A phase costs its compute divided by the
speed-up plus its disk traffic at that bandwidth (attrkit does not overlap the two).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["DISK_BYTES_PER_S", "GPU_SPEEDUP", "TARGET_N", "extrapolate", "markdown"]

#: Examples the extrapolation is for.
TARGET_N = 10**8
#: Assumed speed-up of per-example compute (gradients, projection, kernel, scores) on one GPU.
GPU_SPEEDUP = 100.0
#: Assumed sequential read and write bandwidth of each rank's local disk (NVMe), bytes/s.
DISK_BYTES_PER_S = 2e9
#: GPU counts in the extrapolation table.
GPUS = (1, 8, 64)


def extrapolate(document: Mapping[str, Any], gpus: int, speedup: float = GPU_SPEEDUP) -> dict[str, float]:
    """Seconds of ``fit`` and of one ``top_k`` query batch for :data:`TARGET_N` examples on ``gpus`` ranks.

    Args:
        document: the benchmark's JSON document.
        gpus: number of ranks, one GPU each.
        speedup: compute speed-up of a GPU over the measured run.

    Returns:
        ``{"fit_s", "query_s", "store_gb_per_rank"}``.
    """
    settings, run = document["settings"], document["run"]
    n, share = settings["n"], TARGET_N / gpus
    fit = run["fit"]
    row_bytes = run["feature_bytes"] / n
    compute = (fit["q_pass_s"] + fit["features_pass_s"] + fit["solver_s"]) / n
    io = 2 * row_bytes / DISK_BYTES_PER_S  # write each row once, read it back for ΦᵀΦ
    query = run["top_k"]["seconds"] / n / speedup + row_bytes / DISK_BYTES_PER_S
    return {"fit_s": share * (compute / speedup + io), "query_s": share * query,
            "store_gb_per_rank": share * row_bytes / 1e9}


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def markdown(document: Mapping[str, Any]) -> str:
    """The page: settings, measured phases, the score check and the extrapolation."""
    s, r, env = document["settings"], document["run"], document["environment"]
    n, fit = s["n"], r["fit"]
    gib = r["feature_bytes"] / 2**30
    lines = [
        "# Out of core: TRAK with features on disk under a memory budget",
        "",
        f"Command: `{s['command']}`",
        "",
        f"TRAK (`{s['projector']}` projector, k = {s['dim']}, `gauss-newton`) on a 32-64-10 MLP (p = 2826), "
        f"training set of {n:,} examples (base set of {s['base']:,} replicated), batches of {s['batch']}; "
        f"features {gib:.2f} GiB float32 ({r['store_bytes'] / 2**30:.2f} GiB on disk), memory budget "
        f"{s['budget_bytes'] / 2**20:.0f} MiB: features {'streamed from disk' if r['streamed'] else 'held in memory'}. "
        f"Machine: {env['cpu_count']} CPU cores (shared with other jobs), {env['torch_threads']} torch threads, "
        f"torch {env['torch']}.",
        "",
        "| phase | wall time | peak RSS rise | throughput |",
        "|---|---|---|---|",
        f"| fit: Q pass (forward) | {fit['q_pass_s']:.1f} s | | {n / fit['q_pass_s']:,.0f} examples/s |",
        f"| fit: features (gradients, projection, chunk writes) | {fit['features_pass_s']:.1f} s | | "
        f"{n / fit['features_pass_s']:,.0f} examples/s |",
        f"| fit: solver (ΦᵀΦ streamed from the store, Cholesky) | {fit['solver_s']:.1f} s | | "
        f"{n / fit['solver_s']:,.0f} examples/s |",
        f"| **fit, total** | **{fit['seconds']:.1f} s** | **{fit['peak_mib']:.0f} MiB** | "
        f"**{n / fit['seconds']:,.0f} examples/s** |",
        f"| attribute, {s['targets']} targets (output {r['attribute']['output_mib']:.0f} MiB) | "
        f"{r['attribute']['seconds']:.1f} s | {r['attribute']['peak_mib']:.0f} MiB | "
        f"{n / r['attribute']['seconds']:,.0f} training examples/s |",
        f"| top_k (k = {r['top_k']['k']}), {s['targets']} targets | {r['top_k']['seconds']:.1f} s | "
        f"{r['top_k']['peak_mib']:.0f} MiB | {n / r['top_k']['seconds']:,.0f} training examples/s |",
        "",
        "Peak RSS rise: from the start of each call, sampled every 2 ms (`PeakMemory`). The budget bounds the "
        "feature tiles held at once and their working memory (a float64 copy for ΦᵀΦ, the score tile); the "
        "model, the per-batch gradients, TRAK's Q and `attribute`'s output come on top. `top_k` reads at most "
        "65,536 rows a tile (its default `tile_rows`), fewer than the budget allows.",
        "",
        f"Check: on {r['check']['columns']:,} random training columns, the streamed scores equal an in-memory "
        f"TRAK on the base set (`score_base[t, i mod base] · base / n`, exact for λ = 0) to a maximum relative "
        f"error of {r['check']['max_rel_error_vs_in_memory_base']:.1e}; top_k's proponent scores "
        f"{'match' if r['check']['top_k_matches_attribute'] else 'DO NOT match'} attribute's.",
        "",
        f"## Extrapolation to {TARGET_N:.0e} examples on N GPUs",
        "",
        "Measured per-example costs on this run (seconds per example): "
        f"Q {fit['q_pass_s'] / n:.2e}, features {fit['features_pass_s'] / n:.2e}, "
        f"solver {fit['solver_s'] / n:.2e}; a top_k query of {s['targets']} targets "
        f"{r['top_k']['seconds'] / n:.2e} per training example. Assumptions:",
        "",
        f"- GPU speed-up: **{GPU_SPEEDUP:.0f}x** on all compute (per-example gradients, projection, ΦᵀΦ, "
        "scores) over this measured CPU run — an assumption, not a measurement (no GPU was available); "
        "the last columns show 30x and 300x;",
        f"- disk: each rank writes and reads its shard of the store at **{DISK_BYTES_PER_S / 1e9:.0f} GB/s** "
        "(local NVMe), the features written once and read once for ΦᵀΦ and once per query batch; the "
        "measured run read through the page cache, so its solver and query times are compute-bound;",
        "- linear scaling over ranks: each rank does 1/N of the batches (attrkit's sharding); the all-reduce "
        f"of ΦᵀΦ ({s['dim']}² float64) and the top-k merge are negligible; compute and disk do not overlap;",
        f"- queries by `top_k`: `attribute`'s gathered output would be {s['targets']} x 10^8 float32 "
        f"({s['targets'] * TARGET_N * 4 / 1e9:.0f} GB) on every rank.",
        "",
        "| GPUs | store per rank | fit | top_k query (100 targets) | fit at 30x | fit at 300x |",
        "|---|---|---|---|---|---|",
    ]
    for gpus in GPUS:
        base, slow, fast = (extrapolate(document, gpus, speedup) for speedup in (GPU_SPEEDUP, 30.0, 300.0))
        lines.append(f"| {gpus} | {base['store_gb_per_rank']:.0f} GB | {_duration(base['fit_s'])} | "
                     f"{_duration(base['query_s'])} | {_duration(slow['fit_s'])} | {_duration(fast['fit_s'])} |")
    return "\n".join(lines)
