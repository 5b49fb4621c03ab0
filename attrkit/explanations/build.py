"""``explain``: a fitted attributor and its data turned into an :class:`Explanation`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from attrkit.errors import ArgumentError, ArgumentTypeError
from attrkit.explanations.explanation import Example, Explanation, TestExplanation
from attrkit.explanations.items import KINDS, LABEL_KEYS, as_image, gather, infer_kind, input_of, label_of, text_of
from attrkit.selection import TopK

__all__ = ["explain", "top_k_of"]


def top_k_of(attributor: Any, test: Iterable[Any], k: int) -> TopK:
    """``attributor.top_k(test, k)``; for a method without ``top_k`` (RPS), the top-k of ``attribute``.

    Raises:
        ArgumentError: ``k`` larger than the number of training examples (from ``top_k``).
    """
    if callable(getattr(attributor, "top_k", None)):
        return attributor.top_k(test, k)
    scores = attributor.attribute(test)
    if not 1 <= k <= scores.shape[1]:
        raise ArgumentError(f"k must be in 1..{scores.shape[1]} (the training examples), got {k}")
    high, low = scores.topk(k, dim=1), scores.topk(k, dim=1, largest=False)
    return TopK(proponent_scores=high.values, proponents=high.indices, opponent_scores=low.values,
                opponents=low.indices)


def _predictions(attributor: Any, items: list[Any]) -> list[int | None]:
    """The model's argmax class per test item: ``model(stacked inputs)``, or for dict items
    ``model(**stacked entries but the labels)`` (the Hugging Face convention), giving ``[n, C]``
    logits (a tensor, or an output with ``.logits``); ``None`` each where the model is not called so."""
    model = getattr(getattr(attributor, "task", None), "model", None)
    if not isinstance(model, torch.nn.Module) or not items:
        return [None] * len(items)
    first = next(model.parameters(), None)
    device = first.device if first is not None else "cpu"
    try:
        with torch.no_grad():
            if isinstance(items[0], Mapping):
                keys = [k for k in items[0] if k not in LABEL_KEYS and isinstance(items[0][k], torch.Tensor)]
                out = model(**{k: torch.stack([item[k] for item in items]).to(device) for k in keys})
            else:
                out = model(torch.stack([input_of(item) for item in items]).to(device))
    except (RuntimeError, TypeError, ValueError, IndexError):  # a model not called as model(x): no predictions
        return [None] * len(items)
    out = out.get("logits") if isinstance(out, Mapping) else getattr(out, "logits", out)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(items):
        return [None] * len(items)
    return [int(c) for c in out.argmax(dim=1).tolist()]


def _shown(item: Any, index: int, kind: str, decode: Callable[[Any], str] | None, score: float | None) -> Example:
    x = input_of(item)
    data = as_image(x) if kind == "image" else x
    text = text_of(item, decode) if kind == "text" else None
    return Example(index=index, label=label_of(item), data=data, text=text, score=score)


def explain(
    attributor: Any,
    test: Iterable[Any],
    train: Iterable[Any],
    k: int = 5,
    kind: str = "auto",
    names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    decode: Callable[[Any], str] | None = None,
    title: str = "Training data attribution",
) -> Explanation:
    """Each test example's ``k`` strongest proponents and opponents, with their scores and data.

    Scores come from ``attributor.top_k(test, k)`` (streamed; methods without ``top_k``,
    such as RPS, from ``attribute``). The examples are read back from the loaders by
    position in one pass each, so any fixed-order loader works.

    Args:
        attributor: a fitted attributor (not a group attributor: groups are no examples).
        test: the fixed-order test batches to explain (every example in it).
        train: the fixed-order training batches the attributor was fitted on.
        k: proponents and opponents per test example, ``1..n_train``.
        kind: ``"image"``, ``"text"``, ``"table"`` or ``"auto"``: ``"text"`` when ``decode``
            is given, else inferred from the first test input's dtype and shape (see
            :func:`~attrkit.explanations.items.infer_kind`; flat images need ``"image"``).
        names: a table's feature names, one per column of its input ``[d]``.
        class_names: the name of each class label (``class_names[label]``).
        decode: ``decode(item) -> str``: a text example's sentence, where ``item`` is the
            example's batch with one row taken (a tuple ``(input_ids[T], ...)``, a dict, ...).
            Without it, token ids are shown.
        title: the report's heading.

    Returns:
        The :class:`Explanation`; ``.to_html(path)``, ``.to_png(path)`` (images), ``.to_text()``.

    Raises:
        ArgumentError: ``k`` out of range, an unknown ``kind``, ``names`` of the wrong
            length, a group attributor, or a loader too short for the scores.
        ArgumentTypeError: ``k`` is not an int.
    """
    if not isinstance(k, int) or isinstance(k, bool):
        raise ArgumentTypeError(f"k must be an int, got {type(k).__name__}")
    if kind not in (*KINDS, "auto"):
        raise ArgumentError(f"kind must be 'auto' or one of {', '.join(KINDS)}, got {kind!r}")
    groups = getattr(attributor, "groups", None)
    if isinstance(groups, torch.Tensor) and not torch.equal(groups, torch.arange(groups.numel())):
        raise ArgumentError("explain shows training examples; this attributor scores groups of them "
                            "(attributor.groups): explain with a spec without a grouper")
    top = top_k_of(attributor, test, k)
    n_test = top.proponents.shape[0]
    tests = gather(test, range(n_test), "test")
    trains = gather(train, torch.cat([top.proponents, top.opponents]).flatten().tolist(), "train")
    if kind == "auto":
        kind = "text" if decode is not None else infer_kind(input_of(tests[0])) if n_test else "table"
    width = input_of(tests[0]).numel() if n_test else 0
    if kind == "table" and names is not None and len(names) != width:
        raise ArgumentError(f"names must name each of the {width} features of a table row, got {len(names)} names")
    predictions = _predictions(attributor, [tests[t] for t in range(n_test)])

    def side(indices: torch.Tensor, scores: torch.Tensor) -> tuple[Example, ...]:
        return tuple(_shown(trains[i], i, kind, decode, s) for i, s in zip(indices.tolist(), scores.tolist())
                     if i >= 0)

    targets = tuple(
        TestExplanation(test=_shown(tests[t], t, kind, decode, None), prediction=predictions[t],
                        proponents=side(top.proponents[t], top.proponent_scores[t]),
                        opponents=side(top.opponents[t], top.opponent_scores[t]))
        for t in range(n_test)
    )
    return Explanation(kind=kind, k=k, targets=targets, names=None if names is None else tuple(names),
                       class_names=None if class_names is None else tuple(class_names), title=title)
