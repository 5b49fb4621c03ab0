"""An explanation as one self-contained HTML page: inline CSS, images as PNG data URIs, no script, no link out."""

from __future__ import annotations

import base64
from html import escape
from typing import TYPE_CHECKING

import torch

from attrkit.explanations.figure import png_bytes
from attrkit.explanations.items import differences

if TYPE_CHECKING:
    from attrkit.explanations.explanation import Example, Explanation, TestExplanation

__all__ = ["render_html"]

#: Enlargement of image pixels in the page (28 × 28 digits become 84 × 84).
_SCALE = 3
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1f2328; }
section { border-top: 1px solid #d0d7de; padding-top: .5em; margin-top: 1em; }
table { border-collapse: collapse; margin: .3em 0 1em; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: left; vertical-align: top; }
td.score { font-family: ui-monospace, monospace; text-align: right; }
h3.pro { color: #1a7f37; } h3.opp { color: #c62828; }
pre { margin: 0; white-space: pre-wrap; font: 13px ui-monospace, monospace; max-width: 60em; }
img { image-rendering: pixelated; }
"""


def _image(example: Example) -> str:
    data = base64.b64encode(png_bytes(example.data, _SCALE)).decode("ascii")
    height, width = example.data.shape[:2]
    size = f'width="{width * _SCALE}" height="{height * _SCALE}"'
    return f'<img src="data:image/png;base64,{data}" {size} alt="example {example.index}">'


def _features(pairs: list[tuple[str, float, float]], test_column: bool) -> str:
    cells = "".join(f"<tr><td>{escape(name)}</td><td class=\"score\">{value:.4g}</td>"
                    + (f"<td class=\"score\">{test:.4g}</td>" if test_column else "") + "</tr>"
                    for name, value, test in pairs)
    head = "<tr><th>feature</th><th>value</th>" + ("<th>test</th>" if test_column else "") + "</tr>"
    return f"<table>{head}{cells}</table>" if pairs else "<em>the same as the test row</em>"


def _item(explanation: Explanation, example: Example, test: Example) -> str:
    """What an example looks like in the page (``test``: the test example it is compared with)."""
    if explanation.kind == "image":
        return _image(example)
    if explanation.kind == "text":
        return f"<pre>{escape(example.text or '')}</pre>"
    if example is test:
        nonzero = differences(torch.zeros_like(example.data), example.data, explanation.names, example.data.numel())
        values = _features(nonzero, test_column=False) if nonzero else "<em>every feature is 0</em>"
        return f"<details open><summary>{len(nonzero)} non-zero features</summary>{values}</details>"
    return _features(differences(test.data, example.data, explanation.names), test_column=True)


def _side(explanation: Explanation, target: TestExplanation, opponents: bool) -> str:
    examples = target.opponents if opponents else target.proponents
    what = ("Opponents: the lowest scores (training on them raises the test loss)" if opponents
            else "Proponents: the highest scores (training on them lowers the test loss)")
    shown = "features that differ most from the test row" if explanation.kind == "table" else "example"
    rows = "".join(
        f"<tr><td>{rank}</td><td>{e.index}</td><td class=\"score\">{e.score:+.4g}</td>"
        f"<td>{escape(explanation.label_name(e.label))}</td><td>{_item(explanation, e, target.test)}</td></tr>"
        for rank, e in enumerate(examples, 1)
    )
    head = f"<tr><th>rank</th><th>train #</th><th>score</th><th>label</th><th>{shown}</th></tr>"
    return f'<h3 class="{"opp" if opponents else "pro"}">{what}</h3><table>{head}{rows}</table>'


def _target(explanation: Explanation, target: TestExplanation) -> str:
    test = target.test
    facts = [f"label {escape(explanation.label_name(test.label))}"] if test.label is not None else []
    if target.prediction is not None:
        facts.append(f"predicted {escape(explanation.label_name(target.prediction))}")
    heading = f"Test example {test.index}" + (f": {', '.join(facts)}" if facts else "")
    return (f'<section id="test-{test.index}"><h2>{heading}</h2>'
            f"<div>{_item(explanation, test, test)}</div>"
            f"{_side(explanation, target, False)}{_side(explanation, target, True)}</section>")


def render_html(explanation: Explanation) -> str:
    """The page of ``explanation`` (see :meth:`Explanation.to_html`)."""
    title = escape(explanation.title)
    intro = (f"<p>{len(explanation.targets)} test examples ({explanation.kind}), each with its {explanation.k} "
             "strongest proponents and opponents. A score &gt; 0 means the training example is a proponent: "
             "training on it lowers the test example's loss.</p>")
    body = "".join(_target(explanation, t) for t in explanation.targets)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_STYLE}</style></head>\n<body><h1>{title}</h1>{intro}\n{body}\n</body></html>\n")
