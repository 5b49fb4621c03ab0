"""Scoring a fitted attributor: every test batch's queries against the training sides, tile by tile.

    attribute(method, fit, test):
        check the model's weights are those fitted at (fit.guard)
        for each group of test batches (a checked loader; up to QUERY_GROUP_BYTES of queries):
            queries, member by member over the group's batches (each member's parts, e.g. its
            projection matrix, are then used once per group, not once per batch):
                per member (w_m, Precond_m(Proj_m(∇ target_t))), non-finite rows refused or NaN
            for each batch of the group:
                scores = Σ_m w_m q_m Φ_mᵀ over this rank's training columns, tile by tile (tiles.score_block)
                gathered over the ranks, checked to be finite
        the batches' rows stacked as they come into one buffer (attrkit.rows.stack_rows)
    top_k: the same queries, a running top-k per tile (tiles.top_k_block), candidates merged over ranks
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from attrkit import distributed
from attrkit.data import batch_size
from attrkit.engine.products import Chooser, query_packer
from attrkit.engine.sides import explainer, gradients, query, takes_rank_one
from attrkit.engine.state import Fit
from attrkit.engine.tiles import score_block, top_k_block
from attrkit.errors import ArgumentError, NonFiniteError, NonFiniteWarning
from attrkit.finite import check_rows, check_scores
from attrkit.functional.nonfinite import nonfinite_rows
from attrkit.loaders import checked
from attrkit.progress import length_of, progress
from attrkit.rows import stack_rows
from attrkit.selection import TopK

if TYPE_CHECKING:
    from attrkit.engine.attributor import GradientAttributor

__all__ = ["attribute", "queries", "top_k"]

#: ``(w_m, Tensor[b, k_m])``: a member's weight and its query side.
Query = tuple[float, torch.Tensor]


#: Most bytes of queries an ensemble computes ahead, member by member, over a group of test batches
#: (at least one batch). Grouping changes no score: each batch is scored as it would be alone.
QUERY_GROUP_BYTES = 64 * 2**20


def _test_batches(method: GradientAttributor, fit: Fit, test: Iterable[Any]) -> Iterator[tuple[int, int, Any]]:
    """``(batch index, index of its first example, batch)`` of a (checked) test loader, after
    checking the model's weights are those fitted at."""
    fit.guard.check(method.task)
    offset = 0
    for index, batch in enumerate(test):
        yield index, offset, batch
        offset += batch_size(batch)


def _query_bytes(fit: Fit) -> int:
    """Bytes of one test example's queries over every member (float32; a solved structured member's
    query is a dense gradient, any other has its training side's width)."""
    widths = (f.layout.flat_width("score solved queries") if f.solved else f.train.width for f in fit.members)
    return 4 * sum(widths)


def _groups(method: GradientAttributor, fit: Fit, test: Iterable[Any]) -> Iterator[list[tuple[int, int, Any]]]:
    """The test batches (as :func:`_test_batches`) in groups: one batch each for a single member, else
    as many as hold about :data:`QUERY_GROUP_BYTES` of queries (at least one)."""
    rows = QUERY_GROUP_BYTES // _query_bytes(fit) if len(fit.members) > 1 else 0
    group, held = [], 0
    for item in _test_batches(method, fit, test):
        group.append(item)
        held += batch_size(item[2])
        if held >= rows:
            yield group
            group, held = [], 0
    if group:
        yield group


def _work(method: GradientAttributor, fit: Fit, test: Iterable[Any]) -> Iterator[tuple[list[Any], int, int]]:
    """``(group, member, position in the group)`` of every query to compute, member by member per group."""
    for group in _groups(method, fit, test):
        for m in range(len(fit.members)):
            for j in range(len(group)):
                yield group, m, j


def _member_query(method: GradientAttributor, fit: Fit, m: int, batch: Any, index: int,
                  offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Member ``m``'s ``Precond(Proj(∇ target))`` of test batch ``index``, ``Tensor[b, k]``, and the rows
    left out as non-finite (``LongTensor``; ``nonfinite="skip"``: their query rows are NaN).

    Raises:
        NonFiniteError: a non-finite test example (``nonfinite="raise"``).
    """
    f = fit.members[m]
    factored = takes_rank_one(f)  # solved from packed rows
    packing = None if f.layout is None or (f.solved and not factored) else Chooser.fixed(method, f.layout)
    projecting = None  # a chooser of packed rows the projector takes (dense training features)
    if f.layout is None:
        if m not in fit.packers:
            fit.packers[m] = query_packer(method, f)
        projecting = fit.packers[m]
    raw = gradients(method, f.member, batch, target=True, where=f"test batch {index}",
                    products=packing or projecting)
    explain = explainer(method, f.member, batch, method.task.target)
    if isinstance(raw, torch.Tensor):
        bad = check_rows(raw, side="test", batch=index, offset=offset, member=f.member.label, explain=explain,
                         policy=fit.policy)
        if len(bad):
            raw = raw.index_fill(0, bad.to(raw.device), 0.0)
    layout = projecting.layout if projecting is not None else f.layout if factored else None
    q = query(f, raw, method.normalize, layout, coefficients=True)
    late = check_rows(q, side="test", batch=index, offset=offset, member=f.member.label, explain=explain,
                      policy=fit.policy)
    bad = late if not isinstance(raw, torch.Tensor) else torch.cat([bad, late]).unique()
    if len(bad):
        q = q.index_fill(0, bad.to(q.device), float("nan"))
    return q, bad.cpu()


def queries(method: GradientAttributor, fit: Fit, test: Iterable[Any],
            what: str) -> Iterator[tuple[int, list[Query], torch.Tensor]]:
    """Per test batch ``(index of its first example, per member (w_m, Tensor[b, k_m]),
    LongTensor of the rows left out as non-finite)``, computed member by member over each group
    of batches (:func:`_groups`); the progress bar counts the queries computed.

    Raises:
        NonFiniteError: a non-finite test example (``nonfinite="raise"``).
    """
    test, members = checked(test, "test"), len(fit.members)
    batches = length_of(test)
    computed: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for group, m, j in progress(_work(method, fit, test), f"{method.name}: {what}",
                                None if batches is None else batches * members):
        if m == j == 0:
            computed = [[] for _ in range(members)]
        index, offset, batch = group[j]
        computed[m].append(_member_query(method, fit, m, batch, index, offset))
        if m < members - 1 or j < len(group) - 1:
            continue
        for k, (_, offset, batch) in enumerate(group):  # the group is complete: its batches in order
            skipped, block = torch.zeros(batch_size(batch), dtype=torch.bool), []
            for f, per_batch in zip(fit.members, computed):
                (q, bad), per_batch[k] = per_batch[k], None  # held by the block alone from here
                skipped[bad] = True
                block.append((f.member.weight, q))
            yield offset, block, skipped.nonzero().squeeze(1)


def _announce_test(skipped: list[int]) -> None:
    """Warn that the score rows of the test examples ``skipped`` are NaN (``nonfinite="skip"``)."""
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (" …" if len(skipped) > 10 else "")
        warnings.warn(f"nonfinite='skip': {len(skipped)} test examples have non-finite inputs, losses or gradients; "
                      f"their score rows are NaN: {shown}", NonFiniteWarning, stacklevel=4)


def attribute(method: GradientAttributor, fit: Fit, test: Iterable[Any] | None) -> torch.Tensor:
    """``Tensor[n_test, n_columns]`` float32 CPU; ``test=None`` attributes the task's properties.

    See :meth:`GradientAttributor.attribute`.
    """
    sides = [f.train.owned() for f in fit.members]
    products = [f.products for f in fit.members]
    if test is None:
        fit.guard.check(method.task)
        block = [(f.member.weight, query(f, _property_side(method, f.member), method.normalize, coefficients=True))
                 for f in fit.members]
        scores = distributed.gather_columns(score_block(block, sides, products), sides[0].spans, sides[0].n)
        check_scores(scores, first_row=0)
        return scores
    test, skipped = checked(test, "test"), []

    def rows() -> Iterator[torch.Tensor]:
        for offset, block, bad in queries(method, fit, test, "scoring"):
            scores = distributed.gather_columns(score_block(block, sides, products), sides[0].spans, sides[0].n)
            check_scores(scores, first_row=offset, skipped_rows=bad)
            skipped.extend(offset + int(r) for r in bad)
            yield scores

    out = stack_rows(rows(), test.estimated_examples)  # no list of blocks beside the result
    _announce_test(skipped)
    return out


def _property_side(method: GradientAttributor, member: Any) -> torch.Tensor:
    """The checked property gradients of one member (see :meth:`GradientAttributor.property_gradients`)."""
    grads = method.property_gradients(member)
    bad = nonfinite_rows(grads)
    if len(bad):
        name = method.task.properties[int(bad[0])].name
        raise NonFiniteError(f"the gradient of property {name!r} is non-finite at member {member.label!r}; "
                             "check its function and the test data it reads")
    return grads


def top_k(method: GradientAttributor, fit: Fit, test: Iterable[Any], k: int, tile_rows: int) -> TopK:
    """The ``k`` strongest proponents and opponents of every test example; see :meth:`GradientAttributor.top_k`.

    Raises:
        ValueError: ``k`` is not in ``1..n_columns`` (skipped examples excluded).
    """
    n = fit.n_columns - (len(fit.skipped) if fit.skipped is not None else 0)
    if not 1 <= k <= n:
        raise ArgumentError(f"k must be in 1..{n} (the number of training columns), got {k}")
    sides = [f.train.owned() for f in fit.members]
    excluded = None
    if fit.skipped is not None and len(fit.skipped):
        excluded = torch.zeros(fit.n_columns, dtype=torch.bool)
        excluded[fit.skipped] = True
    parts, skipped = [], []
    for offset, block, bad in queries(method, fit, test, f"top-{k}"):
        best, worst = top_k_block(block, sides, k, tile_rows, excluded, [f.products for f in fit.members])
        best, worst = distributed.gather_top_k(best, k, True), distributed.gather_top_k(worst, k, False)
        for values, columns in (best, worst):
            check_scores(values, first_row=offset, skipped_rows=bad)
            values[bad], columns[bad] = float("nan"), -1
        parts.append((best, worst))
        skipped.extend(offset + int(r) for r in bad)
    _announce_test(skipped)
    return TopK(
        proponent_scores=torch.cat([b[0] for b, _ in parts]),
        proponents=torch.cat([b[1] for b, _ in parts]),
        opponent_scores=torch.cat([w[0] for _, w in parts]),
        opponents=torch.cat([w[1] for _, w in parts]),
    )
