"""K-FAC and EK-FAC factors: Kronecker-factored curvature of the mean training loss, fitted.

The curvature is the empirical Fisher of the mean loss over the *whole* training set,
``F = (1/n) Σ_i g_i g_iᵀ`` (``g_i`` the per-example gradient), approximated block-diagonally:
one block per factored layer (``nn.Linear``, ``nn.Conv1d/2d``, see
:mod:`attrkit.functional.factored`) and the diagonal empirical Fisher
``d = (1/n) Σ_i g_i²`` for the other (fallback) parameters.
:mod:`attrkit.functional.ihvp_kfac` inverts it.

A layer's per-example gradient is ``G_i = Σ_t g_{i,t} ā_{i,t}ᵀ``, ``Tensor[d_out, d_in + 1]``:
``g_{i,t}`` the output gradient and ``ā_{i,t} = [a_{i,t}, 1]`` the input at position ``t``
(the column of ones only with a bias, bias last). Flattened row-major,
``vec(G_i) = Σ_t g_{i,t} ⊗ ā_{i,t}``, and K-FAC takes ``F_l ≈ G ⊗ A`` with

    A = (1/N) Σ_i Σ_t ā_{i,t} ā_{i,t}ᵀ    (N = Σ_i T_i: mean over examples and positions)
    G = (1/n) Σ_i Σ_t g_{i,t} g_{i,t}ᵀ    (mean over examples of the sum over positions)

With one position (``T = 1``) these are ``E[ā āᵀ]`` and ``E[g gᵀ]`` (Martens & Grosse 2015),
and ``G ⊗ A`` is the exact ``F_l`` whenever ``g`` and ``ā`` do not co-vary, e.g. for one
example or for examples that share one input. With ``T`` positions (sequences, convolution
patches) cross-position terms are dropped and ``Σ_t E[g_t g_tᵀ] ⊗ E[ā_t ā_tᵀ]`` is
approximated by ``G ⊗ A``: "K-FAC-expand" (Eschenhagen et al. 2023), the same product as
KFC's ``Ω ⊗ Γ`` (Grosse & Martens 2016), which only puts the factor ``T`` on the other side.

EK-FAC (George et al. 2018) keeps K-FAC's eigenbasis ``Q_G ⊗ Q_A`` (``A = Q_A diag(λ_A) Q_Aᵀ``,
``G = Q_G diag(λ_G) Q_Gᵀ``) and replaces the eigenvalues ``λ_G λ_Aᵀ`` by the exact diagonal
of ``F_l`` in that basis, ``Λ = (1/n) Σ_i (Q_Gᵀ G_i Q_A)²`` (elementwise square): the ``F_l``
of the form ``(Q_G ⊗ Q_A) diag (Q_G ⊗ Q_A)ᵀ`` that is closest to the true one in Frobenius
norm. It needs the eigenbasis, so a second pass over the data, unless every layer has one
position per example: then ``G_i = g_i ā_iᵀ`` is rank one, and the first pass keeps each
example's ``ā_i`` and ``g_i`` (within the memory budget of :class:`_KeptFactors`) to correct
from.

Each pass over the data shows a progress bar (:func:`attrkit.progress.progress`; silent under
``ATTRKIT_PROGRESS=0``), and so do the eigendecompositions.

Factors are kept in the parameters' dtype and device; sums are accumulated batch by batch,
so the result does not depend on how the training set is batched. In distributed mode
(:mod:`attrkit.distributed`) each rank accumulates its shard of the batches and the sums
are all-reduced before the eigendecompositions, so every rank holds the same factors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import torch

from attrkit import distributed
from attrkit.data import batch_size, to_device
from attrkit.errors import DataLoaderError
from attrkit.functional.factored import FactorPlan, factored_gradients, plan_factors
from attrkit.functional.gradient_factors import FactoredGradients, LayerFactors
from attrkit.memory import DEFAULT_FRACTION, available_bytes
from attrkit.progress import length_of, progress
from attrkit.types import LossFn

__all__ = ["EKFACFactors", "KFACFactors", "KroneckerLayer", "fit_ekfac", "fit_kfac"]

#: Eigenvector entries dropped (unit-norm columns: a change far below float64 round-off).
_NEGLIGIBLE = 1e-20
#: Elements of the per-example rotated gradients ``[b, d_out, d_in + 1]`` formed at once by EK-FAC's second pass.
_CHUNK = 1 << 24


@attrs.frozen(kw_only=True, eq=False)
class KroneckerLayer:
    """One factored layer's K-FAC factors and their eigendecompositions.

    Attributes:
        module: the module's name (``"fc1"``).
        weight: the weight's parameter name, or ``None`` when it is not selected.
        bias: the bias's parameter name, or ``None``.
        input_covariance: ``A``, ``Tensor[d_in + 1, d_in + 1]`` (``d_in`` without a bias;
            ``d_in = 0`` without a selected weight).
        output_covariance: ``G``, ``Tensor[d_out, d_out]``.
        input_eigenvalues: ``λ_A``, ``Tensor[d_in + 1]``, clamped at 0.
        input_basis: ``Q_A``, ``Tensor[d_in + 1, d_in + 1]``, eigenvectors as columns.
        output_eigenvalues: ``λ_G``, ``Tensor[d_out]``, clamped at 0.
        output_basis: ``Q_G``, ``Tensor[d_out, d_out]``, eigenvectors as columns.
    """

    module: str
    weight: str | None
    bias: str | None
    input_covariance: torch.Tensor = attrs.field(repr=False)
    output_covariance: torch.Tensor = attrs.field(repr=False)
    input_eigenvalues: torch.Tensor = attrs.field(repr=False)
    input_basis: torch.Tensor = attrs.field(repr=False)
    output_eigenvalues: torch.Tensor = attrs.field(repr=False)
    output_basis: torch.Tensor = attrs.field(repr=False)


@attrs.frozen(kw_only=True, eq=False)
class KFACFactors:
    """K-FAC curvature of the mean training loss, from :func:`fit_kfac`.

    Attributes:
        names: every selected parameter in model order: the layout of the vectors solved.
        sizes: ``{parameter: numel}``.
        layers: the factored layers, in model order.
        fallback: the other selected parameters, in model order.
        fallback_diagonal: ``Tensor[q]``, the diagonal empirical Fisher of ``fallback``
            (concatenated, each flattened row-major).
        n_examples: ``n``, the number of training examples.
    """

    names: tuple[str, ...]
    sizes: Mapping[str, int]
    layers: tuple[KroneckerLayer, ...]
    fallback: tuple[str, ...]
    fallback_diagonal: torch.Tensor = attrs.field(repr=False)
    n_examples: int


@attrs.frozen(kw_only=True, eq=False)
class EKFACFactors:
    """EK-FAC curvature, from :func:`fit_ekfac`: K-FAC's eigenbases with corrected eigenvalues.

    Attributes:
        kfac: the K-FAC factors (eigenbases, fallback diagonal, layout).
        eigenvalues: per layer of ``kfac.layers``, ``Λ``: ``Tensor[d_out, d_in + 1]``.
    """

    kfac: KFACFactors
    eigenvalues: tuple[torch.Tensor, ...] = attrs.field(repr=False)


def _stream(model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], plan: FactorPlan,
            batches: Iterable[Any], visit: Callable[[FactoredGradients], None], desc: str = "factored pass",
            factors: Iterable[FactoredGradients] | None = None) -> int:
    """``visit`` each of this rank's batches' factored per-example gradients (every batch
    when not distributed), under a progress bar labelled ``desc``, or each block of ``factors``
    when given (``batches`` is then not read); returns the number of examples visited."""
    n = 0
    if factors is not None:
        for grads in progress(factors, desc, total=length_of(factors)):
            visit(grads)
            n += grads.shape[0]
        return n
    device = state[plan.names[0]].device
    total = length_of(batches) if distributed.world() is None else None
    for batch in progress(distributed.shard(batches), desc, total=total):
        batch = to_device(batch, device)
        visit(factored_gradients(model, loss_fn, state, batch, plan))
        n += batch_size(batch)
    return n


def _reduce(sums: Sequence[torch.Tensor], counts: Sequence[int]) -> list[int]:
    """Sum ``sums`` (in place) and ``counts`` over ranks; ``counts[0]`` is the number of examples.

    Raises:
        DataLoaderError: no rank saw an example.
    """
    counts = distributed.sum_over_ranks(sums, counts)
    if counts[0] == 0:
        raise DataLoaderError("the training batches are empty; pass a re-iterable loader, not a one-shot generator")
    return counts


def _extended_inputs(layer: LayerFactors) -> torch.Tensor:
    """``ā``: ``Tensor[b, T, d_in (+1)]``, the inputs with a column of ones when the layer has a bias."""
    if layer.bias is None:
        return layer.inputs
    return torch.cat([layer.inputs, layer.inputs.new_ones(*layer.inputs.shape[:-1], 1)], -1)


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(λ clamped at 0, Q)``, with the entries of ``Q`` below ``_NEGLIGIBLE`` set to 0: in a float32
    solve they and their products with gradient entries would be subnormal, and every operation on a
    subnormal runs at a small fraction of the GEMM rate (MNIST-LR's input basis has such entries,
    mixing inside the null space of always-zero pixels, and they halved EK-FAC's solve speed)."""
    values, vectors = torch.linalg.eigh(matrix)
    return values.clamp_min(0), vectors.masked_fill_(vectors.abs() < _NEGLIGIBLE, 0.0)


class _KeptFactors:
    """EK-FAC's correction without a second pass: each batch's ``ā`` ``Tensor[b, d_in (+1)]`` and
    ``g`` ``Tensor[b, d_out]`` of every layer, kept from the K-FAC pass while every layer has one
    position per example and they take at most ``budget`` bytes (:data:`attrkit.memory.DEFAULT_FRACTION`
    of the memory available on the parameters' device; none when it is unknown).

    Past the budget, or at a layer with more positions, ``usable`` turns false and what was kept is
    dropped: the second pass runs instead, on the same batches, with the same arithmetic.
    """

    def __init__(self, n_layers: int, device: torch.device):
        free = available_bytes(device)
        self.budget = None if free is None else int(free * DEFAULT_FRACTION)
        self.batches: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(n_layers)]
        self.nbytes, self.usable = 0, True

    def add(self, j: int, layer: LayerFactors, a: torch.Tensor, g: torch.Tensor) -> None:
        """Keep layer ``j``'s ``a`` (``ā``) and ``g`` of one batch (flattened over positions)."""
        if not self.usable:
            return
        size = a.numel() * a.element_size() + g.numel() * g.element_size()
        if layer.inputs.shape[1] != 1 or (self.budget is not None and self.nbytes + size > self.budget):
            self.usable, self.nbytes, self.batches = False, 0, []
            return
        self.nbytes += size
        self.batches[j].append((a, g))


def fit_kfac(model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
             batches: Iterable[Any], kept: _KeptFactors | None = None,
             factors: Iterable[FactoredGradients] | None = None) -> KFACFactors:
    """K-FAC factors ``A``, ``G`` of every factored layer and the fallback diagonal, in one pass:
    the fit that :func:`~attrkit.functional.ihvp_kfac.kfac_ihvp_at` runs (a module-level
    helper, not exported from :mod:`attrkit.functional`).

    Args:
        model: the module ``loss_fn`` calls (its weights are not used or changed).
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, per-example training loss.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        names: selected parameters, in model order (``select_parameters``).
        batches: the whole training set, in batches (any batch size: the factors are sums).
        kept: where :func:`fit_ekfac` keeps the one-position layers' ``ā`` and ``g`` (private).
        factors: the training set's per-example gradients at ``state`` as factored blocks of
            ``plan_factors(model, names)`` (re-iterable, e.g. unpacked from rows an attributor
            holds), read instead of a pass over ``batches``. Blocks in float32 are multiplied in
            float32 and summed in the parameters' dtype (float64 behind a parameter-space solver).

    Returns:
        :class:`KFACFactors` in the parameters' dtype and device (conventions in the module
        docstring). Cost: one pass of :func:`factored_gradients`, plus one ``eigh`` per factor.
        Memory: ``(d_in + 1)² + d_out²`` per layer.

    Raises:
        DataLoaderError: ``batches`` yields no example.
        FactorisationError, LossShapeError: as :func:`factored_gradients`.
    """
    plan = plan_factors(model, names)
    like = state[names[0]]
    sums = []
    for _, weight, bias in plan.layers:
        d_out = state[weight].shape[0] if weight else state[bias].numel()
        d_in = (state[weight].numel() // d_out if weight else 0) + (bias is not None)
        sums.append((like.new_zeros(d_in, d_in), like.new_zeros(d_out, d_out)))
    positions = [0] * len(plan.layers)
    diagonal = like.new_zeros(sum(state[name].numel() for name in plan.fallback))

    def visit(grads: FactoredGradients) -> None:
        for j, (layer, (a_sum, g_sum)) in enumerate(zip(grads.layers, sums, strict=True)):
            a, g = _extended_inputs(layer).flatten(0, 1), layer.output_grads.flatten(0, 1)
            a_sum += a.T @ a
            g_sum += g.T @ g
            positions[j] += a.shape[0]
            if kept is not None:
                kept.add(j, layer, a, g)
        diagonal.add_(grads.dense.square().sum(0))

    n = _stream(model, loss_fn, state, plan, batches, visit, "K-FAC: factor pass (A, G)", factors)
    n, *positions = _reduce([t for pair in sums for t in pair] + [diagonal], [n, *positions])
    layers = []
    eigh_bar = progress(zip(plan.layers, sums, positions, strict=True), "K-FAC: eigendecompositions",
                        total=len(plan.layers))
    for (module, weight, bias), (a_sum, g_sum), count in eigh_bar:
        a_cov, g_cov = a_sum / max(count, 1), g_sum / n
        (a_val, a_vec), (g_val, g_vec) = _eigh(a_cov), _eigh(g_cov)
        layers.append(KroneckerLayer(
            module=module, weight=weight, bias=bias, input_covariance=a_cov, output_covariance=g_cov,
            input_eigenvalues=a_val, input_basis=a_vec, output_eigenvalues=g_val, output_basis=g_vec,
        ))
    sizes = {name: state[name].numel() for name in names}
    return KFACFactors(names=tuple(names), sizes=sizes, layers=tuple(layers), fallback=plan.fallback,
                       fallback_diagonal=diagonal / n, n_examples=n)


def fit_ekfac(model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], names: Sequence[str],
              batches: Iterable[Any], factors: Iterable[FactoredGradients] | None = None) -> EKFACFactors:
    """EK-FAC: :func:`fit_kfac`, then a second pass for the corrected eigenvalues ``Λ``: the
    fit that :func:`~attrkit.functional.ihvp_kfac.ekfac_ihvp_at` runs (a module-level helper,
    not exported from :mod:`attrkit.functional`).

    ``Λ = (1/n) Σ_i (Q_Gᵀ G_i Q_A)²`` per layer, ``G_i = Σ_t g_{i,t} ā_{i,t}ᵀ`` the exact
    per-example gradient of the layer (George et al. 2018).

    Args:
        model, loss_fn, state, names, batches, factors: as :func:`fit_kfac`; ``batches`` (or
            ``factors``) is read twice, or once (below).

    Returns:
        :class:`EKFACFactors`. Cost: one or two passes of :func:`factored_gradients`. A layer with
        one position per example adds ``(g_i Q_G)²ᵀ (ā_i Q_A)²`` as one GEMM per batch
        (``(Q_Gᵀ g āᵀ Q_A)²`` of a rank-one gradient is that outer product); when every layer has
        one position and their ``ā`` and ``g`` (``n Σ_l (d_in + 1 + d_out)`` elements) fit
        :class:`_KeptFactors`'s budget, the K-FAC pass keeps them and there is no second pass
        (the same products, bit for bit). Otherwise the second pass runs, and a sequence or
        convolution layer forms the rotated per-example gradients ``[b, d_out, d_in + 1]`` in
        chunks of at most ``2**24`` elements.

    Raises:
        DataLoaderError, FactorisationError, LossShapeError: as :func:`fit_kfac`.
    """
    plan = plan_factors(model, names)
    kept = _KeptFactors(len(plan.layers), state[names[0]].device)
    kfac = fit_kfac(model, loss_fn, state, names, batches, kept, factors)
    sums = [torch.zeros_like(x.output_eigenvalues[:, None] * x.input_eigenvalues) for x in kfac.layers]

    def rank_one(total: torch.Tensor, fitted: KroneckerLayer, a: torch.Tensor, g: torch.Tensor) -> None:
        """Add ``Σ_i (Q_Gᵀ g_i ā_iᵀ Q_A)²`` of a batch's rows ``a`` ``[b, d_in (+1)]`` and ``g`` ``[b, d_out]``."""
        q_g, q_a = fitted.output_basis.to(g.dtype), fitted.input_basis.to(a.dtype)
        total += (g @ q_g).square().T @ (a @ q_a).square()

    if all(distributed.all_ranks(kept.usable)):
        count = len(kept.batches[0]) if kept.batches else 0
        for j in progress(range(count), "EK-FAC: eigenvalue correction (factors kept from the K-FAC pass)", total=count):
            for total, fitted, pairs in zip(sums, kfac.layers, kept.batches, strict=True):
                rank_one(total, fitted, *pairs[j])
        del kept
        distributed.sum_over_ranks(sums)
        return EKFACFactors(kfac=kfac, eigenvalues=tuple(total / kfac.n_examples for total in sums))
    del kept

    def visit(grads: FactoredGradients) -> None:
        for j, (total, fitted) in enumerate(zip(sums, kfac.layers, strict=True)):
            layer = grads.layers[j]
            if layer.inputs.shape[1] == 1:  # G_i = g_i āᵀ_i is rank one: its rotated square is too
                rank_one(total, fitted, _extended_inputs(layer)[:, 0], layer.output_grads[:, 0])
                continue
            step = max(1, _CHUNK // total.numel())
            for start in range(0, grads.shape[0], step):
                part = grads[start : start + step].layers[j]
                total += part.project(fitted.input_basis, fitted.output_basis).square().sum(0).view_as(total)

    (n,) = _reduce(sums, [_stream(model, loss_fn, state, plan, batches, visit, "EK-FAC: eigenvalue-correction pass",
                                  factors)])
    return EKFACFactors(kfac=kfac, eigenvalues=tuple(total / n for total in sums))

