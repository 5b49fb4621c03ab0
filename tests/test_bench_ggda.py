"""The GGDA benchmark on synthetic data (real retraining, small)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import attrs
import pytest

from attrkit_bench import settings
from attrkit_bench.cli import main
from attrkit_bench.settings import classifier, mnist_mlp

from test_bench import synthetic


def test_quick_run_writes_table_json_and_plot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    data = synthetic(n=400)
    monkeypatch.setattr(classifier, "load_mnist", lambda: data)
    shrunk = attrs.evolve(mnist_mlp.QUICK, n_train=160, n_test=60, n_targets=10, n_models=4,
                          recipe=attrs.evolve(mnist_mlp.QUICK.recipe, epochs=2))
    monkeypatch.setitem(settings.CLASSIFIERS, "mnist-mlp", attrs.evolve(mnist_mlp.DECLARATION, quick=shrunk))
    out = tmp_path / "o"
    argv = ["ggda", "--quick", "--settings", "mnist-mlp", "--sizes", "1,16", "--cache", str(tmp_path / "c"),
            "--out", str(out)]
    assert main(argv) == 0
    (setting,) = json.loads((out / "ggda-quick.json").read_text())["settings"]
    rows = {(r["method"], r["grouper"], r["group_size"]): r for r in setting["rows"]}
    assert len(rows) == 3 * 3
    assert rows[("grad-dot", "singleton", 1)]["n_groups"] == 160
    assert rows[("trak", "grad-kmeans", 16)]["n_groups"] <= 10
    assert all(len(r["details"]["drops"]) == 4 for r in rows.values())
    assert "| grad-dot | random | 16 |" in (out / "GGDA.md").read_text()
    if importlib.util.find_spec("matplotlib") is None:
        assert "plot skipped: matplotlib is not installed" in capsys.readouterr().out
    else:
        assert (out / "ggda-quick.png").stat().st_size > 0
    assert main(["ggda", "--settings", "nope"]) == 2
    assert "known:" in capsys.readouterr().err
