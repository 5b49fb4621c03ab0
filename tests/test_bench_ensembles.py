"""The ensemble benchmark and its member production, on synthetic data (real training, small)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import torch

from attrkit_bench import settings
from attrkit_bench.cli import main
from attrkit_bench.settings import classifier, mnist_lr, mnist_mlp
from attrkit_bench.training import members

from test_bench import synthetic


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic(n=600)


def test_members_are_cached_and_the_trajectory_ends_at_the_main_model(tmp_path: Path, data) -> None:
    config = attrs.evolve(mnist_lr.QUICK, n_train=300, n_test=60, n_targets=10, n_models=4)
    problem = mnist_lr.prepare(tmp_path, config, data=data)
    path = members.trajectory(mnist_lr.DECLARATION, config, problem, tmp_path, 3)
    assert len(path.states) == 3 and not path.cached and path.seconds > 0
    for name, value in problem.model.state_dict().items():  # the replayed run is the main run
        torch.testing.assert_close(path.states[-1][name], value, rtol=0, atol=0)
    assert members.trajectory(mnist_lr.DECLARATION, config, problem, tmp_path, 3).cached
    models = members.independent(mnist_lr.DECLARATION, config, problem, tmp_path, 2)
    assert len(models.states) == 2 and not torch.equal(models.states[0]["weight"], models.states[1]["weight"])
    adapters = members.lora(mnist_lr.DECLARATION, config, problem, tmp_path, 2)
    assert set(adapters.states[0]) == set(adapters.template.state_dict())
    assert any("lora_B" in n for n in adapters.states[0])


def test_quick_run_writes_the_tables(tmp_path: Path, data, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(classifier, "load_mnist", lambda: data)
    small = {"mnist-lr": mnist_lr.DECLARATION, "mnist-mlp": mnist_mlp.DECLARATION}
    for name, declaration in small.items():
        shrunk = attrs.evolve(declaration.quick, n_train=240, n_test=60, n_targets=12, n_models=4,
                              recipe=attrs.evolve(declaration.quick.recipe, epochs=2))
        monkeypatch.setitem(settings.CLASSIFIERS, name, attrs.evolve(declaration, quick=shrunk))
    out = tmp_path / "o"
    argv = ["ensembles", "--quick", "--cache", str(tmp_path / "c"), "--out", str(out), "--threads", "1"]
    assert main(argv) == 0
    document = json.loads((out / "ensembles-quick.json").read_text())
    lr, mlp = ({r["label"]: r for r in s["rows"]} for s in document["settings"])
    assert "skipped" in lr["trak-3 dropout"] and "skipped" not in mlp["trak-3 dropout"]
    for rows in (lr, mlp):
        for label in ("grad-dot", "trak-1", "trak-3 independent", "trak-3 lora", "tracin-2", "rps"):
            assert rows[label]["attrkit"]["status"] == "ok", rows[label]["attrkit"]["message"]
            assert rows[label]["attrkit"]["lds"] is not None
        assert rows["trak-3 independent"]["member_seconds"] > 0
    page = (out / "ENSEMBLES.md").read_text()
    assert "| trak-3 lora |" in page and "## mnist-mlp" in page
    assert main(["ensembles", "--settings", "nope"]) == 2
    assert "known: mnist-lr, mnist-mlp" in capsys.readouterr().err
