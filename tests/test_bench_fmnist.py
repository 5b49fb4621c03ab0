"""The fmnist-cnn setting: the Fashion-MNIST loader, the CNN, and the pipeline on synthetic data."""

from __future__ import annotations

import gzip
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch

import attrkit
from attrkit.targets import cross_entropy
from attrkit_bench.data.fashion_mnist import (
    ENV_VAR,
    FILES,
    FashionMNISTFormatError,
    FashionMNISTMissingError,
    load_fashion_mnist,
)
from attrkit_bench.runner.choices import parse_methods
from attrkit_bench.settings import SETTINGS, fmnist_cnn

from test_bench import synthetic


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """``array`` (uint8) as a gzip IDX file: magic, big-endian dimensions, then the bytes."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _write_set(folder: Path, n_train: int = 6, n_test: int = 4, side: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Four IDX files of random ``side × side`` images; returns all images and labels, train first."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_train + n_test, side, side), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_train + n_test, dtype=np.uint8)
    for (image_name, label_name), part in zip(FILES, (slice(0, n_train), slice(n_train, None)), strict=True):
        _write_idx(folder / image_name, images[part])
        _write_idx(folder / label_name, labels[part])
    return images, labels


def test_loader_reads_idx_files_train_split_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = _write_set(tmp_path)
    x, y = load_fashion_mnist(tmp_path)
    assert x.shape == (10, 9) and x.dtype == torch.float32 and y.shape == (10,) and y.dtype == torch.int64
    torch.testing.assert_close(x, torch.from_numpy(images.reshape(10, 9)).float() / 255.0)
    assert y.tolist() == labels.tolist()
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert torch.equal(load_fashion_mnist()[1], y)


def test_loader_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="apt-get install -y dataset-fashion-mnist") as missing:
        load_fashion_mnist(tmp_path / "nowhere")
    assert isinstance(missing.value, FashionMNISTMissingError) and ENV_VAR in str(missing.value)
    _write_set(tmp_path)
    _write_idx(tmp_path / FILES[1][1], np.zeros(4, dtype=np.uint8), magic=0x0803)
    with pytest.raises(FashionMNISTFormatError, match=r"t10k-labels.*magic number 0x00000803, expected 0x00000801"):
        load_fashion_mnist(tmp_path)
    _write_idx(tmp_path / FILES[1][1], np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="4 images.*5 labels"):
        load_fashion_mnist(tmp_path)


def test_model_is_a_flat_input_cnn_that_behaves_the_same_in_train_and_eval_mode() -> None:
    torch.manual_seed(0)
    model = fmnist_cnn.make_model(784, 10)
    x = torch.rand(5, 784)
    out = model(x)
    assert out.shape == (5, 10)
    assert sum(p.numel() for p in model.parameters()) == 29_506
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    model.train()
    torch.testing.assert_close(model(x), out)  # GroupNorm: no batch statistics, no running buffers
    assert not list(model.buffers())
    with pytest.raises(ValueError, match="n_features must be side \\* side"):
        fmnist_cnn.make_model(785, 10)


def test_engine_per_example_gradients_match_a_loop() -> None:
    torch.manual_seed(0)
    model = fmnist_cnn.make_model(64, 3).eval()
    x, y = torch.rand(7, 64), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:5], y[:5]), batch_size=2)
    test = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[5:], y[5:]), batch_size=2)
    task = attrkit.AttributionTask(model=model, loss_fn=cross_entropy)
    scores = attrkit.compose({"method": "grad-dot"}, task).fit(train).attribute(test)

    def gradient(i: int) -> torch.Tensor:
        model.zero_grad()
        cross_entropy(model, (x[i : i + 1], y[i : i + 1])).sum().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    grads = torch.stack([gradient(i) for i in range(7)])
    torch.testing.assert_close(scores, grads[5:] @ grads[:5].T, rtol=1e-4, atol=1e-6)


def test_prepare_runs_every_default_method_end_to_end(tmp_path: Path) -> None:
    config = attrs.evolve(fmnist_cnn.QUICK, n_train=120, n_test=30, n_targets=6, n_models=4,
                          recipe=attrs.evolve(fmnist_cnn.QUICK.recipe, epochs=2))
    problem = fmnist_cnn.prepare(tmp_path, config, data=synthetic(n=300, d=64))
    assert problem.info["n_parameters"] == sum(p.numel() for p in fmnist_cnn.make_model(64, 10).parameters())
    assert problem.ground_truth["values"].shape[1] == 6
    registry = attrkit.default_registry()
    for choice in parse_methods(fmnist_cnn.SETTING.default_methods, registry):
        states = None if choice.members is None else problem.members(*choice.members)
        task = attrs.evolve(problem.task(), checkpoints=states)
        scores = attrkit.compose(choice.spec, task, registry).fit(problem.train).attribute(problem.targets)
        assert scores.shape == (6, 120), choice.label
        assert bool(torch.isfinite(scores).all()), choice.label
    assert SETTINGS["fmnist-cnn"] is fmnist_cnn.SETTING


def test_real_fashion_mnist() -> None:
    try:
        x, y = load_fashion_mnist()
    except FashionMNISTMissingError:
        pytest.skip("Fashion-MNIST files not installed (apt-get install -y dataset-fashion-mnist)")
    assert x.shape == (70000, 784) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.bincount(y).tolist() == [7000] * 10
