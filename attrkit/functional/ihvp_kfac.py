"""K-FAC and EK-FAC inverses: ``(F_l + λI)⁻¹`` per layer in the Kronecker eigenbasis.

The curvature is the block-diagonal, Kronecker-factored empirical Fisher of the mean
training loss fitted by :mod:`attrkit.functional.kfac_factors` (the conventions are there).
The public forms are :func:`kfac_ihvp_at` and :func:`ekfac_ihvp_at`; :func:`kfac_solve` and
:func:`ekfac_solve` are the solves they run on fitted factors.

Damping is added to the approximated block, ``(F_l + λI)⁻¹``, applied to ``V`` (a vector's
layer slice as ``[d_out, d_in + 1]``) as ``Q_G [(Q_Gᵀ V Q_A) / (λ_G λ_Aᵀ + λ)] Q_Aᵀ`` for
K-FAC and with ``Λ`` in the denominator for EK-FAC — damping of the product, not the
factored ``(G + √λ I) ⊗ (A + √λ I)``. Fallback parameters use the diagonal empirical
Fisher ``d = (1/n) Σ_i g_i²`` and ``v / (d + λ)``. A denominator is never numerically
zero: eigenvalues within the round-off of a layer's ``eigh`` (``max(d_out, d_in + 1) · eps``
times its largest) with a ``λ`` no larger raise a ``CurvatureError`` naming the layer and the
``regularization`` needed, instead of dividing by round-off.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import attrs
import torch

from attrkit.errors import ArgumentError, CurvatureError
from attrkit.functional.gradient_factors import FactoredGradients
from attrkit.functional.ihvp import InverseHVP, _Meter, check_finite_solve, check_regularization
from attrkit.functional.kfac_factors import EKFACFactors, KFACFactors, KroneckerLayer, fit_ekfac, fit_kfac
from attrkit.types import LossFn

__all__ = ["RankOne", "ekfac_ihvp_at", "ekfac_solve", "kfac_ihvp_at", "kfac_solve", "restore_ekfac", "restore_kfac"]


#: Elements of a block of vectors rotated into a layer's eigenbasis at once (16 MiB in float32:
#: bounds the solve's working memory while keeping its GEMMs large).
_BLOCK_ELEMENTS = 1 << 22


#: ``{weight offset: (bias offset or None, ā [m, d_in (+1)], g [m, d_out])}``: layers whose block of every
#: vector is ``g āᵀ`` (:meth:`~attrkit.functional.structured_products.ProductLayout.rank_one`).
RankOne = Mapping[int, tuple[int | None, torch.Tensor, torch.Tensor]]


def _apply(factors: KFACFactors, vectors: torch.Tensor, regularization: float,
           eigenvalues: Sequence[torch.Tensor], solver: str, rank_one: RankOne | None = None) -> torch.Tensor:
    """``vectors`` through each layer's ``Q [(Qᵀ V) / (eigenvalues + λ)] Qᵀ`` and the fallback diagonal.

    The factors are fitted in float64; the rotations run in the vectors' floating dtype (float32
    GEMMs, half the time and memory of float64; the denominators, where cancellation could
    matter, are formed and checked in float64), in blocks of at most ``_BLOCK_ELEMENTS`` per layer.
    A layer whose blocks ``rank_one`` gives as ``V = g āᵀ`` (same offsets and widths) is rotated
    from its factors, ``Q_Gᵀ V Q_A = (Q_Gᵀ g)(Q_Aᵀ ā)ᵀ``: one ``d_in × d_in`` GEMM per vector where
    ``V`` takes ``d_out`` of them.
    """
    p = sum(factors.sizes[n] for n in factors.names)
    if vectors.dim() != 2 or vectors.shape[1] != p:
        raise ArgumentError(f"expected a block of vectors Tensor[m, {p}], got shape {tuple(vectors.shape)}")
    if not regularization >= 0:
        raise ArgumentError(f"regularization must be >= 0 (damping λ added as λI), got {regularization}")
    like = factors.fallback_diagonal
    dtype = vectors.dtype if vectors.is_floating_point() else like.dtype
    rows = vectors.to(dtype=dtype, device=like.device)
    m, out = rows.shape[0], torch.empty_like(rows)
    starts = dict(zip(factors.names, itertools.accumulate((factors.sizes[n] for n in factors.names), initial=0)))
    cols = lambda name: slice(starts[name], starts[name] + factors.sizes[name])  # noqa: E731

    eps = torch.finfo(like.dtype).eps

    def denominator(values: torch.Tensor, where: str, noise: float) -> torch.Tensor:
        """``values + λ``, refused where ``values`` is numerically zero (``<= noise``) and ``λ`` is too."""
        null = values <= noise
        if bool(null.any()) and not regularization > noise:
            raise CurvatureError(
                f"{solver}: regularization={regularization:g} but the curvature of {where} is singular: {int(null.sum())} of its "
                f"{values.numel()} eigenvalues are numerically 0 (<= {noise:.3g}, round-off of the largest, "
                f"{float(values.max()):.3g}), and dividing by them gives inf or round-off noise; use regularization > "
                f"{noise:.3g} (damping λ added as λI; e.g. {1e-3 * float(values.max()):.3g}, 1e-3 of the largest)"
            )
        return values + regularization

    for layer, values in zip(factors.layers, eigenvalues, strict=True):
        d_out = layer.output_basis.shape[0]
        q_g, q_a = layer.output_basis.to(dtype), layer.input_basis.to(dtype)
        noise = max(q_g.shape[0], q_a.shape[0]) * eps * float(values.max()) if values.numel() else 0.0
        scale = denominator(values, f"layer {layer.module or '<root>'!r}", noise).to(dtype)
        step = max(1, _BLOCK_ELEMENTS // (d_out * q_a.shape[0]))
        factored = _factors_of(layer, rank_one, starts, q_a.shape[0], d_out)
        for lo in range(0, m, step):
            block = rows[lo : lo + step]
            if factored is not None:  # (Q_Gᵀ g)(Q_Aᵀ ā)ᵀ: the rotated rank-one block from its factors
                a, g = (f[lo : lo + step].to(dtype=dtype, device=like.device) for f in factored)
                rotated = (g @ q_g)[:, :, None] * (a @ q_a)[:, None, :]
            else:
                parts = [block[:, cols(layer.weight)].reshape(-1, d_out, q_a.shape[0] - (layer.bias is not None))] \
                    if layer.weight else []
                parts += [block[:, cols(layer.bias)].reshape(-1, d_out, 1)] if layer.bias else []
                rotated = q_g.T @ torch.cat(parts, 2) @ q_a
            solved = q_g @ rotated.div_(scale) @ q_a.T
            if layer.weight:
                out[lo : lo + step, cols(layer.weight)] = solved[..., : q_a.shape[0] - (layer.bias is not None)].reshape(
                    len(block), -1)
            if layer.bias:
                out[lo : lo + step, cols(layer.bias)] = solved[..., -1]
    if factors.fallback:
        flat = torch.cat([rows[:, cols(name)] for name in factors.fallback], 1)
        # a mean of squares: no cancellation, so only an exact 0 is singular
        diagonal = denominator(factors.fallback_diagonal, f"the fallback parameters {list(factors.fallback)}", 0.0)
        solved = flat / diagonal.to(dtype)
        for name, part in zip(factors.fallback, solved.split([factors.sizes[n] for n in factors.fallback], 1)):
            out[:, cols(name)] = part
    return check_finite_solve(solver, vectors, out.to(dtype=vectors.dtype, device=vectors.device))


def _factors_of(layer: KroneckerLayer, rank_one: RankOne | None, starts: Mapping[str, int], d_in: int,
                d_out: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(ā, g)`` that ``rank_one`` gives for ``layer``'s block (same weight and bias offsets, ``ā``
    ``d_in`` wide with the bias column, ``g`` ``d_out`` wide), else ``None``."""
    found = rank_one.get(starts[layer.weight]) if rank_one and layer.weight else None
    if found is None:
        return None
    bias_at, a, g = found
    same = bias_at == (starts[layer.bias] if layer.bias else None) and a.shape[1] == d_in and g.shape[1] == d_out
    return (a, g) if same else None


def kfac_solve(factors: KFACFactors, vectors: torch.Tensor, regularization: float,
               rank_one: RankOne | None = None) -> torch.Tensor:
    """``(F_kfac + λI)⁻¹ v`` for each row: ``Q_G [(Q_Gᵀ V Q_A) / (λ_G λ_Aᵀ + λ)] Q_Aᵀ`` per layer.

    The solve that :func:`kfac_ihvp_at` runs on fitted factors (a module-level helper, not
    exported from :mod:`attrkit.functional`).

    Args:
        factors: from :func:`~attrkit.functional.kfac_factors.fit_kfac`.
        vectors: ``Tensor[m, p]``, flattened in ``factors.names`` order (each parameter
            row-major, as :func:`per_example_gradients` and ``FactoredGradients.materialize``).
        regularization: ``λ >= 0``, added to the approximated curvature as ``λI``.
        rank_one: the vectors' blocks that are ``g āᵀ`` per layer, as their factors (a layer
            offset to ``(bias offset, ā, g)``): rotated from them (see :data:`RankOne`); ``vectors``
            must hold the same blocks.

    Returns:
        ``Tensor[m, p]`` in the dtype and on the device of ``vectors`` (computed in the
        factors'). Cost: ``O(m (d_out + d_in) d_out d_in)`` per layer, no pass over the data.

    Raises:
        ValueError: ``vectors`` is not ``[m, p]`` or ``λ < 0``.
        CurvatureError: (a ``ValueError``) a layer with numerically zero eigenvalues
            (``<= max(d_out, d_in + 1) · eps · max``, the round-off of its ``eigh``) and a
            ``λ`` not above that level, or a fallback parameter with a zero Fisher diagonal
            and ``λ = 0``: the message names the layer and the ``regularization`` needed.
    """
    products = [x.output_eigenvalues[:, None] * x.input_eigenvalues for x in factors.layers]
    return _apply(factors, vectors, regularization, products, "kfac", rank_one)


def ekfac_solve(factors: EKFACFactors, vectors: torch.Tensor, regularization: float,
                rank_one: RankOne | None = None) -> torch.Tensor:
    """``(F_ekfac + λI)⁻¹ v`` for each row: ``Q_G [(Q_Gᵀ V Q_A) / (Λ + λ)] Q_Aᵀ`` per layer.

    The solve that :func:`ekfac_ihvp_at` runs on fitted factors (a module-level helper, not
    exported from :mod:`attrkit.functional`).

    Args:
        factors: from :func:`~attrkit.functional.kfac_factors.fit_ekfac`.
        vectors: ``Tensor[m, p]`` as in :func:`kfac_solve`.
        regularization: ``λ >= 0``, added as ``λI``.
        rank_one: as :func:`kfac_solve`.

    Returns:
        ``Tensor[m, p]``, as :func:`kfac_solve`.

    Raises:
        ValueError: as :func:`kfac_solve`.
    """
    return _apply(factors.kfac, vectors, regularization, factors.eigenvalues, "ekfac", rank_one)


def _kronecker_ihvp_at(
    fit: Callable[..., Any], solve: Callable[..., torch.Tensor], name: str, model: torch.nn.Module, loss_fn: LossFn,
    state: Mapping[str, torch.Tensor], names: Sequence[str], batches: Iterable[Any], regularization: float,
    factor_blocks: Iterable[FactoredGradients] | None = None,
) -> InverseHVP:
    """``fit`` the factors on ``batches`` (passes counted) or ``factor_blocks``, and an
    :class:`InverseHVP` that ``solve``-s with them."""
    started = time.perf_counter()
    check_regularization(regularization)
    meter = _Meter(batches)
    factors = fit(model, loss_fn, state, names, meter, factors=factor_blocks)
    p = sum(state[n].numel() for n in names)
    saved = {"regularization": regularization, **_factors_state(factors)}
    return InverseHVP(partial(solve, factors, regularization=regularization), p, meter, started, {}, name=name,
                      state=saved)


def _factors_state(factors: KFACFactors | EKFACFactors) -> dict[str, Any]:
    """The factors as a flat ``{key: Tensor | int | str | None}`` (layouts as JSON strings)."""
    kfac = factors.kfac if isinstance(factors, EKFACFactors) else factors
    out: dict[str, Any] = {
        "names": json.dumps(list(kfac.names)), "sizes": json.dumps(dict(kfac.sizes)),
        "fallback": json.dumps(list(kfac.fallback)), "fallback_diagonal": kfac.fallback_diagonal,
        "n_examples": kfac.n_examples, "layers": len(kfac.layers),
    }
    for i, layer in enumerate(kfac.layers):
        out.update({f"layer.{i}.{f.name}": getattr(layer, f.name) for f in attrs.fields(KroneckerLayer)})
    if isinstance(factors, EKFACFactors):
        out.update({f"eigenvalues.{i}": values for i, values in enumerate(factors.eigenvalues)})
    return out


def _kfac_factors(state: Mapping[str, Any]) -> KFACFactors:
    """:class:`KFACFactors` from :func:`_factors_state`."""
    layers = tuple(KroneckerLayer(**{f.name: state[f"layer.{i}.{f.name}"] for f in attrs.fields(KroneckerLayer)})
                   for i in range(int(state["layers"])))
    return KFACFactors(names=tuple(json.loads(state["names"])), sizes=json.loads(state["sizes"]), layers=layers,
                       fallback=tuple(json.loads(state["fallback"])), fallback_diagonal=state["fallback_diagonal"],
                       n_examples=int(state["n_examples"]))


def restore_kfac(state: Mapping[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The solve of a saved :func:`kfac_ihvp_at`, from its ``InverseHVP.state`` (factors and ``regularization``)."""
    return partial(kfac_solve, _kfac_factors(state), regularization=float(state["regularization"]))


def restore_ekfac(state: Mapping[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The solve of a saved :func:`ekfac_ihvp_at`, from its ``InverseHVP.state``."""
    eigenvalues = tuple(state[f"eigenvalues.{i}"] for i in range(int(state["layers"])))
    factors = EKFACFactors(kfac=_kfac_factors(state), eigenvalues=eigenvalues)
    return partial(ekfac_solve, factors, regularization=float(state["regularization"]))


def kfac_ihvp_at(
    model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], *, regularization: float = 0.0, factors: Iterable[FactoredGradients] | None = None,
) -> InverseHVP:
    """K-FAC's ``(G ⊗ A + λI)⁻¹`` per layer (Martens & Grosse 2015): fit the factors once, solve many.

    Runs :func:`~attrkit.functional.kfac_factors.fit_kfac` once, then :func:`kfac_solve` at
    each solve.

    Args:
        model: the module ``loss_fn`` calls (its weights are not used or changed).
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, per-example training loss.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        names: selected parameters, in model order (``select_parameters``): the layout of
            the vectors.
        batches: the whole training set, in batches (any batch size: the factors are sums).
        regularization: damping ``λ >= 0``, added to the approximated curvature as ``λI``.
        factors: the training set's per-example gradients as factored blocks, read instead of
            ``batches`` (:func:`~attrkit.functional.kfac_factors.fit_kfac`).

    Returns:
        :class:`InverseHVP`. Build: one pass of ``factored_gradients`` (no example-HVPs)
        and one ``eigh`` per factor. Solve of ``m`` vectors: ``O(m (d_out + d_in) d_out d_in)``
        flops per layer, no pass over the data.

    Raises:
        ValueError: ``regularization`` not a finite number ``>= 0``.
        DataLoaderError, FactorisationError, LossShapeError: as ``fit_kfac``.
        CurvatureError: at a solve, as :func:`kfac_solve` (numerically zero eigenvalues and
            a ``λ`` not above their round-off).
    """
    return _kronecker_ihvp_at(fit_kfac, kfac_solve, "kfac", model, loss_fn, state, names, batches, regularization,
                              factors)


def ekfac_ihvp_at(
    model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
    batches: Iterable[Any], *, regularization: float = 0.0, factors: Iterable[FactoredGradients] | None = None,
) -> InverseHVP:
    """EK-FAC's ``(F_ekfac + λI)⁻¹`` per layer (George et al. 2018): K-FAC's eigenbases with
    the corrected eigenvalues ``Λ``, fitted once.

    Runs :func:`~attrkit.functional.kfac_factors.fit_ekfac` once, then :func:`ekfac_solve`
    at each solve.

    Args:
        model, loss_fn, state, names, batches, regularization, factors: as :func:`kfac_ihvp_at`;
            ``batches`` (or ``factors``) is read twice (once when every layer has one position per example).

    Returns:
        :class:`InverseHVP`. Build: two passes of ``factored_gradients`` (no example-HVPs), one when
        every layer has one position per example (:func:`~attrkit.functional.kfac_factors.fit_ekfac`).
        Solve: as :func:`kfac_ihvp_at`'s.

    Raises:
        ValueError, DataLoaderError, FactorisationError, LossShapeError, CurvatureError: as
            :func:`kfac_ihvp_at`.
    """
    return _kronecker_ihvp_at(fit_ekfac, ekfac_solve, "ekfac", model, loss_fn, state, names, batches, regularization,
                              factors)
