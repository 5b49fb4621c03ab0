"""Per-example gradients kept as per-layer factors (inputs ⊗ output gradients), LoGra-style.

For ``nn.Linear`` and ``nn.Conv1d/2d`` (``groups=1``) the per-example weight gradient is
``G = Σ_t g_tᵀ a_t``: ``a_t`` the layer's input at position ``t`` (a sequence step, or an
unfolded convolution patch), ``g_t`` the loss gradient at its output. Keeping ``(a, g)``
instead of ``G`` lets a projector act on ``G`` without ever forming it. A bias is an
implicit extra input column of ones (``G`` becomes ``[d_out, d_in + 1]``, bias last).
Parameters of any other module are *fallback* parameters with exact per-example gradients.

This module holds the containers, :class:`LayerFactors` (one layer) and
:class:`FactoredGradients` (a block of examples); :mod:`attrkit.functional.factored`
computes them.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import torch
from attrkit.errors import ArgumentError

__all__ = ["FactoredGradients", "LayerFactors"]


@attrs.frozen(kw_only=True, eq=False)
class LayerFactors:
    """One layer's per-example factors.

    Attributes:
        module: the module's name in the model (``"fc1"``).
        weight: the weight's parameter name, or ``None`` when it is not selected.
        bias: the bias's parameter name, or ``None`` (no bias, or not selected).
        inputs: ``Tensor[b, T, d_in]`` inputs per position (``d_in = 0`` without weight).
        output_grads: ``Tensor[b, T, d_out]`` loss gradients at the output per position.
    """

    module: str
    weight: str | None
    bias: str | None
    inputs: torch.Tensor
    output_grads: torch.Tensor

    @property
    def in_features(self) -> int:
        """``d_in (+1 with a bias)``: rows of the extended weight gradient's input side."""
        return self.inputs.shape[-1] + (self.bias is not None)

    def materialize(self) -> dict[str, torch.Tensor]:
        """``{parameter: Tensor[b, numel]}``: the per-example gradients, row-major."""
        g, out = self.output_grads, {}
        if self.weight is not None:
            out[self.weight] = torch.bmm(g.transpose(1, 2), self.inputs).reshape(g.shape[0], -1)
        if self.bias is not None:
            out[self.bias] = g.sum(1)
        return out

    def project(self, p_in: torch.Tensor, p_out: torch.Tensor) -> torch.Tensor:
        """``vec(Σ_t (g_t P_out)ᵀ (ā_t P_in))``, ``ā_t = [a_t, 1]``: ``Tensor[b, k_out * k_in]``.

        Equals the extended gradient ``[G | bias]`` flattened row-major times
        ``kron(P_out, P_in)``, without forming ``G``.

        Args:
            p_in: ``Tensor[in_features, k_in]``.
            p_out: ``Tensor[d_out, k_out]``.
        """
        d_in = self.inputs.shape[-1]
        pa = self.inputs @ p_in[:d_in]
        if self.bias is not None:
            pa = pa + p_in[d_in]
        pg = self.output_grads @ p_out
        return torch.bmm(pg.transpose(1, 2), pa).reshape(pg.shape[0], -1)

    def _with(self, inputs: torch.Tensor, output_grads: torch.Tensor) -> LayerFactors:
        return attrs.evolve(self, inputs=inputs, output_grads=output_grads)


@attrs.frozen(kw_only=True, eq=False)
class FactoredGradients:
    """A block of per-example gradients ``[b, p]`` kept as per-layer factors.

    It is a vector space like ``Tensor[b, p]``: ``x[i:j]`` selects examples, ``x + y``,
    ``x - y`` and ``c * x`` act on the gradients they stand for (a sum concatenates
    positions), so linear maps can be checked on it.

    Attributes:
        names: every selected parameter, in model order (the order of ``materialize``).
        sizes: ``{parameter: numel}``.
        layers: the factored layers, in model order.
        dense: ``Tensor[b, q]`` exact gradients of the fallback parameters.
        dense_names: the fallback parameters, in the column order of ``dense``.
    """

    names: tuple[str, ...]
    sizes: Mapping[str, int]
    layers: tuple[LayerFactors, ...]
    dense: torch.Tensor
    dense_names: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int]:
        """``(b, p)``."""
        return (self.dense.shape[0], sum(self.sizes[n] for n in self.names))

    def materialize(self) -> torch.Tensor:
        """``Tensor[b, p]``, equal to :func:`per_example_gradients` for ``names``."""
        parts = dict(zip(self.dense_names, self.dense.split([self.sizes[n] for n in self.dense_names], 1)))
        for layer in self.layers:
            parts.update(layer.materialize())
        return torch.cat([parts[n].reshape(self.dense.shape[0], -1) for n in self.names], dim=1)

    def __getitem__(self, index: slice | torch.Tensor) -> FactoredGradients:
        """The examples ``index`` selects (a slice or an index tensor)."""
        layers = tuple(x._with(x.inputs[index], x.output_grads[index]) for x in self.layers)
        return attrs.evolve(self, layers=layers, dense=self.dense[index])

    def __add__(self, other: FactoredGradients) -> FactoredGradients:
        if not isinstance(other, FactoredGradients):
            return NotImplemented
        if other.names != self.names or other.shape != self.shape:
            raise ArgumentError(f"cannot add factored gradients of other parameters or shape: {self.shape}, {other.shape}")
        layers = tuple(
            x._with(torch.cat([x.inputs, y.inputs], 1), torch.cat([x.output_grads, y.output_grads], 1))
            for x, y in zip(self.layers, other.layers, strict=True)
        )
        return attrs.evolve(self, layers=layers, dense=self.dense + other.dense)

    def __mul__(self, scale: float) -> FactoredGradients:
        layers = tuple(x._with(x.inputs, x.output_grads * scale) for x in self.layers)
        return attrs.evolve(self, layers=layers, dense=self.dense * scale)

    __rmul__ = __mul__

    def __neg__(self) -> FactoredGradients:
        return self * -1.0

    def __sub__(self, other: FactoredGradients) -> FactoredGradients:
        return self + (-other)
