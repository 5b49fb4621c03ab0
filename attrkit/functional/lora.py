"""Small LoRA adapters for ``nn.Linear`` and ``nn.Conv2d``, and a helper that trains k of them.

A LoRA layer keeps the base layer frozen and adds a rank-``r`` update:
``y = base(x) + (alpha / r) · B(A(x))`` with ``A`` initialised at random (seeded) and ``B``
at zero, so a freshly wrapped model computes exactly what the base model did. Attribution
over an adapter ensemble differentiates only the adapter parameters (names ending in
``lora_A.weight`` / ``lora_B.weight``), a few thousand numbers per layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch

from attrkit.errors import ArgumentError
from attrkit.progress import progress

__all__ = ["LORA_PATTERNS", "LoRAConv2d", "LoRALinear", "add_lora", "lora_parameter_names", "train_lora_adapters"]

#: ``fnmatch`` patterns selecting every adapter parameter of a model made by :func:`add_lora`.
LORA_PATTERNS = ("*lora_A.weight", "*lora_B.weight")


class LoRALinear(torch.nn.Module):
    """``base(x) + (alpha / rank) · lora_B(lora_A(x))`` around a frozen ``nn.Linear``.

    Args:
        base: the layer to adapt (its parameters get ``requires_grad = False``).
        rank: the update's rank ``r``.
        alpha: scale numerator; the update is scaled by ``alpha / rank``.
    """

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float = 1.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_A = torch.nn.Linear(base.in_features, rank, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.lora_B = torch.nn.Linear(rank, base.out_features, bias=False, device=base.weight.device, dtype=base.weight.dtype)
        self.scale = alpha / rank
        torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[..., out_features]``."""
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))


class LoRAConv2d(torch.nn.Module):
    """``base(x) + (alpha / rank) · lora_B(lora_A(x))`` around a frozen ``nn.Conv2d``.

    ``lora_A`` is a convolution with the base's kernel, stride, padding and dilation to
    ``rank`` channels (groups = 1); ``lora_B`` a 1×1 convolution back to the output channels.
    """

    def __init__(self, base: torch.nn.Conv2d, rank: int, alpha: float = 1.0):
        super().__init__()
        if base.groups != 1:
            raise ArgumentError(f"LoRAConv2d supports groups=1 convolutions only, got groups={base.groups}")
        self.base = base.requires_grad_(False)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype, "bias": False}
        self.lora_A = torch.nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding,
                                      base.dilation, padding_mode=base.padding_mode, **kw)
        self.lora_B = torch.nn.Conv2d(rank, base.out_channels, 1, **kw)
        self.scale = alpha / rank
        torch.nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        torch.nn.init.zeros_(self.lora_B.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, out_channels, h', w']``."""
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))


def add_lora(
    model: torch.nn.Module, rank: int = 4, alpha: float = 1.0, targets: Sequence[str] | None = None, seed: int = 0
) -> torch.nn.Module:
    """Replace ``nn.Linear`` / ``nn.Conv2d`` layers of ``model`` in place by LoRA layers.

    Every other parameter is frozen (``requires_grad = False``).

    Args:
        model: the trained base model.
        rank: the adapters' rank.
        alpha: the adapters' scale numerator.
        targets: module names to adapt; ``None`` adapts every ``nn.Linear`` and ``nn.Conv2d``.
        seed: seeds the ``lora_A`` initialisation (``lora_B`` starts at zero).

    Returns:
        ``model`` itself, now computing the same function with adapters attached.

    Raises:
        ValueError: ``rank < 1``, a target that is not a Linear/Conv2d module, nothing to
            adapt, or ``model`` itself a Linear/Conv2d (it cannot be replaced in place).
    """
    if rank < 1:
        raise ArgumentError(f"rank must be >= 1, got {rank}")
    if type(model) in (torch.nn.Linear, torch.nn.Conv2d):
        raise ArgumentError(f"the model is itself an {type(model).__name__}; wrap it first: nn.Sequential(model)")
    layers = {n: m for n, m in model.named_modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)}
    chosen = list(layers) if targets is None else list(targets)
    wrong = [n for n in chosen if n not in layers]
    if wrong or not chosen:
        raise ArgumentError(
            f"cannot add LoRA to {wrong or 'no layer'}: the nn.Linear/nn.Conv2d modules are {', '.join(layers) or 'none'}"
        )
    model.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    for name in chosen:
        base = layers[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
            wrapped = (LoRALinear if isinstance(base, torch.nn.Linear) else LoRAConv2d)(base, rank, alpha)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, wrapped)
    return model


def lora_parameter_names(model: torch.nn.Module) -> list[str]:
    """Names of the adapter parameters of ``model``, in model order (empty when none)."""
    return [n for n, _ in model.named_parameters() if n.endswith(("lora_A.weight", "lora_B.weight"))]


def train_lora_adapters(
    model: torch.nn.Module,
    k: int,
    train: Callable[[torch.nn.Module, int], None],
    rank: int = 4,
    alpha: float = 1.0,
    targets: Sequence[str] | None = None,
    seed: int = 0,
) -> tuple[torch.nn.Module, list[dict[str, torch.Tensor]]]:
    """Train ``k`` LoRA adapters on top of one trained base model.

    Args:
        model: the trained base model (left unchanged; adapters go on copies).
        k: number of adapters.
        train: ``train(adapted_model, seed)``, the user's training loop; it must update
            the parameters with ``requires_grad`` (only the adapters') in place.
        rank, alpha, targets: see :func:`add_lora`.
        seed: adapter ``j`` is initialised with ``seed + j`` and trained with that seed.

    Returns:
        ``(template, states)``: ``template`` is the base model with untrained adapters (use it
        as the task's model); ``states[j]`` is the full state dict of adapter ``j`` (base
        weights included), ready to pass as the task's checkpoints.

    Raises:
        ValueError: ``k < 1`` (and see :func:`add_lora`).
    """
    if k < 1:
        raise ArgumentError(f"k must be >= 1, got {k}")
    template = add_lora(copy.deepcopy(model), rank, alpha, targets, seed)
    states = []
    for j in progress(range(k), f"training {k} LoRA adapters"):
        adapted = add_lora(copy.deepcopy(model), rank, alpha, targets, seed + j)
        train(adapted, seed + j)
        states.append({n: t.detach().clone() for n, t in adapted.state_dict().items()})
    return template, states
