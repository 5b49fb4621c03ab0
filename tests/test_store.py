"""Feature stores: resume after a real kill is bit-identical; top-k never needs the full matrix."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import attrkit
from attrkit.disk_store import DiskStore
from attrkit.errors import StoreMismatchError
from attrkit.testing import toy_problem

KILLED_FIT = textwrap.dedent(
    """
    import sys
    import attrkit
    import killable
    from attrkit.testing import toy_problem

    toy = toy_problem(n_train=40)
    task = attrkit.AttributionTask(model=toy.task.model, loss_fn=killable.loss)
    spec = {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 16},
            "gradients": {"name": "per-example", "products": "dense"}}  # one loss call per batch
    attrkit.compose(spec, task).fit(toy.train_loader(8), store=sys.argv[1])
    """
)


def test_resume_after_kill_is_bit_identical(tmp_path):
    import killable

    store = tmp_path / "store"
    here = os.path.dirname(__file__)
    env = {**os.environ, "ATTRKIT_TEST_KILL_AT": "4", "PYTHONPATH": os.pathsep.join([here, os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", KILLED_FIT, str(store)], capture_output=True, env=env)
    assert killed.returncode == -9, killed.stderr.decode()  # the 4th batch: chunks 0-2 are on disk
    done = sorted(p.name for p in (store / "member-0").glob("chunk-*.npy"))
    assert done == ["chunk-0000000.npy", "chunk-0000001.npy", "chunk-0000002.npy"]

    toy = toy_problem(n_train=40)
    killable.calls.clear()
    task = attrkit.AttributionTask(model=toy.task.model, loss_fn=killable.loss)  # the same loss function
    spec = {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 16},
            "gradients": {"name": "per-example", "products": "dense"}}
    resumed = attrkit.compose(spec, task).fit(toy.train_loader(8), store=store)
    assert len(killable.calls) == 2  # only batches 3 and 4 of 5 were computed
    fresh = attrkit.compose(spec, toy.task).fit(toy.train_loader(8))
    assert torch.equal(resumed.attribute(toy.test_loader()), fresh.attribute(toy.test_loader()))


def test_a_store_of_another_spec_is_refused(tmp_path, toy):
    attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader(), store=tmp_path)
    with pytest.raises(StoreMismatchError, match="another spec, model or loss function"):
        attrkit.compose({"method": "grad-cos"}, toy.task).fit(toy.train_loader(), store=tmp_path)


@pytest.mark.parametrize("method", ["grad-dot", "grad-cos"])
def test_top_k_matches_the_full_matrix(method):
    toy = toy_problem(n_train=50, n_test=7)
    attributor = attrkit.compose({"method": method}, toy.task).fit(toy.train_loader())
    full = attributor.attribute(toy.test_loader())
    top = attributor.top_k(toy.test_loader(), k=5, tile_rows=7)
    best, worst = full.topk(5, dim=1), full.topk(5, dim=1, largest=False)
    assert torch.equal(top.proponents, best.indices) and torch.equal(top.opponents, worst.indices)
    torch.testing.assert_close(top.proponent_scores, best.values)
    torch.testing.assert_close(top.opponent_scores, worst.values)


def test_top_k_rejects_a_bad_k(toy):
    attributor = attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader())
    with pytest.raises(ValueError, match="k must be in 1..24"):
        attributor.top_k(toy.test_loader(), k=0)


def test_processes_opening_one_store_at_once_agree_on_its_fingerprint(tmp_path):
    """store.json is created once, atomically (os.link), and checked by everyone; no temporary file stays."""
    import threading

    start, errors = threading.Barrier(8), []

    def open_store(key):
        start.wait()
        try:
            DiskStore(tmp_path / "shared", key)
        except StoreMismatchError:
            errors.append(key)

    threads = [threading.Thread(target=open_store, args=("ab"[i % 2],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winner = json.loads((tmp_path / "shared" / "store.json").read_text())["fingerprint"]
    assert winner in "ab" and errors == [("b" if winner == "a" else "a")] * 4
    assert [p.name for p in (tmp_path / "shared").iterdir()] == ["store.json"]


def test_a_store_written_with_another_batching_is_refused(tmp_path, toy):
    attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader(8), store=tmp_path)
    with pytest.raises(StoreMismatchError, match="chunk 0 of member 0 holds 8 rows but batch 0 has 5"):
        attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader(5), store=tmp_path)
