"""Fixed, seeded dropout masks: one trained model seen as an ensemble of sub-networks.

A dropout ensemble member is the model with one fixed binary mask on the output of every
``nn.Dropout`` module (kept units scaled by ``1 / (1 - p)``, as in training). The mask of
a unit is a pure function of ``(seed, module index, unit index)`` computed by an integer
hash, not by a random number generator, so it is identical on every device, inside
``torch.func.vmap`` (where random ops are refused), for every batch size and on reruns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from attrkit.errors import ArgumentError

__all__ = ["dropout_mask", "dropout_modules", "fixed_dropout_masks"]

_MASK32 = 0xFFFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (murmur3's ``fmix32``) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, seed: int, stream: int = 0,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """A deterministic inverted-dropout mask: each entry ``0`` with probability ``p``, else ``1/(1-p)``.

    Args:
        shape: the mask's shape (one example's activation shape, no batch dimension).
        p: drop probability in ``[0, 1)``.
        seed: the member's seed.
        stream: tells masks of different modules apart (the module's index).
        device: where to build the mask.

    Returns:
        ``Tensor[shape]`` float32.

    Raises:
        ValueError: ``p`` outside ``[0, 1)``.
    """
    if not 0.0 <= p < 1.0:
        raise ArgumentError(f"dropout probability must be in [0, 1), got {p}")
    n = 1
    for size in shape:
        n *= int(size)
    index = torch.arange(n, dtype=torch.int64, device=device)
    key = _mix(torch.tensor((seed * 0x9E3779B1 + stream * 0x632BE5AB) & _MASK32, dtype=torch.int64, device=device))
    uniform = _mix(_mix(index ^ key) ^ key).double() / 2.0**32
    keep = (uniform >= p).to(torch.float32)
    return (keep / (1.0 - p)).reshape(tuple(shape))


def dropout_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Dropout]]:
    """``(name, module)`` of every ``nn.Dropout`` in ``model``, in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules() if type(m) is torch.nn.Dropout]


@contextlib.contextmanager
def fixed_dropout_masks(model: torch.nn.Module, seed: int, p: float | None = None) -> Iterator[None]:
    """While entered, every ``nn.Dropout`` of ``model`` applies a fixed mask seeded by ``seed``.

    Each module's output is replaced by its input times the fixed mask, in eval mode (how
    attribution runs the model, where ``nn.Dropout`` is the identity) and in training mode
    alike; the mask is the same for every example of a batch.

    Args:
        model: the network; forward hooks are added to its ``nn.Dropout`` modules and
            removed on exit.
        seed: selects the masks (one seed, one sub-network).
        p: drop probability for every module; ``None`` uses each module's own ``p``.
            ``p = 0`` leaves the model unchanged.

    Raises:
        ValueError: ``model`` has no ``nn.Dropout`` module.
    """
    modules = dropout_modules(model)
    if not modules:
        raise ArgumentError(
            f"{type(model).__name__} has no nn.Dropout module, so it has no dropout masks to ensemble over; "
            "use the 'checkpoints' or 'lora' ensemble"
        )

    def hook_for(stream: int, rate: float):
        # The mask is rebuilt on every call (a few integer ops per unit): a tensor cached from
        # inside one torch.func transform must not leak into another.
        def hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            mask = dropout_mask(tuple(output.shape[1:]), rate, seed, stream, output.device)
            return inputs[0] * mask.to(output.dtype)  # replaces nn.Dropout's own (random) output

        return hook

    handles = [m.register_forward_hook(hook_for(i, m.p if p is None else p)) for i, (_, m) in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
