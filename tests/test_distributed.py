"""Distributed mode: 2 and 3 gloo ranks (spawned on this machine) give one process's results.

Every method family is covered, each spec once per world size, all specs in one spawn.
"""

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

GN = {"name": "gauss-newton", "regularization": 1e-2}
#: key: (spec, toy problem, fit keyword arguments); ``store`` is a folder name under the run's folder.
SPECS = {
    "grad-dot": ({"method": "grad-dot"}, "plain", {}),
    "trak": ({"method": "trak", "projector": "identity", "solver": GN}, "plain", {}),
    "trak-budget-disk": (
        {"method": "trak", "projector": {"name": "gaussian", "dim": 16}, "solver": GN},
        "plain",
        {"store": "trak-store", "memory_budget": 600},  # 2-4 rows of 16 float64 features a tile
    ),
    "trak-random-groups": ({"method": "trak", "projector": "identity", "solver": GN,
                            "grouper": {"name": "random", "n_groups": 7}}, "plain", {}),
    "grad-dot-group-gradients": ({"method": "grad-dot", "gradients": "group",
                                  "grouper": {"name": "random", "n_groups": 7}}, "plain", {}),
    "tracin-checkpoints": ({"method": {"name": "tracin", "learning_rates": [0.5, 0.1]}}, "checkpoints", {}),
    "grad-cos-dropout-ensemble": ({"method": "grad-cos", "ensemble": {"name": "dropout", "members": 2}}, "dropout", {}),
    "rps": ({"method": {"name": "rps", "max_iter": 50}}, "plain", {}),
    "relatif": ({"method": "relatif", "solver": {"name": "explicit", "regularization": 1e-2}}, "plain", {}),
    "if-cg": ({"method": "if", "solver": {"name": "cg", "regularization": 1e-2, "max_iter": 3}}, "plain", {}),
    "if-cg-structured": ({"method": "if", "solver": {"name": "cg", "regularization": 1e-2, "max_iter": 3,
                                                     "matvec": "structured"}}, "plain", {}),
    "if-lissa": ({"method": "if", "solver": {"name": "lissa", "regularization": 1e-2, "depth": 4, "scale": 50.0,
                                             "batch_size": 7}}, "plain", {}),
    "if-datainf": ({"method": "if", "solver": "datainf"}, "plain", {}),
    "if-arnoldi": ({"method": "if", "solver": {"name": "arnoldi", "regularization": 1e-2, "rank": 6, "max_iter": 12}},
                   "plain", {}),
    "if-arnoldi-structured": ({"method": "if", "solver": {"name": "arnoldi", "regularization": 1e-2, "rank": 6,
                                                          "max_iter": 12, "matvec": "structured"}}, "plain", {}),
    "if-kfac": ({"method": "if", "solver": {"name": "kfac", "regularization": 1e-2}}, "plain", {}),
    "if-ekfac": ({"method": "if", "solver": {"name": "ekfac", "regularization": 1e-2}}, "plain", {}),
}


def _problems():
    """The float64 toys (24 training examples in 5 batches, the last short), built once per process."""
    plain = toy_problem(n_train=24, n_test=4, dtype=torch.float64)
    task = attrs.evolve(plain.task, properties=[mean_loss(plain.test_loader(), attrkit.cross_entropy)])
    return {
        "plain": (plain, task),
        "checkpoints": (ckpt := toy_problem(n_train=24, n_test=4, dtype=torch.float64, checkpoints=2), ckpt.task),
        "dropout": (drop := toy_problem(n_train=24, n_test=4, dtype=torch.float64, dropout=0.5), drop.task),
    }


def _results(folder: str) -> dict[str, dict[str, torch.Tensor]]:
    """Every spec's scores, top-3 and self-influence (``folder`` holds the on-disk stores)."""
    problems = _problems()
    out = {}
    for key, (spec, problem, fit) in SPECS.items():
        toy, task = problems[problem]
        train = toy.train_loader(batch_size=5)
        kwargs = {**fit, **({"store": f"{folder}/{fit['store']}"} if "store" in fit else {})}
        method = attrkit.compose(spec, task).fit(train, **kwargs)
        if isinstance(method, attrkit.GradientAttributor) and method.fitted.pointwise:  # features kept per rank
            held = method.features[0]
            assert held.partitioned == (distributed.world() is not None)
            assert held.resident == ("memory_budget" not in fit)
        out[key] = {"scores": method.attribute(toy.test_loader()), "self": method.self_influence(train)}
        if hasattr(method, "top_k"):
            best = method.top_k(toy.test_loader(), k=3)
            out[key].update(proponents=best.proponents, opponent_scores=best.opponent_scores)
        if key == "grad-dot":
            out[key]["properties"] = method.attribute()
    return out


def _rank(rank: int, size: int, folder: str) -> None:
    torch.set_num_threads(1)
    os.environ["ATTRKIT_PROGRESS"] = "0"
    dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=size)
    try:
        assert distributed.world() == (rank, size)
        torch.save(_results(folder), f"{folder}/rank{rank}.pt")
        dist.barrier()  # neither rank tears the group down while the other still talks to it
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    assert distributed.world() is None
    return _results(str(tmp_path_factory.mktemp("single")))


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_give_single_process_results(single, size, tmp_path):
    mp.start_processes(_rank, args=(size, str(tmp_path)), nprocs=size, start_method="spawn")
    for rank in range(size):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for key, expected in single.items():
            assert got[key].keys() == expected.keys(), key
            for name, value in expected.items():
                if value.is_floating_point():
                    torch.testing.assert_close(got[key][name], value, rtol=1e-6, atol=1e-6, msg=f"{key} {name} rank {rank}")
                else:
                    assert torch.equal(got[key][name], value), (key, name, rank)


def test_off_without_a_process_group():
    assert distributed.world() is None and distributed.owns(7)
    assert list(distributed.shard([1, 2, 3])) == [1, 2, 3]
    assert distributed.sum_over_ranks([torch.ones(2)], [4]) == [4]
    assert distributed.all_ranks("x") == ["x"]
    block = torch.ones(2, 3)
    assert distributed.gather_columns(block, [(0, 3)], 3) is block
    with pytest.raises(ValueError, match="chunks \\[1\\]"):
        distributed.gather_chunks({0: torch.zeros(1, 2)}, 2)
