"""Scores of every registered method on the shared fixtures, against a recorded file.

The file (``tests/data/engine_scores.pt``) was recorded before the score engine was
restructured; a restructuring must leave every score bit for bit as it was. The record is of
dense products (``products="dense"``); the structured products that ``"auto"`` takes where it
can (:mod:`attrkit.engine.products`) must equal it to float32 round-off. On another
machine (another CPU or torch build, whose float kernels may differ in the last bits) the
comparison is to float round-off instead. Record anew, deliberately, with::

    ATTRKIT_RECORD_ENGINE_SCORES=1 python -m pytest tests/test_engine_identity.py
"""

import hashlib
import os
import platform
from pathlib import Path

import pytest
import torch

import attrkit
from attrkit.testing import toy_problem

RECORD = Path(__file__).parent / "data" / "engine_scores.pt"
GAUSS = {"name": "gaussian", "dim": 8, "seed": 3}
REG = {"regularization": 0.1}
SPECS = {
    "grad-dot": {"method": "grad-dot"},
    "grad-dot-gaussian": {"method": "grad-dot", "projector": GAUSS},
    "grad-dot-rademacher": {"method": "grad-dot", "projector": {"name": "rademacher", "dim": 8}},
    "grad-dot-sjlt": {"method": "grad-dot", "projector": {"name": "sjlt", "dim": 8}},
    "grad-dot-kronecker": {"method": "grad-dot", "gradients": "factored",
                           "projector": {"name": "kronecker", "dim_in": 3, "dim_out": 2}},
    "grad-dot-arnoldi": {"method": "grad-dot", "projector": {"name": "arnoldi", "dim": 6, "regularization": 0.1}},
    "grad-dot-last-layer": {"method": "grad-dot", "gradients": "last-layer"},
    "grad-dot-params": {"method": "grad-dot", "gradients": {"name": "per-example", "params": ["3.*"]}},
    "grad-cos": {"method": "grad-cos"},
    "grad-cos-gaussian": {"method": "grad-cos", "projector": GAUSS},
    "tracin": {"method": {"name": "tracin", "learning_rates": [0.5, 0.25]}, "ensemble": "checkpoints"},
    "tracin-dropout": {"method": "tracin", "ensemble": {"name": "dropout", "members": 2}},
    "trak": {"method": "trak", "projector": GAUSS},
    "trak-identity": {"method": "trak", "projector": "identity", "solver": {"name": "gauss-newton", **REG}},
    "trak-checkpoints": {"method": "trak", "projector": GAUSS, "ensemble": "checkpoints"},
    "trak-dropout": {"method": "trak", "projector": GAUSS, "ensemble": {"name": "dropout", "members": 3}},
    "trak-lora": {"method": "trak", "projector": GAUSS, "ensemble": "lora"},
    "trak-margin-off": {"method": {"name": "trak", "target": "task", "reweight": False}, "projector": GAUSS},
    "if-cg": {"method": "if", "solver": {"name": "cg", "max_iter": 20, **REG}},
    "if-explicit": {"method": "if", "solver": {"name": "explicit", **REG}},
    "if-explicit-hessian": {"method": "if", "solver": {"name": "explicit", "curvature": "hessian", "regularization": 5.0}},
    "if-lissa": {"method": "if", "solver": {"name": "lissa", "depth": 20, "scale": 50.0, **REG}},
    "if-arnoldi": {"method": "if", "solver": {"name": "arnoldi", "rank": 8, "max_iter": 20, **REG}},
    "if-kfac": {"method": "if", "gradients": "factored", "solver": {"name": "kfac", **REG}},
    "if-ekfac": {"method": "if", "gradients": "factored", "solver": {"name": "ekfac", **REG}},
    "if-datainf": {"method": "if", "solver": {"name": "datainf", **REG}},
    "if-gauss-newton": {"method": "if", "projector": GAUSS, "solver": {"name": "gauss-newton", **REG}},
    "if-identity": {"method": "if", "solver": "identity"},
    "if-explicit-gaussian": {"method": "if", "projector": GAUSS, "solver": {"name": "explicit", **REG}},
    "relatif": {"method": "relatif", "solver": {"name": "explicit", **REG}},
    "rps": {"method": "rps"},
    "rps-dropout": {"method": "rps", "ensemble": {"name": "dropout", "members": 2}},
    "grad-dot-random-groups": {"method": "grad-dot", "grouper": {"name": "random", "n_groups": 5}},
    "grad-dot-given-groups": {"method": "grad-dot", "grouper": "given"},
    "trak-kmeans-groups": {"method": "trak", "projector": GAUSS, "grouper": {"name": "kmeans", "n_groups": 4}},
    "trak-group-gradients": {"method": "trak", "projector": GAUSS, "gradients": "group",
                             "grouper": {"name": "grad-kmeans", "n_groups": 4}},
    "if-repr-kmeans": {"method": "if", "solver": {"name": "explicit", **REG},
                       "grouper": {"name": "repr-kmeans", "n_groups": 4}},
    "grad-cos-groups": {"method": "grad-cos", "grouper": {"name": "random", "n_groups": 6}},
}
#: Fitted with a memory budget (bytes) below their features', so they stream from a disk store.
STREAMED = {"grad-dot-gaussian": 300, "trak": 300, "if-cg": 2000, "grad-dot-random-groups": 2000}


def _toy():
    return toy_problem(n_train=20, n_test=5, dropout=0.2, lora_rank=2, checkpoints=2)


def _with_products(spec, products):
    """``spec`` with the per-example source's ``products`` set (other sources, and RPS, which has no
    gradient source, have none)."""
    method = spec["method"] if isinstance(spec["method"], str) else spec["method"]["name"]
    source = spec.get("gradients", "per-example")
    if method == "rps" or (source if isinstance(source, str) else source["name"]) != "per-example":
        return spec
    source = {"name": source} if isinstance(source, str) else dict(source)
    return {**spec, "gradients": {**source, "products": products}}


def _run(name, spec, toy, tmp_path=None, products="dense"):
    attributor = attrkit.compose(_with_products(spec, products), toy.task)
    kwargs = {"store": tmp_path / name, "memory_budget": STREAMED[name]} if tmp_path is not None else {}
    attributor.fit(toy.train_loader(6), **kwargs)
    if tmp_path is not None:
        assert not attributor.features[0].resident or name.endswith("groups"), f"{name} did not stream"
    scores = attributor.attribute(toy.test_loader(4))
    fitted = getattr(attributor, "fitted", None)
    def factored(m, f):  # factor rows scored (layout), or training or test features projected from them
        return f.layout is not None or f.from_factors is not None or getattr(fitted.packers.get(m), "layout", None) is not None

    out = {"scores": scores,
           "structured": torch.tensor([factored(m, f) for m, f in enumerate(fitted.members)]
                                      if fitted is not None else [False])}
    if spec.get("grouper") is None or "given" in str(spec.get("grouper")):
        out["self"] = attributor.self_influence(toy.train_loader(6))
    return out


def _machine():
    """The CPU (name, family, model, stepping and a digest of its flags: one name covers CPU generations
    whose kernels differ in the last bits), the torch build and the thread count."""
    cpu = platform.processor()
    if Path("/proc/cpuinfo").exists():
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        fields = dict(line.split(":", 1) for line in first.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:12]
        cpu = "|".join([*(fields.get(k, "") for k in ("model name", "cpu family", "model", "stepping")), flags])
    return f"{cpu}|{platform.machine()}|torch {torch.__version__}|threads {torch.get_num_threads()}"


def _all(tmp_path):
    toy = _toy()
    results = {name: _run(name, spec, toy) for name, spec in SPECS.items()}
    results.update({f"{name} (streamed)": _run(name, SPECS[name], toy, tmp_path) for name in STREAMED})
    return results


def test_every_method_scores_as_recorded(tmp_path):
    torch.manual_seed(0)
    results = _all(tmp_path)
    if os.environ.get("ATTRKIT_RECORD_ENGINE_SCORES"):
        RECORD.parent.mkdir(exist_ok=True)
        torch.save({"machine": _machine(), "results": results}, RECORD)
        pytest.skip(f"recorded {RECORD}")
    recorded = torch.load(RECORD, weights_only=True)
    assert set(recorded["results"]) == set(results), "the fixtures changed: record anew on purpose"
    exact = recorded["machine"] == _machine()
    for name, parts in results.items():
        for part, value in parts.items():
            if part == "structured":
                continue
            expected = recorded["results"][name][part]
            if exact:
                assert torch.equal(value, expected), f"{name} {part} is not bit-identical to the record"
            else:
                torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6, msg=f"{name} {part}")


def test_structured_products_match_the_record():
    """Every spec fitted with ``products="auto"``: those that take structured products (grad-dot,
    grad-cos, TracIn, IF with the identity) equal the dense record to round-off, the others are
    unchanged (dense, bit for bit on the recording machine)."""
    torch.manual_seed(0)
    toy = _toy()
    recorded = torch.load(RECORD, weights_only=True)
    exact = recorded["machine"] == _machine()
    structured = []
    for name, spec in SPECS.items():
        got = _run(name, spec, toy, products="auto")
        if bool(got["structured"].any()):
            structured.append(name)
        for part, value in got.items():
            if part == "structured":
                continue
            expected = recorded["results"][name][part]
            if exact and not bool(got["structured"].any()):
                assert torch.equal(value, expected), f"{name} {part} (dense) is not bit-identical to the record"
            else:
                torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5, msg=f"{name} {part}")
    assert {"grad-dot", "grad-cos", "tracin", "tracin-dropout", "if-identity"} <= set(structured), structured
