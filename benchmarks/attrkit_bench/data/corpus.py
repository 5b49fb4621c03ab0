"""A tokenised corpus of documents, and its cut into fixed-length windows (sequence settings)."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from attrkit_bench.cache import fingerprint

__all__ = ["Corpus", "characters", "split_windows", "unigram_loss", "windows"]


@attrs.frozen(kw_only=True)
class Corpus:
    """Documents of token ids over one vocabulary.

    Attributes:
        documents: one ``LongTensor[length]`` per document, ids in ``[0, len(symbols))``.
        names: one name per document (a play, a chorale), for the report.
        symbols: what each id stands for (a character, a pitch name), for reading samples.
    """

    documents: tuple[torch.Tensor, ...] = attrs.field(repr=False)
    names: tuple[str, ...]
    symbols: tuple[str, ...] = attrs.field(repr=False)

    def __attrs_post_init__(self) -> None:
        if len(self.documents) != len(self.names):
            raise ValueError(
                f"a corpus needs one name per document: {len(self.documents)} documents, {len(self.names)} names"
            )
        for name, doc in zip(self.names, self.documents, strict=True):
            if doc.dtype != torch.int64 or doc.dim() != 1:
                raise ValueError(f"document {name!r} must be a LongTensor[length], got {doc.dtype} {tuple(doc.shape)}")
            if doc.numel() and not 0 <= int(doc.min()) <= int(doc.max()) < len(self.symbols):
                raise ValueError(f"document {name!r} holds ids outside [0, {len(self.symbols)}) (the vocabulary)")

    @property
    def vocab_size(self) -> int:
        """Number of distinct token ids."""
        return len(self.symbols)

    def decode(self, ids: torch.Tensor) -> str:
        """The symbols of token ``ids`` (``LongTensor[T]``) as text: joined directly when every
        symbol is one character (text), else with spaces (pitch names)."""
        separator = "" if all(len(s) == 1 for s in self.symbols) else " "
        return separator.join(self.symbols[i] for i in ids.tolist())

    def fingerprint(self) -> str:
        """SHA-256 (hex) of the tokens, the document lengths and the vocabulary: the corpus's cache key."""
        lengths = torch.tensor([d.numel() for d in self.documents], dtype=torch.int64)
        alphabet = torch.tensor(list("\0".join(self.symbols).encode()), dtype=torch.uint8)
        return fingerprint(torch.cat(self.documents), lengths, alphabet)


def characters(texts: Sequence[str], names: Sequence[str]) -> Corpus:
    """A character-level corpus: the vocabulary is the sorted set of characters of all ``texts``.

    Args:
        texts: one string per document.
        names: one name per document.
    """
    symbols = tuple(sorted(set("".join(texts))))
    index = {c: i for i, c in enumerate(symbols)}
    documents = tuple(torch.tensor([index[c] for c in text], dtype=torch.int64) for text in texts)
    return Corpus(documents=documents, names=tuple(names), symbols=symbols)


def windows(documents: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Every document cut into consecutive, non-overlapping windows of ``length`` tokens.

    A document's last ``len % length`` tokens are dropped; a window never spans two documents.

    Args:
        documents: ``LongTensor[len_d]`` each.
        length: tokens per window (``block + 1``: ``block`` inputs and the next token of each).

    Returns:
        ``LongTensor[n_windows, length]``, documents in order, each one's windows in order.
    """
    parts = [d[: d.numel() // length * length].view(-1, length) for d in documents]
    return torch.cat(parts) if parts else torch.empty(0, length, dtype=torch.int64)


def split_windows(
    corpus: Corpus, *, block: int, n_train: int, n_targets: int, held_out_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A seeded split of the documents, and seeded windows drawn from each side.

    ``round(held_out_fraction * n_documents)`` documents (at least one, at most all but
    one) are held out; every document is cut by :func:`windows` into ``block + 1``-token
    windows; ``n_train`` are drawn from the kept documents and ``n_targets`` from the held-out ones.

    Returns:
        ``(train, targets, held_out)``: ``LongTensor[n_train, block + 1]`` and
        ``LongTensor[n_targets, block + 1]`` windows, and the held-out documents' names.

    Raises:
        ValueError: the corpus has fewer than two documents, or a side has fewer windows
            than asked for (the message gives how many there are).
    """
    n_docs = len(corpus.documents)
    if n_docs < 2:
        raise ValueError(f"a sequence setting splits documents into train and held-out; the corpus has {n_docs}")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n_docs, generator=generator).tolist()
    n_held = min(n_docs - 1, max(1, round(held_out_fraction * n_docs)))
    held, kept = sorted(order[:n_held]), sorted(order[n_held:])
    drawn = []
    for field, side, docs, n in (("n_train", "training", kept, n_train), ("n_targets", "held-out", held, n_targets)):
        pool = windows([corpus.documents[i] for i in docs], block + 1)
        if pool.shape[0] < n:
            raise ValueError(f"{field}={n} but the {side} documents give only {pool.shape[0]} windows of "
                             f"block + 1 = {block + 1} tokens; lower {field} or block")
        drawn.append(pool[torch.randperm(pool.shape[0], generator=generator)[:n]])
    return drawn[0], drawn[1], [corpus.names[i] for i in held]


def unigram_loss(train: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats per token) of the ``targets`` tokens under the ``train`` tokens' add-one frequencies.

    What a model that ignores context reaches: the baseline a language model must beat.

    Args:
        train: ``LongTensor[...]`` token ids counted.
        targets: ``LongTensor[...]`` token ids scored.
        vocab_size: number of token ids.
    """
    counts = torch.bincount(train.flatten(), minlength=vocab_size).double() + 1
    return float(-(counts / counts.sum()).log()[targets.flatten()].mean())
