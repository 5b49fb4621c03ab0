"""Benchmark model architectures."""

from __future__ import annotations

import torch

__all__ = ["mnist_mlp"]


def mnist_mlp(dropout: float = 0.1) -> torch.nn.Module:
    """The MNIST MLP of the seed benchmarks: 784-128-64-10, ReLU, dropout after each hidden layer.

    109,386 parameters. Attribution runs it in eval mode (dropout off).
    """
    return torch.nn.Sequential(
        torch.nn.Linear(784, 128),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Dropout(dropout),
        torch.nn.Linear(64, 10),
    )
