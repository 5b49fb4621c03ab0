"""Layer-wise curvature solvers: ``kfac``, ``ekfac`` (Kronecker-factored) and ``datainf``.

Parameter space: each is applied to raw test gradients before any projection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import PER_EXAMPLE, ParameterSolver, Solve, float_field, hookimpl
from attrkit.functional import datainf_ihvp_at, ekfac_ihvp_at, kfac_ihvp_at

@attrs.frozen(kw_only=True)
class KroneckerConfig:
    """Config of ``kfac`` and ``ekfac``.

    Attributes:
        regularization: damping ``λ >= 0`` added to the factored curvature as ``λI``.
    """

    regularization: float = float_field(1e-3, ge=0.0, examples=(1e-3, 0.1))


class KFACSolver(ParameterSolver):
    """``(G ⊗ A + λI)⁻¹`` per Linear/Conv layer, from the empirical Fisher's Kronecker
    factors ``A = E[ā āᵀ]`` (inputs) and ``G = E[g gᵀ]`` (output gradients), accumulated
    over the whole training set in one pass; other parameters use the diagonal Fisher.
    See :func:`~attrkit.functional.ihvp_kfac.kfac_ihvp_at`.
    """

    name: ClassVar[str] = "kfac"
    Config: ClassVar[type] = KroneckerConfig
    requires: ClassVar[frozenset[str]] = frozenset({PER_EXAMPLE})
    #: ``solve`` applies the (all-reduced) factors only: self-influence splits across ranks.
    local_solve: ClassVar[bool] = True
    solves_in_input_dtype: ClassVar[bool] = True
    fits_from_factors: ClassVar[bool] = True
    build_at: ClassVar[Callable[..., Solve]] = staticmethod(kfac_ihvp_at)

    def build(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
        state: Mapping[str, torch.Tensor],
        names: Sequence[str],
        batches: Iterable[Any],
        factors: Iterable[Any] | None = None,
    ) -> Solve:
        """Fit the factors once (from ``factors``, the training set's factored gradients, when the
        engine holds them); the ``InverseHVP`` applies them to each block."""
        return type(self).build_at(model, loss_fn, state, names, batches, regularization=self.config.regularization,
                                   factors=factors)


class EKFACSolver(KFACSolver):
    """Eigenvalue-corrected K-FAC (George et al., 2018): K-FAC's eigenbases with the
    per-example second moments in that basis as eigenvalues (a second pass over the data, or none
    when every layer has one position per example and its factors fit in memory).
    See :func:`~attrkit.functional.ihvp_kfac.ekfac_ihvp_at`."""

    name: ClassVar[str] = "ekfac"
    build_at = staticmethod(ekfac_ihvp_at)


@attrs.frozen(kw_only=True)
class DataInfConfig:
    """Config of ``datainf``.

    Attributes:
        regularization: per-layer damping ``λ_l``; ``None`` takes the paper's default
            ``0.1 × mean squared gradient entry`` of each layer.
    """

    regularization: float | None = float_field(None, gt=0.0, optional=True, examples=(None, 0.1))


class DataInfSolver(ParameterSolver):
    """DataInf's closed form (Kwon et al., 2024): per layer, the mean over training examples of
    Sherman–Morrison inverses of ``λ_l I + g_i g_iᵀ``. Each solve streams once over the
    training data (no curvature is stored); see :mod:`attrkit.functional.datainf`."""

    name: ClassVar[str] = "datainf"
    Config: ClassVar[type] = DataInfConfig
    requires: ClassVar[frozenset[str]] = frozenset({PER_EXAMPLE})

    def build(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
        state: Mapping[str, torch.Tensor],
        names: Sequence[str],
        batches: Iterable[Any],
    ) -> Solve:
        """Precompute the default dampings (one pass); each solve is one more pass."""
        return datainf_ihvp_at(model, loss_fn, state, names, batches, regularization=self.config.regularization)


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [KFACSolver, EKFACSolver, DataInfSolver]
