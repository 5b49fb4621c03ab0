"""The per-example factors of the curvature's layer structure, collected in one pass.

When every selected parameter belongs to a factored layer (``nn.Linear``, ``nn.Conv1d/2d``,
:func:`~attrkit.functional.factored_plan.plan_factors`) applied at one position per example,
the Jacobian of example ``i``'s flattened outputs ``z_i`` (``C`` of them, e.g. logits) with
respect to layer ``l``'s extended weight ``[W | b]`` (``Tensor[d_out, d_in + 1]`` flattened
row-major) is ``J_il = B_il ⊗ ā_il``: ``B_il = ∂z_i/∂(layer output)`` (``Tensor[C, d_out]``) and
``ā_il = [a_il, 1]`` the layer's input (the 1 only with a selected bias). The Gauss-Newton
matrix of the mean loss is ``G = (1/N) Σ_i J_iᵀ H_i J_i`` with ``H_i = ∇²_z ℓ(z_i)``
(``Tensor[C, C]``). Two consumers use these factors: the explicit solver's ``p × p`` matrix
(:mod:`~attrkit.functional.explicit_structured`) and the cached operator ``V -> G V`` of CG and
Arnoldi (:mod:`~attrkit.functional.structured_matvec`).

The factors come from the factored-gradient machinery (:func:`~attrkit.functional.factored.factored_gradients`,
one hooked forward/backward per batch and output): with the per-example function ``z_i[c]``
its output gradients are the rows ``B_il[c]``, its inputs the ``a_il``. ``H_i`` comes from
``C`` backward passes through the loss's gradient in output space (cheap), ``loss_fn`` split at its
single call of the model as for ``curvature="gauss-newton"``
(:func:`~attrkit.functional.curvature.model_call`). For ``curvature="hessian"``,
:func:`collect_factors` checks by a probe that ``H = G`` (:func:`probe_tolerance`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import attrs
import torch

from attrkit import distributed
from attrkit.data import batch_size, to_device
from attrkit.errors import ArgumentError, ArgumentTypeError, FactorisationError
from attrkit.functional.bound import BoundLoss, eval_mode
from attrkit.functional.curvature import (
    MatVec,
    dataset_gnvp,
    dataset_hvp,
    logits_of,
    loss_of_outputs,
    model_call,
    output_entry,
)
from attrkit.functional.factored import factored_gradients
from attrkit.functional.factored_hooks import close_to_round_off, hooked_output_jacobians
from attrkit.functional.factored_plan import FactorPlan, plan_factors
from attrkit.functional.ihvp import _Meter, dataset_matvec
from attrkit.progress import length_of, progress
from attrkit.types import LossFn

__all__ = ["FactorSink", "Layer", "Unusable", "batch_factors", "collect_factors", "gemm_dtype", "is_identity",
           "probe_tolerance"]


def probe_tolerance(dtype: torch.dtype) -> float:
    """Relative ``‖Hv − Gv‖ / ‖Hv‖`` below which the Hessian is taken to be the Gauss-Newton matrix.

    ``1e-4`` for float32 (and lower) parameters: float32 dataset products of ``N`` examples are
    accurate to about ``1e-6`` relative, while a second-order term ``Σ_i Σ_c (∂ℓ/∂z_ic) ∇²z_ic``
    of a nonlinear model moves a random ``Hv`` by far more (``O(1)`` relative on a ReLU MLP).
    ``1e-8`` for float64 parameters, for the same reason at float64 round-off. Below it,
    putting ``G`` for ``H`` moves the products less than this, near their own round-off.
    """
    return 1e-8 if torch.finfo(dtype).eps < 1e-10 else 1e-4


def gemm_dtype(model: torch.nn.Module, state: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.dtype:
    """The dtype the factors are held and multiplied in: the model's own parameters' where it is
    less precise than ``state``'s, else ``state``'s.

    The parameter solvers evaluate a float32 model at a float64 copy of its state
    (:class:`~attrkit.parameter_solver.ParameterSolver`): the factors are then computed in
    float64, batch by batch (so they do not depend on the batching beyond float64 round-off),
    and rounded once to float32 for the GEMMs, whose chunk sums the consumers add up in
    float64. A product is then within about ``1e-6`` relative of the float64 one, for half the
    memory and twice the speed. A float64 model keeps float64 throughout.
    """
    own = dict(model.named_parameters()).get(names[0])
    dtype = state[names[0]].dtype
    if own is None or not own.is_floating_point() or torch.finfo(own.dtype).eps <= torch.finfo(dtype).eps:
        return dtype
    return own.dtype


class Unusable(Exception):
    """The layer structure does not apply; the message says why (shown by ``"structured"`` choices)."""


@attrs.frozen
class Layer:
    """A factored layer's place in the flat layout of ``names``.

    Attributes:
        module: the layer's module name.
        weight: offset of the weight's first entry, or ``None`` when it is not selected.
        bias: offset of the bias's first entry, or ``None``.
        d_in: entries of one weight row (``0`` without a selected weight).
        d_out: output features (weight rows).
    """

    module: str
    weight: int | None
    bias: int | None
    d_in: int
    d_out: int

    @property
    def width(self) -> int:
        """``d_in (+1 with a bias)``: the length of ``ā``."""
        return self.d_in + (self.bias is not None)


def _layout(plan: FactorPlan, state: Mapping[str, torch.Tensor], names: Sequence[str]) -> list[Layer]:
    """The planned layers' offsets in the layout of ``names`` (each flattened row-major, in that order)."""
    offsets, at = {}, 0
    for name in names:
        offsets[name] = at
        at += state[name].numel()
    layers = []
    for module, weight, bias in plan.layers:
        d_out = state[weight].shape[0] if weight else state[bias].shape[0]
        d_in = state[weight][0].numel() if weight else 0
        layers.append(Layer(module, offsets.get(weight), offsets.get(bias), d_in, d_out))
    return layers


def _cross_entropy_hessians(loss_fn: LossFn, batch: Any, z: torch.Tensor) -> torch.Tensor | None:
    """``H``: ``Tensor[b, C, C]``, ``H_i = diag(p_i) − p_i p_iᵀ`` with ``p_i = softmax(z_i)``: each
    example's Hessian of :func:`attrkit.targets.cross_entropy` in its logits ``z`` (``[b, C]``), in
    closed form. ``None`` for any other loss, other outputs, or labels it would refuse or ignore
    (outside ``[0, C)``): those take :func:`_output_hessians`."""
    if (getattr(loss_fn, "__module__", None), getattr(loss_fn, "__qualname__", None)) != (
            "attrkit.targets", "cross_entropy") or z.dim() != 2:  # by name: functional imports no task module
        return None
    if isinstance(batch, Mapping):
        y = batch.get("labels")
    else:
        y = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
    if (not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool
            or y.shape != z.shape[:1] or not bool(((y >= 0) & (y < z.shape[1])).all())):
        return None
    p = torch.softmax(z, 1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


def _output_hessians(loss_of: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """``H``: ``Tensor[b, C, C]``, each example's Hessian of its loss in its flattened outputs
    ``z`` (``Tensor[b, ...]``, ``C`` entries per example).

    Column ``c`` of every ``H_i`` is one backward pass through the loss's gradient in ``z``
    with ``e_c`` at every example (reverse over reverse; the batch's Hessian is block
    diagonal when an example's loss reads only its own outputs). A seeded random direction
    checks that assumption.

    Raises:
        Unusable: an example's loss depends on other examples' outputs.
    """
    b, c = z.shape[0], z[0].numel()
    with torch.enable_grad():
        point = z.detach().requires_grad_()
        (gradient,) = torch.autograd.grad(loss_of(point), point, create_graph=True)

        def product(v: torch.Tensor) -> torch.Tensor:
            if not gradient.requires_grad:  # a loss linear in z
                return torch.zeros_like(v)
            (out,) = torch.autograd.grad(gradient, point, v.reshape(z.shape), retain_graph=True, allow_unused=True)
            return torch.zeros_like(v) if out is None else out.detach().reshape(b, c)

        eye = torch.eye(c, dtype=z.dtype, device=z.device)
        hessians = torch.stack([product(eye[k].expand(b, c)) for k in range(c)], 2)  # [i, :, k] = H_i e_k
        probe = torch.randn(b, c, generator=torch.Generator().manual_seed(0), dtype=z.dtype).to(z.device)
        found = product(probe)
    expected = (hessians @ probe[..., None])[..., 0]
    scale = float((hessians.square().sum((1, 2)) * probe.square().sum(1)).sum().sqrt())
    if float((found - expected).norm()) > math.sqrt(torch.finfo(z.dtype).eps) * scale:
        raise Unusable("an example's loss depends on other examples' outputs (the loss's Hessian in the outputs is "
                       "not block diagonal over the batch)")
    return hessians


def batch_factors(model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], plan: FactorPlan,
                  batch: Any, admit: Callable[[int, int], None] | None = None,
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """``(ā per layer: Tensor[b, width], B per layer: Tensor[b, C, d_out], H: Tensor[b, C, C])`` of one batch,
    in the parameters' dtype.

    ``admit(b, C)``, when given, is called after the forward pass that finds ``C``, before the
    ``C + 1`` backward passes and the ``C`` hooked passes; it raises :class:`Unusable` to stop.

    Raises:
        Unusable: the structure does not apply (outputs not batch-first, a layer at other than
            one position per example, a weight used outside its layer, interacting losses), or
            ``admit`` refused.
    """
    b = batch_size(batch)
    try:
        _, _, out = model_call(model, loss_fn, state, batch)
        z, rebuild = logits_of(out)
    except (ArgumentError, ArgumentTypeError) as exc:
        raise Unusable(f"loss_fn cannot be split at the model's outputs ({exc})") from None
    if z.dim() == 0 or z.shape[0] != b:
        raise Unusable(f"the model's outputs {tuple(z.shape)} do not have the {b} examples of the batch first")
    if admit is not None:
        admit(b, z[0].numel())
    hessians = _cross_entropy_hessians(loss_fn, batch, z.detach())
    if hessians is None:
        hessians = _output_hessians(loss_of_outputs(loss_fn, batch, rebuild), z.detach())
    c = hessians.shape[1]
    rows: list[list[torch.Tensor]] = [[] for _ in plan.layers]
    inputs: list[torch.Tensor] = []
    for k in range(c):
        try:
            found = factored_gradients(model, output_entry(loss_fn, k), state, batch, plan)
        except FactorisationError as exc:
            raise Unusable(str(exc)) from None
        for layer, bucket in zip(found.layers, rows):
            if layer.inputs.shape[1] != 1:
                raise Unusable(f"layer {layer.module!r} is applied at {layer.inputs.shape[1]} positions per example "
                               "(a sequence, a convolution's patches, or a layer called more than once), not one")
            bucket.append(layer.output_grads[:, 0])
        if k == 0:
            inputs = [layer.inputs[:, 0] for layer in found.layers]
            jacobians = None if c == 1 else (  # one output: this checked pass gave its only row
                _batched_jacobians(model, loss_fn, state, plan, batch, c, inputs, [r[0] for r in rows]))
            if jacobians is not None:
                break
    else:
        jacobians = [torch.stack(r, 1) for r in rows]
    inputs = [torch.cat([a, a.new_ones(b, 1)], 1) if layer[2] is not None else a for a, layer in zip(inputs, plan.layers)]
    return inputs, jacobians, hessians


def _batched_jacobians(model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor], plan: FactorPlan,
                       batch: Any, c: int, inputs: list[torch.Tensor], first: list[torch.Tensor],
                       ) -> list[torch.Tensor] | None:
    """Every layer's ``B``: ``Tensor[b, C, d_out]`` from one hooked pass whose backward is batched over
    the ``C`` outputs (:func:`~attrkit.functional.factored_hooks.hooked_output_jacobians`), trusted
    only when its inputs and first rows equal the checked pass's (``inputs``: ``Tensor[b, d_in]``,
    ``first``: ``Tensor[b, d_out]`` per layer, from :func:`~attrkit.functional.factored.factored_gradients`
    of output 0) to round-off; else ``None`` (the caller takes one pass per output)."""
    bound = BoundLoss(model, output_entry(loss_fn, None))
    params = {f"model.{k}": v for k, v in state.items()}
    try:
        found = hooked_output_jacobians(model, plan, bound, params, batch, batch_size(batch), c)
    except RuntimeError:  # an operation without a batching rule for the batched backward
        return None
    if found is None:
        return None
    got_inputs, jacobians = found
    for got, want in zip(got_inputs + [j[:, 0] for j in jacobians], inputs + first):
        if got.shape != want.shape or not close_to_round_off(got, want):
            return None
    return jacobians


class FactorSink(Protocol):
    """What :func:`collect_factors` hands the factors to: the matrix build or the cached operator."""

    def admit(self, examples: int, outputs: int) -> None:
        """Before a batch's factors are computed: refuse (:class:`Unusable`) a batch of ``examples``
        with ``outputs`` (``C``) each that the consumer cannot take (e.g. over its memory budget)."""

    def add(self, inputs: list[torch.Tensor], jacobians: list[torch.Tensor], hessians: torch.Tensor) -> None:
        """Take one batch's factors (:func:`batch_factors`; this rank's examples, in order)."""

    def finish(self, n: int) -> MatVec:
        """After the pass, with ``n`` examples seen by this rank: sum over the ranks (collective)
        and return ``V -> G V`` on ``Tensor[k, p]`` float64 rows (used by the Hessian probe)."""


Sink = TypeVar("Sink", bound=FactorSink)


def collect_factors(
    meter: _Meter, model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor],
    names: Sequence[str], curvature: str, start: Callable[[list[Layer]], Sink], desc: str,
) -> tuple[Sink | None, str, dict[str, float]]:
    """One pass over the training set feeding every batch's factors to a sink, or why the structure does not apply.

    Gauss-Newton: exact whenever it applies. Hessian: ``H = G + Σ_i Σ_c (∂ℓ/∂z_ic) ∇²z_ic``,
    which is ``G`` when the outputs are linear in the selected parameters (e.g. logistic
    regression). Decided by a probe with two seeded random ``v``: after the pass, one pass of
    dataset ``Hv`` against the sink's ``G v``, within :func:`probe_tolerance` of :func:`gemm_dtype`. Before it, the
    same comparison on the first batch alone (its ``Hv`` and ``Gv``) skips a pass that
    would be thrown away (a nonlinear model, a penalty on the parameters in ``loss_fn``).
    The whole-set probe is skipped when every selected layer's ``B_i`` is exactly the identity
    for every example (:func:`is_identity`: each layer's outputs are the model's outputs, so these
    are affine in the selected parameters and ``∇²z_ic = 0``, e.g. logistic regression): ``H − G``
    can then only come from terms of ``loss_fn`` on the parameters themselves, which the
    first-batch probe compares (``info["outputs_affine"] = 1``).

    It does not apply either with more outputs per example than selected parameters
    (``C > p``, e.g. a language model's logits: ``C`` hooked passes per batch would cost more than
    the HVPs), or when the sink's ``admit`` refuses a batch; both are checked after the batch's
    forward pass, before its backward passes.

    In distributed mode each rank takes its shard of the batches (the sink sums over the
    ranks in ``finish``); whether the structure applies is agreed between the ranks
    (collective): one rank's reason makes every rank give up.

    Args:
        meter: the counting view of the training batches (``prepare_at``): the pass and the
            probe's are counted in it, the first batch's ``Hv`` and ``Gv`` as example-HVPs.
        model, loss_fn, state, names, curvature: as :func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`.
        start: ``start(layers) -> sink``, given the factored layers in the layout of ``names``;
            the sink gets the factors in :func:`gemm_dtype`.
        desc: the label of the pass's progress bar.

    Returns:
        ``(sink, "", info)`` after its ``finish``; or ``(None, reason, info)`` when the
        structure does not apply. ``info["hessian_probe"]``: the probe's relative
        ``‖Hv − Gv‖ / ‖Hv‖`` (largest over the two ``v``; the first batch's when the whole-set
        probe was skipped), when one ran; ``info["outputs_affine"]``: ``1.0`` when every ``B_i``
        was the identity (for ``curvature="hessian"``).
    """
    info: dict[str, float] = {}
    plan = plan_factors(model, names)
    if plan.fallback:
        shown = ", ".join(plan.fallback[:3]) + (", ..." if len(plan.fallback) > 3 else "")
        return None, (f"the selected parameters {shown} are not in a factored layer (nn.Linear, nn.Conv1d/2d): they "
                      f"belong to {', '.join(plan.fallback_modules[:3])}"), info
    first = state[names[0]]
    p = sum(state[n].numel() for n in names)
    dtype = gemm_dtype(model, state, names)
    tol = probe_tolerance(dtype)
    v = torch.randn(2, p, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(first.device)

    def not_gauss_newton(where: str) -> str:
        return (f"the Hessian is not the Gauss-Newton matrix here: ‖Hv − Gv‖/‖Hv‖ = "
                f"{info['hessian_probe']:.3g} > {tol:g} on a random v ({where}; the model's outputs are not linear "
                "in the selected parameters, or loss_fn has terms on the parameters)")

    if curvature == "hessian":  # the first batch alone (on one rank), before the pass
        head = [next(iter(meter.batches))]
        try:
            gv = dataset_gnvp(model, loss_fn, state, names, head)(v)
        except (ArgumentError, ArgumentTypeError) as exc:
            return None, f"loss_fn cannot be split at the model's outputs ({exc})", info
        info["hessian_probe"] = _relative(dataset_hvp(model, loss_fn, state, names, head)(v), gv)
        meter.example_hvps += 2 * len(v) * batch_size(head[0])
        if not info["hessian_probe"] <= tol:
            return None, not_gauss_newton("the first batch"), info
    sink = start(_layout(plan, state, names))
    reason, n, outputs, identity = None, 0, [], True

    def admit(examples: int, c: int) -> None:
        if outputs and c != outputs[0]:
            raise Unusable(f"examples have different numbers of outputs ({outputs[0]} and {c})")
        if c > p:
            raise Unusable(f"the model has more outputs per example (C = {c}) than there are selected parameters "
                           f"(p = {p}): the factors would take C hooked passes per batch and C² entries per example, "
                           "more than the p HVPs per example that give the whole curvature")
        outputs[:] = [c]
        sink.admit(examples, c)

    total = length_of(meter) if distributed.world() is None else None
    with eval_mode(model):
        for batch in progress(distributed.shard(meter), desc, total=total):
            batch = to_device(batch, first.device)
            try:
                inputs, jacobians, hessians = batch_factors(model, loss_fn, state, plan, batch, admit)
                identity = identity and all(is_identity(b) for b in jacobians)
                sink.add([a.to(dtype) for a in inputs], [b.to(dtype) for b in jacobians], hessians.to(dtype))
            except Unusable as exc:
                reason = str(exc)
                break
            n += batch_size(batch)
    agreed = distributed.all_ranks((reason, identity))
    reasons = [r for r, _ in agreed if r is not None]
    if reasons:
        return None, reasons[0], info
    product = sink.finish(n)
    if curvature == "hessian" and all(same for _, same in agreed):  # affine outputs: the first batch's probe decides
        info["outputs_affine"] = 1.0
    elif curvature == "hessian":  # the whole training set: H v against the sink's G v
        hv = dataset_matvec(meter, model, loss_fn, state, names, "hessian")(v)
        info["hessian_probe"] = _relative(hv, product(v).to(hv.dtype))
        if not info["hessian_probe"] <= tol:
            return None, not_gauss_newton("the whole training set"), info
    return sink, "", info


def is_identity(jacobians: torch.Tensor) -> bool:
    """Whether every ``B_i`` (``Tensor[n, C, d_out]``) is exactly the ``C × C`` identity: a layer whose outputs
    are the model's outputs (e.g. the last ``nn.Linear``)."""
    if jacobians.dim() != 3:  # a rank without examples
        return False
    c, d = jacobians.shape[1:]
    eye = torch.eye(c, dtype=jacobians.dtype, device=jacobians.device)
    return c == d and bool((jacobians == eye).all())


def _relative(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Largest ``‖r − o‖ / ‖r‖`` over the rows (``0`` for a zero pair)."""
    difference = (reference - other).norm(dim=1)
    size = reference.norm(dim=1)
    return float(torch.where(difference == 0, 0.0, difference / size).max())
