"""Images of an explanation: a PNG encoder of pixel tensors (no dependency) and the matplotlib figure."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from attrkit.errors import ArgumentError, ComponentUnavailableError

if TYPE_CHECKING:
    from attrkit.explanations.explanation import Example, Explanation

__all__ = ["png_bytes", "render_png"]

#: Inches per image cell of the figure (width, height: the title takes two lines).
_CELL = (1.15, 1.5)
#: Inches above the first row: the column headings, then the first row's titles.
_HEADER = 0.6
_PROPONENT, _OPPONENT = "#1a7f37", "#c62828"


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_bytes(pixels: torch.Tensor, scale: int = 1) -> bytes:
    """``pixels`` (``Tensor[H, W]`` grey or ``[H, W, 3]`` colour, in ``[0, 1]``) as a PNG file's bytes.

    Args:
        pixels: the image; values are clamped to ``[0, 1]`` and rounded to 8 bits.
        scale: each pixel becomes a ``scale × scale`` block (sharp enlargement).
    """
    image = (pixels.detach().cpu().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if scale > 1:
        image = image.repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    height, width = image.shape[:2]
    colour = 0 if image.dim() == 2 else 2
    rows = image.reshape(height, -1).numpy()
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _score(score: float | None) -> str:
    """Three significant digits; thousands written out (``+6,460``), not as ``+6.46e+03``."""
    if score is None:
        return ""
    return f"{score:+,.0f}" if 1e3 <= abs(score) < 1e7 else f"{score:+.3g}"


def _draw(axis: Any, example: Example, title: str, colour: str) -> None:
    grey = example.data.dim() == 2
    axis.imshow(example.data.numpy(), cmap="gray" if grey else None, vmin=0, vmax=1, interpolation="nearest")
    axis.set_title(title, fontsize=8, color=colour)
    axis.set_xticks([])
    axis.set_yticks([])
    for spine in axis.spines.values():
        spine.set_color(colour)


def render_png(explanation: Explanation, path: Path, dpi: int = 80) -> Path:
    """Write the explanation's figure to ``path`` (see :meth:`Explanation.to_png`).

    Raises:
        ArgumentError: the explanation is not of images.
        ComponentUnavailableError: matplotlib is missing.
    """
    if explanation.kind != "image":
        raise ArgumentError(f"to_png draws images; this explanation is of kind {explanation.kind!r}: "
                            "use to_html or to_text")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ComponentUnavailableError("to_png needs matplotlib: pip install matplotlib "
                                        "(or pip install attrkit[bench])") from None
    rows, k = max(len(explanation.targets), 1), explanation.k
    columns = 2 * k + 1
    ratios = [1.0, 0.2, *[1.0] * k, 0.2, *[1.0] * k]
    height = _CELL[1] * rows + _HEADER
    figure = Figure(figsize=(_CELL[0] * (columns + 0.4), height), dpi=dpi)
    grid = figure.add_gridspec(rows, len(ratios), width_ratios=ratios, left=0.01, right=0.99, bottom=0.01,
                               top=1 - _HEADER / height, wspace=0.08, hspace=0.45)
    name = explanation.label_name
    for r, target in enumerate(explanation.targets):
        test = target.test
        predicted = "" if target.prediction is None else f"\npredicted {name(target.prediction)}"
        label = "" if test.label is None else f", label {name(test.label)}"
        _draw(figure.add_subplot(grid[r, 0]), test, f"test #{test.index}{label}{predicted}", "black")
        for offset, side, colour in ((2, target.proponents, _PROPONENT), (3 + k, target.opponents, _OPPONENT)):
            for j, example in enumerate(side):
                label = "" if example.label is None else f", label {name(example.label)}"
                title = f"{_score(example.score)}\n#{example.index}{label}"
                _draw(figure.add_subplot(grid[r, offset + j]), example, title, colour)
    top = 1 - 0.08 / height
    left, right = (1.2 + k / 2) / (columns + 0.4), (1.4 + 1.5 * k) / (columns + 0.4)
    for x, heading, colour in ((left, f"proponents (highest scores, top {k})", _PROPONENT),
                               (right, f"opponents (lowest scores, top {k})", _OPPONENT)):
        figure.text(x, top, heading, ha="center", va="top", color=colour, fontsize=10)
    figure.savefig(path, format="png", dpi=dpi)
    return path
