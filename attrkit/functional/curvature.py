"""Curvature of the training loss: Hessian- and Gauss-Newton-vector products, and Lanczos.

The dataset products are those of the *mean* training loss over every batch,
``H = (1/N) Σ_i ∇²ℓ_i`` (never a per-batch inverse), evaluated at a given state with
``torch.func`` in eval mode; the model's own weights are never touched. Costs are
counted in HVPs: one HVP of a batch costs about 2-3 gradient evaluations of it
(forward-over-reverse), one dataset HVP is one pass over the training set.
"""

from __future__ import annotations

import contextlib
import dataclasses

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.func import functional_call, grad, jvp, vjp, vmap

from attrkit import distributed
from attrkit.data import batch_size, to_device
from attrkit.errors import ArgumentError, ArgumentTypeError, DataLoaderError, LossShapeError
from attrkit.functional.gradients import BoundLoss, eval_mode
from attrkit.progress import progress
from attrkit.types import LossFn

__all__ = ["dataset_gnvp", "dataset_hvp", "gnvp", "hvp", "lanczos"]

#: ``matvec(v)``: ``Tensor[p] -> Tensor[p]`` or ``Tensor[m, p] -> Tensor[m, p]``.
MatVec = Callable[[torch.Tensor], torch.Tensor]
State = Mapping[str, torch.Tensor]
#: One batch's curvature product on ``{name: Tensor}`` directions.
Product = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
#: A restart happens when the new Krylov direction is this small relative to ``||A||``.
_BREAKDOWN = 1e-8


def hvp(fn: Callable[[Any], torch.Tensor], params: Any, vectors: Any) -> Any:
    """Hessian-vector product ``∇²fn(params) · vectors``, forward-over-reverse (``jvp`` of ``grad``).

    Args:
        fn: scalar function (``Tensor[]``) of ``params``.
        params: a tensor or a pytree (dict, tuple) of tensors, the point of evaluation.
        vectors: the direction, with the structure, shapes and dtypes of ``params``.

    Returns:
        ``H v`` with the structure of ``params``. Cost: about 2-3 gradient evaluations,
        memory of one backward pass.
    """
    with forward_ad_attention():
        return jvp(grad(fn), (params,), (vectors,))[1]


def gnvp(
    outputs_fn: Callable[[Any], torch.Tensor],
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    params: Any,
    vectors: Any,
) -> Any:
    """Gauss-Newton-vector product ``Jᵀ H_ℓ J v`` of ``loss_fn ∘ outputs_fn``.

    ``J`` is the Jacobian of the outputs (e.g. logits) w.r.t. ``params`` and ``H_ℓ``
    the Hessian of the loss w.r.t. the outputs: positive semi-definite whenever the
    loss is convex in the outputs (cross-entropy, squared error).

    Args:
        outputs_fn: ``params -> Tensor`` of outputs (``z``).
        loss_fn: ``z -> Tensor[]``, scalar loss of the outputs.
        params: a tensor or pytree of tensors.
        vectors: direction with the structure of ``params``.

    Returns:
        ``Jᵀ H_ℓ J v`` with the structure of ``params``. Cost: one ``jvp`` and one ``vjp``
        of ``outputs_fn`` (about one HVP) plus an HVP in output space (cheap).
    """
    with forward_ad_attention():
        z, jv = jvp(outputs_fn, (params,), (vectors,))
        _, pullback = vjp(outputs_fn, params)
        return pullback(hvp(loss_fn, z, jv))[0]


@contextlib.contextmanager
def forward_ad_attention() -> Iterator[None]:
    """A context in which attention runs kernels that curvature products can differentiate:
    ``scaled_dot_product_attention`` (Hugging Face transformers' default) its math kernel, and
    ``nn.MultiheadAttention`` in eval mode its composite path instead of its fused inference
    kernel (``_native_multi_head_attention``). The fused kernels have no forward-mode derivative
    (``jvp``) and no double backward; the others compute the same attention."""
    with contextlib.ExitStack() as stack:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError:  # torch < 2.3: no fused kernels to avoid
            pass
        else:
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        mha = getattr(torch.backends, "mha", None)
        if mha is not None and mha.get_fastpath_enabled():
            mha.set_fastpath_enabled(False)
            stack.callback(mha.set_fastpath_enabled, True)
        yield


class _StandIn(torch.nn.Module):
    """Takes the model's place inside ``loss_fn``: records each call and answers with ``respond``."""

    def __init__(self, respond: Callable[..., torch.Tensor]):
        super().__init__()
        self.respond = respond
        self.calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        self.calls.append((args, kwargs))
        return self.respond(*args, **kwargs)


def _summed(out: Any) -> torch.Tensor:
    """The sum of ``loss_fn``'s per-example values, after checking it returned ``Tensor[b]``."""
    if not isinstance(out, torch.Tensor) or out.dim() != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LossShapeError(f"loss_fn must return one value per example, Tensor[b]; got {got} (use reduction='none')")
    return out.sum()


def _hessian_product(
    model: torch.nn.Module, loss_fn: LossFn, state: State, names: Sequence[str], batch: Any
) -> Product:
    """One batch's ``v -> ∇²(Σ_i ℓ_i) v`` over the named parameters."""
    bound = BoundLoss(model, loss_fn)
    chosen = set(names)
    fixed = {f"model.{k}": v for k, v in state.items() if k not in chosen}
    point = {n: state[n] for n in names}

    def total(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return _summed(functional_call(bound, {**fixed, **{f"model.{k}": v for k, v in params.items()}}, (batch,)))

    return lambda v: hvp(total, point, v)


def model_call(
    model: torch.nn.Module, loss_fn: LossFn, state: State, batch: Any
) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """``(args, kwargs, output)``: the arguments of ``loss_fn``'s single call of the model on
    ``batch``, and the model's output at ``state`` (computed without gradients).

    Where the Gauss-Newton split cuts ``loss_fn``: outputs ``z = model(*args, **kwargs)``
    (:func:`logits_of` finds ``z`` in the output) and the loss of ``z``
    (:func:`loss_of_outputs`).

    Raises:
        ArgumentError: ``loss_fn`` calls the model more or less than once.
    """
    outputs: list[Any] = []

    def respond(*a: Any, **kw: Any) -> Any:
        outputs.append(functional_call(model, dict(state), a, kw))
        return outputs[-1]

    spy = _StandIn(respond)
    with torch.no_grad():
        _summed(loss_fn(spy, batch))
    if len(spy.calls) != 1:
        raise ArgumentError(
            f"curvature='gauss-newton' splits loss_fn into model outputs and a loss of those outputs, so loss_fn must "
            f"call the model exactly once per batch; it called it {len(spy.calls)} times. Use curvature='hessian'."
        )
    args, kwargs = spy.calls[0]
    return args, kwargs, outputs[0]


def loss_of_outputs(
    loss_fn: LossFn, batch: Any, rebuild: Callable[[torch.Tensor], Any]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``z -> Σ_i ℓ_i``: ``loss_fn`` on ``batch`` with the model's output replaced by ``rebuild(z)``
    (``z`` the tensor of outputs :func:`model_call` splits at; ``Tensor[]``)."""
    return lambda z: _summed(loss_fn(_StandIn(lambda *a, **kw: rebuild(z)), batch))


def output_entry(loss_fn: LossFn, index: int | None) -> LossFn:
    """``(model, batch) -> Tensor[b]``: entry ``index`` of every example's flattened outputs
    ``z`` (``z.reshape(b, -1)[:, index]``, :func:`logits_of`), read at ``loss_fn``'s call of
    ``model`` on ``batch`` (its loss is computed and dropped). A per-example function for
    :func:`~attrkit.functional.factored.factored_gradients`: its output gradients are the rows
    ``∂z_i[index]/∂(layer output)`` of the Jacobian. ``index=None``: every entry,
    ``Tensor[b, C]``."""

    def entry(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        outputs: list[Any] = []

        def respond(*a: Any, **kw: Any) -> Any:
            outputs.append(model(*a, **kw))
            return outputs[-1]

        loss_fn(_StandIn(respond), batch)
        if len(outputs) != 1:
            raise ArgumentError(f"loss_fn must call the model exactly once per batch to split it at the model's "
                                f"outputs; it called it {len(outputs)} times")
        z, _ = logits_of(outputs[0])
        z = z.reshape(z.shape[0], -1)
        return z if index is None else z[:, index]

    return entry


def _gauss_newton_product(
    model: torch.nn.Module, loss_fn: LossFn, state: State, names: Sequence[str], batch: Any
) -> Product:
    """One batch's ``v -> Jᵀ H_ℓ J v``, ``loss_fn`` split at its (single) call of the model."""
    chosen = set(names)
    fixed = {k: v for k, v in state.items() if k not in chosen}
    args, kwargs, _ = model_call(model, loss_fn, state, batch)
    shape: list[Callable[[torch.Tensor], Any]] = []

    def outputs(params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        z, rebuild = logits_of(functional_call(model, {**fixed, **params}, args, kwargs))
        shape[:] = [rebuild]
        return z

    loss_of = loss_of_outputs(loss_fn, batch, lambda z: shape[0](z))
    point = {n: state[n] for n in names}
    return lambda v: gnvp(outputs, loss_of, point, v)


def logits_of(out: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """``(z, rebuild)``: the tensor of model outputs the Gauss-Newton split differentiates (the output
    itself, its ``logits`` — a Hugging Face output or a dict — or the first element of a tuple), and
    ``rebuild(z')``: the same kind of output around ``z'``, what ``loss_fn`` reads.

    Raises:
        ArgumentTypeError: an output with no tensor of outputs in it.
    """
    if isinstance(out, torch.Tensor):
        return out, lambda z: z
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        if dataclasses.is_dataclass(out):
            return out["logits"], lambda z: dataclasses.replace(out, logits=z)
        return out["logits"], lambda z: {**out, "logits": z}
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0], lambda z: type(out)((z, *out[1:]))
    raise ArgumentTypeError(f"curvature='gauss-newton' needs the model to return a tensor of outputs (or an output "
                            f"with .logits, or a tuple starting with them), got {type(out).__name__}; use "
                            "curvature='hessian'")


def _dataset_product(
    model: torch.nn.Module,
    loss_fn: LossFn,
    state: State,
    names: Sequence[str],
    batches: Iterable[Any],
    per_batch: Callable[[torch.nn.Module, LossFn, State, Sequence[str], Any], Product],
) -> MatVec:
    """``matvec`` averaging ``per_batch(...)`` products over every batch (the shared loop of the dataset products).

    In distributed mode each rank sums its shard of the batches and the sums are
    all-reduced (:mod:`attrkit.distributed`): every rank must call ``matvec`` in lock-step.
    """
    point = {n: state[n] for n in names}
    sizes = [point[n].numel() for n in names]
    p = sum(sizes)
    first = point[names[0]]

    def matvec(v: torch.Tensor) -> torch.Tensor:
        if v.dim() not in (1, 2) or v.shape[-1] != p:
            raise ArgumentError(f"expected vectors of shape [{p}] or [m, {p}], got {tuple(v.shape)}")
        rows = v.reshape(-1, p).to(device=first.device, dtype=first.dtype)
        total, n = torch.zeros_like(rows), 0
        with eval_mode(model):
            for batch in distributed.shard(batches):
                batch = to_device(batch, first.device)
                product = per_batch(model, loss_fn, state, names, batch)

                def flat(row: torch.Tensor) -> torch.Tensor:
                    out = product({k: c.view_as(point[k]) for k, c in zip(names, row.split(sizes))})
                    return torch.cat([out[k].reshape(-1) for k in names])

                total += flat(rows[0]).unsqueeze(0) if rows.shape[0] == 1 else vmap(flat)(rows)
                n += batch_size(batch)
        (n,) = distributed.sum_over_ranks([total], [n])
        if n == 0:
            raise DataLoaderError("the training batches are empty; pass a re-iterable loader, not a one-shot generator")
        return (total / n).to(device=v.device, dtype=v.dtype).reshape(v.shape)

    return matvec


def dataset_hvp(
    model: torch.nn.Module, loss_fn: LossFn, state: State, names: Sequence[str], batches: Iterable[Any]
) -> MatVec:
    """``v -> H v`` for the Hessian of the mean training loss over every batch of ``batches``.

    Args:
        model: the module ``loss_fn`` calls (its weights are not used or changed).
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, per-example loss.
        state: ``{name: Tensor}`` of every parameter and buffer to evaluate at.
        names: parameters spanning the ``p`` coordinates, flattened in this order.
        batches: re-iterable batches (a fixed-order ``DataLoader``), read at every call.

    Returns:
        ``matvec``: ``Tensor[p]`` or ``Tensor[m, p]`` (any float dtype/device) to the
        same shape, dtype and device. ``H = (1/N) Σ_batches ∇²Σ_{i∈batch} ℓ_i``,
        computed in the parameters' dtype. Cost per call: one HVP per batch
        (``m`` vectors are ``vmap``-ed together: ``m`` times the memory).
    """
    return _dataset_product(model, loss_fn, state, names, batches, _hessian_product)


def dataset_gnvp(
    model: torch.nn.Module, loss_fn: LossFn, state: State, names: Sequence[str], batches: Iterable[Any]
) -> MatVec:
    """``v -> G v`` for the Gauss-Newton matrix of the mean training loss, ``G = (1/N) Σ_i J_iᵀ H_ℓ J_i``.

    ``loss_fn`` is split at its single call of the model: outputs ``z = model(...)``
    and the loss of ``z`` (``loss_fn`` evaluated with a stand-in returning ``z``). So
    ``loss_fn`` must call the model exactly once per batch and use nothing of it but
    the returned tensor. ``G`` is positive semi-definite for losses convex in ``z``.
    Arguments, shapes and cost as :func:`dataset_hvp` (plus one forward per batch).

    Raises:
        ValueError: ``loss_fn`` calls the model more or less than once.
    """
    return _dataset_product(model, loss_fn, state, names, batches, _gauss_newton_product)


def lanczos(
    matvec: MatVec,
    p: int,
    k: int,
    max_iter: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    desc: str = "Lanczos iterations",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of a symmetric operator: Lanczos (symmetric Arnoldi) with full reorthogonalisation.

    Builds an orthonormal Krylov basis ``Q`` from a seeded random start, orthogonalising
    each new direction twice against all earlier ones (classical Gram-Schmidt), and takes
    the Ritz pairs of ``T = Qᵀ A Q`` (its upper triangle is the Gram-Schmidt coefficients
    ``q_iᵀ A q_j``, mirrored). When the Krylov space becomes (numerically)
    invariant, it restarts from a fresh random direction, so ``max_iter = p`` always
    gives the exact eigendecomposition. Eigenvalues converge fastest at the ends of the
    spectrum: the top ones are well separated in Hessians, ``max_iter ≈ 2k + 20`` is a
    common choice.

    Args:
        matvec: ``Tensor[p] -> Tensor[p]``, a symmetric linear map ``A``.
        p: dimension.
        k: number of eigenpairs, ``1 <= k <= min(max_iter, p)``.
        max_iter: Krylov dimension (``matvec`` calls); capped at ``p``.
        seed: fixes the start vector (drawn on the CPU: the same on every device).
        dtype: precision of the basis and of the Rayleigh-Ritz step.
        device: where the basis lives (default CPU).
        desc: the label of the progress bar over the iterations (silent under ``ATTRKIT_PROGRESS=0``).

    Returns:
        ``(eigenvalues, eigenvectors)``: ``Tensor[k]`` descending and ``Tensor[p, k]`` with
        orthonormal columns, in ``dtype``. Cost: ``min(max_iter, p)`` matvecs,
        ``O(max_iter² p)`` flops and ``max_iter * p`` elements of memory for the basis.

    Raises:
        ValueError: ``k`` outside ``[1, min(max_iter, p)]``.
    """
    m = min(max_iter, p)
    if not 1 <= k <= m:
        raise ArgumentError(f"lanczos needs 1 <= k <= min(max_iter, p) = {m}, got k={k} (max_iter={max_iter}, p={p})")
    gen = torch.Generator().manual_seed(seed)
    basis = torch.zeros(m, p, dtype=dtype, device=device)
    proj = torch.zeros(m, m, dtype=dtype, device=device)

    def fresh(j: int) -> torch.Tensor:
        w = torch.randn(p, generator=gen, dtype=dtype).to(basis.device)
        for _ in range(2):
            w = w - basis[:j].T @ (basis[:j] @ w)
        return w / w.norm()

    basis[0] = fresh(0)
    scale = 0.0
    for j in progress(range(m), desc):
        w = matvec(basis[j]).to(dtype=dtype, device=basis.device)
        for _ in range(2):
            coef = basis[: j + 1] @ w
            proj[: j + 1, j] += coef
            w = w - basis[: j + 1].T @ coef
        if j + 1 == m:
            break
        norm = float(w.norm())
        scale = max(scale, float(proj[j, j].abs()), norm)
        basis[j + 1] = w / norm if norm > _BREAKDOWN * scale else fresh(j + 1)
    ritz = proj.triu() + proj.triu(1).T
    values, vectors = torch.linalg.eigh(ritz)
    top = torch.argsort(values, descending=True)[:k]
    return values[top], basis.T @ vectors[:, top]
