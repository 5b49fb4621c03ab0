"""The work a method cannot avoid, counted analytically: gradient passes and float32 flops.

    limit(method) = examples / pass_rate + forwards / forward_rate + flops / gemm_rate

The three rates are measured on the machine in the run that times the methods (:func:`measure_rates`),
before and after the methods, keeping the faster of each (:meth:`Rates.best`): a rate measured while
the machine was disturbed would make the limit too long and flatter every multiple.

``examples`` is how many examples the method must differentiate (training and test side, per
member); ``forwards`` how many it only evaluates (RPS's features); ``flops`` are the GEMM flops of its score products, projections and solve, each
counted for the cheapest exact algorithm (structured inner products where a layer's factors
are cheaper than its gradient, :func:`attrkit.functional.structured_products.cheaper_structured`;
the Gauss-Newton build by Kronecker blocks; K-FAC and EK-FAC rotations of the factors). Sizes
come from the model's ``nn.Linear`` layers (the settings this applies to have no other
parameters): ``n`` training examples, ``m`` targets, ``p`` parameters, ``C`` classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import time

import attrs
import torch

__all__ = ["Rates", "Sizes", "Work", "limits", "measure_rates", "sizes_of", "work"]


@attrs.frozen(kw_only=True)
class Sizes:
    """The sizes the counts depend on.

    Attributes:
        n: training examples.
        m: targets.
        layers: ``(d_in + 1, d_out)`` per ``nn.Linear`` layer (with its bias column).
    """

    n: int
    m: int
    layers: tuple[tuple[int, int], ...]

    @property
    def p(self) -> int:
        """Parameters."""
        return sum(i * o for i, o in self.layers)

    @property
    def pair(self) -> int:
        """Flops / 2 of one exact gradient inner product, each layer in its cheaper form."""
        return sum(min(i * o, i + o) for i, o in self.layers)


@attrs.frozen(kw_only=True)
class Work:
    """A method's unavoidable work.

    Attributes:
        examples: examples differentiated (one forward and backward each).
        flops: float32 GEMM flops.
        what: how they were counted, in words.
        forwards: examples only evaluated (a forward pass each, no backward).
    """

    examples: int
    flops: float
    what: str
    forwards: int = 0


def sizes_of(model: torch.nn.Module, n: int, m: int) -> Sizes:
    """The :class:`Sizes` of ``model``'s ``nn.Linear`` layers for ``n`` training examples and ``m`` targets.

    Raises:
        ValueError: the model has parameters outside ``nn.Linear`` layers (the counts would miss them).
    """
    layers = [mod for mod in model.modules() if type(mod) is torch.nn.Linear]
    counted = sum(p.numel() for mod in layers for p in mod.parameters())
    if counted != sum(p.numel() for p in model.parameters()):
        raise ValueError("the roofline counts only nn.Linear layers; this model has other parameters")
    return Sizes(n=n, m=m, layers=tuple((mod.in_features + (mod.bias is not None), mod.out_features)
                                        for mod in layers))


def _name(part: Any) -> str | None:
    return part.get("name") if isinstance(part, Mapping) else part


def _param(part: Any, key: str, default: Any) -> Any:
    return part.get(key, default) if isinstance(part, Mapping) else default


def _kfac(s: Sizes, corrected: bool) -> tuple[float, str]:
    """Flops of K-FAC (EK-FAC with ``corrected``): factors, eigendecompositions, the eigenvalue
    correction (rank-one rotations), and ``m`` preconditioned queries, each rotated in from its
    rank-one factors and out as a ``d_out × d_in`` block."""
    factors = sum(2 * s.n * (i * i + o * o) + 9 * (i**3 + o**3) for i, o in s.layers)
    queries = s.m * sum(2 * (i * i + o * o) + 2 * (i * i * o + o * o * i) for i, o in s.layers)
    fix = s.n * sum(2 * (i * i + o * o) + 2 * i * o for i, o in s.layers) if corrected else 0
    return factors + queries + fix, ("factors 2n(d_in²+d_out²), eigh 9d³, queries m(2(d_in²+d_out²)+"
                                     "2(d_in²d_out+d_out²d_in))") + (
        ", correction n(2d_in²+2d_out²+2d_in d_out)" if corrected else "")


def work(spec: Mapping[str, Any], members: int, s: Sizes) -> Work:
    """The unavoidable :class:`Work` of the method ``spec`` with ``members`` ensemble members.

    Raises:
        LookupError: a method the model does not count.
    """
    method, solver = _name(spec["method"]), spec.get("solver")
    n, m, p = s.n, s.m, s.p
    scores = 2.0 * m * n * s.pair
    sides = members * (n + m)
    if method in ("grad-dot", "grad-cos", "tracin"):
        return Work(examples=sides, flops=members * scores, what="members × 2mn Σ min(d_in d_out, d_in+d_out)")
    if method == "trak":
        projector = spec.get("projector")
        if _name(projector) == "kronecker":  # LoGra: per layer (P_out ⊗ P_in) of g ⊗ ā
            k_in, k_out = int(_param(projector, "dim_in", 16)), int(_param(projector, "dim_out", 16))
            k = len(s.layers) * k_in * k_out
            project = 2.0 * (n + m) * sum(i * k_in + o * k_out + k_in * k_out for i, o in s.layers)
            what = "members × (Kronecker projection 2(n+m)Σ(d_in k_in + d_out k_out + k_in k_out), Gram 2nk², solve, "
        elif _name(projector) == "sjlt":  # each gradient coordinate added to nnz buckets
            k, nnz = int(_param(projector, "dim", 512)), int(_param(projector, "nnz", 4))
            project, what = 2.0 * (n + m) * p * nnz, "members × (sparse sketch 2(n+m)p·nnz, Gram 2nk², solve, "
        else:
            k = int(_param(projector, "dim", 512))
            project, what = 2.0 * (n + m) * p * k, "members × (project 2(n+m)pk, Gram 2nk², solve, "
        flops = members * (project + 2.0 * n * k * k + k**3 / 3 + 2.0 * m * k * k + 2.0 * m * n * k)
        return Work(examples=sides, flops=flops, what=what + "scores 2mnk)")
    if method == "rps":
        d, c = s.layers[-1]
        return Work(examples=0, forwards=n + m, flops=2.0 * m * n * d + 2.0 * n * d * c,
                    what="features (forward only), scores 2mnd (the refit's iterations not counted)")
    if method not in ("if", "relatif"):
        raise LookupError(f"no roofline count for method {method!r}")
    kind, dense_scores = _name(solver), 2.0 * m * n * p  # a solved query is dense: <q, u ⊗ a> costs d_in d_out
    projector = spec.get("projector")
    if kind == "identity" and _name(projector) == "arnoldi":  # Arnoldi influence in its projected form
        rank = int(_param(projector, "dim", 64))
        kind, solver = "arnoldi", {"max_iter": _param(projector, "max_iter", None) or 2 * rank + 20, "rank": rank}
    if kind == "explicit":
        flops = n * p * p + p**3 / 3 + 2.0 * m * p * p + dense_scores
        what = "Kronecker-block Gauss-Newton np² (symmetric half), Cholesky p³/3, solves 2mp², scores 2mnp"
    elif kind == "cg":
        iters = int(_param(solver, "max_iter", 100))
        flops, what = iters * 4.0 * m * n * p + dense_scores, f"{iters} block GN products 4mnp, scores 2mnp"
        if _param(solver, "preconditioner", "none") != "none":  # a Kronecker solve per vector, at the start
            fit, _ = _kfac(s, _param(solver, "preconditioner", "none") == "ekfac")  # and each iteration: (iters+1) m
            flops += fit + iters * m * sum(4.0 * (i * i * o + o * o * i) for i, o in s.layers)
            what += ", the preconditioner's factors and (iters + 1) m Kronecker solves"
    elif kind == "lissa":
        depth, batch = int(_param(solver, "depth", 1000)), int(_param(solver, "batch_size", 1))
        flops, what = depth * 4.0 * m * batch * p + dense_scores, f"{depth} steps of 4m·{batch}·p, scores 2mnp"
    elif kind == "arnoldi":
        iters, rank = int(_param(solver, "max_iter", 100)), int(_param(solver, "rank", 10))
        flops = iters * 4.0 * n * p + 2.0 * iters * iters * p + 2.0 * (n + m) * p * rank + 2.0 * m * n * rank
        what = f"{iters} GN products 4np, orthogonalisation, projections 2(n+m)pr, scores 2mnr"
    elif kind in ("kfac", "ekfac"):
        flops, what = _kfac(s, kind == "ekfac")
        flops += dense_scores
        what += ", scores 2mnp"
    elif kind == "datainf":
        flops, what = 6.0 * m * n * p, "per-layer rank-one inverses 4mnp, scores 2mnp"
    else:
        raise LookupError(f"no roofline count for solver {kind!r}")
    if method == "relatif":  # self-influence: every training example's own solve
        flops += n * sum(4 * (i * i * o + o * o * i) for i, o in s.layers) + 2.0 * n * p
        what += ", self-influence n solves"
        sides += n
    return Work(examples=sides + (n if kind in ("kfac", "ekfac", "explicit") else 0), flops=flops, what=what)


@attrs.frozen(kw_only=True)
class Rates:
    """This machine's rates, measured in the benchmark's run.

    Attributes:
        gemm: float32 GEMM flops per second (best of 5 products of two 2048 × 2048 matrices).
        passes: training examples per second of the cheapest pass that yields every ``nn.Linear``
            layer's inputs and output gradients: a batched forward, then the summed loss
            differentiated with respect to the layers' outputs only (no weight gradients), best
            of 3 passes over the training loader.
        forwards: training examples per second of the batched forward alone, without autograd
            (best of 3 passes).
    """

    gemm: float
    passes: float
    forwards: float

    def best(self, other: Rates) -> Rates:
        """Each rate the faster of ``self`` and ``other`` (two measurements of the same machine)."""
        return Rates(gemm=max(self.gemm, other.gemm), passes=max(self.passes, other.passes),
                     forwards=max(self.forwards, other.forwards))


def _gemm_rate(size: int = 2048, repeats: int = 5) -> float:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


def _pass_rate(model: torch.nn.Module, loss_fn: Any, train: Any, backward: bool, repeats: int = 3) -> float:
    """Examples per second of a forward over ``train`` (and, with ``backward``, the summed loss
    differentiated with respect to every ``nn.Linear`` output)."""
    outputs: list[torch.Tensor] = []
    hooks = [mod.register_forward_hook(lambda _m, _i, out: outputs.append(out))
             for mod in model.modules() if type(mod) is torch.nn.Linear]
    best, count = float("inf"), 0
    try:
        for _ in range(repeats):
            count, start = 0, time.perf_counter()
            for batch in train:
                outputs.clear()
                if backward:
                    loss = loss_fn(model, batch).sum()
                    torch.autograd.grad(loss, [out for out in outputs if out.requires_grad])
                else:
                    with torch.no_grad():
                        loss_fn(model, batch)
                count += len(batch[1])
            best = min(best, time.perf_counter() - start)
    finally:
        for hook in hooks:
            hook.remove()
    return count / best


def measure_rates(model: torch.nn.Module, loss_fn: Any, train: Any) -> Rates:
    """The :class:`Rates` of this machine for ``model`` (its ``nn.Linear`` layers) on the training loader ``train``."""
    return Rates(gemm=_gemm_rate(), passes=_pass_rate(model, loss_fn, train, backward=True),
                 forwards=_pass_rate(model, loss_fn, train, backward=False))


def limits(spec: Mapping[str, Any], members: int, sizes: Sizes, rates: Rates, seconds: float) -> dict[str, Any]:
    """``{"limit", "multiple", "gflop", "examples", "forwards", "counted"}``: the method's roofline
    time (seconds), its measured ``seconds`` as a multiple of it, and the work counted."""
    need = work(spec, members, sizes)
    limit = need.examples / rates.passes + need.forwards / rates.forwards + need.flops / rates.gemm
    return {"limit": limit, "multiple": seconds / limit, "gflop": need.flops / 1e9, "examples": need.examples,
            "forwards": need.forwards, "counted": need.what}
