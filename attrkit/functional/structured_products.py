"""Exact inner products of per-example gradients from their per-layer factors.

For a factored layer (``nn.Linear``, unfolded ``nn.Conv1d/2d``, a Linear over a sequence) an
example's gradient is ``Σ_s g_s ⊗ ā_s`` over its positions ``s`` (``ā_s = [a_s, 1]`` with a
bias, see :mod:`attrkit.functional.gradient_factors`), so the inner product of two examples'
gradients is

    ⟨∇ℓ_i, ∇ℓ_t⟩ = Σ_layers Σ_{s,s'} (ā_is · ā_ts')(g_is · g_ts')  +  ⟨dense_i, dense_t⟩

at ``T_i T_t (d_in + d_out)`` flops per pair and layer instead of ``d_in d_out``, and the
gradient is never formed. A :class:`ProductLayout` says, per layer, whether it is kept as
factors (*structured*) or materialised into the dense part, and packs a block of
:class:`~attrkit.functional.gradient_factors.FactoredGradients` into one row per example
(:meth:`ProductLayout.pack`); :meth:`ProductLayout.products` is then the Gram block between
two packed blocks, equal to ``materialize() @ materialize().T`` to float round-off.

A packed row stands for a gradient vector ``v`` (in another parameter order than
``materialize``); :meth:`ProductLayout.scale` multiplies ``v`` (its ``g`` parts and dense
part), :meth:`ProductLayout.normalize` makes ``‖v‖ = 1`` without overflow.

A *solved* query ``u = H⁻¹ ∇ℓ_t`` (any parameter-space preconditioner) is dense, but its inner
product with a packed training row still needs no training gradient:
:meth:`ProductLayout.solved_products` reads each layer's slice of ``u`` as a matrix ``U_l``
(``[d_out, d_in (+1)]``) and takes ``Σ_s g_isᵀ U_l ā_is``, ``T d_in d_out`` flops per pair and layer:
the dense product's when ``T = 1`` (:func:`cheaper_solved`), without forming or storing the
``p``-wide training gradients.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import attrs
import torch

from attrkit.errors import FactorisationError
from attrkit.functional.factored_plan import FactorPlan
from attrkit.functional.gradient_factors import FactoredGradients, LayerFactors

__all__ = ["LayerSlot", "ProductLayout", "cheaper_solved", "cheaper_structured", "product_layout"]

#: Most elements of one ``[b, T, t, T]`` position-pair temporary of :meth:`ProductLayout.products`.
_PAIR_ELEMENTS = 1 << 24
#: Most elements of one ``[t', T, b, d]`` temporary of :meth:`ProductLayout.solved_products` (4 MiB in
#: float32: it is reduced while still in cache).
_SOLVED_ELEMENTS = 1 << 20


def cheaper_structured(positions: int, d_in: int, d_out: int) -> bool:
    """Whether a layer's factors give cheaper pair products than its dense gradient:
    ``T² (d_in + d_out) < d_in d_out`` (``d_in`` with the bias column)."""
    return positions * positions * (d_in + d_out) < d_in * d_out


def cheaper_solved(positions: int) -> bool:
    """Whether a layer's factors cost no more than its dense gradient in products with solved
    (dense) queries: ``T d_in d_out <= d_in d_out``, one position per example."""
    return positions == 1


@attrs.frozen(kw_only=True)
class LayerSlot:
    """One factored layer's place in a packed row.

    Attributes:
        module: the module's name in the model.
        positions: ``T``, positions per example kept (fewer are zero-padded, exactly).
        d_in: input width, with the bias column when the bias is selected.
        d_out: output width.
        structured: kept as factors (``T * (d_in + d_out)`` columns); else materialised
            into the dense part.
        weight_at, bias_at: where the weight (``d_out × d_in`` row-major) and the bias start in
            the flat gradient (``materialize`` order), ``None`` when not selected (or in a layout
            recorded before they were kept: it takes no solved products).
    """

    module: str
    positions: int
    d_in: int
    d_out: int
    structured: bool
    weight_at: int | None = None
    bias_at: int | None = None

    @property
    def columns(self) -> int:
        """Columns the factors take in a packed row (0 for a materialised layer)."""
        return self.positions * (self.d_in + self.d_out) if self.structured else 0


def _extended_inputs(layer: LayerFactors) -> torch.Tensor:
    """``Tensor[b, T, d_in (+1)]``: the inputs, with a column of ones when the bias is selected."""
    if layer.bias is None:
        return layer.inputs
    ones = layer.inputs.new_ones(*layer.inputs.shape[:2], 1)
    return torch.cat([layer.inputs, ones], 2)


@attrs.frozen(kw_only=True)
class ProductLayout:
    """Which layers are kept as factors, and the packed row of a block of gradients.

    Attributes:
        layers: one :class:`LayerSlot` per factored layer, in the order of the gradients' layers.
        dense: width of the dense part (fallback parameters and materialised layers).
        dense_at: ``(start, numel)`` in the flat gradient of each parameter of the dense part, in
            its column order (empty in a layout recorded before they were kept).
    """

    layers: tuple[LayerSlot, ...]
    dense: int
    dense_at: tuple[tuple[int, int], ...] = ()

    @property
    def width(self) -> int:
        """Columns of a packed row."""
        return sum(slot.columns for slot in self.layers) + self.dense

    @property
    def structured(self) -> bool:
        """Whether at least one layer is kept as factors."""
        return any(slot.structured for slot in self.layers)

    def to_dict(self) -> dict:
        """A JSON-able record (:meth:`from_dict` reads it back)."""
        return {"dense": self.dense, "layers": [attrs.asdict(slot) for slot in self.layers],
                "dense_at": [list(pair) for pair in self.dense_at]}

    @classmethod
    def from_dict(cls, record: dict) -> ProductLayout:
        """The layout :meth:`to_dict` recorded."""
        return cls(layers=tuple(LayerSlot(**slot) for slot in record["layers"]), dense=int(record["dense"]),
                   dense_at=tuple((int(a), int(n)) for a, n in record.get("dense_at", ())))

    # -- packing ---------------------------------------------------------------------------

    def pack(self, grads: FactoredGradients) -> torch.Tensor:
        """``Tensor[b, width]``: per structured layer ``[ā (T d_in), g (T d_out)]``, then the dense part.

        Raises:
            FactorisationError: the block has other layers, or more positions than the layout keeps.
        """
        b = grads.shape[0]
        if len(grads.layers) != len(self.layers):
            raise FactorisationError(f"the gradients have {len(grads.layers)} factored layers, the product layout "
                                     f"{len(self.layers)}")
        parts, dense = [], [grads.dense]
        for slot, layer in zip(self.layers, grads.layers):
            if not slot.structured:
                dense.extend(v.reshape(b, -1) for v in layer.materialize().values())
                continue
            a, g = _extended_inputs(layer), layer.output_grads
            short = slot.positions - a.shape[1]
            if short < 0:
                raise FactorisationError(
                    f"layer {slot.module!r} has {a.shape[1]} positions in this batch, more than the {slot.positions} "
                    "of the first training batch its product layout was made for: pad every batch to one length, "
                    "or use dense products (gradients: {\"name\": \"per-example\", \"products\": \"dense\"})"
                )
            if short:  # zero positions add nothing to any product
                a = torch.nn.functional.pad(a, (0, 0, 0, short))
                g = torch.nn.functional.pad(g, (0, 0, 0, short))
            parts += [a.reshape(b, -1), g.reshape(b, -1)]
        packed = torch.cat([*parts, *dense], 1)
        if packed.shape[1] != self.width:
            raise FactorisationError(f"packed gradients have {packed.shape[1]} columns, the layout {self.width}")
        return packed

    def unpack(self, x: torch.Tensor, plan: FactorPlan, sizes: Mapping[str, int]) -> FactoredGradients:
        """The :class:`~attrkit.functional.gradient_factors.FactoredGradients` packed rows ``x``
        (``[b, width]``) stand for, when every layer is kept as factors: the layers of ``plan``
        (the factor plan the rows were packed from), ``sizes`` ``{parameter: numel}``.

        Raises:
            FactorisationError: a materialised layer (its factors are gone), or a layout that is
                not ``plan``'s.
        """
        if not all(slot.structured for slot in self.layers):
            raise FactorisationError("packed rows with materialised layers cannot be unpacked into factors")
        if [slot.module for slot in self.layers] != [module for module, _, _ in plan.layers] or \
                self.dense != sum(sizes[n] for n in plan.fallback):
            raise FactorisationError("packed rows of another factor plan than the one given")
        layers, dense = self._views(x)
        out = []
        for (module, weight, bias), (_, a, g) in zip(plan.layers, layers):
            inputs = a[..., :-1] if bias is not None else a  # drop ā's column of ones
            out.append(LayerFactors(module=module, weight=weight, bias=bias, inputs=inputs, output_grads=g))
        return FactoredGradients(names=plan.names, sizes=sizes, layers=tuple(out), dense=dense,
                                 dense_names=plan.fallback)

    def _views(self, x: torch.Tensor) -> tuple[list[tuple[int, torch.Tensor, torch.Tensor]], torch.Tensor]:
        """``([(T, ā [b, T, d_in], g [b, T, d_out]) per structured layer], dense [b, q])`` views of packed rows."""
        b, out, start = x.shape[0], [], 0
        for slot in self.layers:
            if slot.structured:
                t, size_a = slot.positions, slot.positions * slot.d_in
                a = x[:, start : start + size_a].reshape(b, t, slot.d_in)
                g = x[:, start + size_a : start + slot.columns].reshape(b, t, slot.d_out)
                out.append((t, a, g))
                start += slot.columns
        return out, x[:, start:]

    def rank_one(self, x: torch.Tensor) -> dict[int, tuple[int | None, torch.Tensor, torch.Tensor]]:
        """``{weight_at: (bias_at, ā [b, d_in], g [b, d_out])}`` of every structured layer with one position
        per example and a recorded weight: the rows' gradient block there is ``g āᵀ`` (the bias ``g ā[-1]``
        when ``bias_at`` is not ``None``, ``ā``'s last column then being 1). Views of ``x`` (``[b, width]``)."""
        layers, _ = self._views(x)
        slots = [slot for slot in self.layers if slot.structured]
        return {slot.weight_at: (slot.bias_at, a[:, 0], g[:, 0])
                for slot, (t, a, g) in zip(slots, layers) if t == 1 and slot.weight_at is not None}

    # -- products --------------------------------------------------------------------------

    def products(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, t]``: ``⟨v(q_j), v(x_i)⟩`` for packed rows ``q`` (``[b, width]``) and ``x`` (``[t, width]``).

        Equals ``Q @ X.T`` of the materialised gradients to float round-off. Cost per pair:
        ``Σ_structured T² (d_in + d_out) + dense``; a ``[b, T, t', T]`` temporary per layer
        with ``T > 1`` (``t'`` rows of ``x`` at a time, at most 16M elements).
        """
        q_layers, q_dense = self._views(q)
        x_layers, x_dense = self._views(x)
        out = q_dense @ x_dense.T
        b = q.shape[0]
        for (t, qa, qg), (_, xa, xg) in zip(q_layers, x_layers):
            if t == 1:
                out += (qa[:, 0] @ xa[:, 0].T).mul_(qg[:, 0] @ xg[:, 0].T)
                continue
            step = max(1, _PAIR_ELEMENTS // (b * t * t))
            for lo in range(0, x.shape[0], step):
                hi = min(lo + step, x.shape[0])
                pa = (qa.reshape(b * t, -1) @ xa[lo:hi].reshape((hi - lo) * t, -1).T).view(b, t, hi - lo, t)
                pg = (qg.reshape(b * t, -1) @ xg[lo:hi].reshape((hi - lo) * t, -1).T).view(b, t, hi - lo, t)
                out[:, lo:hi] += pa.mul_(pg).sum((1, 3))
        return out

    def solved_products(self, u: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, t]``: ``⟨u_j, v(x_i)⟩`` for dense vectors ``u`` (``[b, p]``, ``materialize``
        order, e.g. solved queries) and packed rows ``x`` (``[t, width]``).

        Equals ``u @ materialize().T`` to float round-off. Cost per pair: ``Σ_structured T d_in
        d_out + dense``, in one GEMM per layer and chunk of ``x`` (temporaries of at most 1M
        elements: ``[t', T, b, min(d_in, d_out)]``).

        Raises:
            FactorisationError: a layout recorded without the parameters' places, or ``u`` of
                another width than the gradients it was made from.
        """
        p = self.flat_width("score solved queries")
        if u.shape[1] != p:
            raise FactorisationError(f"solved queries have {u.shape[1]} columns, the gradients of this layout {p}")
        x_layers, x_dense = self._views(x)
        columns = [torch.arange(a, a + n, device=u.device) for a, n in self.dense_at]
        out = u[:, torch.cat(columns)] @ x_dense.T if columns else u.new_zeros(u.shape[0], x.shape[0])
        b = u.shape[0]
        slots = [slot for slot in self.layers if slot.structured]
        for slot, (t, a, g) in zip(slots, x_layers):
            parts = []
            if slot.weight_at is not None:
                d_raw = slot.d_in - (slot.bias_at is not None)
                parts.append(u[:, slot.weight_at : slot.weight_at + slot.d_out * d_raw].reshape(b, slot.d_out, d_raw))
            if slot.bias_at is not None:
                parts.append(u[:, slot.bias_at : slot.bias_at + slot.d_out, None])
            m = torch.cat(parts, 2) if len(parts) > 1 else parts[0]  # U_l: [b, d_out, d_in]
            if slot.d_out <= slot.d_in:  # contract ā with U_l first: the temporary is [.., b, d_out]
                left, right, weights = a, m.reshape(b * slot.d_out, slot.d_in), g
            else:
                left, right, weights = g, m.transpose(1, 2).reshape(b * slot.d_in, slot.d_out), a
            width = weights.shape[2]
            step = max(1, _SOLVED_ELEMENTS // (t * b * width))
            for lo in range(0, x.shape[0], step):
                hi = min(lo + step, x.shape[0])
                y = (left[lo:hi].reshape((hi - lo) * t, -1) @ right.T).view(hi - lo, t * b, width)
                y = y.view(hi - lo, t, b, width).transpose(1, 2).reshape(hi - lo, b, t * width) if t > 1 else y
                out[:, lo:hi] += torch.bmm(y, weights[lo:hi].reshape(hi - lo, t * width, 1))[..., 0].T
        return out

    def project(self, x: torch.Tensor, rows: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
        """``Tensor[b, k]``: ``materialize(x) @ P`` for packed rows ``x`` (``[b, width]``), without
        forming the gradients; ``rows(start, stop)`` gives ``P[start:stop]`` (``[stop - start, k]``,
        ``x``'s dtype) for rows of the flat gradient (``materialize`` order).

        Per structured layer, ``Σ_s g_s ⊗ ā_s`` meets its block of ``P`` (``[d_out, d_in, k]``) as
        one ``[b T, d_in] @ [d_in, k]`` GEMM per output row (per input column when ``d_out >
        d_in``), whose result the other factor weights: the dense projection's ``d_in d_out k``
        flops per example when ``T = 1`` (:func:`cheaper_solved`), ``T`` times them otherwise. The
        bias is the gradient ``Σ_s g_s`` times its ``d_out`` rows. Equals the dense projection to
        float round-off.

        Raises:
            FactorisationError: a layout recorded without the parameters' places.
        """
        self.flat_width("project from factors")
        layers, dense = self._views(x)
        b, out, column = x.shape[0], None, 0
        for start, size in self.dense_at:
            part = dense[:, column : column + size] @ rows(start, start + size)
            out = part if out is None else out.add_(part)
            column += size
        for slot, (t, a, g) in zip([slot for slot in self.layers if slot.structured], layers):
            d_raw = slot.d_in - (slot.bias_at is not None)
            if slot.bias_at is not None:  # the bias gradient Σ_s g_s ā_s[-1] (ā's column of ones)
                part = (g * a[:, :, d_raw:]).sum(1) @ rows(slot.bias_at, slot.bias_at + slot.d_out)
                out = part if out is None else out.add_(part)
            if slot.weight_at is None:
                continue
            block = rows(slot.weight_at, slot.weight_at + slot.d_out * d_raw).view(slot.d_out, d_raw, -1)
            inputs, outputs = a[:, :, :d_raw], g
            if slot.d_out > d_raw:  # loop over the narrower side: one GEMM per input column
                inputs, outputs, block = outputs, inputs, block.transpose(0, 1)
            flat = inputs.reshape(b * t, -1)
            for j in range(outputs.shape[2]):
                part = (flat @ block[j]).view(b, t, -1)
                part = part.mul_(outputs[:, :, j : j + 1]).sum(1) if t > 1 else part[:, 0].mul_(outputs[:, 0, j : j + 1])
                out = part if out is None else out.add_(part)
        if out is None:
            raise FactorisationError("this product layout holds no parameters to project")
        return out

    def flat_width(self, purpose: str) -> int:
        """``p``, the width of the flat gradients the rows stand for.

        Raises:
            FactorisationError: a layout recorded without the parameters' places.
        """
        if len(self.dense_at) == 0 and self.dense or any(
                slot.structured and slot.weight_at is None and slot.bias_at is None for slot in self.layers):
            raise FactorisationError("this product layout does not record where its parameters lie in the flat "
                                     f"gradient (saved by an older attrkit): fit again to {purpose}")
        return sum(n for _, n in self.dense_at) + sum(slot.d_out * slot.d_in for slot in self.layers if slot.structured)

    def materialize(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[b, p]``: the gradients packed rows ``x`` (``[b, width]``) stand for, in ``materialize``
        order (each structured layer's ``Σ_s g_s ā_sᵀ``, to float round-off of the dense gradients).

        Raises:
            FactorisationError: a layout recorded without the parameters' places.
        """
        b = x.shape[0]
        out = x.new_empty(b, self.flat_width("form the gradients"))  # every column is written below
        layers, dense = self._views(x)
        column = 0
        for start, size in self.dense_at:
            out[:, start : start + size] = dense[:, column : column + size]
            column += size
        for slot, (t, a, g) in zip([slot for slot in self.layers if slot.structured], layers):
            d_raw = slot.d_in - (slot.bias_at is not None)
            if t == 1:  # one outer product per row, written in place
                if slot.weight_at is not None:
                    weight = out[:, slot.weight_at : slot.weight_at + slot.d_out * d_raw].unflatten(1, (slot.d_out, d_raw))
                    torch.mul(g[:, 0, :, None], a[:, 0, None, :d_raw], out=weight)
                if slot.bias_at is not None:
                    torch.mul(g[:, 0], a[:, 0, d_raw:], out=out[:, slot.bias_at : slot.bias_at + slot.d_out])
                continue
            grad = torch.bmm(g.transpose(1, 2), a)  # [b, d_out, d_in (+1)]
            if slot.weight_at is not None:
                out[:, slot.weight_at : slot.weight_at + slot.d_out * d_raw] = grad[..., :d_raw].reshape(b, -1)
            if slot.bias_at is not None:
                out[:, slot.bias_at : slot.bias_at + slot.d_out] = grad[..., -1]
        return out

    def squared_norms(self, x: torch.Tensor) -> torch.Tensor:
        """``Tensor[b]``: ``‖v(x_i)‖²`` of packed rows ``x`` (the diagonal of ``products(x, x)``)."""
        layers, dense = self._views(x)
        out = (dense * dense).sum(1)
        for t, a, g in layers:
            if t == 1:
                out += (a[:, 0] * a[:, 0]).sum(1) * (g[:, 0] * g[:, 0]).sum(1)
            else:
                out += (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
        return out

    # -- linear maps of the represented vectors ---------------------------------------------

    def scale(self, x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
        """Packed rows of ``factors[i] · v(x_i)`` (``factors``: ``Tensor[b]``): the ``g`` parts and the
        dense part scaled, ``ā`` kept."""
        out = x.clone()
        layers, dense = self._views(out)
        f = factors.to(x)[:, None]
        dense.mul_(f)
        for _, _, g in layers:
            g.mul_(f[:, :, None])
        return out

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Packed rows of ``v(x_i) / ‖v(x_i)‖``, whatever the scale (as
        :func:`attrkit.functional.scoring.normalize_rows`): each layer's ``ā`` is first divided by its
        largest entry (and its ``g`` multiplied by it, ``v`` unchanged), then the ``g`` and dense
        parts by their largest entry, so no square overflows. Zero rows stay zero; a row with a
        NaN or an infinity comes out NaN."""
        out = x.clone()
        layers, dense = self._views(out)
        for _, a, g in layers:
            top = a.abs().amax((1, 2))
            top = torch.where(top > 0, top, torch.ones_like(top))
            a.div_(top[:, None, None])
            g.mul_(top[:, None, None])
        parts = [dense.abs().amax(1) if dense.shape[1] else dense.new_zeros(dense.shape[0])]
        parts += [g.abs().amax((1, 2)) for _, _, g in layers]
        top = torch.stack(parts, 1).amax(1)
        out = self.scale(out, torch.where(top > 0, 1.0 / top, torch.ones_like(top)))
        norms = self.squared_norms(out).sqrt()
        bad = ~torch.isfinite(x).all(1)
        factors = torch.where(norms > 0, 1.0 / norms, torch.zeros_like(norms))
        out = self.scale(out, factors)
        out[bad] = float("nan")
        return out


def product_layout(grads: FactoredGradients, structured: Sequence[bool] | None = None) -> ProductLayout:
    """The layout of ``grads``'s shapes (a first training batch): each layer structured when
    ``structured[i]`` (default: when :func:`cheaper_structured`), with its positions ``T`` and
    its parameters' places in the flat gradient."""
    starts = dict(zip(grads.names, itertools.accumulate((grads.sizes[n] for n in grads.names), initial=0)))
    slots, dense = [], grads.dense.shape[1]
    dense_at = [(starts[n], grads.sizes[n]) for n in grads.dense_names]
    for i, layer in enumerate(grads.layers):
        positions, d_in, d_out = layer.inputs.shape[1], layer.in_features, layer.output_grads.shape[2]
        keep = cheaper_structured(positions, d_in, d_out) if structured is None else bool(structured[i])
        if not keep:
            dense += (layer.inputs.shape[2] * d_out if layer.weight is not None else 0) + (
                d_out if layer.bias is not None else 0)
            dense_at += [(starts[n], grads.sizes[n]) for n in (layer.weight, layer.bias) if n is not None]
        slots.append(LayerSlot(module=layer.module, positions=positions, d_in=d_in, d_out=d_out, structured=keep,
                               weight_at=starts.get(layer.weight), bias_at=starts.get(layer.bias)))
    return ProductLayout(layers=tuple(slots), dense=dense, dense_at=tuple(dense_at))
