"""Explanations you can look at: each test example beside its strongest proponents and opponents.

>>> explanation = attrkit.explain(attributor, test_loader, train_loader, k=5)   # doctest: +SKIP
>>> explanation.to_html("explain.html")      # one self-contained page, any kind   # doctest: +SKIP
>>> explanation.to_png("explain.png")        # images only; needs matplotlib       # doctest: +SKIP
>>> print(explanation.to_text())                                                   # doctest: +SKIP

What an example shows (its *kind*) is ``"image"``, ``"text"`` or ``"table"``; ``kind="auto"``
decides from the first test input (the first tensor of a tuple batch, ``input_ids`` or
``pixel_values`` of a dict; see :mod:`~attrkit.explanations.items`):

- ``decode`` given, or an integer ``[T]`` input (token ids): ``"text"``;
- a floating ``[H, W]``, ``[C, H, W]`` or ``[H, W, C]`` input (``C`` in 1, 3, 4): ``"image"``;
- a floating ``[d]`` input: ``"table"``. Flat images (MNIST's ``[784]``) look the same, so
  pass ``kind="image"``: a flat input of ``s·s`` (grey) or ``3·s·s`` (colour) values is
  drawn as a square.

Images are drawn beside their neighbours with label and score; sentences are listed with
label and score; table rows are shown by the features that differ most from the test row.
"""

from __future__ import annotations

from attrkit.explanations.build import explain, top_k_of
from attrkit.explanations.explanation import Example, Explanation, TestExplanation
from attrkit.explanations.items import KINDS, infer_kind

__all__ = ["KINDS", "Example", "Explanation", "TestExplanation", "explain", "infer_kind", "top_k_of"]
