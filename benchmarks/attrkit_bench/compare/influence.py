"""dattri 0.3.0's influence-function attributors on a benchmark problem, for comparison.

dattri (``pip install dattri``, optional) is imported lazily. Each of its attributors is
built on a copy of the problem's trained model with the same loss (mean cross-entropy,
written in ``torch.func`` style as dattri requires), cached on ``full_train`` and run on
``train`` and ``targets``; scores come back transposed to attrkit's ``[n_targets, n_train]``.

What dattri computes differs from attrkit in places (see :data:`DIFFERENCES`): its
explicit, CG and LiSSA attributors sum *per-batch* inverses over the batches of the
``full_train`` loader (``Σ_b (H_b + λI)⁻¹ g``, not ``(H + λI)⁻¹ g``), and its
``attribute`` redoes the test side (gradients and inverse-HVPs) for every training batch.
With one training batch (``batch_size = n_train``) both are the whole-set computation.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.func import functional_call

__all__ = ["DIFFERENCES", "KINDS", "dattri_scores"]

#: What each dattri attributor computes differently from attrkit's solver of the same name.
DIFFERENCES: Mapping[str, str] = {
    "explicit": "sums (H_b + λI)⁻¹ over the full-train loader's batches; torch.linalg.solve in float32",
    "cg": "sums per-batch CG solves; Hessian only (no Gauss-Newton); fixed 10 iterations, no tolerance; float32",
    "lissa": "per-batch sums; samples per test vector; its damping d shrinks the iterate: d = λ/scale gives "
    "(H + λI)⁻¹; Hessian only; float32",
    "arnoldi": "projects train and test gradients on the top eigenvectors (Arnoldi on the Hessian + λI); "
    "Hessian only; float32",
    "ekfac": "EK-FAC on every Linear layer (the MLP's and LR's only layers); float32",
    "datainf": "one λ for every layer; holds test_batch² × p floats per train chunk; float32",
}
#: The dattri counterparts this module can run.
KINDS = tuple(DIFFERENCES)


def _loss(model: torch.nn.Module) -> Callable[[dict[str, torch.Tensor], Any], torch.Tensor]:
    """dattri's ``loss(params, (x, y)) -> Tensor[]``: mean cross-entropy (labels may come as floats)."""

    def loss(params: dict[str, torch.Tensor], data: Any) -> torch.Tensor:
        x, y = data
        logits = functional_call(model, params, (x,))
        return torch.nn.functional.cross_entropy(logits, y.long())

    return loss


def _attributor(kind: str, task: Any, regularization: float, params: Mapping[str, Any]) -> Any:
    from dattri.algorithm import influence_function as inf

    if kind == "explicit":
        return inf.IFAttributorExplicit(task, regularization=regularization)
    if kind == "cg":
        return inf.IFAttributorCG(task, max_iter=params["max_iter"], regularization=regularization)
    if kind == "lissa":
        scale = params["scale"]
        return inf.IFAttributorLiSSA(task, batch_size=params["batch_size"], num_repeat=1,
                                     recursion_depth=params["depth"], damping=regularization / scale, scaling=scale)
    if kind == "arnoldi":  # max_iter + 1: dattri's Arnoldi makes max_iter - 1 HVPs
        return inf.IFAttributorArnoldi(task, proj_dim=params["rank"], max_iter=params["max_iter"] + 1,
                                       regularization=regularization)
    if kind == "ekfac":
        return inf.IFAttributorEKFAC(task, damping=regularization)
    if kind == "datainf":
        return inf.IFAttributorDataInf(task, regularization=regularization)
    raise LookupError(f"no dattri counterpart {kind!r}; known: {', '.join(KINDS)}")


def dattri_scores(
    kind: str,
    model: torch.nn.Module,
    full_train: torch.utils.data.DataLoader,
    train: torch.utils.data.DataLoader,
    targets: torch.utils.data.DataLoader,
    regularization: float,
    params: Mapping[str, Any],
) -> Callable[[], torch.Tensor]:
    """``scores()`` running dattri's ``kind`` attributor: ``cache(full_train)`` then ``attribute``.

    Args:
        kind: one of :data:`KINDS`.
        model: the trained model; dattri gets a copy wrapped in ``nn.Sequential`` (its
            EK-FAC names layers by module path and finds none in a model that *is* a Linear).
        full_train: the loader dattri caches (its curvature is summed per batch of it).
        train: the training examples to score, fixed order.
        targets: the test examples, fixed order.
        regularization: the damping ``λ`` (LiSSA: passed as ``damping = λ / scale``).
        params: the attrkit row's solver parameters (``max_iter``, ``depth``,
            ``batch_size``, ``scale``, ``rank``), mapped to dattri's names.

    Returns:
        ``scores() -> Tensor[n_targets, n_train]`` float32 CPU.
    """

    def run() -> torch.Tensor:
        from dattri.task import AttributionTask

        copied = torch.nn.Sequential(copy.deepcopy(model))  # dattri's EK-FAC finds no layer in a bare Linear
        task = AttributionTask(loss_func=_loss(copied), model=copied, checkpoints=copied.state_dict())
        attributor = _attributor(kind, task, regularization, params)
        with warnings.catch_warnings():  # e.g. Arnoldi's "proj_dim reduced": the result shows it
            warnings.simplefilter("ignore")
            attributor.cache(full_train)
            return attributor.attribute(train, targets).detach().T.float().cpu()

    return run
