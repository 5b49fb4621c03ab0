"""The ``diagonal-fisher`` solver: ``v -> (diag(F) + λI)⁻¹ v`` in parameter space.

``F = (1/n) Σ_i g_i g_iᵀ`` is the empirical Fisher of the *mean* training loss over the
whole training set, ``g_i = ∇θ loss_i`` the per-example gradient (``Tensor[p]``) at the
member's weights, and only its diagonal is kept:

    d_j = (1/n) Σ_i (∂loss_i / ∂θ_j)²        (units: loss² / parameter²)

computed exactly, in float64, in one pass over the training data (per-example gradients
by ``torch.func``, :func:`attrkit.functional.per_example_gradients`). Solving is an
elementwise division, ``O(p)`` per vector, and reads no training data.

It is the cheapest curvature that still rescales each parameter by how strongly the
training set constrains it, and it is exact whenever the Fisher is diagonal (e.g. a
linear model on uncorrelated features with one example per active coordinate). It ignores
every correlation between parameters: where those matter, ``kfac``/``ekfac`` or
``explicit`` are closer to the true inverse.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, ClassVar

import attrs
import torch

from attrkit import plugin
from attrkit.functional import per_example_gradients

__all__ = ["DiagonalFisherConfig", "DiagonalFisherSolver", "diagonal_solve", "fisher_diagonal"]

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]


def fisher_diagonal(
    model: torch.nn.Module,
    loss_fn: LossFn,
    state: Mapping[str, torch.Tensor],
    names: Sequence[str],
    batches: Iterable[Any],
) -> torch.Tensor:
    """The diagonal of the empirical Fisher of the mean loss, ``d_j = (1/n) Σ_i (∂loss_i/∂θ_j)²``.

    One pass over ``batches``; each batch's per-example gradients (``Tensor[b, p]``, the
    only large allocation) are squared and summed, so memory is ``b · p`` and the result
    does not depend on how the examples are batched (up to float round-off of the sum).

    Args:
        model: the module ``loss_fn`` calls (its own weights are not used or changed).
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, one loss per example.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at; its dtype
            (float64 when called by :class:`DiagonalFisherSolver`) is the result's.
        names: the parameters differentiated, in gradient-vector order.
        batches: the whole training set, re-iterable, in any batching.

    Returns:
        ``Tensor[p]`` (``p`` the total size of ``names``), non-negative, on ``state``'s device.

    Raises:
        DataLoaderError: ``batches`` yielded no example.
        NonFiniteError: a squared gradient is NaN or infinite (overflow or bad data).
        LossShapeError: ``loss_fn`` does not return one value per example.
    """
    device = state[names[0]].device
    total: torch.Tensor | None = None
    n = 0
    for batch in batches:
        batch = plugin.to_device(batch, device)
        grads = per_example_gradients(model, loss_fn, state, batch, names)
        squares = grads.square().sum(0)
        total = squares if total is None else total.add_(squares)
        n += plugin.batch_size(batch)
    if total is None or n == 0:
        raise plugin.DataLoaderError(
            "diagonal-fisher: the training batches are empty; pass a re-iterable loader, not a one-shot generator"
        )
    if not bool(total.isfinite().all()):
        raise plugin.NonFiniteError(
            f"diagonal-fisher: the Fisher diagonal of {n} training examples holds NaN or infinite entries: some "
            "per-example gradients are not finite or their squares overflow; check the training data and weights"
        )
    return total / n


def diagonal_solve(diagonal: torch.Tensor, vectors: torch.Tensor, regularization: float) -> torch.Tensor:
    """``(diag(d) + λI)⁻¹ v`` for each row: ``v / (d + λ)``, elementwise.

    Args:
        diagonal: ``Tensor[p]``, ``d >= 0`` (:func:`fisher_diagonal`).
        vectors: ``Tensor[m, p]``, flattened in the order of ``diagonal``.
        regularization: ``λ >= 0``, added to every entry.

    Returns:
        ``Tensor[m, p]`` in the dtype and on the device of ``vectors`` (computed in ``diagonal``'s).

    Raises:
        ValueError: ``vectors`` is not ``[m, p]``.
    """
    if vectors.dim() != 2 or vectors.shape[1] != diagonal.numel():
        raise ValueError(f"expected a block of vectors Tensor[m, {diagonal.numel()}], got shape {tuple(vectors.shape)}")
    rows = vectors.to(dtype=diagonal.dtype, device=diagonal.device)
    return (rows / (diagonal + regularization)).to(dtype=vectors.dtype, device=vectors.device)


def _zero_entries(diagonal: torch.Tensor, state: Mapping[str, torch.Tensor], names: Sequence[str]) -> str:
    """``"fc.weight (3 of 12), fc.bias (1 of 3)"``: the parameters with zero Fisher entries."""
    sizes = [state[name].numel() for name in names]
    parts = []
    for name, lo, size in zip(names, itertools.accumulate(sizes, initial=0), sizes):
        zeros = int((diagonal[lo:lo + size] == 0).sum())
        if zeros:
            parts.append(f"{name} ({zeros} of {size})")
    return ", ".join(parts)


@attrs.frozen(kw_only=True)
class DiagonalFisherConfig:
    """Config of ``diagonal-fisher``.

    Attributes:
        regularization: damping ``λ >= 0`` added as ``λI`` (units of the Fisher,
            loss² / parameter²). ``λ = 0`` is allowed only when every diagonal entry is positive.
    """

    regularization: float = plugin.float_field(1e-3, ge=0.0, examples=(1e-3, 0.1))


class DiagonalFisherSolver(plugin.ParameterSolver):
    """``v -> (diag(F) + λI)⁻¹ v``, ``F`` the empirical Fisher of the mean training loss.

    Parameter space: applied to the raw test gradient (``Tensor[m, p]``) before any
    projection. ``fit`` costs one pass of per-example gradients over the training set
    (``O(n p)`` time, ``O(b p)`` memory per batch of ``b``) and keeps ``Tensor[p]``
    (float64); ``solve`` is ``O(m p)`` and reads no training data (``local_solve``).
    Per-example gradients are taken of the parameters the spec's gradient source
    differentiates (all trainable ones by default; LoRA adapters under the ``lora``
    ensemble), at each member's weights, in float64.

    Example:
        >>> spec = {"method": "if", "solver": {"name": "diagonal-fisher", "regularization": 1e-3}}
        >>> scores = attrkit.compose(spec, task).fit(train).attribute(test)  # doctest: +SKIP

    Raises:
        CurvatureError: at ``fit`` (a ``ValueError``), when ``regularization`` is 0 and a
            diagonal entry is exactly 0 (a parameter no training example's loss depends on);
            the message names the parameters and the ``regularization`` to use.
        NonFiniteError: at ``fit``, a non-finite per-example gradient.
    """

    name: ClassVar[str] = "diagonal-fisher"
    Config: ClassVar[type] = DiagonalFisherConfig
    #: per-example gradients of the training loss (every gradient source of attrkit provides them).
    requires: ClassVar[frozenset[str]] = frozenset({plugin.PER_EXAMPLE})
    #: ``solve`` divides by the fitted diagonal only.
    local_solve: ClassVar[bool] = True

    def build(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        state: Mapping[str, torch.Tensor],
        names: Sequence[str],
        batches: Iterable[Any],
    ) -> plugin.Solve:
        """Fit ``d`` (``Tensor[p]``) in one pass and return ``v -> v / (d + λ)``."""
        diagonal = fisher_diagonal(model, loss_fn, state, names, batches)
        lam = self.config.regularization
        zeros = int((diagonal == 0).sum())
        if zeros and not lam > 0:  # a mean of squares: no cancellation, so only an exact 0 is singular
            largest = float(diagonal.max())
            suggested = 1e-3 * largest if largest > 0 else 1e-3
            raise plugin.CurvatureError(
                f"diagonal-fisher: regularization=0 but {zeros} of the {diagonal.numel()} Fisher diagonal entries are 0 "
                f"(no training example's loss depends on them: {_zero_entries(diagonal, state, names)}), and "
                f"dividing by them gives inf; use regularization > 0 (damping λ added as λI; e.g. {suggested:.3g}, "
                "1e-3 of the largest entry), or leave those parameters out (gradients.params)"
            )
        return partial(diagonal_solve, diagonal, regularization=lam)


@plugin.hookimpl
def attrkit_components() -> list[type]:
    """The classes this plugin registers."""
    return [DiagonalFisherSolver]
