"""``GradientAttributor``: the score formula, its hooks, and the public calls that run the engine.

    score(t, i) = s_i · Σ_m w_m · < Precond_m(Proj_m(∇ target_t)), q_i · Proj_m(∇ loss_i) >

summed per group of training examples when there is a grouper. A method plugin subclasses
it and changes only its hooks:

* ``members()`` — the ensemble members and their weights ``w_m`` (TracIn: × learning
  rates; TRAK: normalised to sum to one);
* ``example_weights(members, train)`` — ``q_i`` (TRAK's ``Q``), or ``None``;
* ``column_scale(fit, train)`` — ``s_i`` once everything else is fitted (RelatIF), or ``None``;
* ``normalize`` — cosine instead of dot product (grad-cos);
* ``train_target`` — the training side differentiates the target too (TRAK's margin).

The parts (gradient source, projector, solver, grouper, ensemble) come from the spec; the
passes are the functions of :mod:`attrkit.engine.fitting`, :mod:`~attrkit.engine.scoring`
and :mod:`~attrkit.engine.self_influence`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from attrkit import capabilities
from attrkit.context import Member
from attrkit.engine import persist, products, scoring
from attrkit.engine.fitting import fit as fit_engine
from attrkit.engine.self_influence import self_influence as self_influence_engine
from attrkit.engine.state import Fit
from attrkit.errors import DataLoaderError, NotFittedError
from attrkit.feature_matrix import FeatureMatrix
from attrkit.parameter_gradients import restrict_gradients
from attrkit.parts import Part
from attrkit.properties import property_gradient
from attrkit.protocols import Attributor
from attrkit.selection import TopK
from attrkit.task import AttributionTask

__all__ = ["GradientAttributor"]


class GradientAttributor(Attributor):
    """The shared score formula: fit / attribute / top_k / self_influence for gradient methods.

    Subclasses set ``name``, ``Config``, ``slots``, ``defaults`` and the hooks above.
    Memory: the training features of every member, ``Tensor[n_train, k]`` each — or, when
    they exceed the memory budget (by default a quarter of the memory available at fit
    time), tiles read from an on-disk store: the fit's ``store``, or a temporary one (see
    :meth:`fit`).

    With an initialised ``torch.distributed`` process group (:mod:`attrkit.distributed`),
    ``fit`` splits the per-example training features and the solvers' curvature passes
    over the ranks by batch index, and each rank keeps only its batches' features (the
    solvers' reductions over them are all-reduced); ``attribute`` and ``top_k`` score each
    rank's training columns and gather them (or merge the candidates), and
    ``self_influence`` is split by batch where every solver solves locally. Every rank
    returns the same result; all must make the same calls on the same data.

    Args:
        config: the method's config.
        task: the attribution task.
        parts: a :class:`~attrkit.parts.Part` per slot, resolved by the composer.
        resolved: the full spec and its provenance (:class:`attrkit.compose.Resolved`).

    Attributes:
        gradients: the gradient source (restricted to an ensemble's ``gradient_params``).
        grouper, ensemble: those parts, made (``None`` when the spec has none).
        dimension: ``p``, the length of one raw gradient.
        fitted: the :class:`~attrkit.engine.state.Fit` after :meth:`fit`, else ``None``.
    """

    requires: ClassVar[frozenset[str]] = frozenset({capabilities.PER_EXAMPLE})
    slots: ClassVar[frozenset[str]] = frozenset({"gradients", "projector", "grouper", "ensemble"})
    defaults: ClassVar[Mapping[str, str]] = {"gradients": "per-example", "projector": "identity", "grouper": "singleton"}
    #: Cosine instead of dot product: normalise both sides' features to unit length.
    normalize: ClassVar[bool] = False
    #: The training side uses the target's gradients too (TRAK: the margin on both sides).
    train_target: ClassVar[bool] = False

    def __init__(self, config: Any, *, task: AttributionTask, parts: Mapping[str, Part], resolved: Any = None):
        super().__init__(config, task=task, parts=parts, resolved=resolved)
        made = {slot: part.make() for slot, part in self.parts.items() if slot in ("gradients", "grouper", "ensemble")}
        self.gradients, self.grouper, self.ensemble = made["gradients"], made.get("grouper"), made.get("ensemble")
        ensemble = self.parts.get("ensemble")
        if ensemble is not None and ensemble.cls.gradient_params is not None:
            self.gradients = restrict_gradients(self.gradients, ensemble.cls.gradient_params, ensemble.name)
        self.dimension = self.gradients.dimension(task)
        products.check_spec(self)
        self.fitted: Fit | None = None

    # -- hooks: what a method changes ------------------------------------------------------

    def members(self) -> list[Member]:
        """The ensemble members (the task's checkpoints when no ensemble is given)."""
        return self.ensemble.members(self.task) if self.ensemble is not None else self.task.members()

    def example_weights(self, members: list[Member], train: Iterable[Any]) -> torch.Tensor | None:
        """``Tensor[n_train]`` multiplying each training example's features (TRAK's Q), or ``None``.

        Applied after the solver is fitted and before the group sum, so the solver sees the
        raw features and a group's column is the sum of its members' weighted columns.
        """
        return None

    def column_scale(self, fit: Fit, train: Iterable[Any]) -> torch.Tensor | None:
        """``Tensor[n_columns]`` multiplying each training column once everything else is fitted
        (RelatIF: ``1 / sqrt(self-influence)``), or ``None``; ``fit`` is the state so far."""
        return None

    # -- the public calls -------------------------------------------------------------------

    def fit(
        self, train: Iterable[Any], store: str | os.PathLike | None = None,
        memory_budget: int | float | str | None = None,
        nonfinite: str = "raise", on_mismatch: str = "error",
    ) -> GradientAttributor:
        """Compute and keep the training features of every member.

        With a grouper whose partition is not the singletons and a gradient source that
        provides group gradients (``capabilities.GROUP``, e.g. ``group``), groups are assigned
        first and each member's grouped training side comes from one ``group_gradients`` call,
        projected — no per-example gradient is formed (GGDA). Otherwise per-example features
        are summed per group.

        What is checked (see the README's "What attrkit checks"): the loader yields the same
        batches in the same order on every pass (:class:`~attrkit.loaders.CheckedLoader`);
        every member's weights, every training example's gradient and features, and the
        solvers' outputs are finite; the weights do not change while fitting (and, when the
        members are the model's own weights, until the attributor attributes); a ``store``
        holds features of this spec, these weights, these functions and these batches, with
        intact files.

        Memory: before the feature pass the features' bytes are estimated (members ×
        ``n_train`` × width × itemsize; ``n_train`` from ``len(loader.dataset)`` or
        ``len(loader) × batch_size``, the width from the projector's ``dim`` or the gradient
        dimension) and compared with the budget: within it they are held in memory, over it
        they are streamed from disk — from ``store``, or without one from a temporary store
        (a folder ``attrkit-*`` in ``ATTRKIT_TMPDIR`` or the system's temporary folder, deleted
        when the attributor is garbage-collected or fitted again, or at interpreter exit). When
        the estimate is unknown (or low) and the features outgrow the budget during the pass,
        they spill to the temporary store then. The choice is said in one line on stderr, with
        the progress bars (``ATTRKIT_PROGRESS=0`` silences both), and kept in
        ``self.fitted.memory_plan`` (:class:`~attrkit.engine.memory_plan.MemoryPlan`: estimate,
        budget, choice, folder). Streamed features give the in-memory scores to round-off.

        Args:
            train: fixed-order batches (a ``DataLoader`` with ``shuffle=False``).
            store: a folder for a resumable on-disk feature store: each batch's features (on
                the group-gradient path: each member's group features) are written atomically,
                and a rerun after a kill computes only what is missing (bit-identical
                results). ``None``: in memory, or a temporary store over the budget.
            memory_budget: bytes of training features this process may hold at once: an
                ``int``, a size with a unit (``"2GiB"``, ``"500MB"``), or ``float("inf")`` for
                no budget. ``None`` (default): the environment variable
                ``ATTRKIT_MEMORY_BUDGET`` (same forms; ``inf``: none) when set, else a quarter of
                the memory available now where the features are held (the task's device). When
                every member's features (this rank's rows) fit, they are held in memory;
                otherwise they are streamed in tiles of at most this many bytes (at most 256 MiB
                under the default budget) — to fit the solver (``ΦᵀΦ``), to sum groups and to
                score — so no ``[n_train, k]`` matrix is ever formed. Each test batch then reads
                the features once: use large test batches.
            nonfinite: ``"raise"`` (default): an error naming the first training example (and
                later test example) with a NaN or infinite input, loss or gradient. ``"skip"``:
                leave such training examples out (their score columns are 0, ``top_k`` never
                returns them, the curvature never sees them, a warning names them,
                :attr:`skipped` lists them) and give such test examples a NaN score row (see
                :mod:`attrkit.engine.skips`). Not with groups.
            on_mismatch: what to do with a ``store`` whose contents do not match: ``"error"``
                (default) or ``"recompute"`` (recompute what differs).

        Returns:
            ``self``.

        Raises:
            DataLoaderError: a shuffling, dropping or empty loader, a loader whose batches
                change between passes, or fewer batches than ranks.
            NonFiniteError: a non-finite weight, example or solver output (``nonfinite="raise"``).
            LossFunctionError: ``loss_fn``/``target_fn`` failed on a batch (explained).
            ModelChangedError: weights changed in place while fitting.
            StoreMismatchError: ``store`` holds features of another spec, model, loss, data or
                batching, or (``StoreCorruptError``) damaged files.
            MemoryBudgetError: a malformed budget (argument or ``ATTRKIT_MEMORY_BUDGET``), one too
                small for a tile row, a solver that needs every feature in memory over the budget,
                or features over the budget that cannot be streamed (too little free space in the
                temporary folder: set ``ATTRKIT_TMPDIR``, or pass ``store``).
        """
        self.fitted = None
        self.fitted = fit_engine(self, train, store=store, memory_budget=memory_budget, nonfinite=nonfinite,
                                 on_mismatch=on_mismatch)
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted attributor to the folder ``path``; :func:`attrkit.load` reads it back.

        Another process then answers ``attribute``, ``top_k`` and ``self_influence`` without
        refitting, with the same scores bit for bit (same machine). Saved: the spec, each
        member's label, weight and weight digests, its fitted projector's and solver's
        ``state_dict``, its training side as it is scored (out of core: copied from the fit
        store tile by tile within the memory budget), the groups, example weights and skipped
        examples. Only data is written (JSON, ``.npy``, ``torch.save`` of plain tensors); see
        :mod:`attrkit.saving` for the layout and :mod:`attrkit.engine.persist` for the details.

        Raises:
            NotFittedError: before ``fit``.
            SaveError: a part that cannot be saved (CG, LiSSA and DataInf read the training data
                at every solve), nothing written; a distributed run; a ``path`` that holds
                other files.
            ModelChangedError: the model's weights changed since ``fit``.
        """
        persist.save(self, self._require_fit(), path)

    def restore(self, saved: Any) -> None:
        """Become the fitted attributor ``saved`` holds (:func:`attrkit.load` calls it).

        Raises:
            LoadError: the task's members or weights differ from those fitted at, or damaged files.
        """
        self.fitted = None
        self.fitted = persist.restore(self, saved)

    def _require_fit(self) -> Fit:
        if self.fitted is None:
            raise NotFittedError(f"call {type(self).__name__}.fit(train_loader) before attributing")
        return self.fitted

    @property
    def groups(self) -> torch.Tensor | None:
        """``LongTensor[n_train]``: the score column (group) of each training example, after ``fit``."""
        return None if self.fitted is None else self.fitted.groups

    @property
    def skipped(self) -> torch.Tensor | None:
        """``LongTensor``: training examples left out by ``fit(..., nonfinite="skip")`` (sorted), else ``None``."""
        return None if self.fitted is None else self.fitted.skipped

    @property
    def features(self) -> list[FeatureMatrix]:
        """Each member's training side ``Φ_m`` (``[n_columns, k]``, resident or streamed from its store)."""
        return [f.train for f in self._require_fit().members]

    def attribute(self, test: Iterable[Any] | None = None) -> torch.Tensor:
        """Scores of every training example (or group) for every test example or property.

        Args:
            test: fixed-order test batches; the target is ``task.target``. ``None`` attributes
                the task's ``properties`` instead: each property's test side is its gradient at
                the member (see :meth:`property_gradients`).

        Returns:
            ``Tensor[n_test, n_train]`` (``[n_test, n_groups]`` with a grouper; with
            ``test=None``, ``[n_properties, …]`` in the task's order), float32, CPU. Positive
            means the training example is a proponent. With ``fit(..., nonfinite="skip")``,
            skipped training columns are 0 and the rows of test examples with non-finite
            values are NaN (a warning names them).

        Raises:
            NotFittedError: before ``fit``.
            DataLoaderError: ``test`` is ``None`` and the task declares no properties; a
                shuffling, dropping or changing test loader.
            ModelChangedError: the model's weights changed since ``fit``.
            NonFiniteError: a test example with a non-finite input, loss or gradient
                (``nonfinite="raise"``), or scores that overflow float32.
            LossFunctionError: the target function failed on a test batch (explained).
            MemoryBudgetError: the budget cannot hold one tile row and its scores.
        """
        return scoring.attribute(self, self._require_fit(), test)

    def top_k(self, test: Iterable[Any], k: int, tile_rows: int = 65536) -> TopK:
        """The ``k`` strongest proponents and opponents of every test example.

        Scores are computed in tiles of at most ``tile_rows`` training rows (fewer when the
        memory budget asks) and merged, so the full ``[n_test, n_train]`` matrix is never held
        (in distributed mode, over each rank's columns, then the ranks' candidates are
        merged). Training examples skipped by ``fit(..., nonfinite="skip")`` are never
        returned; a skipped test example's row holds NaN scores and index -1.

        Returns:
            :class:`TopK` with ``[n_test, k]`` values (float32) and indices (int64), CPU.

        Raises:
            ValueError: ``k`` is not in ``1..n_train`` (or ``n_groups``; skipped examples excluded).
            ModelChangedError, NonFiniteError, LossFunctionError: as :meth:`attribute`.
        """
        return scoring.top_k(self, self._require_fit(), test, k, tile_rows)

    def self_influence(self, train: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n]`` float32 CPU: each training example's score for itself (loss on both sides).

        Streams over ``train`` batch by batch (gradients are recomputed; the stored features
        are not read). With a grouper, ``train`` must be the fitted training set and the result
        is per group: group sums of gradients and features are accumulated (``Tensor[n_groups,
        p]``) and solved at once. In distributed mode each rank takes its batches when every
        solver solves locally (``local_solve``), else every rank takes all of them (the solves
        then run collective passes in lock-step); group sums are always split and all-reduced.
        """
        return self_influence_engine(self, self._require_fit(), train)

    def property_gradients(self, member: Member) -> torch.Tensor:
        """``Tensor[n_properties, p]``: the gradient of each of the task's properties at ``member``.

        Taken by ``torch.func.grad`` through ``functional_call`` with the member's state, w.r.t.
        the parameters the gradient source selects (``gradients.names(task)``, in that order,
        each flattened), in eval mode and with the member's patch applied.

        Raises:
            DataLoaderError: the task declares no properties (pass ``test`` instead).
        """
        properties = self.task.properties
        if not properties:
            raise DataLoaderError(
                "attribute() needs test batches, or properties declared on the task: "
                "AttributionTask(..., properties=[attrkit.properties.mean_loss(test_loader, loss_fn)])"
            )
        names = self.gradients.names(self.task)
        with member.applied(self.task.model):
            rows = [property_gradient(self.task.model, p, member.state, names) for p in properties]
        return torch.stack(rows)
