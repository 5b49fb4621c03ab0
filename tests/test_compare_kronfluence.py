"""``attrkit bench SETTING --compare kronfluence``: kronfluence 1.0.1's EK-FAC beside attrkit's ``if`` + ``ekfac``.

At the same absolute damping, on the empirical Fisher, over the same ``nn.Linear`` modules,
kronfluence's scores (no sign flip: both say positive = proponent) equal attrkit's to
float32 round-off on an MLP and correlate > 0.99 on a tiny BERT with padded dict batches.
"""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit.functional import select_parameters

pytest.importorskip("kronfluence", reason="--compare kronfluence needs kronfluence (see benchmarks/README.md)")

from attrkit_bench.compare.kronfluence import INSTALL, coverage, kronfluence_scores, require_kronfluence  # noqa: E402

N_TRAIN, N_QUERY, CLASSES = 40, 5, 3


@pytest.fixture(autouse=True)
def _no_full_collections(monkeypatch):
    """kronfluence calls ``gc.collect()`` about ten times per run (0.1-0.4 s each in a pytest
    process full of objects); skipped here, where it changes no score."""
    import types

    import kronfluence.utils.state

    monkeypatch.setattr(kronfluence.utils.state, "gc", types.SimpleNamespace(collect=lambda: 0))


def _ours(model, train, query, regularization, solver="ekfac", params=("*",), gradients="per-example"):
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    spec = {"method": "if", "gradients": {"name": gradients, "params": list(params)},
            "solver": {"name": solver, "regularization": regularization}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", attrkit.AttrkitWarning)  # BERT: vmap falls back to one example at a time
        return attrkit.compose(spec, task).fit(train).attribute(query)


def _pearson(a, b):
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def _spearman(a, b):
    rank = lambda x: x.flatten().argsort().argsort().double()  # noqa: E731 (no ties in continuous scores)
    return _pearson(rank(a), rank(b))


@pytest.fixture(scope="module")
def mlp():
    """A trained MLP 8-16-3 (tanh), 40 training and 5 query examples: ``(model, train, query)``."""
    torch.manual_seed(0)
    x = torch.randn(N_TRAIN + N_QUERY, 8)
    y = (x @ torch.randn(8, CLASSES) + 0.5 * torch.randn(N_TRAIN + N_QUERY, CLASSES)).argmax(1)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x[:N_TRAIN]), y[:N_TRAIN]).backward()
        optimizer.step()
    train = DataLoader(TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), batch_size=16)
    query = DataLoader(TensorDataset(x[N_TRAIN:], y[N_TRAIN:]), batch_size=N_QUERY)
    return model.eval(), train, query


@pytest.mark.parametrize(("solver", "regularization"), [("ekfac", 1e-3), ("kfac", 0.1)])
def test_kronfluence_equals_attrkit_on_an_mlp(mlp, solver, regularization):
    model, train, query = mlp
    ours = _ours(model, train, query, regularization, solver)
    theirs = kronfluence_scores(model, attrkit.cross_entropy, train, query, select_parameters(model, ["*"]),
                                regularization, strategy=solver)()
    assert theirs.shape == (N_QUERY, N_TRAIN)
    # same sign, same scale: no flip, no rescaling; float32 round-off apart
    torch.testing.assert_close(theirs, ours.float(), rtol=1e-3, atol=1e-4 * float(ours.abs().max()))
    assert _pearson(ours, theirs) > 0.9999


def test_kronfluence_equals_attrkit_on_a_cnn():
    """Conv2d layers (patches as positions, padding, stride) and a Linear head: EK-FAC agrees."""
    torch.manual_seed(0)
    x, y = torch.randn(N_TRAIN + N_QUERY, 2, 6, 6), torch.arange(N_TRAIN + N_QUERY) % CLASSES
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(4, 4, 3, stride=2), torch.nn.Flatten(),
                                torch.nn.Linear(16, CLASSES)).eval()
    train = DataLoader(TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), batch_size=16)
    query = DataLoader(TensorDataset(x[N_TRAIN:], y[N_TRAIN:]), batch_size=N_QUERY)
    ours = _ours(model, train, query, 1e-3)
    theirs = kronfluence_scores(model, attrkit.cross_entropy, train, query, select_parameters(model, ["*"]), 1e-3)()
    assert _pearson(ours, theirs) > 0.9999 and float((theirs - ours).norm() / ours.norm()) < 1e-3


def _bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=48, max_position_embeddings=16, num_labels=CLASSES,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config).eval()


def _batches(n, seed, size=20, length=9):
    """Padded dict batches: every other sentence is 4 tokens shorter (mask and ids 0 there)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 40, (n, length), generator=generator)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::2, -4:] = 0
    ids[mask == 0] = 0
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    return [{"input_ids": ids[i: i + size], "attention_mask": mask[i: i + size], "labels": labels[i: i + size]}
            for i in range(0, n, size)]


def test_kronfluence_agrees_with_attrkit_on_a_tiny_bert():
    model = _bert()
    train, query = _batches(N_TRAIN, seed=0), _batches(N_QUERY, seed=1)
    found = coverage(model, select_parameters(model, ["*"]))
    # kronfluence covers the Linear layers only: attrkit's embeddings and LayerNorms are left out
    assert len(found.modules) == 2 * 6 + 2  # per layer q, k, v, attention out, intermediate, out; pooler, classifier
    assert any("LayerNorm" in n for n in found.uncovered) and any("Embedding" in n for n in found.uncovered)
    assert "leaves out" in found.note() and not found.extra
    regularization = 1e-3
    # the same parameters on both sides; factored gradients are per-example's, faster on BERT
    ours = _ours(model, train, query, regularization, params=found.covered, gradients="factored")
    theirs = kronfluence_scores(model, attrkit.cross_entropy, train, query, found.covered, regularization)()
    assert theirs.shape == (N_QUERY, N_TRAIN)
    assert _pearson(ours, theirs) > 0.99 and _spearman(ours, theirs) > 0.99
    assert float((theirs - ours).norm() / ours.norm()) < 0.05


def test_the_bench_runs_kronfluence_beside_attrkits_ekfac_rows():
    from attrkit_bench.problem import Problem
    from attrkit_bench.report.table import format_table
    from attrkit_bench.runner.choices import parse_methods, parse_metrics
    from attrkit_bench.runner.document import run_benchmark

    torch.manual_seed(0)
    x, y = torch.randn(N_TRAIN + N_QUERY, 6), torch.arange(N_TRAIN + N_QUERY) % CLASSES
    model = torch.nn.Linear(6, CLASSES).eval()  # a bare Linear, as mnist-lr's: kronfluence gets it wrapped
    subsets = torch.rand(8, N_TRAIN) < 0.5
    problem = Problem(name="tiny", model=model, loss_fn=attrkit.cross_entropy,
                      train=DataLoader(TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), batch_size=16),
                      targets=DataLoader(TensorDataset(x[N_TRAIN:], y[N_TRAIN:]), batch_size=N_QUERY),
                      ground_truth={"subsets": subsets, "values": torch.randn(8, N_QUERY)})
    registry = attrkit.default_registry()
    ekfac_spec = '{"label": "if-ekfac", "method": "if", "solver": {"name": "ekfac", "regularization": 0.01}}'
    choices = parse_methods([ekfac_spec, "grad-dot"], registry)
    document = run_benchmark(problem, choices, parse_metrics(["lds"], registry), compare="kronfluence",
                             registry=registry)
    ekfac, dot = document["runs"]
    assert document["info"]["kronfluence"] == "1.0.1" and ekfac["dattri"] is None
    theirs = ekfac["kronfluence"]
    assert theirs["name"] == "kronfluence EK-FAC" and theirs["reason"] is None
    assert theirs["seconds"] > 0 and theirs["peak_mib"] >= 0 and theirs["correlation"] > 0.9999
    assert theirs["metrics"]["lds"] == pytest.approx(ekfac["metrics"]["lds"], abs=1e-3)
    assert "λ = 0.01" in theirs["note"] and "1 nn.Linear/nn.Conv2d modules" in theirs["note"]
    assert dot["kronfluence"]["name"] is None and "grad-dot" in dot["kronfluence"]["reason"]
    table = format_table(document)
    assert "kronfluence LDS" in table and "kronfluence/attrkit time" in table and "kronfluence r" in table


def test_the_counterpart_says_why_not(mlp):
    from attrkit_bench.compare.counterparts import counterpart
    from attrkit_bench.problem import Problem

    model, train, query = mlp
    problem = Problem(name="mlp", model=model, loss_fn=attrkit.cross_entropy, train=train, targets=query,
                      ground_truth={})
    registry, states = attrkit.default_registry(), [model.state_dict()]

    def why(spec, states=states):
        return counterpart(attrkit.resolve(spec, registry).spec.to_dict(), problem, states, "kronfluence").reason

    assert "'cg'" in why({"method": "if", "solver": "cg"})
    assert "'trak'" in why({"method": "trak"})
    ekfac = {"method": "if", "solver": "ekfac"}
    assert "projector 'gaussian'" in why({**ekfac, "projector": {"name": "gaussian", "dim": 8}})
    assert "ensembles" in why(ekfac, states * 2)
    assert "ensemble 'dropout'" in why({**ekfac, "ensemble": {"name": "dropout", "members": 2}})
    layer = {"method": "if", "solver": "ekfac", "gradients": {"name": "per-example", "params": ["2.weight"]}}
    found = counterpart(attrkit.resolve(layer, registry).spec.to_dict(), problem, states, "kronfluence")
    assert found.name == "kronfluence EK-FAC" and "2.bias, which attrkit does not differentiate" in found.note


def test_kronfluence_imports_without_torchvision(monkeypatch):
    for name in [m for m in sys.modules if m == "kronfluence" or m.startswith("kronfluence.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # any import of torchvision now fails
    require_kronfluence()


def test_a_missing_kronfluence_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "kronfluence.analyzer", None)
    with pytest.raises(ImportError, match="--no-deps kronfluence==1.0.1"):
        require_kronfluence()
    assert "torchvision" not in INSTALL

    from attrkit_bench.cli import main

    assert main(["mnist-lr", "--compare", "kronfluence", "--methods", "grad-dot"]) == 2  # before any work
    assert INSTALL in capsys.readouterr().err
