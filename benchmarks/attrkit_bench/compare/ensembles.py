"""dattri 0.3.0's TRAK, TracIn and RPS attributors on a benchmark problem, for comparison.

Each runner returns ``scores() -> Tensor[n_targets, n_train]`` (dattri's ``[n_train,
n_test]`` transposed). dattri is imported lazily; models are wrapped in ``nn.Sequential``
so that every layer has a module path. What dattri computes differently:

* TRAK: gradients scaled by ``1/sqrt(p)`` (a constant factor), its own random projector,
  ``Q = 1 − p(correct)`` averaged over checkpoints like attrkit's;
* TracIn: per-example gradient dot products per checkpoint, weighted by the learning rates;
  dattri 0.3.0's ``TracInAttributor`` projects every gradient to 512 dimensions whatever
  ``projector_kwargs`` says (its defaults are always merged in), so the runner turns the
  projection off to compute the exact products that attrkit's grad-dot, grad-cos and
  TracIn compute;
* RPS: fine-tunes the last layer's *weight* (no bias) with ``epoch`` steps of gradient
  descent towards the model's own predictions, attrkit by L-BFGS to a stationary point.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.func import functional_call
from torch.utils.data import DataLoader

__all__ = ["dattri_rps", "dattri_tracin", "dattri_trak"]

Scores = Callable[[], torch.Tensor]


def _wrapped(model: torch.nn.Module) -> torch.nn.Module:
    return model if isinstance(model, torch.nn.Sequential) else torch.nn.Sequential(model)


def _states(model: torch.nn.Module, states: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    prefix = "" if isinstance(model, torch.nn.Sequential) else "0."
    return [{prefix + k: v for k, v in s.items()} for s in states]


def _task(model: torch.nn.Module, loss: Callable, states: Sequence[dict[str, torch.Tensor]], target=None):  # noqa: ANN001, ANN202
    from dattri.task import AttributionTask

    return AttributionTask(loss_func=loss, model=model, checkpoints=list(states), target_func=target)


def _margin(model: torch.nn.Module) -> Callable:
    """dattri's per-example output function: the correct-class margin (TRAK's ``f``)."""

    def margin(params: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = data
        logits = functional_call(model, params, (x.unsqueeze(0),))
        correct = logits.gather(1, y.long().view(1, 1)).squeeze()
        others = logits.scatter(1, y.long().view(1, 1), float("-inf"))
        return correct - torch.logsumexp(others, dim=1).squeeze()

    return margin


def _loss(model: torch.nn.Module) -> Callable:
    """dattri's per-example loss: cross-entropy of one example."""

    def loss(params: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = data
        logits = functional_call(model, params, (x.unsqueeze(0),))
        return torch.nn.functional.cross_entropy(logits, y.long().view(1))

    return loss


def _transpose(run: Callable[[], torch.Tensor]) -> Scores:
    def scores() -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run().detach().T.float().cpu()

    return scores


def dattri_trak(model: torch.nn.Module, states: Sequence[dict[str, torch.Tensor]], train: DataLoader,
                targets: DataLoader, dim: int, regularization: float) -> Scores:
    """dattri's ``TRAKAttributor`` over the members ``states`` with projection dimension ``dim``."""

    def run() -> torch.Tensor:
        from dattri.algorithm.trak import TRAKAttributor

        copied = _wrapped(copy.deepcopy(model))

        def correct_probability(params: dict[str, torch.Tensor], data: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = data
            logits = functional_call(copied, params, (x.unsqueeze(0),))
            return torch.softmax(logits, 1)[0, y.long()]

        task = _task(copied, _margin(copied), _states(model, states))
        attributor = TRAKAttributor(task, correct_probability, projector_kwargs={"proj_dim": dim, "device": "cpu",
                                                                                "proj_seed": 0},
                                    device="cpu", regularization=regularization)
        attributor.cache(train)
        return attributor.attribute(targets)

    return _transpose(run)


def dattri_tracin(model: torch.nn.Module, states: Sequence[dict[str, torch.Tensor]], rates: Sequence[float],
                  train: DataLoader, targets: DataLoader, normalized: bool = False) -> Scores:
    """dattri's ``TracInAttributor`` (no projection) over checkpoints ``states``; ``normalized``
    divides each gradient by its norm (one checkpoint, weight 1: grad-cos; unnormalised: grad-dot)."""

    def run() -> torch.Tensor:
        from dattri.algorithm.tracin import TracInAttributor

        copied = _wrapped(copy.deepcopy(model))
        task = _task(copied, _loss(copied), _states(model, states))
        attributor = TracInAttributor(task, weight_list=torch.tensor(list(rates)), normalized_grad=normalized,
                                      device="cpu")
        attributor.projector_kwargs = None  # dattri 0.3.0 always projects to 512 dims; the exact dot products
        return attributor.attribute(train, targets)

    return _transpose(run)


def _soft_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class indices or (dattri RPS's fine-tuning targets) class probabilities."""
    return torch.nn.functional.cross_entropy(logits, y.float() if y.dim() == logits.dim() else y.long())


def dattri_rps(model: torch.nn.Module, layer: str, train: DataLoader, targets: DataLoader,
               regularization: float) -> Scores:
    """dattri's ``RPSAttributor`` on the last ``nn.Linear`` named ``layer`` of ``model``."""

    def run() -> torch.Tensor:
        from dattri.algorithm.rps import RPSAttributor

        copied = _wrapped(copy.deepcopy(model))
        name = layer if isinstance(model, torch.nn.Sequential) else "0"
        task = _task(copied, _loss(copied), [copied.state_dict()],
                     target=_soft_cross_entropy)
        attributor = RPSAttributor(task, final_linear_layer_name=name, l2_strength=regularization, device="cpu")
        attributor.cache(train)
        return attributor.attribute(train, targets)

    return _transpose(run)
