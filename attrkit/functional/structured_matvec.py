"""The dataset curvature as a cached operator ``V -> G V`` from its layer structure, applied in GEMMs.

``G`` is the Gauss-Newton matrix of the mean training loss, or its Hessian where the probe of
:func:`~attrkit.functional.structured_factors.collect_factors` finds ``H = G`` (outputs linear in
the selected parameters, e.g. logistic regression).

With the per-example factors of :mod:`~attrkit.functional.structured_factors` (``ā_il``:
``Tensor[d_in_l (+1)]``, ``B_il``: ``Tensor[C, d_out_l]``, ``H_i``: ``Tensor[C, C]``), the
Gauss-Newton product of the mean loss on a vector ``v`` (layer blocks ``V_l``:
``Tensor[d_out_l, d_in_l (+1)]``, the weight then the bias column) is

    z_i = Σ_l B_il V_l ā_il,    y_i = H_i z_i / N,    (G v)_l = Σ_i B_ilᵀ y_i ā_ilᵀ.

For a block of ``m`` vectors and a chunk of examples that is, per layer, one GEMM
``W_l = V_l Ā_lᵀ`` (held as ``Tensor[n, d_out, m]``), small batched products for ``z`` and ``y``
(those with ``B_l`` skipped for a layer whose ``B_il`` are all the identity: the output
layer), and one GEMM back, ``(B_lᵀ y) Ā_l``; no autograd, no pass over the training loader. The factors are
collected once (one pass, ``C`` hooked forward/backward passes per batch) and held:
``n (Σ_l width_l + C Σ_l d_out_l + C²)`` elements in :func:`~attrkit.functional.structured_factors.gemm_dtype` (float32 for a float32 model) for this rank's
``n`` examples, within :data:`attrkit.memory.DEFAULT_FRACTION` of the available memory
(checked batch by batch, before each batch's backward passes: the pass stops at the first batch
past it and the solver takes HVPs). CG and Arnoldi take it through :func:`curvature_matvec` (their ``matvec=``
option); LiSSA takes each step's sampled mini-batch from the held factors (:meth:`StructuredMatVec.subset`,
single process).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from attrkit import distributed
from attrkit.errors import ArgumentError, CurvatureError
from attrkit.functional.curvature import MatVec
from attrkit.functional.ihvp import _Meter, dataset_matvec
from attrkit.functional.structured_factors import Layer, Unusable, collect_factors, gemm_dtype, is_identity
from attrkit.memory import DEFAULT_FRACTION, available_bytes, format_bytes
from attrkit.types import LossFn

__all__ = ["MATVECS", "MIN_DIM", "StructuredMatVec", "Workspace", "chosen_operator", "curvature_matvec",
           "structured_matvec"]

#: ``matvec=`` values of the CG and Arnoldi builders.
MATVECS = ("auto", "hvp", "structured")
#: ``matvec="auto"`` uses the structured operator only for more selected parameters than this.
#: Below it a pass of dataset HVPs costs little (the explicit solver builds the whole ``p × p``
#: curvature in one such pass at its default ``chunk_size``, the same rule as its ``build="auto"``),
#: so the collection pass (``C`` hooked passes per batch), the Hessian probe and the cache would
#: save milliseconds; and small problems keep the HVP path on which results were recorded (the
#: structured products equal it only to float32 round-off).
MIN_DIM = 256
#: Elements of the largest temporary (``Tensor[chunk, m, max(d_out, C)]``); sets the examples per chunk.
_CHUNK = 1 << 24


class Workspace:
    """Buffers that the products of a sequence of :meth:`StructuredMatVec.subset` operators reuse.

    LiSSA takes one subset's product per step, each with ``Tensor[m, p]`` temporaries (the rows in the
    factors' dtype, each layer's weight block, the result and its cast back): on the MNIST MLP, 100 rows
    of 109,386 parameters, about 300 MB a step. Allocated afresh, blocks that large are mapped from the
    operating system and faulted in page by page at every step (half of LiSSA's time went to the
    kernel); held here, they are allocated once per solve. A buffer is reallocated only when a name is
    asked for with another shape, dtype or device.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The buffer ``name``: ``Tensor[shape]`` with whatever values it last held."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype or buffer.device != device:
            buffer = self._buffers[name] = torch.empty(shape, dtype=dtype, device=device)
        return buffer


class StructuredMatVec:
    """``V -> G V`` (``Tensor[m, p]`` or ``Tensor[p]``) from the held per-example factors of this rank's examples.

    Attributes:
        p: dimension of the vectors (the layout of ``names``).
        dtype, device: the factors' (:func:`~attrkit.functional.structured_factors.gemm_dtype`, the parameters' device).
        examples: ``N``, the training examples over all ranks.
        layers: the factored layers (:class:`~attrkit.functional.structured_factors.Layer`).
        inputs: per layer, ``ā``: ``Tensor[n, width]`` (``n`` this rank's examples).
        jacobians: per layer, ``B``: ``Tensor[n, C, d_out]``.
        hessians: ``H``: ``Tensor[n, C, C]``.
        nbytes: bytes the factors hold.
    """

    def __init__(self, layers: Sequence[Layer], p: int, dtype: torch.dtype, device: torch.device, budget: int | None,
                 where: str):
        self.layers, self.p, self.dtype, self.device = list(layers), p, dtype, device
        self.examples = self.nbytes = 0
        self._budget, self._where = budget, where
        self._parts: list[list[torch.Tensor]] = [[] for _ in range(2 * len(self.layers) + 1)]
        self.inputs: list[torch.Tensor] = []
        self.jacobians: list[torch.Tensor] = []
        self.hessians = torch.empty(0, 0, 0, dtype=dtype, device=device)
        self._identity: list[bool] = []  # per layer: every B_i is the identity (an output layer), skipped
        self._few = False  # a subset's few examples: products without example chunks (_few_examples)
        self._workspace: Workspace | None = None  # a subset's reused buffers (subset(workspace=))

    def admit(self, examples: int, outputs: int) -> None:
        """Refuse a batch whose factors (``examples (Σ width + C Σ d_out + C²)`` elements) would pass the budget.

        Raises:
            Unusable: they would; the message gives the sizes.
        """
        per_example = sum(layer.width + outputs * layer.d_out for layer in self.layers) + outputs * outputs
        held = self.nbytes + examples * per_example * self.dtype.itemsize
        if self._budget is not None and held > self._budget:
            seen = sum(len(t) for t in self._parts[-1]) + examples
            raise Unusable(f"the per-example factors of the first {seen} examples take {format_bytes(held)}, more "
                           f"than the structured operator's budget of {format_bytes(self._budget)} ({self._where})")

    def add(self, inputs: list[torch.Tensor], jacobians: list[torch.Tensor], hessians: torch.Tensor) -> None:
        """Hold one batch's factors (admitted by :meth:`admit`)."""
        tensors = [*inputs, *jacobians, hessians]
        for bucket, tensor in zip(self._parts, tensors):
            bucket.append(tensor)
        self.nbytes += sum(t.numel() * t.element_size() for t in tensors)

    def finish(self, n: int) -> MatVec:
        """Join the held batches (one array at a time, so that memory peaks at the factors plus one
        array), count the ``N`` examples over the ranks (collective); ``self``."""
        k, joined = len(self.layers), []
        for i in range(2 * k + 1):  # a rank without batches: empty factors (only their lengths are read)
            parts = self._parts[i]
            joined.append(torch.cat(parts) if parts else torch.empty(0, dtype=self.dtype, device=self.device))
            self._parts[i] = []
        self.inputs, self.jacobians, self.hessians = joined[:k], joined[k : 2 * k], joined[-1]
        self._identity = [is_identity(b) for b in self.jacobians]
        self.examples = sum(distributed.all_ranks(n))
        return self

    def subset(self, index: torch.Tensor, workspace: Workspace | None = None) -> StructuredMatVec:
        """The operator of the examples ``index`` (``LongTensor`` into the held ones) alone: ``G`` of
        their mean loss (a sampled curvature, LiSSA's). Single process only (the held examples are
        then all of them); the factors are copied, ``len(index)`` rows of each. With a ``workspace``
        its products take their ``Tensor[m, p]`` temporaries, and their result, from its buffers:
        the same values, but the result is overwritten by the next product taken through it.

        Raises:
            ArgumentError: in distributed mode (each rank holds only its own examples).
        """
        if distributed.world() is not None:
            raise ArgumentError("a subset of the structured operator's examples is single-process only: each rank "
                                "holds only its own examples")
        index = index.to(self.device)
        part = StructuredMatVec(self.layers, self.p, self.dtype, self.device, None, self._where)
        part.inputs = [a[index] for a in self.inputs]
        part.jacobians = [b[index] for b in self.jacobians]
        part.hessians, part._identity, part.examples = self.hessians[index], self._identity, len(index)
        part.nbytes = sum(t.numel() * t.element_size() for t in [*part.inputs, *part.jacobians, part.hessians])
        part._few, part._workspace = True, workspace
        return part

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None,
                 device: torch.device | None = None) -> torch.Tensor:
        """A temporary ``Tensor[shape]`` (the factors' dtype and device by default): the workspace's buffer
        ``name`` if this operator has one, else a new tensor."""
        dtype, device = dtype or self.dtype, device or self.device
        if self._workspace is None:
            return torch.empty(shape, dtype=dtype, device=device)
        return self._workspace.get(name, shape, dtype, device)

    def _few_product(self, v: torch.Tensor) -> torch.Tensor:
        """:meth:`__call__` of a :meth:`subset`: the rows cast to the factors' dtype, their products
        (:meth:`_few_examples`) over the examples' count, cast back to ``v``'s dtype and device, each step in
        :meth:`_scratch` tensors (the workspace's buffers when there is one: the same values)."""
        flat = v.reshape(-1, self.p)
        rows = flat if (flat.dtype, flat.device) == (self.dtype, self.device) else \
            self._scratch("rows", tuple(flat.shape)).copy_(flat)
        out = self._few_examples(rows).div_(self.examples)
        if (out.dtype, out.device) != (v.dtype, v.device):
            out = self._scratch("result", tuple(out.shape), v.dtype, v.device).copy_(out)
        return out.reshape(v.shape)

    def _few_examples(self, rows: torch.Tensor) -> torch.Tensor:
        """``Σ_i`` of the products for a block ``rows`` (``Tensor[m, p]``, the factors' dtype) and the few
        held examples of a :meth:`subset`, in the factors' dtype and unscaled: per layer one GEMM
        each way over all ``m`` rows at once (the weight's columns copied into ``[m d_out, d_in]``),
        no example chunks (temporaries ``Tensor[m, max(d_out, C), n]``)."""
        m, n, z = rows.shape[0], len(self.hessians), None
        for l, (layer, a, b, same) in enumerate(zip(self.layers, self.inputs, self.jacobians, self._identity)):
            w = None
            if layer.weight is not None:  # the weight's columns, copied row-major into [m d_out, d_in]
                block = self._scratch(f"layer {l}", (m * layer.d_out, layer.d_in))
                block.view(m, layer.d_out, layer.d_in).copy_(
                    rows[:, layer.weight : layer.weight + layer.d_out * layer.d_in].reshape(m, layer.d_out, layer.d_in))
                w = (block @ a[:, : layer.d_in].T).view(m, layer.d_out, n)  # V_l ā_i over the weight
            if layer.bias is not None:  # the bias column times ā's last entry
                bias = rows[:, layer.bias : layer.bias + layer.d_out, None] * a[:, layer.d_in]
                w = bias if w is None else w + bias
            w = w if same else torch.einsum("icd,mdi->mci", b, w)  # B_il W: [m, C, n]
            z = w if z is None else z + w
        y = torch.einsum("ick,mki->mci", self.hessians, z)  # H_i z_i
        out = self._scratch("product", (m, self.p))
        for l, (layer, a, b, same) in enumerate(zip(self.layers, self.inputs, self.jacobians, self._identity)):
            u = y if same else torch.einsum("icd,mci->mdi", b, y)  # B_ilᵀ y_i: [m, d_out, n]
            if layer.weight is not None:
                product = torch.mm(u.reshape(m * layer.d_out, n), a[:, : layer.d_in],
                                   out=self._scratch(f"layer {l}", (m * layer.d_out, layer.d_in)))
                out[:, layer.weight : layer.weight + layer.d_out * layer.d_in] = product.view(m, -1)
            if layer.bias is not None:
                out[:, layer.bias : layer.bias + layer.d_out] = u @ a[:, layer.d_in]
        return out

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``G v`` for every row of ``v`` (``Tensor[m, p]``, or ``Tensor[p]``), summed over the ranks (collective).

        The GEMMs run in the factors' dtype (``v`` is cast to it, as the HVP path casts to the
        parameters'); each chunk's result is added to a sum in ``v``'s dtype promoted with the
        factors' (float64 for Lanczos's float64 vectors, float32 for float32 blocks): the sum
        has few terms (chunks and ranks) and the caller keeps working in ``v``'s dtype.

        Returns:
            ``v``'s shape, dtype and device. Cost: about ``4 m n p`` flops in GEMMs (``n``
            this rank's examples) and ``m n C (4 Σ d_out + 2 C)`` in small batched products;
            temporaries of at most ``2^24`` elements each.
        """
        if v.dim() not in (1, 2) or v.shape[-1] != self.p:
            raise ArgumentError(f"expected vectors of shape [{self.p}] or [m, {self.p}], got {tuple(v.shape)}")
        h = self.hessians
        if self._few:
            return self._few_product(v)
        rows = v.reshape(-1, self.p).to(device=self.device, dtype=self.dtype)
        m, n, total = rows.shape[0], len(h), torch.promote_types(v.dtype, self.dtype)
        blocks = [_block(rows, layer) for layer in self.layers]  # [d_out * m, width]
        sums = [torch.zeros(layer.d_out * m, layer.width, dtype=total, device=self.device) for layer in self.layers]
        widest = max([h.shape[1] if n else 1] + [layer.d_out for layer in self.layers])
        chunk = max(1, _CHUNK // (m * widest))
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            z: torch.Tensor | None = None
            for block, a, b, same in zip(blocks, self.inputs, self.jacobians, self._identity):
                w = (a[s:e] @ block.T).view(e - s, -1, m)  # W_lᵀ: [chunk, d_out, m]
                w = w if same else b[s:e] @ w  # B_l W_lᵀ: [chunk, C, m]
                z = w if z is None else z + w
            y = h[s:e] @ z  # H_i z_i: [chunk, C, m]
            for a, b, same, out in zip(self.inputs, self.jacobians, self._identity, sums):
                u = (y if same else b[s:e].mT @ y).reshape(e - s, -1)  # B_lᵀ y: [chunk, d_out * m]
                out += u.T @ a[s:e]
        out = torch.empty(m, self.p, dtype=total, device=self.device)
        for layer, part in zip(self.layers, sums):
            part = part.view(layer.d_out, m, layer.width).transpose(0, 1)
            if layer.weight is not None:
                out[:, layer.weight : layer.weight + layer.d_out * layer.d_in] = part[..., : layer.d_in].reshape(m, -1)
            if layer.bias is not None:
                out[:, layer.bias : layer.bias + layer.d_out] = part[..., layer.d_in]
        distributed.sum_over_ranks([out])
        out /= self.examples
        return out.to(device=v.device, dtype=v.dtype).reshape(v.shape)


def _block(rows: torch.Tensor, layer: Layer) -> torch.Tensor:
    """``Tensor[d_out * m, width]``: each row's block ``[W | b]`` of ``layer`` (weight row-major, then the
    bias), output row major over the ``m`` rows (so that ``Ā`` times its transpose is ``Tensor[n, d_out, m]``)."""
    m = rows.shape[0]
    parts = []
    if layer.weight is not None:
        parts.append(rows[:, layer.weight : layer.weight + layer.d_out * layer.d_in].reshape(m, layer.d_out, -1))
    if layer.bias is not None:
        parts.append(rows[:, layer.bias : layer.bias + layer.d_out, None])
    return torch.cat(parts, 2).transpose(0, 1).reshape(layer.d_out * m, layer.width)


def _budget(device: torch.device) -> tuple[int | None, str]:
    """``(bytes, words)``: :data:`attrkit.memory.DEFAULT_FRACTION` of what ``device`` has available
    (the CPU's when it cannot say; ``None``, no budget, when neither can), and how it was set, for
    messages."""
    free = available_bytes(device)
    if free is None and device.type != "cpu":
        device, free = torch.device("cpu"), available_bytes("cpu")
    if free is None:
        return None, "none: the available memory is unknown"
    return int(free * DEFAULT_FRACTION), f"{DEFAULT_FRACTION:.0%} of the {format_bytes(free)} available on {device}"


def structured_matvec(
    meter: _Meter, model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor],
    names: Sequence[str], curvature: str,
) -> tuple[StructuredMatVec | None, str, dict[str, float]]:
    """The cached structured operator of the mean training loss's curvature, or why it cannot be made.

    One pass of :func:`~attrkit.functional.structured_factors.collect_factors`, which decides
    whether the structure applies (for ``curvature="hessian"``, by its probe of ``H = G``;
    agreed between the ranks), holding this rank's factors. It does not apply, either, when
    they would take more than :data:`attrkit.memory.DEFAULT_FRACTION` of the memory available on the
    parameters' device.

    Args:
        meter: the counting view of the training batches (``prepare_at``): the pass (and the
            probe's) is counted in it; the operator's products are not (see :func:`curvature_matvec`).
        model, loss_fn, state, names, curvature: as :func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`.

    Returns:
        ``(operator, "", info)`` or ``(None, reason, info)``; ``info["hessian_probe"]``: the
        probe's relative ``‖Hv − Gv‖ / ‖Hv‖``, when one ran.
    """
    first, p = state[names[0]], sum(state[n].numel() for n in names)
    budget, where = _budget(first.device)
    dtype = gemm_dtype(model, state, names)
    return collect_factors(meter, model, loss_fn, state, names, curvature,
                           lambda layers: StructuredMatVec(layers, p, dtype, first.device, budget, where),
                           f"structured curvature: caching the layer factors of the {p} parameters (one pass)")


def chosen_operator(
    meter: _Meter, model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor],
    names: Sequence[str], curvature: str, matvec: str, solver: str, unavailable: str | None = None,
) -> tuple[StructuredMatVec | None, dict[str, float]]:
    """``(operator, info)``: the structured operator where ``matvec`` asks for it (``"auto"``: where it
    applies and ``p >`` :data:`MIN_DIM`) and it applies, else ``None`` (the solver takes HVPs);
    ``info["structured"]`` (``1.0`` or ``0.0``) and ``info["hessian_probe"]`` when the probe ran.

    Args:
        meter, model, loss_fn, state, names, curvature: as :func:`structured_matvec`.
        matvec: ``"auto"``, ``"hvp"`` or ``"structured"``.
        solver: the solver's name, for the error.
        unavailable: why the solver cannot take the operator here at all (no pass is made), or ``None``.

    Raises:
        ArgumentError: ``matvec`` not one of :data:`MATVECS`.
        CurvatureError: ``matvec="structured"`` where it does not apply (the message says why).
    """
    if matvec not in MATVECS:
        raise ArgumentError(f"matvec must be one of {', '.join(map(repr, MATVECS))}, got {matvec!r}")
    operator, info, reason = None, {}, unavailable
    wanted = matvec == "structured" or (matvec == "auto" and sum(state[n].numel() for n in names) > MIN_DIM)
    if unavailable is None and wanted:
        operator, reason, info = structured_matvec(meter, model, loss_fn, state, names, curvature)
    if operator is None and matvec == "structured":
        raise CurvatureError(f"{solver} solver: matvec='structured' cannot be used: {reason}. Use matvec='hvp' "
                             "(or 'auto', which takes HVPs where the structured operator does not apply)")
    info["structured"] = float(operator is not None)
    return operator, info


def curvature_matvec(
    meter: _Meter, model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor],
    names: Sequence[str], curvature: str, matvec: str, solver: str,
) -> tuple[MatVec, dict[str, float]]:
    """The counted dataset curvature product of an iterative solver (CG, Arnoldi): structured or HVPs.
    (LiSSA, whose products are of sampled examples, takes :func:`chosen_operator` itself.)

    Args:
        meter, model, loss_fn, state, names, curvature: as :func:`structured_matvec`.
        matvec: ``"auto"``: the structured operator where it applies and ``p >`` :data:`MIN_DIM`,
            else dataset HVPs (:func:`~attrkit.functional.ihvp.dataset_matvec`, one pass per
            call); ``"hvp"``; or ``"structured"``, which raises where it does not apply.
        solver: the solver's name, for the error.

    Returns:
        ``(matvec, info)``: ``Tensor[m, p] -> Tensor[m, p]`` (or ``Tensor[p]``), which counts
        ``N m`` example-HVPs in ``meter`` per call on either path (the structured one with no
        pass); ``info["structured"]``: ``1.0`` when structured, else ``0.0``, and
        ``info["hessian_probe"]`` when the probe ran.

    Raises:
        ArgumentError: ``matvec`` not one of :data:`MATVECS`.
        CurvatureError: ``matvec="structured"`` where it does not apply (the message says why).
    """
    operator, info = chosen_operator(meter, model, loss_fn, state, names, curvature, matvec, solver)
    if operator is None:
        return dataset_matvec(meter, model, loss_fn, state, names, curvature), info
    structured = operator

    def counted(v: torch.Tensor) -> torch.Tensor:
        out = structured(v)
        meter.example_hvps += structured.examples * (v.shape[0] if v.dim() == 2 else 1)
        return out

    return counted, info
