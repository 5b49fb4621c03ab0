"""Benchmark model architectures."""

from __future__ import annotations

import torch

__all__ = ["mnist_mlp"]


def mnist_mlp(dropout: float = 0.1, n_features: int = 784, n_classes: int = 10) -> torch.nn.Module:
    """The MNIST MLP of the seed benchmarks: 784-128-64-10, ReLU, dropout after each hidden layer.

    109,386 parameters at the defaults. Attribution runs it in eval mode (dropout off).

    Args:
        dropout: drop probability after each hidden layer (training mode only).
        n_features: input width (784 pixels on MNIST; tests use small synthetic inputs).
        n_classes: number of output logits.
    """
    return torch.nn.Sequential(
        torch.nn.Linear(n_features, 128),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(64, n_classes),
    )
