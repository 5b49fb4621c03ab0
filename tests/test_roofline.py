"""The roofline counts (attrkit_bench.roofline): every method of the MNIST spec files is counted, and the
counts follow the algorithms they name."""

from __future__ import annotations

import pytest
import torch

import attrkit
from attrkit_bench.report.table import format_table, table_rows
from attrkit_bench.roofline import Rates, _pass_rate, limits, measure_rates, sizes_of, work
from attrkit_bench.runner.choices import parse_methods
from attrkit_bench.studies.spec import SPECS_DIR

LR = torch.nn.Linear(784, 10)
MLP = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(),
                          torch.nn.Linear(64, 10))


def test_sizes_are_the_linear_layers_with_their_bias_column():
    sizes = sizes_of(MLP, 4000, 500)
    assert sizes.layers == ((785, 128), (129, 64), (65, 10))
    assert sizes.p == sum(p.numel() for p in MLP.parameters())
    assert sizes.pair == 785 + 128 + 129 + 64 + 65 + 10  # each layer's factors are cheaper than its gradient
    with pytest.raises(ValueError, match="nn.Linear"):
        sizes_of(torch.nn.Sequential(torch.nn.Embedding(3, 4), torch.nn.Linear(4, 2)), 10, 2)


@pytest.mark.parametrize("setting, model", [("mnist-lr", LR), ("mnist-mlp", MLP)])
def test_every_method_of_the_spec_files_is_counted(setting, model):
    registry = attrkit.default_registry()
    sizes = sizes_of(model, 4000, 500)
    for choice in parse_methods([str(SPECS_DIR / f"{setting}.json")], registry):
        spec = attrkit.resolve(choice.spec, registry).spec.to_dict()
        need = work(spec, choice.members[1] if choice.members else 1, sizes)
        assert need.flops > 0 and need.examples + need.forwards >= 4500, choice.label


def test_counts_follow_the_algorithms():
    sizes = sizes_of(LR, 4000, 500)
    n, m, p = 4000, 500, 7850
    assert work({"method": "grad-dot"}, 1, sizes).flops == 2 * m * n * (785 + 10)
    assert work({"method": "tracin"}, 5, sizes).flops == 5 * 2 * m * n * (785 + 10)
    cg = work({"method": "if", "solver": {"name": "cg", "max_iter": 10}}, 1, sizes)
    assert cg.flops == 10 * 4 * m * n * p + 2 * m * n * p
    dense = work({"method": "trak", "projector": {"name": "gaussian", "dim": 512}}, 1, sizes).flops
    logra = work({"method": "trak", "projector": {"name": "kronecker", "dim_in": 52, "dim_out": 10}}, 1, sizes).flops
    assert logra < dense / 5  # the Kronecker projection never multiplies by p
    k = 512
    sketch = work({"method": "trak", "projector": {"name": "sjlt", "dim": k, "nnz": 1}}, 1, sizes).flops
    assert dense - sketch == 2 * (n + m) * p * (k - 1)  # a sparse sketch adds each coordinate to nnz buckets, not k
    with pytest.raises(LookupError):
        work({"method": "if", "solver": {"name": "mystery"}}, 1, sizes)


def test_the_table_shows_the_limit_and_the_multiple():
    sizes = sizes_of(LR, 4000, 500)
    roofline = limits({"method": "grad-dot"}, 1, sizes, Rates(gemm=1e11, passes=1e4, forwards=2e4), seconds=0.9)
    assert roofline["limit"] == pytest.approx(4500 / 1e4 + 2 * 500 * 4000 * 795 / 1e11)
    assert roofline["multiple"] == pytest.approx(0.9 / roofline["limit"])
    run = {"label": "grad-dot", "metrics": {"lds": 0.3}, "seconds": 0.9, "peak_mib": 40.0, "roofline": roofline}
    header, rows = table_rows({"metrics": [{"name": "lds"}], "runs": [run]})
    assert header[-2:] == ["roofline (s)", "× roofline"]
    assert rows[0][-1] == f"{roofline['multiple']:.1f}"


def test_rps_only_evaluates_its_examples():
    sizes = sizes_of(MLP, 4000, 500)
    need = work({"method": "rps"}, 1, sizes)
    assert (need.examples, need.forwards) == (0, 4500)  # features by a forward; the target's push is at the logits
    roofline = limits({"method": "rps"}, 1, sizes, Rates(gemm=1e11, passes=1e4, forwards=2e4), seconds=1.0)
    assert roofline["limit"] == pytest.approx(4500 / 2e4 + need.flops / 1e11)


def test_the_pass_differentiates_only_the_layer_outputs_and_leaves_no_hooks():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    batches = [(torch.randn(4, 6), torch.randint(3, (4,))) for _ in range(2)]
    loss_fn = lambda m, batch: torch.nn.functional.cross_entropy(m(batch[0]), batch[1], reduction="none")  # noqa: E731
    assert _pass_rate(model, loss_fn, batches, backward=True, repeats=1) > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(not mod._forward_hooks for mod in model.modules())
    rates = measure_rates(model, loss_fn, batches)
    assert min(rates.gemm, rates.passes, rates.forwards) > 0
    assert rates.best(Rates(gemm=rates.gemm * 2, passes=1.0, forwards=1.0)) == Rates(
        gemm=rates.gemm * 2, passes=rates.passes, forwards=rates.forwards)


def test_a_row_faster_than_its_limit_marks_the_column_unsound():
    def run(label, multiple):
        return {"label": label, "metrics": {}, "seconds": multiple, "peak_mib": 1.0,
                "roofline": {"limit": 1.0, "multiple": multiple}}

    sound = {"metrics": [], "runs": [run("a", 1.5), run("b", 2.0)]}
    assert "unsound" not in format_table(sound)
    unsound = {"metrics": [], "runs": [run("a", 0.8), run("b", 2.0)]}
    assert "× roofline: a ran faster than the limit" in format_table(unsound)
