"""``attrkit bench`` under a torchrun-style launch: two gloo ranks give one process's table."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from attrkit_bench.cli import main
from attrkit_bench.settings import classifier

ARGS = ["mnist-lr", "--quick", "--methods", 'grad-dot,{"method": "trak", "projector": {"name": "gaussian", "dim": 16}}',
        "--metrics", "lds,loo", "--no-plots", "--workers", "1"]


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(800) % 10
    return torch.sigmoid(3 * torch.randn(10, 16, generator=generator)[y] + torch.randn(800, 16, generator=generator)), y


def _rank(rank: int, folder: str, port: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), ATTRKIT_PROGRESS="0")
    torch.set_num_threads(1)
    classifier.load_mnist = _data
    code = main([*ARGS, "--cache", f"{folder}/cache", "--out", f"{folder}/out{rank}"])
    Path(f"{folder}/code{rank}").write_text(str(code))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_write_one_process_results(tmp_path: Path, monkeypatch) -> None:
    mp.spawn(_rank, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    assert [(tmp_path / f"code{r}").read_text() for r in range(2)] == ["0", "0"]
    assert not (tmp_path / "out1").exists()  # rank 0 alone writes
    ranks = json.loads((tmp_path / "out0" / "mnist-lr-quick.json").read_text())
    monkeypatch.setattr(classifier, "load_mnist", _data)
    assert main([*ARGS, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "single")]) == 0
    single = json.loads((tmp_path / "single" / "mnist-lr-quick.json").read_text())
    for ours, theirs in zip(ranks["runs"], single["runs"], strict=True):
        for metric in ("lds", "loo"):
            assert abs(ours["metrics"][metric] - theirs["metrics"][metric]) < 1e-5, (ours["label"], metric)
