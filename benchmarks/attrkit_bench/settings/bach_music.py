"""Setting ``bach-music``: a small music transformer on Bach's four-part chorales, LDS ground truth.

Data: the four-part chorales of ``music21``'s corpus (:func:`~attrkit_bench.data.chorales.load_chorales`:
329 distinct chorales on a sixteenth-note grid, voices interleaved S A T B per step; 281,424
tokens over 47 symbols, rest and MIDI pitches C2-A5; parsed once, about 40 s, and cached).
49 chorales (15 %, seeded) are held out. Examples: 3000 windows of 65 tokens drawn from the
other 280 chorales (inputs 64 tokens = 16 sixteenth steps of four voices, labels the next
token of each); targets: 200 windows drawn from the held-out chorales, whose loss is the
loss of held-out continuations. Model: :class:`~attrkit_bench.models.gpt.GPT` with 2 blocks,
4 heads, width 64, block 64 (110,208 parameters), AdamW (lr 3e-3 with 20 warm-up steps
and cosine decay to 3e-4, weight decay 0.01, batch 32, 8 epochs, seeded, one thread) on the
mean next-token cross-entropy, which is also the attributed target. LDS ground truth: 100
models retrained on seeded halves (the first 50 are ensemble members, the last 50 score LDS).

Measured (one thread, torch 2.13 CPU): the main model reaches a held-out loss of 0.85
nats/token (perplexity 2.34; the training windows' unigram baseline: 3.37, perplexity 29;
held notes repeat their pitch, so much of the stream is predictable) and trains in about
20-25 s on an idle core (0.86-1.04 ms per window, forward, backward and step, measured),
each retrained model in 10-13 s, so the ground truth costs about 20 core-minutes; on a machine loaded 3-4x these
were 61 s and 23 s.
"""

from __future__ import annotations

from attrkit_bench.data.chorales import load_chorales
from attrkit_bench.settings.sequence import DEFAULT_METHODS, SequenceConfig, SequenceSetting
from attrkit_bench.training.adamw import AdamWRecipe

__all__ = ["DECLARATION", "FULL", "QUICK", "SETTING", "prepare"]

#: The full benchmark.
FULL = SequenceConfig(n_train=3000, recipe=AdamWRecipe(epochs=8))
#: Same code path, every size shrunk: for tests and smoke runs.
QUICK = SequenceConfig(n_train=512, n_targets=32, n_models=8, block=32, layers=1, heads=2, width=32,
                       recipe=AdamWRecipe(epochs=4, lr=1e-2, warmup=4))

DECLARATION = SequenceSetting(
    name="bach-music",
    load=load_chorales,
    full=FULL,
    quick=QUICK,
    description="music transformer (GPT, 2 blocks, width 64) on Bach's four-part chorales (music21's corpus), "
    "loss of held-out chorales' windows, LDS",
    size="3000 train / 200 held-out windows of 64 tokens, GPT = 110,208 params, held-out loss 0.85 (unigram 3.37) "
    "nats/token; main model ~20-25 s, each retrained model on a half ~10-13 s (1 idle thread), i.e. ~20 min for 100",
    default_methods=DEFAULT_METHODS,
    source="Bach chorales (music21 corpus, four-part ones)",
)
#: ``prepare(cache_dir, config=FULL, corpus=None) -> Problem`` (see :meth:`SequenceSetting.prepare`).
prepare = DECLARATION.prepare
SETTING = DECLARATION.setting()
