"""Bounded memory by default: a budget derived from the available memory (or given), an estimate of
the training features before the pass, streaming from a temporary store over the budget with the
in-memory scores, the choice said once, and silent progress bars under ATTRKIT_PROGRESS=0."""

import gc
from pathlib import Path

import pytest
import torch

import attrkit
import attrkit.budget as budget_module
import attrkit.disk_store as disk_store
import attrkit.engine.memory_plan as memory_plan
from attrkit.budget import DEFAULT_TILE_BYTES, parse_budget, resolve_budget
from attrkit.errors import MemoryBudgetError
from attrkit.testing import toy_problem

pytestmark = pytest.mark.usefixtures("one_thread")

TOY = toy_problem(n_train=24, n_test=4, dtype=torch.float64)
#: Grad-Dot over dense per-example gradients (structured products would hold fewer columns than p).
DENSE = {"method": "grad-dot", "gradients": {"name": "per-example", "products": "dense"}}
CHECKPOINTS = toy_problem(n_train=24, n_test=4, dtype=torch.float64, checkpoints=2)
GAUSSIAN = {"name": "gaussian", "dim": 16}
#: A few rows of 57 float64 features a tile (k = p = 57 for the identity projector).
TINY = 3000
SPECS = {
    "grad-dot": ({"method": "grad-dot"}, TOY),
    "trak": ({"method": "trak", "projector": GAUSSIAN, "solver": {"name": "gauss-newton", "regularization": 1e-2}},
             TOY),
    "if-ekfac": ({"method": "if", "gradients": "factored", "solver": {"name": "ekfac", "regularization": 0.1}}, TOY),
    "tracin-2-checkpoints": ({"method": {"name": "tracin", "learning_rates": [0.5, 0.2]}}, CHECKPOINTS),
}


@pytest.fixture(autouse=True)
def _environment(monkeypatch, tmp_path):
    """No budget from the environment, temporary stores under this test's folder, bars and notes off."""
    monkeypatch.delenv("ATTRKIT_MEMORY_BUDGET", raising=False)
    monkeypatch.setenv("ATTRKIT_TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setenv("ATTRKIT_PROGRESS", "0")


def _available(monkeypatch, nbytes):
    """Make the machine report ``nbytes`` available (the default budget is a quarter of it)."""
    monkeypatch.setattr(budget_module, "available_bytes", lambda device="cpu": nbytes)


def _outputs(attributor, toy, train):
    best = attributor.top_k(toy.test_loader(), k=3)
    return {"scores": attributor.attribute(toy.test_loader()), "proponents": best.proponents,
            "opponent_scores": best.opponent_scores, "self": attributor.self_influence(train)}


def _same(got, expected, key=""):
    for name, value in got.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7, msg=f"{key} {name}")
        else:
            assert torch.equal(value, expected[name]), (key, name)


class _Unsized:
    """Re-iterable batches with no length and no dataset: the estimate is unknown."""

    def __init__(self, loader):
        self.batches = list(loader)

    def __iter__(self):
        return iter(self.batches)


# -- the budget ---------------------------------------------------------------------------


def test_the_default_budget_is_a_quarter_of_the_available_memory(monkeypatch):
    _available(monkeypatch, 8 * 2**30)
    budget = resolve_budget(None)
    assert (budget.bytes, budget.source, budget.tile_bytes) == (2 * 2**30, "default", DEFAULT_TILE_BYTES)
    assert "25% of 8 GiB available" in budget.describe()
    _available(monkeypatch, 4 * 1000)
    assert resolve_budget(None).tile_bytes == 1000  # tiles never exceed the budget
    _available(monkeypatch, None)
    assert resolve_budget(None).bytes is None  # unknown memory: no budget, said so
    assert "unknown" in resolve_budget(None).describe()


def test_the_argument_beats_the_environment_which_beats_the_default(monkeypatch):
    _available(monkeypatch, 8 * 2**30)
    monkeypatch.setenv("ATTRKIT_MEMORY_BUDGET", "2GiB")
    assert (resolve_budget(None).bytes, resolve_budget(None).source) == (2 * 2**30, "ATTRKIT_MEMORY_BUDGET")
    assert resolve_budget(None).tile_bytes == 2 * 2**30  # a budget the user gave bounds its tiles itself
    assert (resolve_budget(5000).bytes, resolve_budget(5000).source) == (5000, "memory_budget")
    assert resolve_budget(float("inf")).bytes is None
    monkeypatch.setenv("ATTRKIT_MEMORY_BUDGET", "inf")
    assert resolve_budget(None).bytes is None and "ATTRKIT_MEMORY_BUDGET=inf" in resolve_budget(None).describe()


@pytest.mark.parametrize("text, nbytes", [
    ("1000", 1000), ("2GiB", 2 * 2**30), ("2 gib", 2 * 2**30), ("500MB", 500 * 10**6), ("1.5 KiB", 1536),
    ("3kb", 3000), (" 7 B ", 7), ("inf", None), ("Infinity", None),
])
def test_sizes_parse_with_units(text, nbytes):
    assert parse_budget(text) == nbytes


@pytest.mark.parametrize("bad", ["lots", "2 GiBs", "-5", "0", "0.1B", "", "1e9"])
def test_a_bad_environment_variable_is_a_clear_attrkit_error(monkeypatch, bad):
    monkeypatch.setenv("ATTRKIT_MEMORY_BUDGET", bad or "  x")
    with pytest.raises(MemoryBudgetError, match=r"ATTRKIT_MEMORY_BUDGET must be .*'2GiB'.* got") as caught:
        attrkit.compose({"method": "grad-dot"}, TOY.task).fit(TOY.train_loader(5))
    assert isinstance(caught.value, attrkit.AttrkitError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True, float("-inf"), float("nan"), "many", [1]])
def test_a_bad_argument_is_refused(bad):
    with pytest.raises(MemoryBudgetError, match="memory_budget must be a positive number of bytes"):
        attrkit.compose({"method": "grad-dot"}, TOY.task).fit(TOY.train_loader(5), memory_budget=bad)


def test_inf_means_no_budget():
    fitted = attrkit.compose({"method": "grad-dot"}, TOY.task).fit(TOY.train_loader(5), memory_budget=float("inf"))
    plan = fitted.fitted.memory_plan
    assert (plan.budget, plan.choice, plan.path) == (None, "memory", None)
    assert "no budget (memory_budget=inf)" in plan.message


# -- the estimate and the choice ----------------------------------------------------------


def test_the_estimate_is_members_times_examples_times_width_times_itemsize(monkeypatch):
    _available(monkeypatch, 2**40)
    fitted = attrkit.compose(DENSE, TOY.task).fit(TOY.train_loader(5))
    plan = fitted.fitted.memory_plan
    assert plan.estimate == plan.held == 24 * 57 * 8  # n_train × p × float64
    assert (plan.choice, plan.budget_source, plan.path, plan.temporary) == ("memory", "default", None, False)
    assert "24 examples × 57 features × float64" in plan.message and ": in memory" in plan.message
    projected = attrkit.compose(SPECS["trak"][0], TOY.task).fit(TOY.train_loader(5)).fitted.memory_plan
    assert projected.estimate == 24 * 16 * 8  # the projector's dim
    members = attrkit.compose(*[SPECS["tracin-2-checkpoints"][0], CHECKPOINTS.task]).fit(CHECKPOINTS.train_loader(5))
    assert members.fitted.memory_plan.estimate == 2 * 24 * 57 * 8


@pytest.mark.parametrize("key", SPECS)
def test_over_the_default_budget_features_stream_from_a_temporary_store_with_the_same_scores(monkeypatch, key,
                                                                                              tmp_path):
    spec, toy = SPECS[key]
    train = toy.train_loader(5)
    expected = _outputs(attrkit.compose(spec, toy.task).fit(train, memory_budget=float("inf")), toy, train)
    _available(monkeypatch, 4 * TINY)  # default budget: TINY bytes
    monkeypatch.setattr(budget_module, "DEFAULT_TILE_BYTES", TINY // 2)  # the tile cap, below the budget
    streamed = attrkit.compose(spec, toy.task).fit(train)
    plan = streamed.fitted.memory_plan
    assert (plan.choice, plan.budget, plan.budget_source, plan.temporary, plan.tile_bytes) == (
        "stream", TINY, "default", True, TINY // 2)
    assert plan.estimate > TINY and Path(plan.path).parent == tmp_path / "tmp" and Path(plan.path).is_dir()
    assert "streaming from a temporary store" in plan.message and plan.path in plan.message
    assert not any(side.resident for side in streamed.features)
    assert all(side.tile_rows() == (TINY // 2) // (side.row_bytes + 8) for side in streamed.features)
    _same(_outputs(streamed, toy, train), expected, key)


def test_features_that_outgrow_the_budget_during_the_pass_spill_instead_of_raising():
    train = _Unsized(TOY.train_loader(5))
    expected = _outputs(attrkit.compose(DENSE, TOY.task).fit(train, memory_budget=float("inf")),
                        TOY, train)
    streamed = attrkit.compose(DENSE, TOY.task).fit(train, memory_budget=TINY)
    plan = streamed.fitted.memory_plan
    assert plan.estimate is None and (plan.choice, plan.temporary) == ("stream", True)
    assert "passed the budget 2.93 KiB (memory_budget) at batch 1" in plan.message
    assert "the estimate was unknown" in plan.message and plan.message.count("\n") == 0
    _same(_outputs(streamed, TOY, train), expected)
    # unknown and small: in memory, said after the pass
    small = attrkit.compose(DENSE, TOY.task).fit(train, memory_budget=10**6).fitted.memory_plan
    assert (small.estimate, small.held, small.choice) == (None, 24 * 57 * 8, "memory")
    assert "no estimate before the pass" in small.message


class _Batched(_Unsized):
    """Batches with a length and a batch size but no dataset: estimated as ``len × batch_size``."""

    batch_size = 5

    def __len__(self):
        return len(self.batches)


def test_an_estimate_over_the_budget_that_turns_out_within_it_is_held_in_memory():
    loader = _Batched(TOY.train_loader(5))  # estimated 5 batches × 5 = 25 > 24 examples
    fitted = attrkit.compose({"method": "grad-dot"}, TOY.task).fit(loader, memory_budget=24 * 57 * 8)
    plan = fitted.fitted.memory_plan
    assert plan.estimate == 25 * 57 * 8 and "streaming" in plan.message  # decided before the pass
    assert fitted.features[0].resident and (plan.choice, plan.path, plan.temporary) == ("memory", None, False)


def test_a_given_store_streams_under_the_default_budget(monkeypatch, tmp_path):
    _available(monkeypatch, 4 * TINY)
    fitted = attrkit.compose({"method": "grad-dot"}, TOY.task).fit(TOY.train_loader(5), store=tmp_path / "store")
    plan = fitted.fitted.memory_plan
    assert (plan.choice, plan.path, plan.temporary) == ("stream", str(tmp_path / "store"), False)
    assert f"streaming from the store {tmp_path / 'store'}" in plan.message
    assert not (tmp_path / "tmp").exists()  # no temporary store made


def test_too_little_free_space_for_the_temporary_store_warns_and_a_full_disk_is_a_clear_error(monkeypatch):
    class Usage:
        free = 100

    monkeypatch.setattr(memory_plan.shutil, "disk_usage", lambda path: Usage)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(disk_store.DiskStore, "put", full)
    with pytest.warns(attrkit.AttrkitWarning, match=r"has only 100 B free .*ATTRKIT_TMPDIR.*store=<folder>"):
        with pytest.raises(MemoryBudgetError, match=r"cannot write .* temporary store .*No space left.*ATTRKIT_TMPDIR"):
            attrkit.compose({"method": "grad-dot"}, TOY.task).fit(TOY.train_loader(5), memory_budget=TINY)


def test_a_budget_below_one_row_is_refused_before_the_pass():
    # "training features ≈": from the estimate, before any gradient (after the pass it would be the tile's own check)
    with pytest.raises(MemoryBudgetError, match=r"memory_budget=100 bytes cannot hold one tile.*training features ≈ "
                                                r".*at least 464"):
        attrkit.compose({"method": "grad-dot"}, TOY.task).fit(TOY.train_loader(5), memory_budget=100)


def test_an_unusable_tmpdir_is_refused_clearly(monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("ATTRKIT_TMPDIR", str(tmp_path / "a-file" / "below"))
    with pytest.raises(MemoryBudgetError, match="ATTRKIT_TMPDIR=.*no usable folder"):
        attrkit.compose({"method": "grad-dot"}, TOY.task).fit(TOY.train_loader(5), memory_budget=TINY)


# -- the temporary store's life -----------------------------------------------------------


def test_the_temporary_store_is_removed_with_the_attributor_or_a_new_fit():
    attributor = attrkit.compose({"method": "grad-dot"}, TOY.task).fit(TOY.train_loader(5), memory_budget=TINY)
    first = Path(attributor.fitted.memory_plan.path)
    assert any(first.rglob("chunk-*.npy"))
    attributor.fit(TOY.train_loader(5), memory_budget=TINY)
    gc.collect()
    second = Path(attributor.fitted.memory_plan.path)
    assert not first.exists() and second.is_dir()
    del attributor
    gc.collect()
    assert not second.exists()


def test_save_copies_a_temporary_store_and_load_gives_the_same_scores(tmp_path):
    attributor = attrkit.compose(SPECS["trak"][0], TOY.task).fit(TOY.train_loader(5), memory_budget=TINY)
    expected = _outputs(attributor, TOY, TOY.train_loader(5))
    temporary = Path(attributor.fitted.memory_plan.path)
    attributor.save(tmp_path / "saved")
    del attributor
    gc.collect()
    assert not temporary.exists()
    loaded = attrkit.load(tmp_path / "saved", TOY.task)
    assert not any(side.resident for side in loaded.features)
    got = _outputs(loaded, TOY, TOY.train_loader(5))
    for name, value in got.items():
        assert torch.equal(value, expected[name]), name


# -- what is said -------------------------------------------------------------------------


def _lines(text):
    return [line for line in text.splitlines() if line.startswith("attrkit:")]


def test_the_choice_is_said_once_per_fit(monkeypatch, capsys):
    monkeypatch.setenv("ATTRKIT_PROGRESS", "1")
    for budget, choice in ((None, "in memory"), (TINY, "streaming from a temporary store")):
        capsys.readouterr()
        fitted = attrkit.compose({"method": "grad-dot"}, TOY.task).fit(TOY.train_loader(5), memory_budget=budget)
        said = _lines(capsys.readouterr().err)
        assert len(said) == 1 and choice in said[0], said
        assert said[0] == fitted.fitted.memory_plan.message


def test_silent_under_attrkit_progress_0_but_kept_on_the_attributor(capsys):
    for spec in ({"method": "if", "gradients": "factored", "solver": {"name": "ekfac", "regularization": 0.1}},
                 {"method": "if", "solver": {"name": "explicit", "regularization": 0.1}},
                 {"method": "if", "solver": {"name": "arnoldi", "rank": 4, "max_iter": 8, "regularization": 0.1}},
                 {"method": "if", "solver": {"name": "cg", "max_iter": 5, "regularization": 0.1}}):
        fitted = attrkit.compose(spec, TOY.task).fit(TOY.train_loader(5), memory_budget=TINY)
        fitted.attribute(TOY.test_loader())
        assert fitted.fitted.memory_plan.message.startswith("attrkit: train features")
    assert capsys.readouterr().err == ""


def test_curvature_fits_show_progress_bars(monkeypatch, capsys):
    monkeypatch.setenv("ATTRKIT_PROGRESS", "1")
    expected = {
        "ekfac": ["K-FAC: factor pass", "K-FAC: eigendecompositions", "EK-FAC: eigenvalue correction"],
        "explicit": ["explicit: building the 57 x 57 curvature"],
        "arnoldi": ["arnoldi: Lanczos iterations"],
        "cg": ["cg: iterations"],
        "lissa": ["lissa: recursion (run 1/1)"],
        "datainf": ["datainf: default damping pass", "datainf: solve pass"],
    }
    for name, bars in expected.items():
        solver = {"name": name, "regularization": None if name == "datainf" else 0.1}
        solver.update({"arnoldi": {"rank": 4, "max_iter": 8}, "cg": {"max_iter": 5},
                       "lissa": {"depth": 3, "scale": 50.0}}.get(name, {}))
        spec = {"method": "if", "gradients": "factored" if name == "ekfac" else "per-example", "solver": solver}
        capsys.readouterr()
        attrkit.compose(spec, TOY.task).fit(TOY.train_loader(5)).attribute(TOY.test_loader())
        err = capsys.readouterr().err
        for bar in bars:
            assert bar in err, (name, bar)


def test_without_a_budget_features_larger_than_the_available_memory_are_refused_clearly(monkeypatch):
    import attrkit.memory

    monkeypatch.setattr(attrkit.memory, "_ALWAYS_AVAILABLE", 0)
    monkeypatch.setattr(attrkit.memory, "available_bytes", lambda device="cpu": 6000)  # a batch's gradients fit
    with pytest.raises(attrkit.InsufficientMemoryError, match=r"holding 24 x 57 training features in memory needs "
                                                              r"10.7 KiB, more than the 5.86 KiB available.*budget"):
        attrkit.compose(DENSE, TOY.task).fit(TOY.train_loader(5), memory_budget=float("inf"))
