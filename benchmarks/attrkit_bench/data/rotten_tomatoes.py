"""Rotten Tomatoes review sentences with human sentiment scores, from the ``vaderSentiment`` sdist.

VADER's source distribution (``vaderSentiment==3.3.2``) ships the ICWSM 2014 paper's
evaluation data as a nested archive, ``additional_resources/hutto_ICWSM_2014.tar.gz``; its
``movieReviewSnippets_GroundTruth.txt`` holds 10,605 sentences of Rotten Tomatoes reviews
(Pang and Lee's snippets), each with the mean of 20 human sentiment ratings on -4..+4, as
tab-separated ``id``, ``score``, ``sentence`` lines. The label is the score's sign (1
positive, 0 negative); the 37 sentences scored exactly 0 are dropped, leaving 10,568.

Nothing is downloaded at run time. The sdist is fetched once, at install time, with

    pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d ~/.cache/attrkit

into ``$ATTRKIT_DATA`` (default ``~/.cache/attrkit``), and read in memory with
:mod:`tarfile` (nothing is unpacked, the package is never installed or imported).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import attrs
import torch

__all__ = [
    "CLASSES", "INNER_ARCHIVE", "SDIST", "SNIPPETS", "MissingDataError", "Reviews", "data_dir", "download_command",
    "load_rotten_tomatoes", "parse_snippets", "read_snippets", "sdist_path",
]

#: The source distribution holding the data.
SDIST = "vaderSentiment-3.3.2.tar.gz"
#: The nested archive inside the sdist (path below the sdist's top folder).
INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
#: The file of the nested archive with the movie review sentences (path below its top folder).
SNIPPETS = "movieReviewSnippets_GroundTruth.txt"
#: Label names: ``CLASSES[label]``.
CLASSES = ("negative", "positive")


class MissingDataError(ImportError):
    """The sdist holding the data is not in :func:`data_dir`; the message says how to fetch it.

    An :class:`ImportError` (the data comes with an install step, as the other settings'
    packages), so ``attrkit bench`` prints the message and exits with status 2.
    """


def data_dir() -> Path:
    """``$ATTRKIT_DATA``, defaulting to ``~/.cache/attrkit``: where the sdist is looked for."""
    return Path(os.environ.get("ATTRKIT_DATA") or Path.home() / ".cache" / "attrkit").expanduser()


def download_command(folder: Path | None = None) -> str:
    """The exact command that fetches the sdist into ``folder`` (default :func:`data_dir`)."""
    return f"pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d {folder or data_dir()}"


def sdist_path() -> Path:
    """The sdist's path in :func:`data_dir`.

    Raises:
        MissingDataError: it is not there; the message gives the download command.
    """
    path = data_dir() / SDIST
    if not path.is_file():
        raise MissingDataError(
            f"the minilm-sentiment setting reads Rotten Tomatoes sentences from {SDIST}, not found in "
            f"{path.parent} ($ATTRKIT_DATA, default ~/.cache/attrkit); fetch it once with:\n  {download_command()}"
        )
    return path


def _member(archive: tarfile.TarFile, suffix: str, what: str) -> bytes:
    """The bytes of the one regular file of ``archive`` whose path ends with ``/suffix`` (or is ``suffix``)."""
    for info in archive.getmembers():
        if info.isfile() and (info.name == suffix or info.name.endswith("/" + suffix)):
            handle = archive.extractfile(info)
            assert handle is not None  # a regular file
            return handle.read()
    raise ValueError(f"{what} holds no {suffix}")


def read_snippets(sdist: Path) -> bytes:
    """The bytes of :data:`SNIPPETS`, read from the nested archive of ``sdist`` in memory."""
    with tarfile.open(sdist, "r:*") as outer:
        inner = _member(outer, INNER_ARCHIVE, str(sdist))
    with tarfile.open(fileobj=io.BytesIO(inner), mode="r:*") as archive:
        return _member(archive, SNIPPETS, f"{sdist}:{INNER_ARCHIVE}")


@attrs.frozen(kw_only=True)
class Reviews:
    """Labelled sentences.

    Attributes:
        sentences: the text of each sentence.
        scores: ``Tensor[n]`` float64, the mean human rating (-4..+4, never 0).
        labels: ``LongTensor[n]``, 1 where the score is positive, 0 where negative.
        ids: ``LongTensor[n]``, each sentence's id in the file (1-based line ids).
    """

    sentences: tuple[str, ...] = attrs.field(repr=False)
    scores: torch.Tensor = attrs.field(repr=False)
    labels: torch.Tensor = attrs.field(repr=False)
    ids: torch.Tensor = attrs.field(repr=False)

    def __len__(self) -> int:
        return len(self.sentences)


def parse_snippets(data: bytes) -> Reviews:
    """Parse ``id<TAB>score<TAB>sentence`` lines (UTF-8, any line ending); score-0 lines are dropped.

    Raises:
        ValueError: a non-empty line that is not three tab-separated fields with an integer
            id and a numeric score (the message gives its line number).
    """
    sentences, scores, ids = [], [], []
    for number, line in enumerate(data.decode("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3:
                raise ValueError(f"{len(fields)} tab-separated fields")
            ident, score, sentence = int(fields[0]), float(fields[1]), fields[2].strip()
        except ValueError as exc:
            raise ValueError(f"{SNIPPETS} line {number} is not 'id<TAB>score<TAB>sentence': {line[:80]!r} "
                             f"({exc})") from None
        if score != 0:
            sentences.append(sentence)
            scores.append(score)
            ids.append(ident)
    score_tensor = torch.tensor(scores, dtype=torch.float64)
    return Reviews(sentences=tuple(sentences), scores=score_tensor, labels=(score_tensor > 0).long(),
                   ids=torch.tensor(ids, dtype=torch.int64))


def load_rotten_tomatoes(sdist: Path | None = None) -> Reviews:
    """The 10,568 labelled Rotten Tomatoes sentences (score 0 dropped), in file order.

    Args:
        sdist: the ``vaderSentiment-3.3.2.tar.gz`` to read; default :func:`sdist_path`.

    Raises:
        MissingDataError: ``sdist`` is not given and not in :func:`data_dir`.
    """
    return parse_snippets(read_snippets(sdist if sdist is not None else sdist_path()))
