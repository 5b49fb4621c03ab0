"""Helpers of the score engine: grouper output checks and running top-k selection."""

from __future__ import annotations

import attrs
import torch
from attrkit.errors import ArgumentError

__all__ = ["TopK", "check_partition", "merge_top_k"]


def check_partition(groups: torch.Tensor, n_train: int, who: str) -> torch.Tensor:
    """Validate a grouper's output: ``LongTensor[n_train]`` using every index ``0..G-1``.

    Raises:
        ValueError: wrong shape or dtype, negative indices, or unused group indices.
    """
    if groups.dtype != torch.long or groups.shape != (n_train,):
        raise ArgumentError(f"{who} must return a LongTensor[{n_train}], got {groups.dtype} {tuple(groups.shape)}")
    if n_train and (groups.min() < 0 or torch.unique(groups).numel() != int(groups.max()) + 1):
        raise ArgumentError(f"{who} must number groups 0..G-1 with every index used")
    return groups


@attrs.frozen
class TopK:
    """Strongest proponents (highest scores) and opponents (lowest) per test example.

    Attributes:
        proponent_scores, opponent_scores: ``Tensor[n_test, k]`` float32, sorted by strength.
        proponents, opponents: ``LongTensor[n_test, k]`` training (or group) indices.
    """

    proponent_scores: torch.Tensor
    proponents: torch.Tensor
    opponent_scores: torch.Tensor
    opponents: torch.Tensor


def merge_top_k(
    current: tuple[torch.Tensor, torch.Tensor] | None, tile: torch.Tensor, offset: int, k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Running top-k: merge ``tile`` (``[b, t]`` scores of columns ``offset..``) into ``current``."""
    values, index = tile.topk(min(k, tile.shape[1]), dim=1, largest=largest)
    index = index + offset
    if current is not None:
        values, index = torch.cat([current[0], values], 1), torch.cat([current[1], index], 1)
    keep = values.topk(min(k, values.shape[1]), dim=1, largest=largest).indices
    return values.gather(1, keep), index.gather(1, keep)


