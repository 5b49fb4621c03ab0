"""The README's main job, ``attrkit bench mnist-lr``: its default methods and the table's legend.

What a run prints last (where it wrote its files) is checked by ``test_bench.test_cli_quick_run``.
"""

from __future__ import annotations

import pytest

import attrkit
from attrkit_bench.cli import main
from attrkit_bench.report.table import MEANINGS, TITLES, format_table, legend
from attrkit_bench.runner.choices import parse_methods
from attrkit_bench.settings import mnist_lr
from attrkit_bench.studies.spec import SPECS_DIR

SPEC_FILE = SPECS_DIR / "mnist-lr.json"


def test_default_methods_span_fast_gradients_to_influence_functions() -> None:
    registry = attrkit.default_registry()
    choices = parse_methods(mnist_lr.SETTING.default_methods, registry)
    for choice in choices:
        attrkit.resolve(choice.spec, registry)  # each composes
    methods = {choice.label: choice.spec["method"] for choice in choices}
    assert "grad-dot" in methods.values()
    ensembles = [c for c in choices if c.spec["method"] == "trak" and c.members is not None]
    assert [c.members for c in ensembles] == [("independent", 10)]
    solvers = {c.spec["solver"]["name"] for c in choices if c.spec["method"] == "if"}
    assert solvers & {"kfac", "ekfac"}
    # Each is the spec of the same label in the spec file that benchmarks/README.md's mnist-lr
    # table was measured with, so the table's LDS and LOO apply to it.
    shipped = {c.label: c for c in parse_methods([str(SPEC_FILE)], registry)}
    for choice in choices:
        assert choice.spec == shipped[choice.label].spec and choice.members == shipped[choice.label].members
    # --quick holds the members the defaults ask for (the first half of its models)
    assert max(c.members[1] for c in ensembles) <= mnist_lr.QUICK.n_models // 2


def test_the_table_says_what_each_column_measures() -> None:
    run = {"label": "grad-dot", "seconds": 0.5, "peak_mib": 100.0, "metrics": {"lds": 0.3, "loo": 0.2, "auc": None}}
    document = {"setting": "s", "metrics": [{"name": "lds"}, {"name": "loo"}, {"name": "auc"}], "runs": [run]}
    lines = format_table(document).splitlines()
    under = lines[3:]  # header, rule, one row
    assert [line.split(":")[0].strip() for line in under] == ["LDS", "LOO", "noisy AUC", "time (s)", "peak mem (MiB)",
                                                              "–"]
    assert all(line.rstrip().endswith("higher is better") for line in under[:3])
    assert all(line.rstrip().endswith("lower is better") for line in under[3:5])
    assert "Spearman" in under[0] and "random halves" in under[0] and "leaving one training point out" in under[1]
    assert "flipped labels first" in under[2]
    assert set(MEANINGS) >= set(TITLES)  # every metric the table knows is explained
    assert legend(["retraining"])[0].startswith("retraining: ")


def test_help_explains_the_columns(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps; compare the words
    for line in legend(list(TITLES)):
        assert " ".join(line.split()) in out


def test_plot_panels_name_their_metric_and_fit_the_data() -> None:
    from attrkit_bench.report.plots import AXIS_LABELS, axis_limits, panel_title

    assert [panel_title(m) for m in ("lds", "loo", "auc")] == [
        "LDS (higher is better)", "LOO (higher is better)", "noisy AUC (higher is better)"]
    assert set(AXIS_LABELS) >= set(TITLES)
    for values, log in (([0.31, 0.87, 0.72], False), ([0.57, 7.4, 70.5], True), ([0.5], False)):
        low, high = axis_limits(values, log)
        assert low < min(values) and high > max(values)  # every point inside, none on the frame
    low, high = axis_limits([1.0, 100.0], log=True)
    assert 0.5 < low < 1.0 and 100.0 < high < 200.0  # the margin is a fraction of the decades spanned
