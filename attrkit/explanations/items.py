"""Examples read back from a fixed-order loader, and how each kind of example is shown.

An *item* is one example: its batch's structure with one row taken from every tensor (a
tensor, a tuple/list or a dict). Its *input* and *label* are read by convention:

- a tuple/list: the input is its first element; the label is its second when that is a
  0-dim integer tensor (a class), else there is none (e.g. a sequence's next tokens);
- a dict: the input is the first of ``input_ids``, ``pixel_values``, ``inputs``, ``input``,
  ``x``, ``image``, ``features`` present (else its first value); the label the first 0-dim
  integer tensor of ``labels``, ``label``, ``y``, ``target``, ``targets``;
- a tensor: the input itself, no label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from attrkit.data import batch_size
from attrkit.errors import ArgumentError

__all__ = ["KINDS", "LABEL_KEYS", "as_image", "differences", "gather", "infer_kind", "input_of", "label_of", "text_of"]

#: What an explanation shows: images, sentences (token sequences) or table rows.
KINDS = ("image", "text", "table")
_INPUT_KEYS = ("input_ids", "pixel_values", "inputs", "input", "x", "image", "features")
#: Keys of a dict item that hold its class label (never passed to the model).
LABEL_KEYS = ("labels", "label", "y", "target", "targets")


def _row(batch: Any, r: int) -> Any:
    """Row ``r`` of every tensor of ``batch`` (structure kept), detached on the CPU."""
    if isinstance(batch, torch.Tensor):
        return batch[r].detach().cpu()
    if isinstance(batch, Mapping):
        return {key: _row(value, r) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_row(value, r) for value in batch)
    return batch


def gather(loader: Iterable[Any], indices: Iterable[int], role: str) -> dict[int, Any]:
    """The examples at positions ``indices`` of a fixed-order ``loader``, in one pass.

    Args:
        loader: fixed-order batches, as given to ``fit`` or ``attribute``.
        indices: positions (``-1``, top-k's "no such example", is ignored).
        role: ``"train"`` or ``"test"``, for the error message.

    Returns:
        ``{index: item}``; the pass stops after the last wanted batch.

    Raises:
        ArgumentError: the loader holds fewer examples than an index needs.
    """
    wanted = sorted({int(i) for i in indices if int(i) >= 0})
    found: dict[int, Any] = {}
    offset, position = 0, 0
    for batch in loader:
        if position == len(wanted):
            break
        size = batch_size(batch)
        while position < len(wanted) and wanted[position] < offset + size:
            found[wanted[position]] = _row(batch, wanted[position] - offset)
            position += 1
        offset += size
    if position < len(wanted):
        raise ArgumentError(f"the {role} loader holds {offset} examples, but example {wanted[position]} was asked for; "
                            f"pass the loader the attributor was fitted (train) or scored (test) with")
    return found


def input_of(item: Any) -> torch.Tensor:
    """The input tensor of ``item`` (see the module's conventions)."""
    if isinstance(item, Mapping):
        key = next((k for k in _INPUT_KEYS if k in item), next(iter(item)))
        return item[key]
    if isinstance(item, (tuple, list)):
        return item[0]
    return item


def label_of(item: Any) -> int | None:
    """The class label of ``item``, or ``None`` when it has none (see the module's conventions)."""
    if isinstance(item, Mapping):
        candidates = [item[k] for k in LABEL_KEYS if k in item]
    elif isinstance(item, (tuple, list)):
        candidates = list(item[1:2])
    else:
        candidates = []
    for value in candidates:
        if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point():
            return int(value)
    return None


def infer_kind(x: torch.Tensor) -> str:
    """The kind of an example whose input is ``x`` (one example, no batch dimension).

    The rule: integer ``[T]`` is ``"text"`` (token ids); floating ``[H, W]``, ``[C, H, W]``
    or ``[H, W, C]`` with ``C`` in 1, 3, 4 is ``"image"``; floating ``[d]`` is ``"table"``.
    A flat image (MNIST's ``[784]``) reads as a table row: pass ``kind="image"``.

    Raises:
        ArgumentError: any other shape or dtype (the message asks for ``kind=``).
    """
    if x.dim() == 1 and not x.is_floating_point() and x.dtype != torch.bool:
        return "text"
    channels = x.dim() == 3 and (x.shape[0] in (1, 3, 4) or x.shape[-1] in (1, 3, 4))
    if x.is_floating_point() and (x.dim() == 2 or channels):
        return "image"
    if x.is_floating_point() and x.dim() == 1:
        return "table"
    raise ArgumentError(f"cannot tell what an input of dtype {x.dtype} and shape {tuple(x.shape)} shows; "
                        f"pass kind= one of {', '.join(KINDS)}")


def as_image(x: torch.Tensor) -> torch.Tensor:
    """An input as pixels: ``Tensor[H, W]`` (grey) or ``[H, W, 3]`` (colour), float32 in ``[0, 1]``.

    A flat ``[n]`` input is a square: ``n = s²`` (grey) or ``3·s²`` (colour, channels first).
    Values already in ``[0, 1]`` are kept, integers in ``[0, 255]`` divided by 255, anything
    else stretched to ``[0, 1]`` (min to max of the image). A fourth channel (alpha) is dropped.

    Raises:
        ArgumentError: a flat input that is not square, or a shape that is no image.
    """
    x = x.detach().cpu()
    if x.dim() == 1:
        side, colour = math.isqrt(x.numel()), math.isqrt(x.numel() // 3)
        if side * side == x.numel():
            x = x.reshape(side, side)
        elif 3 * colour * colour == x.numel():
            x = x.reshape(3, colour, colour)
        else:
            raise ArgumentError(f"a flat image must hold s*s or 3*s*s values, got {x.numel()}; pass kind='table'")
    if x.dim() == 3 and x.shape[0] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
        x = x.permute(1, 2, 0)
    if x.dim() == 3 and x.shape[-1] in (1, 3, 4):
        x = x[..., 0] if x.shape[-1] == 1 else x[..., :3]
    if x.dim() not in (2, 3):
        raise ArgumentError(f"an image is [H, W], [C, H, W] or [H, W, C] (C in 1, 3, 4), got {tuple(x.shape)}")
    low, high = (float(v) for v in x.aminmax())
    if not x.is_floating_point() and low >= 0 and high <= 255:
        return x.float() / 255
    x = x.float()
    if low >= 0 and high <= 1:
        return x
    return (x - low) / (high - low) if high > low else torch.full_like(x, 0.5)


def text_of(item: Any, decode: Callable[[Any], str] | None) -> str:
    """``decode(item)``, or without ``decode`` the input's values joined by spaces (token ids)."""
    if decode is not None:
        return str(decode(item))
    return " ".join(str(v) for v in input_of(item).flatten().tolist())


def differences(test: torch.Tensor, row: torch.Tensor, names: Sequence[str] | None,
                m: int = 5) -> list[tuple[str, float, float]]:
    """The ``m`` features in which table row ``row`` differs most from the test row ``test``.

    Returns:
        ``[(feature name, value in row, value in test)]`` by decreasing ``|row - test|``,
        features where they are equal left out; unnamed features are called ``x[j]``.
    """
    test, row = test.flatten().double(), row.flatten().double()
    gap = (row - test).abs()
    order = [j for j in gap.argsort(descending=True, stable=True).tolist()[:m] if gap[j] > 0]
    return [(names[j] if names is not None else f"x[{j}]", float(row[j]), float(test[j])) for j in order]
