"""A small decoder-only transformer (nanoGPT-style) and its per-sequence loss.

``GPT(config)(tokens [b, T]) -> logits [b, T, vocab]``: token and learned position
embeddings, ``layers`` pre-LayerNorm blocks of causal multi-head self-attention and a GELU
MLP, a final LayerNorm and a linear head (no bias, untied). Attention is written out with
plain tensor operations, so ``torch.func.vmap(grad(functional_call(...)))`` (the engine's
per-example gradients, one sequence of batch size 1 at a time) gives exact per-sequence
gradients, and every projection is an ``nn.Linear`` on ``[b, T, d]`` for the Kronecker
solvers. No dropout: training and attribution see the same function.

Example:
    >>> model = GPT(GPTConfig(vocab_size=65, block=64))
    >>> x = torch.randint(65, (8, 65))
    >>> sequence_loss(model, (x[:, :-1], x[:, 1:])).shape
    torch.Size([8])
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch
from torch import nn

__all__ = ["GPT", "CausalSelfAttention", "GPTConfig", "TransformerBlock", "sequence_loss"]


@attrs.frozen(kw_only=True)
class GPTConfig:
    """The transformer's shape.

    Attributes:
        vocab_size: number of token ids (embedding rows and logits).
        block: longest input sequence (rows of the position embedding).
        layers: transformer blocks.
        heads: attention heads per block; must divide ``width``.
        width: model width ``d`` (embedding size).
        mlp_ratio: the MLP's hidden width is ``mlp_ratio * width``.
    """

    vocab_size: int = attrs.field(validator=attrs.validators.ge(1))
    block: int = attrs.field(validator=attrs.validators.ge(1))
    layers: int = attrs.field(default=2, validator=attrs.validators.ge(1))
    heads: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    width: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    mlp_ratio: int = attrs.field(default=4, validator=attrs.validators.ge(1))

    @width.validator
    def _check_width(self, attribute: attrs.Attribute, value: int) -> None:
        if value % self.heads:
            raise ValueError(f"width must be a multiple of heads ({self.heads}), got {value}")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position ``t`` sees positions ``<= t`` only.

    Args:
        width: model width ``d``.
        heads: number of heads (each of width ``d / heads``).
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, T, d] -> Tensor[b, T, d]``."""
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).split(d, dim=2))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)  # [b, heads, T, T]
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """``x + attn(ln1(x))``, then ``x + mlp(ln2(x))`` (pre-LayerNorm).

    Args:
        config: the model's shape.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_ratio * config.width
        self.ln1 = nn.LayerNorm(config.width)
        self.attn = CausalSelfAttention(config.width, config.heads)
        self.ln2 = nn.LayerNorm(config.width)
        self.mlp = nn.Sequential(nn.Linear(config.width, hidden), nn.GELU(), nn.Linear(hidden, config.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, T, d] -> Tensor[b, T, d]``."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A decoder-only transformer language model.

    Weights start as in nanoGPT: ``N(0, 0.02)`` for linear and embedding weights (the
    residual projections scaled by ``1 / sqrt(2 * layers)``), zero biases, unit LayerNorms.

    Args:
        config: the model's shape.
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.width)
        self.position = nn.Embedding(config.block, config.width)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size, bias=False)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                residual = name.endswith(("attn.proj.weight", "mlp.2.weight"))
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * config.layers) if residual else 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits at every position.

        Args:
            tokens: ``LongTensor[b, T]`` token ids, ``T <= config.block``.

        Returns:
            ``Tensor[b, T, vocab_size]``: row ``t`` predicts token ``t + 1`` from tokens ``<= t``.

        Raises:
            ValueError: ``T`` is longer than ``config.block``.
        """
        t = tokens.shape[-1]
        if t > self.config.block:
            raise ValueError(f"sequence length {t} exceeds the model's block ({self.config.block}); cut the inputs")
        x = self.token(tokens) + self.position(torch.arange(t, device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def sequence_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Mean next-token cross-entropy of each sequence (nats per token): the ``LossFn``.

    The training loss of the sequence settings and the target they attribute.

    Args:
        model: ``model(inputs [b, T]) -> logits [b, T, vocab]`` (a :class:`GPT`).
        batch: ``(inputs, targets)``, both ``LongTensor[b, T]``; ``targets[:, t]`` is the
            token after ``inputs[:, t]``.

    Returns:
        ``Tensor[b]``.
    """
    inputs, targets = batch[0], batch[1]
    logits = model(inputs)
    losses = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
    return losses.view(targets.shape).mean(dim=1)
