"""A fitted :class:`~attrkit.functional.ihvp.InverseHVP` as plain data, and back.

A solver that factorises the curvature at build time (``explicit``: a Cholesky factor;
``arnoldi``: eigenpairs; ``kfac``/``ekfac``: Kronecker factors) keeps what its solve is made
of in ``InverseHVP.state``. :func:`ihvp_state` flattens it into ``{key: Tensor | int | float |
str}`` (what ``torch.load(weights_only=True)`` reads back), and :func:`ihvp_from_state`
rebuilds the same solve from it — bit-identical results, no training data. Solvers whose
every solve passes over the training data (CG, LiSSA) keep no state and cannot be saved.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from attrkit.errors import ArgumentError
from attrkit.functional.curvature import MatVec
from attrkit.functional.ihvp import InverseHVP
from attrkit.functional.ihvp_arnoldi import arnoldi_low_rank, restore_arnoldi
from attrkit.functional.ihvp_explicit import restore_explicit
from attrkit.functional.ihvp_kfac import restore_ekfac, restore_kfac
from attrkit.types import PartState, StateValue

__all__ = ["ihvp_from_state", "ihvp_state"]

#: ``InverseHVP.name`` -> the solve rebuilt from its ``state``.
RESTORE: Mapping[str, Callable[[Mapping[str, StateValue]], MatVec]] = {
    "explicit": restore_explicit, "arnoldi": restore_arnoldi, "kfac": restore_kfac, "ekfac": restore_ekfac,
}

#: ``InverseHVP.name`` -> its ``low_rank`` form ``(U, w)`` from its ``state``, for kinds whose solve is one.
LOW_RANK: Mapping[str, Callable[[Mapping[str, StateValue]], tuple]] = {"arnoldi": arnoldi_low_rank}


def ihvp_state(ihvp: InverseHVP) -> PartState:
    """``{"kind", "p", "info.<key>"..., "state.<key>"...}``: ``ihvp`` as plain data.

    Raises:
        ArgumentError: ``ihvp`` keeps no state (its solves read the training data) or is of a
            kind :func:`ihvp_from_state` cannot rebuild.
    """
    if ihvp.state is None or ihvp.name not in RESTORE:
        raise ArgumentError(f"the {ihvp.name!r} inverse-HVP keeps no state to save: its solves read the training data "
                            f"(rebuilt kinds: {', '.join(RESTORE)})")
    out: PartState = {"kind": ihvp.name, "p": ihvp.p}
    out.update({f"info.{key}": value for key, value in ihvp.stats.info.items()})
    out.update({f"state.{key}": value for key, value in ihvp.state.items()})
    return out


def ihvp_from_state(state: Mapping[str, StateValue]) -> InverseHVP:
    """The :class:`InverseHVP` that :func:`ihvp_state` described (``stats.build`` is zero).

    Raises:
        ArgumentError: a state of an unknown kind, or without its entries.
    """
    kind = state.get("kind")
    if kind not in RESTORE or not isinstance(state.get("p"), int):
        raise ArgumentError(f"not a saved inverse-HVP state (kind {kind!r}; known: {', '.join(RESTORE)})")
    inner = {key.removeprefix("state."): value for key, value in state.items() if key.startswith("state.")}
    info = {key.removeprefix("info."): value for key, value in state.items() if key.startswith("info.")}
    try:
        apply = RESTORE[kind](inner)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArgumentError(f"the saved {kind!r} inverse-HVP state is incomplete or malformed ({exc!r})") from exc
    low_rank = LOW_RANK[kind](inner) if kind in LOW_RANK else None
    return InverseHVP.restored(apply, state["p"], kind, inner, info, low_rank=low_rank)
