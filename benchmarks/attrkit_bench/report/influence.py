"""The influence benchmark's markdown: one table per setting, the dattri comparison, every trial."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from attrkit_bench.report.markdown import number, table

__all__ = ["markdown", "setting_tables"]


def _lam(value: float | None) -> str:
    return "–" if value is None else f"{value:g}"


def _mean_first(per_target: Sequence[float | None] | None, n: int) -> float | None:
    values = [v for v in (per_target or [])[:n] if v is not None]
    return sum(values) / len(values) if values else None


def _best_cells(row: Mapping[str, Any], reference: Mapping[str, Any] | None) -> list[str]:
    chosen = row["best"]
    if chosen is None:
        statuses = {t["status"] for t in row["trials"]}
        too_large = any("max_dim" in t["message"] for t in row["trials"])
        why = "n/a (p too large)" if too_large else "/".join(sorted(statuses))
        return [why, "–", "–", "–", "–"]
    same = _mean_first(reference["best"]["lds_per_target"], chosen["n_targets"]) if reference else None
    return [_lam(chosen["regularization"]), number(chosen["lds"]), number(same), number(chosen["seconds"], 2),
            number(chosen["peak_mib"], 0)]


def _dattri_cells(row: Mapping[str, Any]) -> list[str]:
    theirs, ours = row["dattri"], row["attrkit_shared_loaders"]
    if row["dattri_counterpart"] is None:
        return ["n/a" if row["best"] is None else "no counterpart", "–", "–"]
    if theirs is None:
        return ["not run", "–", "–"]
    if theirs["status"] != "ok":
        return [theirs["status"], number(theirs["seconds"], 2), "–"]
    ratio = theirs["seconds"] / ours["seconds"] if ours and ours["status"] == "ok" else None
    lds = "undefined (non-finite scores)" if theirs["lds"] is None else number(theirs["lds"])
    return [lds, number(theirs["seconds"], 2), number(ratio, 2)]


def setting_tables(document: Mapping[str, Any]) -> str:
    """The markdown of one setting's results (``document``: the setting's JSON entry)."""
    info, rows = document["info"], document["rows"]
    reference = next((r for r in rows if r["solver"] is None), None)
    header = ["method", "curvature", "targets", "best λ", "LDS", "grad-dot LDS, same targets", "time (s)",
              "peak MiB", "search (s)", "refused λ", "dattri LDS", "dattri time (s)", "dattri/attrkit time"]
    body = []
    for row in rows:
        refused = [_lam(t["regularization"]) for t in row["trials"] if t["status"] != "ok"]
        trial = row["best"] or (row["trials"] or [None])[0]
        targets = trial["n_targets"] if trial else "–"
        body.append([row["label"], row["curvature"], str(targets), *_best_cells(row, reference),
                     number(row["search_seconds"], 1), ", ".join(refused) or "–", *_dattri_cells(row)])
    parts = [
        f"## {document['setting']}\n",
        f"{info['n_train']} training examples, {info['n_targets']} targets, {info['n_parameters']:,} parameters, "
        f"test accuracy {info['test_accuracy']:.4f}. LDS ground truth: {info['n_models']} models retrained on "
        f"{info['subset_size']} examples each, {info['ground_truth_seconds']:.1f} s of retraining when generated "
        f"({info['ground_truth_retrained']} retrained in this run). Setting prepared in "
        f"{document['prepare_seconds']:.1f} s.\n",
        table(header, body),
        "",
        *[f"- **{r['label']}**: {r['note']}" for r in rows if r["note"]],
        *[f"- **{r['label']}**: LiSSA scale = 2 (λ̂_max + λ), λ̂_max = {r['top_eigenvalue']:.4g}"
          for r in rows if r["top_eigenvalue"] is not None],
    ]
    compared = [r for r in rows if r["dattri"] is not None]
    if compared:
        parts += ["", f"### {document['setting']}: attrkit vs dattri on the same loaders", "",
                  "Both at attrkit's best λ, training set as one batch (cache and attribute loaders), the targets as "
                  "one batch, same process and threads.", ""]
        parts.append(table(
            ["method", "λ", "targets", "attrkit LDS", "attrkit s", "attrkit MiB", "dattri LDS", "dattri s",
             "dattri MiB", "dattri/attrkit time", "what dattri computes"],
            [[r["label"], _lam(r["dattri"]["regularization"]), str(r["dattri"]["n_targets"]),
              number(r["attrkit_shared_loaders"]["lds"]), number(r["attrkit_shared_loaders"]["seconds"], 2),
              number(r["attrkit_shared_loaders"]["peak_mib"], 0), number(r["dattri"]["lds"]),
              number(r["dattri"]["seconds"], 2), number(r["dattri"]["peak_mib"], 0), _dattri_cells(r)[2],
              r["dattri_differences"] + (f" — {r['dattri']['status']}: {r['dattri']['message'][:200]}"
                                         if r["dattri"]["status"] != "ok" else "")]
             for r in compared]))
    if document.get("batch_dependence"):
        parts += ["", _batch_table(document["batch_dependence"])]
    parts += ["", f"### {document['setting']}: every trial", "", table(
        ["method", "λ", "status", "LDS", "time (s)", "peak MiB", "message"],
        [[r["label"], _lam(t["regularization"]), t["status"], number(t["lds"]), number(t["seconds"], 2),
          number(t["peak_mib"], 0), t["message"][:160].replace("|", "/").replace("\n", " ")]
         for r in rows for t in r["trials"]])]
    return "\n".join(parts)


def _batch_table(dep: Mapping[str, Any]) -> str:
    rows = []
    for library in ("attrkit", "dattri"):
        d = dep[library]
        rows.append([library, number(d["one_batch"]["lds"]), number(d["one_batch"]["seconds"], 2),
                     number(d["batched"]["lds"]), number(d["batched"]["seconds"], 2), number(d["norm_ratio"], 3),
                     f"{d['max_relative_difference']:.2g}" if d["max_relative_difference"] is not None else "–",
                     number(d["row_correlation"], 4)])
    head = (f"### Batch-size dependence ({dep['label']}, λ = {dep['regularization']:g}, first {dep['n_targets']} "
            f"targets): training loaders of one batch vs batches of {dep['batch_size']}\n\n")
    return head + table(["library", "LDS one batch", "s", f"LDS batch {dep['batch_size']}", "s",
                          "score norm ratio", "max rel. difference", "mean per-target correlation"], rows)


def markdown(document: Mapping[str, Any]) -> str:
    """The whole results page: command, machine, versions, then each setting's tables."""
    env = document["environment"]
    head = [
        "# Influence functions: attrkit's solvers" + (" vs dattri" if document["compare"] else ""),
        "",
        f"`{document['command']}` — total wall time {document['total_seconds'] / 60:.1f} min.",
        "",
        f"Machine: {env['cpu_count']} CPU cores, {env['torch_threads']} torch intra-op threads (both libraries, "
        f"same process), {env['platform']}; Python {env['python']}, torch {env['torch']}, attrkit "
        f"{env['attrkit']}" + (f", dattri {env['dattri']}" if env.get("dattri") else "") + ".",
        "",
        "Damping λ searched over " + ", ".join(_lam(v) for v in document["lambdas"]) + " (the dattri paper's "
        "grid); each row reports its best λ by LDS and the time and peak memory (rise of the process RSS) of that "
        "run — `fit` on the training set (loader batch 256) and `attribute` of the targets as one block. "
        "\"search\" is the whole search. LDS: mean Spearman correlation over the row's targets (the first *n* of "
        "the 500); \"grad-dot LDS, same targets\" is the reference on those same targets.",
    ]
    return "\n".join(head + ["", *[setting_tables(s) + "\n" for s in document["settings"]]])
