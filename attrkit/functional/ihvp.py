"""Inverse-Hessian-vector products ``(H + λI)⁻¹ v``: what the solvers share.

Influence functions score ``g_testᵀ (H + λI)⁻¹ g_train`` with ``H`` the Hessian (or the
Gauss-Newton matrix) of the *mean* training loss over the *whole* training set and ``λ``
the damping (``regularization``). Every solver takes a block of vectors ``Tensor[m, p]``
(one per row) and returns ``Tensor[m, p]``.

Each solver has one public form, in :mod:`attrkit.functional`: a builder "at x", on a model
and its training batches, that precomputes what depends only on the data and the parameters
(a factorisation, eigenpairs, Kronecker factors, the gathered training set) and returns an
:class:`InverseHVP`, which applies it to blocks and records its costs in ``.stats``:
:func:`~attrkit.functional.ihvp_explicit.explicit_ihvp_at`,
:func:`~attrkit.functional.ihvp_cg.cg_ihvp_at`,
:func:`~attrkit.functional.ihvp_lissa.lissa_ihvp_at`,
:func:`~attrkit.functional.ihvp_arnoldi.arnoldi_ihvp_at`,
:func:`~attrkit.functional.ihvp_kfac.kfac_ihvp_at` and
:func:`~attrkit.functional.ihvp_kfac.ekfac_ihvp_at`; and
:func:`~attrkit.functional.datainf.datainf_ihvp_at`, whose ``DataInfSolve`` streams the
training data at every call.

Some builders run an algorithm that also works on a curvature of the caller's own. It is a
module-level helper of the builder's module, not exported from :mod:`attrkit.functional`:
``explicit_solve`` (a matrix; :mod:`~attrkit.functional.ihvp_explicit`), ``cg_solve`` (a
matvec; :mod:`~attrkit.functional.ihvp_cg`), ``lissa_solve`` (a *stochastic* matvec;
:mod:`~attrkit.functional.ihvp_lissa`), and ``kfac_solve`` / ``ekfac_solve`` on the factors of
``fit_kfac`` / ``fit_ekfac`` (:mod:`~attrkit.functional.ihvp_kfac`,
:mod:`~attrkit.functional.kfac_factors`). :func:`function_matvec` gives the matvec of the
Hessian of a scalar function of a pytree of parameters, e.g.
``cg_solve(function_matvec(fn, params)[0], vectors)``.

Costs are counted in passes over the training batches and in *example-HVPs*: the number
of (training example, vector) pairs whose curvature product was taken. A pass with a
block of ``m`` vectors over ``n`` examples is ``n m`` example-HVPs, whatever the batch
size; a LiSSA step on ``b`` sampled examples is ``b m``. One example-HVP costs about 2-3
gradient evaluations of one example. The products of a structured operator
(:mod:`~attrkit.functional.structured_matvec`, CG's and Arnoldi's ``matvec=``) count the
same ``n m`` per block, but make no pass (the one pass that caches its factors is counted)
and cost about ``4 p`` flops of GEMMs each, without autograd.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
import torch
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from attrkit.data import batch_size, check_fixed_order
from attrkit.errors import ArgumentError, CurvatureError, DataLoaderError, NonFiniteError
from attrkit.functional.curvature import MatVec, dataset_gnvp, dataset_hvp, hvp
from attrkit.functional.nonfinite import nonfinite_rows
from attrkit.types import LossFn

__all__ = ["CURVATURES", "Cost", "CurvatureError", "IHVPStats", "InverseHVP", "function_matvec"]

#: ``curvature=`` names and the dataset products they use.
CURVATURES: Mapping[str, Callable[..., MatVec]] = {"hessian": dataset_hvp, "gauss-newton": dataset_gnvp}


@attrs.define
class Cost:
    """Work done by one phase of an inverse-HVP.

    Attributes:
        passes: full passes over the training batches (curvature products per batch, or the
            collection of a structured operator's factors).
        example_hvps: (training example, vector) pairs whose curvature product was taken
            (by HVPs, or in GEMMs by a structured operator).
        seconds: wall-clock time.
    """

    passes: int = 0
    example_hvps: int = 0
    seconds: float = 0.0


@attrs.define
class IHVPStats:
    """What an :class:`InverseHVP` has cost so far.

    Attributes:
        build: the precomputation (factorisation, eigenpairs, gathering the data).
        solve: all calls of ``solve`` together.
        solves: number of ``solve`` calls.
        info: solver-specific numbers, e.g. CG's ``iterations`` and
            ``max_relative_residual`` of the last solve (documented by each builder).
    """

    build: Cost
    solve: Cost = attrs.Factory(Cost)
    solves: int = 0
    info: dict[str, float] = attrs.Factory(dict)


class _Meter:
    """Re-iterable view of the training batches that counts passes, examples and example-HVPs."""

    def __init__(self, batches: Iterable[Any]):
        self.batches = batches
        self.passes = self.examples = self.example_hvps = 0

    def __iter__(self) -> Iterator[Any]:
        self.passes += 1
        for batch in self.batches:
            self.examples += batch_size(batch)
            yield batch

    def counted(self, matvec: MatVec) -> MatVec:
        """``matvec`` (one pass over this view per call), charging ``examples × vectors`` per call."""

        def run(v: torch.Tensor) -> torch.Tensor:
            before = self.examples
            out = matvec(v)
            self.example_hvps += (self.examples - before) * (v.shape[0] if v.dim() == 2 else 1)
            return out

        return run


class InverseHVP:
    """``(H + λI)⁻¹`` at fixed training data and parameters, built by an ``*_ihvp_at`` function.

    Call it (or its :meth:`solve`) on blocks of vectors; ``stats`` records the passes over
    the data, example-HVPs and seconds of the build and of the solves so far.

    Attributes:
        p: dimension of the vectors (number of selected parameter entries).
        stats: :class:`IHVPStats`.
        name: the solver's name, used in error messages (``"cg"``).
        state: ``{key: Tensor | number | str}``, what ``apply`` is made of (a Cholesky factor,
            eigenpairs, Kronecker factors), from which :func:`~attrkit.functional.ihvp_state.ihvp_from_state`
            rebuilds it in another process; ``None`` for a solver that reads the training data
            at every solve (CG, LiSSA), which cannot be saved.
        low_rank: ``(U, w)`` (``Tensor[p, r]``, ``Tensor[r]``) when ``apply`` is exactly
            ``v -> U diag(w) Uᵀ v`` (Arnoldi's eigenpairs), else ``None``.
        takes_rank_one: whether ``apply`` takes ``rank_one=``, the vectors' rank-one layer blocks as
            factors (K-FAC, EK-FAC), which :meth:`solve` then passes on.
    """

    def __init__(
        self, apply: MatVec, p: int, meter: _Meter, started: float, info: dict[str, float], name: str = "inverse-HVP",
        state: Mapping[str, Any] | None = None, low_rank: tuple[torch.Tensor, torch.Tensor] | None = None,
    ):
        self._apply, self._meter, self.p, self.name, self.state = apply, meter, p, name, state
        self.low_rank = low_rank
        self.takes_rank_one = _takes(apply, "rank_one")
        build = Cost(meter.passes, meter.example_hvps, time.perf_counter() - started)
        self.stats = IHVPStats(build=build, info=info)

    @classmethod
    def restored(cls, apply: MatVec, p: int, name: str, state: Mapping[str, Any], info: dict[str, float],
                 low_rank: tuple[torch.Tensor, torch.Tensor] | None = None) -> InverseHVP:
        """An :class:`InverseHVP` rebuilt from a saved ``state`` (no build cost, no training data)."""
        return cls(apply, p, _Meter(()), time.perf_counter(), info, name=name, state=state, low_rank=low_rank)

    def solve(self, vectors: torch.Tensor, rank_one: Mapping[int, Any] | None = None) -> torch.Tensor:
        """``(H + λI)⁻¹ v`` for every row ``v`` of ``vectors``.

        Args:
            vectors: ``Tensor[m, p]``, one vector per row, flattened in ``names`` order.
            rank_one: factors of the vectors' rank-one layer blocks
                (:data:`~attrkit.functional.ihvp_kfac.RankOne`), for a solve that applies them
                (K-FAC, EK-FAC: :attr:`takes_rank_one`); ignored by any other.

        Returns:
            ``Tensor[m, p]`` in the dtype and on the device of ``vectors``. Cost: see the
            builder; recorded in ``stats.solve``.

        Raises:
            ValueError: ``vectors`` is not a floating ``Tensor[m, p]``.
            NonFiniteError: finite ``vectors`` gave a NaN or an infinity (see :func:`check_finite_solve`).
        """
        check_block(vectors, self.p)
        started, passes, hvps = time.perf_counter(), self._meter.passes, self._meter.example_hvps
        given = self._apply(vectors, rank_one=rank_one) if rank_one and self.takes_rank_one else self._apply(vectors)
        out = check_finite_solve(self.name, vectors, given)
        cost = self.stats.solve
        cost.passes += self._meter.passes - passes
        cost.example_hvps += self._meter.example_hvps - hvps
        cost.seconds += time.perf_counter() - started
        self.stats.solves += 1
        return out

    __call__ = solve


def _takes(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` has a parameter ``name`` (``False`` when its signature cannot be read)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def check_block(vectors: torch.Tensor, p: int | None = None) -> None:
    """Refuse anything but a floating ``Tensor[m, p]`` (any ``p`` when ``None``) with a ``ValueError``."""
    if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2 or vectors.shape[1] != (p or vectors.shape[1]):
        got = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
        raise ArgumentError(f"vectors must be a block Tensor[m, p={p or 'p'}], one vector per row (pass one vector v as "
                         f"v[None]); got {got}")
    if not vectors.is_floating_point():
        raise ArgumentError(f"vectors must be floating point, got {vectors.dtype}")


def check_finite_solve(solver: str, vectors: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out``, after checking that a solver kept finite ``vectors`` finite.

    A backstop behind each solver's own checks of its curvature: a NaN or an infinity out
    of finite input means non-finite curvature (weights, data or loss) or an overflow of the
    inverse (a damping too small for the curvature's scale). Rows of ``vectors`` that are not
    finite themselves are not the solver's doing and are let through (the gradient checks
    report them).

    Args:
        solver: the solver's name, for the message.
        vectors: ``Tensor[m, p]``, the input.
        out: ``Tensor[m, p]``, the solver's result.

    Raises:
        NonFiniteError: a finite row of ``vectors`` with a non-finite result.
    """
    rows = nonfinite_rows(out)
    rows = [int(r) for r in rows if bool(torch.isfinite(vectors[r]).all())]
    if rows:
        raise NonFiniteError(
            f"solver {solver!r} returned NaN or infinite values for {len(rows)} of {len(vectors)} finite vectors (rows "
            f"{rows[:10]}{'...' if len(rows) > 10 else ''}): the curvature is not finite (check the model's weights, "
            "the training data and the loss scale) or its inverse overflowed; raise regularization (the damping λ)"
        )
    return out


def check_regularization(regularization: float) -> None:
    """Refuse a damping that is not a finite number ``>= 0`` (``ValueError``)."""
    if not (math.isfinite(regularization) and regularization >= 0):
        raise ArgumentError(f"regularization (the damping λ in H + λI) must be a finite number >= 0, "
                         f"got {regularization}")


def prepare_at(
    state: Mapping[str, torch.Tensor],
    names: Sequence[str],
    batches: Iterable[Any],
    regularization: float,
    curvature: str,
) -> tuple[_Meter, int]:
    """Check the common arguments of the ``*_ihvp_at`` functions.

    Returns:
        ``(meter, p)``: a counting, re-iterable view of ``batches`` and the dimension.

    Raises:
        ValueError: bad ``regularization``, ``curvature`` or ``names``.
        DataLoaderError: ``batches`` is a one-shot iterator, a shuffling ``DataLoader`` or
            yields nothing.
    """
    check_regularization(regularization)
    if curvature not in CURVATURES:
        raise ArgumentError(f"curvature must be one of {sorted(CURVATURES)}, got {curvature!r}")
    missing = [n for n in names if n not in state]
    if not names or missing:
        raise ArgumentError(f"names must be a non-empty list of keys of state; missing: {missing or 'all (empty)'}")
    check_fixed_order(batches)
    iterator = iter(batches)
    if iterator is batches:
        raise DataLoaderError(f"batches must be re-iterable (a DataLoader, a list), got a one-shot "
                              f"{type(batches).__name__}: the curvature is read at every pass; wrap it in list(...)")
    if next(iterator, None) is None:
        raise DataLoaderError("batches is empty: the curvature of the training loss needs at least one batch")
    return _Meter(batches), sum(state[n].numel() for n in names)


def dataset_matvec(
    meter: _Meter, model: torch.nn.Module, loss_fn: LossFn, state: Mapping[str, torch.Tensor],
    names: Sequence[str], curvature: str,
) -> MatVec:
    """The counted dataset matvec (``Tensor[m, p] -> Tensor[m, p]``, one pass per call) of ``curvature``."""
    return meter.counted(CURVATURES[curvature](model, loss_fn, state, names, meter))


def function_matvec(fn: Callable[[Any], torch.Tensor], params: Any) -> tuple[MatVec, torch.Tensor]:
    """Hessian of ``fn`` at ``params`` as a matvec on flat blocks.

    Args:
        fn: scalar function (``Tensor[]``) of ``params``, written with ``vmap``-able ops.
        params: a tensor or pytree of tensors; its leaves, flattened in ``tree_flatten``
            order and concatenated, are the ``p`` coordinates.

    Returns:
        ``(matvec, theta)``: ``Tensor[m, p] -> Tensor[m, p]`` (one ``vmap``-ed :func:`hvp`
        per call, in the parameters' dtype, returned in the input's) and ``Tensor[p]``.
    """
    leaves, spec = tree_flatten(params)
    sizes = [leaf.numel() for leaf in leaves]
    theta = torch.cat([leaf.reshape(-1) for leaf in leaves])

    def flat(t: torch.Tensor) -> torch.Tensor:
        return fn(tree_unflatten([c.view_as(leaf) for c, leaf in zip(t.split(sizes), leaves)], spec))

    def matvec(v: torch.Tensor) -> torch.Tensor:
        rows = v.to(device=theta.device, dtype=theta.dtype)
        return vmap(lambda row: hvp(flat, theta, row))(rows).to(device=v.device, dtype=v.dtype)

    return matvec, theta
