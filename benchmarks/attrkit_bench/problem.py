"""What a benchmark setting is (:class:`Setting`) and what it prepares (:class:`Problem`)."""

from __future__ import annotations

import functools

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch.utils.data import DataLoader, Subset

from attrkit import AttributionTask
from attrkit_bench.types import LossFn

__all__ = ["MEMBER_KINDS", "Declaration", "Members", "NoisyLabels", "Problem", "Setting", "Truth"]

#: ``truth() -> ground truth``: made (retrained) on first use, cached on disk.
Truth = Callable[[], Mapping[str, Any]]
#: ``members(kind, k) -> states``: ``k`` ensemble members' state dicts of the problem's model.
Members = Callable[[str, int], list[dict[str, torch.Tensor]]]
#: Member kinds a setting may produce: ``independent`` (models of the LDS protocol's first
#: half, each trained on a random half), ``trajectory`` (evenly spaced epoch checkpoints of
#: the main model's training run, for TracInCP).
MEMBER_KINDS = ("independent", "trajectory")


def _first_targets(make: Truth, n: int) -> dict[str, Any]:
    truth = dict(make())
    for key, axis in (("values", 1), ("base", 0), ("labels", 0)):
        if isinstance(truth.get(key), torch.Tensor):
            truth[key] = truth[key].narrow(axis, 0, n)
    return truth


@attrs.frozen(kw_only=True)
class NoisyLabels:
    """The noisy-label detection task of a setting.

    Attributes:
        model: the setting's model retrained, same recipe and seed, on the training set
            with a seeded fraction of labels flipped (eval mode).
        train: fixed-order loader over the training set with the noisy labels.
        flipped: ``BoolTensor[n_train]``, which labels were flipped (the ``auc`` ground truth).
    """

    model: torch.nn.Module
    train: Iterable[Any]
    flipped: torch.Tensor = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class Problem:
    """A trained model with its data and ground truth, ready for every method.

    Attributes:
        name: the setting's name (``"mnist-lr"``); names the result file.
        model: the trained model the methods attribute.
        loss_fn: ``loss_fn(model, batch) -> Tensor[b]``, the per-example training loss
            (also the target).
        train: fixed-order loader over the ``n_train`` training examples.
        targets: fixed-order loader over the ``n_targets`` attribution targets.
        ground_truth: ``{"subsets": BoolTensor[n_models, n_train], "values":
            Tensor[n_models, n_targets]}`` for the ``lds`` metric.
        info: JSON-able facts for the report (sizes, training time and accuracy,
            ground-truth time, the recipe and its cache key).
        summary: the main facts of ``info`` as lines of text for the terminal.
        test: ``(x_test, y_test)`` of the whole test split (targets are its first rows),
            for retraining metrics that measure test accuracy; ``None`` if not kept.
        noisy: the noisy-label detection task, or ``None``.
        truths: ground truth of further metrics by metric name (``"loo"``,
            ``"brittleness"``, ``"retraining"``, ``"pruning"``), each made on first use
            (it may retrain many models); ``"lds"`` is ``ground_truth``.
        members: produces ensemble members (see :data:`Members`); ``None``: the setting
            has none.
        display: how the setting's examples are shown: keyword arguments of
            :func:`attrkit.explain` (``kind``, ``names``, ``class_names``, ``decode``).
    """

    name: str
    model: torch.nn.Module
    loss_fn: LossFn
    train: Iterable[Any]
    targets: Iterable[Any]
    ground_truth: Mapping[str, torch.Tensor] = attrs.field(repr=False)
    info: Mapping[str, Any] = attrs.field(factory=dict)
    summary: str = ""
    test: tuple[torch.Tensor, torch.Tensor] | None = attrs.field(default=None, repr=False)
    noisy: NoisyLabels | None = attrs.field(default=None, repr=False)
    truths: Mapping[str, Truth] = attrs.field(factory=dict, repr=False)
    members: Members | None = attrs.field(default=None, repr=False)
    display: Mapping[str, Any] = attrs.field(factory=dict, repr=False)

    def truth(self, metric: str) -> Mapping[str, Any]:
        """The ground truth of ``metric`` (``"lds"`` or a key of ``truths``).

        Raises:
            LookupError: the setting has no ground truth for ``metric``; the message lists those it has.
        """
        if metric == "lds":
            return self.ground_truth
        if metric not in self.truths:
            known = ", ".join(["lds", *self.truths])
            raise LookupError(f"setting {self.name!r} has no ground truth for metric {metric!r}; it has: {known}")
        return self.truths[metric]()

    def first_targets(self, n: int) -> Problem:
        """This problem judged on its first ``n`` targets only (a cheaper run of the same setting).

        The targets loader keeps its batch size; ground truth indexed by target is cut to
        match: LDS ``values[:, :n]``, and in ``truths`` the entries ``values`` (axis 1),
        ``base`` and ``labels`` (axis 0).

        Raises:
            ValueError: ``n`` is not in ``1..n_targets``, or the targets loader has no ``dataset``.
        """
        dataset = getattr(self.targets, "dataset", None)
        if dataset is None or not 1 <= n <= len(dataset):
            raise ValueError(f"first_targets needs 1 <= n <= n_targets and a DataLoader of targets, got n={n}")
        loader = DataLoader(Subset(dataset, range(n)), batch_size=getattr(self.targets, "batch_size", None) or n)
        truth = {**self.ground_truth, "values": self.ground_truth["values"][:, :n]}
        truths = {name: functools.partial(_first_targets, make, n) for name, make in self.truths.items()}
        info = {**self.info, "n_targets": n}
        return attrs.evolve(self, targets=loader, ground_truth=truth, truths=truths, info=info)

    def task(self) -> AttributionTask:
        """A fresh :class:`attrkit.AttributionTask` of the model and its loss."""
        return AttributionTask(model=self.model, loss_fn=self.loss_fn)


@attrs.frozen(kw_only=True)
class Setting:
    """A registered benchmark setting.

    Attributes:
        name: what ``attrkit bench NAME`` takes.
        description: one line for ``attrkit bench --list``.
        size: one line giving the full run's sizes.
        default_methods: method specs run when ``--methods`` is not given (registered
            names, preset names or JSON, as on the command line).
        prepare: ``prepare(cache_dir, quick) -> Problem``; ``quick`` shrinks every size
            for smoke tests and leaves the code path as it is.
    """

    name: str
    description: str
    size: str
    default_methods: tuple[str, ...]
    prepare: Callable[[Path, bool], Problem] = attrs.field(repr=False)


class Declaration:
    """Mixin of a setting's declaration: :meth:`setting` from its ``name``, ``description``,
    ``size``, ``default_methods``, ``full`` and ``quick`` configs and ``prepare(cache_dir, config)``."""

    __slots__ = ()

    def setting(self) -> Setting:
        """This declaration as ``attrkit bench`` lists and runs it (``quick`` picks the quick config)."""
        declared: Any = self
        return Setting(
            name=declared.name,
            description=declared.description,
            size=declared.size,
            default_methods=declared.default_methods,
            prepare=lambda cache_dir, quick: declared.prepare(cache_dir, declared.quick if quick else declared.full),
        )
