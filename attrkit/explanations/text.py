"""An explanation as plain text: each test example, then its proponents and opponents with scores."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from attrkit.explanations.items import differences

if TYPE_CHECKING:
    from attrkit.explanations.explanation import Example, Explanation

__all__ = ["render_text"]

#: Characters of a sentence shown per line (longer ones are cut with "…").
_WIDTH = 100


def _one_line(text: str) -> str:
    line = text.replace("\r", "").replace("\n", " ⏎ ")
    return line if len(line) <= _WIDTH else line[: _WIDTH - 1] + "…"


def _shown(explanation: Explanation, example: Example, test: Example) -> str:
    """The example in one line: its sentence, its image's size, or how its row differs from the test row."""
    if explanation.kind == "text":
        return _one_line(example.text or "")
    if explanation.kind == "image":
        return "image " + "x".join(str(n) for n in example.data.shape)
    if example is test:
        pairs = differences(torch.zeros_like(example.data), example.data, explanation.names, 8)
        return "non-zero: " + ", ".join(f"{name}={value:.3g}" for name, value, _ in pairs)
    pairs = differences(test.data, example.data, explanation.names)
    return "differs in: " + ", ".join(f"{name}={value:.3g} (test {other:.3g})" for name, value, other in pairs)


def render_text(explanation: Explanation) -> str:
    """The report (see :meth:`Explanation.to_text`)."""
    name = explanation.label_name
    lines = [explanation.title, "score > 0: a proponent (training on it lowers the test example's loss)", ""]
    for target in explanation.targets:
        test = target.test
        facts = [f"label {name(test.label)}"] if test.label is not None else []
        if target.prediction is not None:
            facts.append(f"predicted {name(target.prediction)}")
        lines.append(f"test #{test.index}" + (f" ({', '.join(facts)})" if facts else "") + ":")
        lines.append(f"  {_shown(explanation, test, test)}")
        for heading, side in (("proponents", target.proponents), ("opponents", target.opponents)):
            lines.append(f"  {heading}:")
            for example in side:
                label = "" if example.label is None else f" [{name(example.label)}]"
                lines.append(f"    {example.score:+10.4g}  train #{example.index}{label}  "
                             f"{_shown(explanation, example, test)}")
        lines.append("")
    return "\n".join(lines)
