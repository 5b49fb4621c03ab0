"""Bach's four-part chorales as token sequences, from the corpus inside ``music21``.

Tokenisation (as Music Transformer's JSB Chorales setting): each chorale is laid on a grid
of sixteenth notes; at every step each voice (soprano, alto, tenor, bass, in that order)
gives the MIDI pitch sounding there, or a rest; the grid is read time step by time step,
``S A T B S A T B ...``, so a held note repeats its pitch and a quarter note fills four
steps. A chord inside one voice gives its highest pitch; notes are quantised to the nearest
step (grace notes, of no length, vanish). Only chorales with exactly four parts are kept
(the ones with trumpets, timpani or a continuo part are skipped), each once (22 repeat an
earlier one note for note): 329 of the 371 that ``music21.corpus.chorales.Iterator()``
yields, 281,424 tokens over 47 symbols (music21 10.5).

Parsing takes about 0.1 s per chorale, so the grids are cached in one file of the setting's
cache folder, keyed by the music21 version and this tokenisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from attrkit.plugin import progress
from attrkit_bench.cache import load_or_create, recipe_key
from attrkit_bench.data.corpus import Corpus

__all__ = [
    "REST", "STEP", "VOICES", "chorale_grid", "chorale_grids", "drop_repeats", "grid_corpus", "load_chorales",
    "pitch_name",
]

#: Grid step in quarter notes (a sixteenth note).
STEP = 0.25
#: Voices of a chorale, in part order and token order.
VOICES = 4
#: The grid value of a rest (MIDI pitches are 0-127).
REST = -1
_NAMES = ("C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B")


def pitch_name(midi: int) -> str:
    """``"C4"`` for MIDI 60, ``"rest"`` for :data:`REST`."""
    return "rest" if midi == REST else f"{_NAMES[midi % 12]}{midi // 12 - 1}"


def chorale_grid(score: Any) -> torch.Tensor:
    """One four-part score on the sixteenth-note grid.

    Args:
        score: a ``music21.stream.Score`` with exactly :data:`VOICES` parts (S, A, T, B).

    Returns:
        ``LongTensor[steps, 4]``: MIDI pitch of each voice at each step, :data:`REST` where silent;
        ``steps`` covers the score's full length.

    Raises:
        ValueError: the score does not have four parts.
    """
    parts = list(score.parts)
    if len(parts) != VOICES:
        raise ValueError(f"a chorale grid needs {VOICES} parts (S, A, T, B), got {len(parts)}")
    steps = round(float(score.highestTime) / STEP)
    grid = torch.full((steps, VOICES), REST, dtype=torch.int64)
    for voice, part in enumerate(parts):
        for element in part.flatten().notes:
            start = round(float(element.offset) / STEP)
            stop = round(float(element.offset + element.quarterLength) / STEP)
            grid[start:stop, voice] = max(p.midi for p in element.pitches)
    return grid


def chorale_grids() -> tuple[list[str], list[torch.Tensor]]:
    """Parse every four-part chorale of music21's corpus (slow: about a minute).

    A chorale whose grid equals one already kept is skipped (the corpus repeats some
    chorales note for note), so no held-out chorale has a copy among the training ones.

    Returns:
        ``(names, grids)``: names ``"NNN title"`` (``NNN`` the chorale's Riemenschneider
        number, the iterator's order) and one ``LongTensor[steps, 4]`` grid each.

    Raises:
        ImportError: ``music21`` is not installed.
    """
    try:
        from music21.corpus.chorales import Iterator
    except ImportError as exc:
        raise ImportError('the bach-music setting needs music21: pip install music21') from exc
    names, grids = [], []
    chorales = Iterator()
    for number, score in enumerate(progress(chorales, desc="parsing Bach chorales", total=len(chorales)), start=1):
        if len(score.parts) == VOICES:
            names.append(f"{number:03d} {score.metadata.title}")
            grids.append(chorale_grid(score))
    return drop_repeats(names, grids)


def drop_repeats(names: list[str], grids: list[torch.Tensor]) -> tuple[list[str], list[torch.Tensor]]:
    """The chorales whose grid differs from every earlier one's, in order (the first of equals is kept).

    Args:
        names: one name per chorale.
        grids: ``LongTensor[steps, 4]`` each.
    """
    seen: set[tuple[int, ...]] = set()
    kept_names, kept_grids = [], []
    for name, grid in zip(names, grids, strict=True):
        notes = tuple(grid.flatten().tolist())
        if notes not in seen:
            seen.add(notes)
            kept_names.append(name)
            kept_grids.append(grid)
    return kept_names, kept_grids


def grid_corpus(names: list[str], grids: list[torch.Tensor]) -> Corpus:
    """Chorale grids as a corpus: each grid read row by row (S A T B per step).

    The vocabulary is the sorted set of grid values (rest first, then pitches upward).

    Args:
        names: one name per chorale.
        grids: ``LongTensor[steps, 4]`` each.
    """
    values = torch.unique(torch.cat([g.flatten() for g in grids]))
    documents = tuple(torch.searchsorted(values, g.flatten()) for g in grids)
    return Corpus(documents=documents, names=tuple(names), symbols=tuple(pitch_name(int(v)) for v in values))


def load_chorales(cache_dir: Path) -> Corpus:
    """The four-part Bach chorales as a corpus, parsed once and cached in ``cache_dir``.

    Raises:
        ImportError: ``music21`` is not installed.
    """
    try:
        import music21
    except ImportError as exc:
        raise ImportError('the bach-music setting needs music21: pip install music21') from exc
    key = recipe_key({"data": "music21 chorales", "music21": music21.__version__, "step": STEP, "voices": VOICES,
                      "duplicates": "dropped"})

    def parse() -> dict[str, Any]:
        names, grids = chorale_grids()
        return {"names": names, "grids": grids}

    cached, _ = load_or_create(cache_dir / f"bach-chorales-{key}.pt", parse)
    return grid_corpus(list(cached["names"]), list(cached["grids"]))
