"""Scores through a low-rank solve: ``⟨g_i, U diag(w) Uᵀ g_t⟩ = (Uᵀ g_i) · (w ⊙ Uᵀ g_t)``.

A parameter-space solver whose fitted solve is ``v -> U diag(w) Uᵀ v`` with ``r < p`` columns
(:meth:`~attrkit.protocols.HessianSolver.low_rank`: the ``arnoldi`` solver's eigenpairs) lets a
block of ``b`` queries be scored as ``r`` coefficients each instead of ``p``-wide solved
gradients. Per tile of ``t`` training rows, the rows are projected on ``U`` (``t p r``
multiply-adds; packed factor rows without forming the gradients,
:meth:`~attrkit.functional.structured_products.ProductLayout.project`) and met by the
coefficients (``b t r``), against ``b t p`` for solved gradients: cheaper once
``b > p r / (p - r)`` (:meth:`LowRank.worth`), so each test batch takes the cheaper form. The
scores are the same to round-off; the training side stays as fitted (packed rows or dense
gradients), so nothing is saved differently.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import torch

if TYPE_CHECKING:
    from attrkit.engine.attributor import GradientAttributor
    from attrkit.functional.structured_products import ProductLayout

__all__ = ["LowRank", "low_rank"]


@attrs.define
class LowRank:
    """A fitted solve ``v -> U diag(w) Uᵀ v`` as the engine scores it.

    Attributes:
        basis: ``U``, ``Tensor[p, r]`` with ``r < p``.
        weights: ``w``, ``Tensor[r]``.
    """

    basis: torch.Tensor
    weights: torch.Tensor
    _cast: dict[tuple[torch.dtype, torch.device], torch.Tensor] = attrs.field(factory=dict, repr=False)

    @property
    def rank(self) -> int:
        """``r``, the width of a query's coefficients."""
        return self.basis.shape[1]

    def worth(self, queries: int) -> bool:
        """Whether ``queries`` rows are scored more cheaply as coefficients: ``b (p - r) > p r``."""
        p, r = self.basis.shape
        return queries * (p - r) > p * r

    def coefficients(self, grads: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, r]`` ``w ⊙ Uᵀ g`` of raw gradients ``[b, p]``, computed in the basis' dtype,
        returned in the gradients' dtype and on their device."""
        out = (grads.to(device=self.basis.device, dtype=self.basis.dtype) @ self.basis) * self.weights
        return out.to(device=grads.device, dtype=grads.dtype)

    def products(self, layout: ProductLayout | None, queries: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, t]``: coefficients ``[b, r]`` against training rows ``[t, ·]``: dense gradients
        (``layout=None``) or packed factor rows of ``layout``, projected on ``U`` in the rows' dtype."""
        key = (rows.dtype, rows.device)
        if key not in self._cast:
            self._cast[key] = self.basis.to(device=rows.device, dtype=rows.dtype)
        basis = self._cast[key]
        projected = rows @ basis if layout is None else layout.project(rows, lambda start, stop: basis[start:stop])
        return queries.to(projected.dtype) @ projected.T


def low_rank(method: GradientAttributor, projector: Any, solver: Any) -> LowRank | None:
    """A member's :class:`LowRank` when its queries may be scored as coefficients: a fitted
    parameter-space solver with a low-rank solve (``solver.low_rank()``), no projector but the
    identity, and no cosine normalisation (which normalises the solved gradient); else ``None``."""
    if (solver is None or solver.space != "parameter" or method.normalize
            or (projector is not None and not projector.identity)):
        return None
    found = solver.low_rank()
    return None if found is None else LowRank(basis=found[0], weights=found[1])
