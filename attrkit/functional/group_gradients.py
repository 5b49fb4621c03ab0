"""Group gradients (GGDA): one gradient of the summed loss per group of examples.

For a partition of the training set into groups ``g``, the group gradient is
``∇θ Σ_{i∈g} loss_i``, computed from batched passes: one gradient vector is formed per
*row*, not per example. For each loader batch, the examples are sorted by group and
laid out as rows of ``s`` examples (a group with more than ``s`` examples in the batch
takes several rows; short rows are padded with weight-0 copies of their first
example); one ``vmap`` over the rows of ``grad`` of the row's weighted loss sum gives
one gradient per row, and rows are summed into their group, across batches too. ``s``
is the largest group count in the batch, halved while the padded layout would exceed
:data:`MAX_PADDING` times the batch size.

Measured on a 784-128-64-10 MLP (4000 examples, batch 256, CPU seconds on one thread),
this matches per-example gradients summed per group for singletons (2.2 s vs 2.3 s)
and beats them for groups of 16-64 (0.06-1.2 s vs 1.3-1.8 s; 1.5x when groups of 16 are
scattered over the batches, 29x when groups of 64 are contiguous). It also beat one
``vmap`` of a ``vjp`` pull-back over each group's 0/1 mask on the whole batch (work
``groups × batch``), a loop of ``autograd.grad(..., retain_graph=True)`` over the masks,
and a loop of forward+backward passes over each group's sub-batch (Python overhead per
group, slow when groups are scattered over the loader's batches).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_map

from attrkit.data import batch_size
from attrkit.errors import ArgumentError, DataLoaderError, LossShapeError
from attrkit.functional.gradients import BoundLoss, eval_mode

__all__ = ["MAX_PADDING", "group_gradients", "group_rows"]

#: Upper bound on (examples laid out in rows, padding included) / (batch size).
MAX_PADDING = 4


def _check_groups(groups: torch.Tensor, n_groups: int) -> None:
    if groups.dtype != torch.long or groups.dim() != 1:
        raise ArgumentError(f"groups must be a LongTensor[n_train], got {groups.dtype} of shape {tuple(groups.shape)}")
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= n_groups):
        raise ArgumentError(
            f"groups must hold indices in 0..{n_groups - 1} (n_groups={n_groups}), "
            f"got values in {int(groups.min())}..{int(groups.max())}"
        )


def group_rows(labels: torch.Tensor, max_padding: int = MAX_PADDING) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lay out one batch's examples as rows of ``s`` examples of one group each.

    Args:
        labels: ``LongTensor[b]``, the group of each example of the batch.
        max_padding: bound on ``rows * s / b``; ``s`` starts at the largest group
            count and is halved until the bound holds (``s = 1`` always does).

    Returns:
        ``(index, weight, row_group)``: ``index`` ``LongTensor[rows, s]`` positions in
        the batch (padding repeats the row's first example), ``weight`` ``BoolTensor[rows, s]``
        (``False`` on padding) and ``row_group`` ``LongTensor[rows]``, each row's group.
    """
    b = labels.numel()
    order = torch.argsort(labels, stable=True)
    present, counts = torch.unique_consecutive(labels[order], return_counts=True)
    size = int(counts.max()) if b else 1
    while size > 1 and int(((counts + size - 1) // size).sum()) * size > max_padding * b:
        size = (size + 1) // 2
    per_group = (counts + size - 1) // size
    position = torch.arange(b, device=labels.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    row = torch.repeat_interleave(torch.cumsum(per_group, 0) - per_group, counts) + position // size
    index = torch.zeros(int(per_group.sum()), size, dtype=torch.long, device=labels.device)
    weight = torch.zeros(index.shape, dtype=torch.bool, device=labels.device)
    index[row, position % size] = order
    weight[row, position % size] = True
    index = torch.where(weight, index, index[:, :1])
    return index, weight, torch.repeat_interleave(present, per_group)


def group_gradients(
    model: torch.nn.Module,
    fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    state: Mapping[str, torch.Tensor],
    names: Sequence[str],
    batches: Iterable[Any],
    groups: torch.Tensor,
    n_groups: int,
) -> torch.Tensor:
    """Gradient of each group's summed value of ``fn`` w.r.t. the named parameters.

    Streams over ``batches`` (the examples in order, numbered ``0..n-1``); example
    ``i`` belongs to group ``groups[i]``. Per batch: one ``vmap`` over the rows of
    :func:`group_rows` of the gradient of each row's summed value, in eval mode, with
    the weights in ``state`` swapped in by ``functional_call``. Memory besides the
    result: ``Tensor[rows, p]`` with ``rows <= b``, and the activations of at most
    ``MAX_PADDING * b`` examples.

    Args:
        model: the module ``fn`` calls (its weights are not used or changed).
        fn: ``fn(model, batch) -> Tensor[b]``, one value per example.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        names: parameters to differentiate (the others are held fixed).
        batches: the examples, as tensors, tuples/lists or dicts of tensors, already
            on the model's device.
        groups: ``LongTensor[n]``, the group of each example in streaming order.
        n_groups: ``G``, the number of groups (indices ``0..G-1``; a group with no
            example gets a zero row).

    Returns:
        ``Tensor[G, p]`` in the parameters' dtype and device, parameters concatenated
        in ``names`` order, each flattened (the ``per-example`` layout).

    Raises:
        ValueError: ``names`` is empty, or ``groups`` is not a ``LongTensor[n]`` of
            indices below ``n_groups``.
        DataLoaderError: the batches hold more or fewer than ``n`` examples.
        LossShapeError: ``fn`` does not return one value per example.
    """
    if not names:
        raise ArgumentError("names must list at least one parameter to differentiate")
    _check_groups(groups, n_groups)
    bound = BoundLoss(model, fn)
    chosen = set(names)
    fixed = {f"model.{k}": v for k, v in state.items() if k not in chosen}
    trainable = {n: state[n] for n in names}
    first = trainable[names[0]]
    out = torch.zeros(n_groups, sum(t.numel() for t in trainable.values()), dtype=first.dtype, device=first.device)

    def row_sum(params: Mapping[str, torch.Tensor], rows: torch.Tensor, w: torch.Tensor, batch: Any) -> torch.Tensor:
        value = functional_call(
            bound, {**fixed, **{f"model.{k}": v for k, v in params.items()}}, (tree_map(lambda t: t[rows], batch),)
        )
        if not isinstance(value, torch.Tensor) or value.shape != rows.shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise LossShapeError(
                f"loss_fn/target_fn must return one value per example, Tensor[{rows.shape[0]}] for "
                f"{rows.shape[0]} examples; got {got}. Use reduction='none' and do not average over the batch."
            )
        return (w.to(value.dtype) * value).sum()

    offset = 0
    with eval_mode(model):
        for batch in batches:
            b = batch_size(batch)
            labels = groups[offset : offset + b]
            if labels.numel() != b:
                raise DataLoaderError(f"the batches hold more examples than groups has entries ({groups.numel()})")
            offset += b
            if not b:
                continue
            index, weight, row_group = (t.to(first.device) for t in group_rows(labels))
            grads = vmap(grad(row_sum), in_dims=(None, 0, 0, None))(trainable, index, weight, batch)
            out.index_add_(0, row_group, torch.cat([grads[n].reshape(index.shape[0], -1) for n in names], dim=1))
    if offset != groups.numel():
        raise DataLoaderError(f"the batches hold {offset} examples but groups has {groups.numel()} entries")
    return out
