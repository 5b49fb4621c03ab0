"""Distributed mode: 2 and 3 gloo ranks (spawned on this machine) give one process's results."""

import os

import attrs
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attrkit
from attrkit import distributed
from attrkit.properties import mean_loss
from attrkit.testing import toy_problem

SPECS = {
    "grad-dot": {"method": "grad-dot"},
    "trak": {"method": "trak", "projector": "identity", "solver": {"name": "gauss-newton", "regularization": 1e-2}},
    "if-cg": {"method": "if", "solver": {"name": "cg", "regularization": 1e-2}},
    "if-arnoldi": {"method": "if", "solver": {"name": "arnoldi", "regularization": 1e-2, "rank": 8, "max_iter": 30}},
    "if-kfac": {"method": "if", "solver": {"name": "kfac", "regularization": 1e-2}},
    "if-ekfac": {"method": "if", "solver": {"name": "ekfac", "regularization": 1e-2}},
}


def _results() -> dict[str, dict[str, torch.Tensor]]:
    """Every spec's scores, top-3 and self-influence on the float64 toy (5 batches, the last short)."""
    toy = toy_problem(n_train=24, n_test=4, dtype=torch.float64)
    task = attrs.evolve(toy.task, properties=[mean_loss(toy.test_loader(), attrkit.cross_entropy)])
    train = toy.train_loader(batch_size=5)
    out = {}
    for key, spec in SPECS.items():
        method = attrkit.compose(spec, task).fit(train)
        best = method.top_k(toy.test_loader(), k=3)
        out[key] = {
            "scores": method.attribute(toy.test_loader()),
            "proponents": best.proponents,
            "opponent_scores": best.opponent_scores,
            "properties": method.attribute() if key == "grad-dot" else torch.zeros(0),
            "self": method.self_influence(train),
        }
    return out


def _rank(rank: int, size: int, folder: str) -> None:
    torch.set_num_threads(1)
    os.environ["ATTRKIT_PROGRESS"] = "0"
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=size)
    try:
        assert distributed.world() == (rank, size)
        torch.save(_results(), f"{folder}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single():
    assert distributed.world() is None
    return _results()


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_give_single_process_results(single, size, tmp_path):
    mp.start_processes(_rank, args=(size, str(tmp_path)), nprocs=size, start_method="spawn")
    for rank in range(size):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key, expected in single.items():
            for name, value in expected.items():
                if value.is_floating_point():
                    torch.testing.assert_close(got[key][name], value, rtol=1e-6, atol=1e-6, msg=f"{key} {name} rank {rank}")
                else:
                    assert torch.equal(got[key][name], value), (key, name, rank)


def test_off_without_a_process_group():
    assert distributed.world() is None and distributed.owns(7)
    assert list(distributed.shard([1, 2, 3])) == [1, 2, 3]
    assert distributed.sum_over_ranks([torch.ones(2)], [4]) == [4]
    with pytest.raises(ValueError, match="chunks \\[1\\]"):
        distributed.gather_chunks({0: torch.zeros(1, 2)}, 2)
