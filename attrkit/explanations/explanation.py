"""What an explanation holds: per test example, its strongest proponents and opponents, shown.

Values only; :mod:`~attrkit.explanations.build` makes them and the renderers
(:mod:`~attrkit.explanations.html`, :mod:`~attrkit.explanations.figure`,
:mod:`~attrkit.explanations.text`) turn them into a report.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import torch

__all__ = ["Example", "Explanation", "TestExplanation"]


@attrs.frozen(kw_only=True)
class Example:
    """One example as an explanation shows it.

    Attributes:
        index: its position in its loader (training or test).
        label: its class label, or ``None`` (no 0-dim integer label in the batch).
        data: what is drawn: an image ``Tensor[H, W]`` or ``[H, W, 3]`` in ``[0, 1]``
            (kind ``"image"``), the row ``Tensor[d]`` (``"table"``), the input as given (``"text"``).
        text: the decoded sentence (kind ``"text"``), else ``None``.
        score: its score for the test example it explains (``None`` for the test example).
    """

    index: int
    label: int | None
    data: torch.Tensor = attrs.field(repr=False)
    text: str | None = None
    score: float | None = None


@attrs.frozen(kw_only=True)
class TestExplanation:
    """One test example and the training examples that matter most to it.

    Attributes:
        test: the test example.
        prediction: the model's predicted class (argmax of a ``[b, C]`` output), or ``None``.
        proponents: the highest-scoring training examples, strongest first (positive scores:
            training on them lowers the test example's loss).
        opponents: the lowest-scoring, strongest (most negative) first.
    """

    __test__ = False  # not a pytest class

    test: Example
    prediction: int | None
    proponents: tuple[Example, ...]
    opponents: tuple[Example, ...]


@attrs.frozen(kw_only=True)
class Explanation:
    """Top-k proponents and opponents of test examples, ready to render.

    Attributes:
        kind: ``"image"``, ``"text"`` or ``"table"``.
        k: proponents (and opponents) per test example.
        targets: one :class:`TestExplanation` per test example, in loader order.
        names: feature names of a table's columns, or ``None``.
        class_names: the name of each class label, or ``None`` (labels shown as numbers).
        title: the report's heading.

    Example:
        >>> explanation = attrkit.explain(attributor, test_loader, train_loader, k=5)  # doctest: +SKIP
        >>> explanation.to_html("explain.html"); print(explanation.to_text())          # doctest: +SKIP
    """

    kind: str
    k: int
    targets: tuple[TestExplanation, ...]
    names: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    title: str = "Training data attribution"

    def label_name(self, label: int | None) -> str:
        """``label`` as shown: its class name when known, the number otherwise, ``"–"`` for none."""
        if label is None:
            return "–"
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    def to_html(self, path: str | Path | None = None) -> str:
        """One self-contained HTML page (images inline as PNG data URIs, no script, no link out).

        Args:
            path: where to write it (UTF-8); ``None`` writes nothing.

        Returns:
            The page.
        """
        from attrkit.explanations.html import render_html

        page = render_html(self)
        if path is not None:
            Path(path).write_text(page, encoding="utf-8")
        return page

    def to_png(self, path: str | Path, dpi: int = 80) -> Path:
        """Draw the test images beside their proponents and opponents (kind ``"image"`` only).

        One row per test example: the test image, then its ``k`` proponents, then its ``k``
        opponents, each titled with its score and label. Needs matplotlib.

        Returns:
            ``path``.

        Raises:
            ArgumentError: the explanation is not of images.
            ComponentUnavailableError: matplotlib is not installed (``pip install matplotlib``).
        """
        from attrkit.explanations.figure import render_png

        return render_png(self, Path(path), dpi)

    def to_text(self) -> str:
        """A plain-text report: each test example, then its proponents and opponents with scores."""
        from attrkit.explanations.text import render_text

        return render_text(self)
