"""``attrkit bench SETTING --explain N``: the first method's explanation of the first ``N`` targets.

The method is fitted on the setting's training set and :func:`attrkit.explain` shows each
of the first ``N`` targets beside its ``k`` strongest proponents and opponents, as the
setting's :attr:`~attrkit_bench.problem.Problem.display` says (images for the MNIST and
Fashion-MNIST settings, table rows with feature names for Adult, text windows for the
sequence settings). Written: one HTML page, and for images a PNG figure.
"""

from __future__ import annotations

from pathlib import Path

import attrs

import attrkit
from attrkit import Explanation, Registry
from attrkit_bench.problem import Problem
from attrkit_bench.runner.choices import MethodChoice

__all__ = ["EXPLAIN_K", "explain_targets", "write_explanation"]

#: Proponents and opponents shown per target.
EXPLAIN_K = 5


def explain_targets(problem: Problem, choice: MethodChoice, n: int, registry: Registry | None = None) -> Explanation:
    """``choice`` fitted on ``problem`` and its explanation of the first ``n`` targets.

    Raises:
        ValueError: ``n`` is not in ``1..n_targets``, or the method asks for members the
            setting cannot produce.
    """
    targets = problem.first_targets(n).targets
    states = None
    if choice.members is not None:
        if problem.members is None:
            raise ValueError(f"method {choice.label!r} asks for members; setting {problem.name!r} produces none")
        states = problem.members(*choice.members)
    task = attrs.evolve(problem.task(), checkpoints=states)
    attributor = attrkit.compose(choice.spec, task, registry or attrkit.default_registry()).fit(problem.train)
    title = f"{problem.name}: {choice.label}, the first {n} targets"
    return attrkit.explain(attributor, targets, problem.train, k=EXPLAIN_K, title=title, **problem.display)


def write_explanation(explanation: Explanation, out_dir: Path, stem: str) -> tuple[list[Path], str | None]:
    """Write ``{out_dir}/{stem}-explain.html`` and, for images, ``{stem}-explain.png``.

    Returns:
        ``(paths written, why no PNG was drawn or None)``: matplotlib may be missing.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / f"{stem}-explain.html"
    explanation.to_html(html)
    if explanation.kind != "image":
        return [html], None
    try:
        return [html, explanation.to_png(out_dir / f"{stem}-explain.png")], None
    except ImportError as exc:
        return [html], str(exc)
