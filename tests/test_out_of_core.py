"""Out of core: features streamed from disk under a memory budget give the in-memory results,
and a fit killed mid-way (one process, or one rank of two) resumes from its store."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attrkit
from attrkit.errors import MemoryBudgetError
from attrkit.feature_matrix import FeatureMatrix
from attrkit.disk_store import DiskStore
from attrkit.testing import toy_problem

TOY = toy_problem(n_train=24, n_test=4, dtype=torch.float64)
CHECKPOINTS = toy_problem(n_train=24, n_test=4, dtype=torch.float64, checkpoints=3)
GAUSSIAN = {"name": "gaussian", "dim": 16}
SPECS = {
    "grad-dot": ({"method": "grad-dot"}, TOY),
    "grad-cos": ({"method": "grad-cos", "projector": GAUSSIAN}, TOY),
    "trak": ({"method": "trak", "projector": GAUSSIAN, "solver": {"name": "gauss-newton", "regularization": 1e-2}}, TOY),
    # k = p = 57 > n = 24 and λ = 0: the pseudo-inverse, from the streamed R of Φ = QR
    "gauss-newton-pinv": ({"method": "if", "solver": "gauss-newton"}, TOY),
    "tracin-3-checkpoints": ({"method": {"name": "tracin", "learning_rates": [0.5, 0.2, 0.1]}}, CHECKPOINTS),
    "trak-groups": ({"method": "trak", "projector": GAUSSIAN, "grouper": {"name": "random", "n_groups": 5}}, TOY),
}
#: About 2-6 training rows per tile: every pass crosses the 5-row chunks' boundaries.
BUDGET = 3000


def _outputs(attributor, toy, train):
    best = attributor.top_k(toy.test_loader(), k=3)
    return {
        "scores": attributor.attribute(toy.test_loader()),
        "proponents": best.proponents,
        "opponent_scores": best.opponent_scores,
        "self": attributor.self_influence(train),
    }


@pytest.mark.parametrize("key", SPECS)
def test_streaming_under_a_tiny_budget_equals_in_memory(key, tmp_path):
    spec, toy = SPECS[key]
    train = toy.train_loader(5)
    streamed = attrkit.compose(spec, toy.task).fit(train, store=tmp_path, memory_budget=BUDGET)
    assert not any(f.train.resident for f in streamed.fitted.members) or key == "trak-groups"  # groups: [5, k] held
    expected = _outputs(attrkit.compose(spec, toy.task).fit(train), toy, train)
    for name, value in _outputs(streamed, toy, train).items():
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7, msg=f"{key} {name}")
        else:
            assert torch.equal(value, expected[name]), (key, name)


def test_feature_matrix_tiles_and_reductions_cross_chunks(tmp_path):
    phi = torch.randn(11, 3, dtype=torch.float64)
    store = DiskStore(tmp_path, "key")
    chunks = [(0, 0, 4), (1, 4, 4), (2, 8, 3)]
    for j, start, size in chunks:
        store.put(0, j, phi[start : start + size])
    matrix = FeatureMatrix.stored(store, 0, chunks, n=11, width=3, dtype=phi.dtype, device=torch.device("cpu"),
                                  resident=False, budget=3 * (24 + 8))  # 3 rows a tile
    tiles = list(matrix.tiles())
    assert [t.values.shape[0] for t in tiles] == [3, 3, 3, 2]
    assert torch.equal(torch.cat([t.values for t in tiles]), phi) and torch.equal(tiles[1].index, torch.arange(3, 6))
    torch.testing.assert_close(matrix.gram(), phi.T @ phi)
    r = matrix.r_factor()
    torch.testing.assert_close(r.T @ r, phi.T @ phi)
    groups = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1])
    expected = torch.zeros(3, 3, dtype=phi.dtype).index_add(0, groups, phi)
    torch.testing.assert_close(matrix.sum_rows_by(groups, 3), expected)
    scaled = matrix.scaled(torch.arange(11.0))
    assert torch.equal(scaled.tensor(), phi * torch.arange(11.0, dtype=phi.dtype)[:, None])


def test_budget_errors_name_the_budget_and_the_fix(tmp_path):
    train = TOY.train_loader(5)
    with pytest.raises(MemoryBudgetError, match="memory_budget=100 bytes cannot hold one tile.*at least 464"):
        attrkit.compose({"method": "grad-dot"}, TOY.task).fit(train, store=tmp_path, memory_budget=100)
    # over the budget without a store: streamed from a temporary store (tests/test_memory_default.py), not refused
    streamed = attrkit.compose({"method": "grad-dot"}, TOY.task).fit(train, memory_budget=BUDGET)
    assert streamed.fitted.memory_plan.temporary
    for bad in (0, -5, 1.5, True):
        with pytest.raises(MemoryBudgetError, match="positive number of bytes"):
            attrkit.compose({"method": "grad-dot"}, TOY.task).fit(train, memory_budget=bad)
    fitted = attrkit.compose({"method": "grad-dot"}, TOY.task).fit(train, store=tmp_path, memory_budget=500)
    with pytest.raises(MemoryBudgetError, match="cannot hold one tile"):  # 464 bytes a row + the scores of 4 tests
        fitted.attribute(TOY.test_loader())


KILLED_FIT = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import attrkit
    from test_out_of_core import DyingLoader, TOY, TRAK

    # TRAK: pass 1 is the order check's first batch, pass 2 is Q, pass 3 the features (read from the
    # loader: nothing is kept to replay)
    attrkit.loaders.KEEP_BYTES = 0
    loader = DyingLoader(TOY.train_loader(5), passes=3, batch=3)
    attrkit.compose(TRAK, TOY.task).fit(loader, store=sys.argv[1], memory_budget=int(sys.argv[2]))
    """
)
TRAK = {"method": "trak", "projector": GAUSSIAN, "solver": {"name": "gauss-newton", "regularization": 1e-2}}


class DyingLoader:
    """The batches of ``loader``; SIGKILLs this process when batch ``batch`` of pass ``passes`` is due."""

    def __init__(self, loader, passes, batch, rank=None):
        self.loader, self.passes, self.batch, self.rank, self.seen = loader, passes, batch, rank, 0

    def __iter__(self):
        self.seen += 1
        for j, batch in enumerate(self.loader):
            dies = self.rank is None or dist.get_rank() == self.rank
            if dies and self.seen == self.passes and j == self.batch:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch


def _chunk_files(store):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(store.glob("member-*/chunk-*.npy"))}


def test_a_killed_streaming_fit_resumes_with_bit_identical_results(tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", KILLED_FIT, str(store), str(BUDGET)], capture_output=True, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    before = _chunk_files(store)
    assert sorted(before) == ["chunk-0000000.npy", "chunk-0000001.npy", "chunk-0000002.npy"]
    train = TOY.train_loader(5)
    resumed = attrkit.compose(TRAK, TOY.task).fit(train, store=store, memory_budget=BUDGET)
    after = _chunk_files(store)
    assert {name: after[name] for name in before} == before and len(after) == 5  # only chunks 3 and 4 were written
    fresh = attrkit.compose(TRAK, TOY.task).fit(train, store=tmp_path / "fresh", memory_budget=BUDGET)
    for name, value in _outputs(resumed, TOY, train).items():
        assert torch.equal(value, _outputs(fresh, TOY, train)[name]), name


def _rank(rank, size, folder, phase):
    torch.set_num_threads(1)
    os.environ["ATTRKIT_PROGRESS"] = "0"
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg-{phase}", rank=rank, world_size=size)
    try:
        if phase == "killed":  # rank 1 dies before its third batch (batch 5): its chunks 1 and 3 are on disk
            loader = DyingLoader(TOY.train_loader(3), passes=2, batch=5, rank=1)  # pass 1: the order check's
            attrkit.compose(GRAD_DOT, TOY.task).fit(loader, store=f"{folder}/store")
        else:
            train = TOY.train_loader(3)
            fitted = attrkit.compose(GRAD_DOT, TOY.task).fit(train, store=f"{folder}/store", memory_budget=BUDGET)
            torch.save(_outputs(fitted, TOY, train), f"{folder}/resumed-{rank}.pt")
            dist.barrier()  # neither rank tears the group down while the other still talks to it
    finally:
        dist.destroy_process_group()


GRAD_DOT = {"method": "grad-dot", "projector": GAUSSIAN}


def test_a_rank_killed_mid_fit_leaves_a_store_both_ranks_resume(tmp_path):
    with pytest.raises(mp.ProcessExitedException):
        mp.start_processes(_rank, args=(2, str(tmp_path), "killed"), nprocs=2, start_method="spawn")
    before = _chunk_files(tmp_path / "store")
    assert {"chunk-0000001.npy", "chunk-0000003.npy"} <= set(before) and "chunk-0000005.npy" not in before
    mp.start_processes(_rank, args=(2, str(tmp_path), "resumed"), nprocs=2, start_method="spawn")
    after = _chunk_files(tmp_path / "store")
    assert {name: after[name] for name in before} == before and len(after) == 8
    train = TOY.train_loader(3)
    single = attrkit.compose(GRAD_DOT, TOY.task).fit(train, store=tmp_path / "single")
    for name in after:  # every chunk, whichever rank and run wrote it, is one process's, bit for bit
        chunk = [np.load(tmp_path / folder / "member-0" / name) for folder in ("store", "single")]
        assert np.array_equal(*chunk), name
    expected = _outputs(single, TOY, train)
    for rank in range(2):
        for name, value in torch.load(tmp_path / f"resumed-{rank}.pt").items():
            torch.testing.assert_close(value, expected[name], rtol=1e-6, atol=1e-7, msg=f"rank {rank} {name}")


def test_the_benchmark_streams_and_checks_its_scores(tmp_path):
    from attrkit_bench.cli import main

    main(["out-of-core", "--n", "3000", "--base", "1000", "--dim", "32", "--budget-mib", "0.1", "--batch", "400", "--targets", "5",
          "--out", str(tmp_path)])
    run = json.loads((tmp_path / "out_of_core.json").read_text())["run"]
    assert run["streamed"] and run["feature_bytes"] == 3000 * 32 * 4 and not (tmp_path / "store").exists()
    assert run["check"]["max_rel_error_vs_in_memory_base"] < 1e-4 and run["check"]["top_k_matches_attribute"]
    assert "| 64 |" in (tmp_path / "OUT_OF_CORE.md").read_text()
