"""A base for parameter-space solvers: fitted on the whole training set at a member's weights.

Plugins subclass it and implement ``build``; the fitting plumbing (which parameters,
which data, which weights) lives here once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch.utils._pytree import tree_map

from attrkit.context import FitContext
from attrkit.errors import NotFittedError, SaveError
from attrkit.functional.gradients import select_parameters
from attrkit.functional.ihvp import InverseHVP
from attrkit.functional.ihvp_state import RESTORE, ihvp_from_state, ihvp_state
from attrkit.protocols import HessianSolver
from attrkit.types import PartState, StateValue

__all__ = ["ParameterSolver", "Solve"]

#: ``solve(vectors[m, p]) -> [m, p]``: an (approximate) inverse curvature applied to a block.
Solve = Callable[[torch.Tensor], torch.Tensor]


class _Float64Batches:
    """Re-iterable view of ``batches`` with every floating tensor cast to float64."""

    def __init__(self, batches: Iterable[Any]):
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        for batch in self.batches:
            yield tree_map(lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t, batch)


class ParameterSolver(HessianSolver):
    """Applies ``(H + λI)⁻¹`` in parameter space, ``H`` the curvature of the mean training loss.

    ``fit`` calls ``build`` with the task's model and loss, the member's full state, the
    parameters the gradient source differentiates (all of them when there is none), and
    the whole training set; ``solve`` applies the result to a block of vectors.

    Curvature is computed in float64 (state, floating batch tensors and vectors are cast):
    truncated iterative solvers on ill-conditioned curvature otherwise amplify float32
    round-off until results depend on the loader's batch size. The cost is about twice
    float32 arithmetic on the CPU; results are returned in the input's dtype. A solver whose
    solve is a fixed factorisation applied with well-conditioned rotations (K-FAC, EK-FAC) sets
    ``solves_in_input_dtype``: its vectors are then not cast, and it solves float32 vectors in
    float32 (half the time and memory of a float64 copy).
    Subclasses set ``name``, ``Config`` and ``requires``, and implement ``build``. One that sets
    ``fits_from_factors`` is built with ``factors=`` (the training set's factored loss gradients,
    in the dtype the engine holds them, float32 for a float32 model: its products then run in
    float32 per block and are summed in float64) when the engine holds them (``context.factors``),
    instead of reading the batches again.

    Saving (:meth:`state_dict`): a solver that factorises at ``fit`` (``local_solve``) and
    whose ``build`` returns an :class:`~attrkit.functional.ihvp.InverseHVP` with a ``state``
    (``explicit``, ``arnoldi``, ``kfac``, ``ekfac``) saves it; one whose every solve passes
    over the training data (``local_solve = False``: CG, LiSSA, DataInf) is refused.
    """

    space: ClassVar[str] = "parameter"
    #: Whether ``solve`` hands the vectors to the built solve in their own dtype (else float64).
    solves_in_input_dtype: ClassVar[bool] = False
    #: Whether ``build`` takes ``factors=`` (and then need not read ``batches``).
    fits_from_factors: ClassVar[bool] = False

    def __init__(self, config: Any):
        super().__init__(config)
        self._solve: Solve | None = None

    @abstractmethod
    def build(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
        state: Mapping[str, torch.Tensor],
        names: Sequence[str],
        batches: Iterable[Any],
    ) -> Solve:
        """Precompute what depends only on (data, θ) and return the block solver."""

    def fit(self, context: FitContext) -> None:
        """Fit on ``context.train`` at ``context.member``'s weights."""
        task = context.task
        source = context.gradients
        names = source.names(task) if source is not None else select_parameters(task.model, ("*",))
        state = {k: v.double() if v.is_floating_point() else v for k, v in context.member.state.items()}
        held = context.factors if self.fits_from_factors else None
        extra = {} if held is None else {"factors": held}
        self._solve = self.build(task.model, task.loss_fn, state, names, _Float64Batches(context.train), **extra)

    def solve(self, vectors: torch.Tensor, rank_one: Mapping[int, Any] | None = None) -> torch.Tensor:
        """``Tensor[m, p] -> Tensor[m, p]`` in the input's dtype and device; ``rank_one``, the factors of
        the vectors' rank-one layer blocks (:data:`~attrkit.functional.ihvp_kfac.RankOne`), goes to a solve
        that takes them (``InverseHVP.takes_rank_one``)."""
        if self._solve is None:
            raise NotFittedError(f"solver {self.name!r} used before fit(context)")
        given = vectors if self.solves_in_input_dtype and vectors.is_floating_point() else vectors.double()
        if rank_one and self.takes_rank_one:
            return self._solve(given, rank_one=rank_one).to(device=vectors.device, dtype=vectors.dtype)
        return self._solve(given).to(device=vectors.device, dtype=vectors.dtype)

    @property
    def takes_rank_one(self) -> bool:
        """Whether :meth:`solve` uses ``rank_one`` factors (fitted K-FAC and EK-FAC)."""
        return bool(getattr(self._solve, "takes_rank_one", False))

    def low_rank(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(U, w)`` of a fitted solve that is ``v -> U diag(w) Uᵀ v`` with fewer columns than
        rows (``InverseHVP.low_rank``: the ``arnoldi`` solver's eigenpairs, float64), else ``None``."""
        low = getattr(self._solve, "low_rank", None)
        return low if low is not None and low[0].shape[1] < low[0].shape[0] else None

    def state_dict(self) -> PartState:
        """The fitted inverse-HVP as plain data (:func:`~attrkit.functional.ihvp_state.ihvp_state`).

        Raises:
            NotFittedError: before ``fit``.
            SaveError: a solver whose solves read the training data (``local_solve = False``),
                or whose ``build`` returned something without a saved form.
        """
        if self._solve is None:
            raise NotFittedError(f"solver {self.name!r} cannot be saved before fit(context)")
        if not self.local_solve:
            raise SaveError(
                f"solver {self.name!r} cannot be saved: every solve passes over the training data (nothing is "
                "factorised at fit, local_solve = False) and a saved attributor keeps no training data; fit it again "
                "in the new process (attrkit.compose(spec, task).fit(train)), or use a solver that factorises the "
                f"curvature at fit: {', '.join(RESTORE)} (parameter space) or gauss-newton (feature space)"
            )
        if not isinstance(self._solve, InverseHVP) or self._solve.state is None or self._solve.name not in RESTORE:
            raise SaveError(
                f"solver {self.name!r} cannot be saved: its build() returned a {type(self._solve).__name__}, not an "
                f"InverseHVP with a saved state (as {', '.join(RESTORE)} build); fit it again in the new process, or "
                "implement state_dict() and load_state_dict()"
            )
        return ihvp_state(self._solve)

    def load_state_dict(self, state: Mapping[str, StateValue]) -> None:
        """Rebuild the fitted inverse-HVP from :meth:`state_dict` (no training data is read)."""
        self._solve = ihvp_from_state(state)
