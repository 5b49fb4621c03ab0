"""Where ``fit`` keeps the training features: in memory, or streamed from disk, chosen from an estimate.

    plan(method, train, members, store, budget, chunks) -> MemoryPlanner
        before the feature pass: estimate the features' bytes (members × n_train × width ×
        itemsize, this rank's share) and compare them with the budget
        (:func:`attrkit.budget.resolve_budget`): within it, in memory; over it, streamed — from
        ``store``, or without one from a temporary on-disk store (:class:`~attrkit.disk_store.
        SpillingStore` spilled at once); say which on stderr, once
    during the pass: features that outgrow the budget (an estimate unknown or too low) spill
        to the temporary store instead of raising (:meth:`MemoryPlanner.overflow`)
    after it: :meth:`MemoryPlanner.finish` -> :class:`MemoryPlan`, kept as ``fit.memory_plan``

``n_train`` comes from a completed pass when there was one, else from the loader without
reading it: the batches of a list, ``len(loader.dataset)``, or ``len(loader) × batch_size``.
The width is the gradient dimension ``p`` with no projector or the identity, else the
projector's ``dim``; the itemsize is the model's parameters'. When any of these is unknown the
estimate is ``None``: features start in memory and spill when they pass the budget.
"""

from __future__ import annotations

import math
import os
import shutil
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import torch

from attrkit import distributed
from attrkit.budget import INDEX_BYTES, Budget
from attrkit.context import Member
from attrkit.disk_store import SpillingStore, TMPDIR_VAR, temporary_root
from attrkit.errors import AttrkitWarning, MemoryBudgetError
from attrkit.loaders import CheckedLoader
from attrkit.memory import format_bytes
from attrkit.progress import note
from attrkit.store import FeatureStore

if TYPE_CHECKING:
    from attrkit.engine.attributor import GradientAttributor
    from attrkit.feature_matrix import FeatureMatrix

__all__ = ["MemoryPlan", "MemoryPlanner", "plan"]

#: ``MemoryPlan.choice``: the features are held in memory.
MEMORY = "memory"
#: ``MemoryPlan.choice``: the features are read from disk a tile at a time.
STREAM = "stream"


@attrs.frozen(kw_only=True)
class MemoryPlan:
    """How a fit holds its training features, and why (``attributor.fitted.memory_plan``).

    Attributes:
        estimate: bytes of training features (every member, this process's rows) estimated
            before the feature pass; ``None`` when it could not be estimated.
        held: bytes of training features the fit produced (every member, this process's rows).
        budget: the budget in bytes, ``None`` for none.
        budget_source: ``"memory_budget"``, ``"ATTRKIT_MEMORY_BUDGET"`` or ``"default"``
            (:data:`~attrkit.budget.DEFAULT_FRACTION` of the memory available at fit time).
        choice: ``"memory"`` (held in memory) or ``"stream"`` (read from ``path`` in tiles).
        path: the folder the features are in on disk (the fit's ``store``, or a temporary
            store), ``None`` when they are only in memory.
        temporary: whether ``path`` is a temporary store, deleted with the attributor.
        tile_bytes: the most bytes a tile of streamed features occupies (``None`` in memory).
        message: the line said on stderr (``ATTRKIT_PROGRESS=0`` silences it, not this record).
    """

    estimate: int | None
    held: int | None
    budget: int | None
    budget_source: str
    choice: str
    path: str | None
    temporary: bool
    tile_bytes: int | None
    message: str


def _width(method: GradientAttributor) -> int | None:
    """Features per example: ``p`` with no projector or the identity (an upper bound of the packed
    rows of structured products, :mod:`attrkit.engine.products`, which ``"auto"`` takes only where
    narrower), the projector's ``dim``, else ``None``."""
    part = method.parts.get("projector")
    if part is None or part.cls.identity:
        return method.dimension
    dim = getattr(part.config, "dim", None)
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None


def _dtype(method: GradientAttributor) -> torch.dtype:
    return next((p.dtype for p in method.task.model.parameters() if p.is_floating_point()), torch.float32)


class MemoryPlanner:
    """The memory plan of one fit while it runs; see the module docstring.

    Attributes:
        budget: the fit's :class:`~attrkit.budget.Budget`.
        chunks: the fit's feature store.
        estimate: the estimate of the features' bytes, or ``None``.
    """

    def __init__(self, budget: Budget, chunks: FeatureStore, store: str | os.PathLike | None, estimate: int | None,
                 detail: str, grouped: bool, row: tuple[int, int] | None = None):
        self.budget, self.chunks, self.estimate = budget, chunks, estimate
        self._store, self._detail, self._grouped, self._row = store, detail, grouped, row
        self._said: list[str] = []

    @property
    def bytes(self) -> int | None:
        """The budget in bytes (``None``: none)."""
        return self.budget.bytes

    @property
    def tile_bytes(self) -> int | None:
        """The most bytes a streamed tile may occupy."""
        return self.budget.tile_bytes

    def _path(self) -> str | None:
        if isinstance(self.chunks, SpillingStore):
            return None if self.chunks.temporary is None else str(self.chunks.temporary.root)
        return None if self._store is None else os.fspath(self._store)

    def _streaming(self) -> str:
        tiles = f"in {format_bytes(self.tile_bytes)} tiles" if self.tile_bytes is not None else "in tiles"
        if isinstance(self.chunks, SpillingStore):
            return f"streaming from a temporary store {self._path()} {tiles} (deleted with the attributor)"
        return f"streaming from the store {self._path()} {tiles}"

    def _say(self, line: str) -> None:
        self._said.append(line)
        note(line)

    def start(self) -> None:
        """Decide before the feature pass (spill a temporary store at once when the estimate is over
        the budget) and say so; an unknown estimate is said at the end of the pass, or at a spill.
        Warns (:class:`~attrkit.errors.AttrkitWarning`) when the temporary folder has less free
        space than the estimate.

        Raises:
            MemoryBudgetError: the budget cannot hold one tile row (every member's features of one
                example), before any work.
        """
        budget, estimate = self.budget.bytes, self.estimate
        if self._grouped:
            self._say(f"attrkit: group features (one row per group) are held in memory; {self.budget.describe()}")
            return
        if estimate is None:
            return
        if budget is not None and self._row is not None:
            members, row_bytes = self._row
            per_row = members * row_bytes + INDEX_BYTES
            if budget < per_row and estimate > budget:
                raise MemoryBudgetError(
                    f"memory_budget={budget} bytes cannot hold one tile: a tile row takes {per_row} bytes ({members} "
                    f"member(s) of {row_bytes} bytes of features and its index), and the training features ≈ "
                    f"{format_bytes(estimate)} {self._detail} exceed the {self.budget.describe()}; raise memory_budget "
                    f"to at least {per_row}, or use a projector with a smaller dim"
                )
        if budget is None or estimate <= budget:
            relation = "," if budget is None else " ≤"
            self._say(f"attrkit: train features ≈ {format_bytes(estimate)} {self._detail}{relation} "
                      f"{self.budget.describe()}: in memory")
            return
        if isinstance(self.chunks, SpillingStore):
            root = temporary_root()
            free = shutil.disk_usage(root).free
            if free < estimate:
                warnings.warn(
                    f"the training features ≈ {format_bytes(estimate)} {self._detail} exceed the memory "
                    f"{self.budget.describe()}, and the temporary folder {root} has only {format_bytes(free)} free "
                    f"to stream them from: set {TMPDIR_VAR} to a folder with more space, pass fit(..., "
                    "store=<folder>), raise memory_budget, or use a projector with a smaller dim",
                    AttrkitWarning, stacklevel=5,
                )
            self.chunks.spill()
        self._say(f"attrkit: train features ≈ {format_bytes(estimate)} {self._detail} > {self.budget.describe()}: "
                  f"{self._streaming()}")

    def overflow(self, batch: int, nbytes: int) -> None:
        """The features held in memory passed the budget at training batch ``batch`` (``nbytes``
        projected for every member): spill them to a temporary store and stream from it.

        Raises:
            MemoryBudgetError: the store cannot spill (not one ``fit`` made).
        """
        if not isinstance(self.chunks, SpillingStore):
            raise MemoryBudgetError(
                f"the training features exceed memory_budget={self.budget.bytes} bytes in memory ({nbytes} bytes "
                f"for every member by batch {batch}); pass fit(..., store=<folder>) to keep them on disk and stream "
                "them, or raise memory_budget"
            )
        self.chunks.spill()
        known = "was unknown" if self.estimate is None else f"was ≈ {format_bytes(self.estimate)}"
        self._say(f"attrkit: train features passed the {self.budget.describe()} at batch {batch} "
                  f"(≈ {format_bytes(nbytes)} {self._detail}; the estimate {known}): {self._streaming()}")

    def finish(self, matrices: Sequence[FeatureMatrix]) -> MemoryPlan:
        """The :class:`MemoryPlan` of the fitted features ``matrices`` (one per member); the
        choice is said now when it was not before (an unknown estimate that stayed in memory)."""
        held = sum(m.nbytes for m in matrices)
        streamed = any(not m.resident for m in matrices)
        if not self._said:
            relation = "," if self.budget.bytes is None else (" >" if held > self.budget.bytes else " ≤")
            choice = self._streaming() if streamed else "in memory"
            self._say(f"attrkit: train features {format_bytes(held)} {self._detail} (no estimate before the pass)"
                      f"{relation} {self.budget.describe()}: {choice}")
        spilled = isinstance(self.chunks, SpillingStore)
        path = self._path() if streamed or not spilled else None  # a temporary store goes when not streamed from
        return MemoryPlan(
            estimate=self.estimate, held=held, budget=self.budget.bytes, budget_source=self.budget.source,
            choice=STREAM if streamed else MEMORY, path=path,
            temporary=spilled and path is not None,
            tile_bytes=self.tile_bytes if streamed else None, message="\n".join(self._said),
        )


def plan(
    method: GradientAttributor, train: CheckedLoader, members: Sequence[Member], store: str | os.PathLike | None,
    budget: Budget, chunks: FeatureStore, grouped: bool,
) -> MemoryPlanner:
    """Estimate the training features of ``members`` and decide where they go (said on stderr); see
    the module docstring.

    Args:
        grouped: the features are group features (GGDA: ``[n_groups, k]``, held in memory).

    Raises:
        MemoryBudgetError: the budget cannot hold one tile row.
    """
    n, width, dtype = train.estimated_examples, _width(method), _dtype(method)
    world = distributed.world()
    count = f"{len(members)} member{'s' if len(members) != 1 else ''}"
    estimate, detail = None, f"for {count}"
    if n is not None and width is not None:
        rows = math.ceil(n / world[1]) if world is not None else n
        estimate = len(members) * rows * width * dtype.itemsize
        share = f", this rank's ≈ 1/{world[1]}" if world is not None else ""
        detail = f"for {count} ({n} examples × {width} features × {str(dtype).removeprefix('torch.')}{share})"
    row = (len(members), width * dtype.itemsize) if width is not None else None
    planner = MemoryPlanner(budget, chunks, store, estimate, detail, grouped, row)
    planner.start()
    return planner
