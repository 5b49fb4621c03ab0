"""Representer point selection (Yeh et al., 2018), ``rps``: a last-layer formula, not a gradient one.

Fit the output layer ``W`` (bias as an extra column on features ``h̃ = [h, 1]``) by
minimising ``(1/n) Σ_i loss_i(W h̃_i) + λ ‖W‖²`` on the penultimate features of the
trained model. At the minimum, ``W = Σ_i α_i h̃_iᵀ`` with ``α_i = −∂loss_i/∂z_i / (2λn)``,
so every pre-activation decomposes over the training set (the representer theorem):

    z_t = W h̃_t = Σ_i α_i (h̃_iᵀ h̃_t).

The score contracts training point ``i``'s share of ``z_t`` with ``−∂target_t/∂z_t``:

    score(t, i) = ⟨−∂target_t/∂z_t, α_i⟩ · h̃_iᵀ h̃_t,

so a positive score means ``i`` pushes the logits the way that lowers the target (a
proponent); for cross-entropy that is towards the test point's own class.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import attrs
import torch

from attrkit.plugin import (
    AttributionTask,
    Attributor,
    DataLoaderError,
    FitGuard,
    Member,
    NotFittedError,
    Part,
    Saved,
    batch_size,
    cause,
    check_rows,
    check_scores,
    checked,
    cross_entropy,
    float_field,
    hookimpl,
    positive_int,
    progress,
    save_attributor,
    stack_rows,
    to_device,
    user_code,
)
from attrkit.functional.last_layer import last_layer_features, resolve_linear_layer


class _Logits(torch.nn.Module):
    """A stand-in model that returns fixed logits whatever it is called with."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.logits


#: Most elements of one ``[rows, n_train]`` float64 product while scoring (512 KiB; two are alive
#: while a tile is formed, small beside the features).
_TILE_ELEMENTS = 1 << 16


def _labels_only(batch: Any) -> Any:
    """The batch without its model inputs: what ``loss_fn`` needs besides the logits."""
    if isinstance(batch, (tuple, list)):
        return (torch.empty(batch_size(batch), 0), *batch[1:])
    if isinstance(batch, Mapping) and "labels" in batch:
        return {"labels": batch["labels"]}
    raise DataLoaderError("rps needs batches (x, y, ...) or dicts with a 'labels' entry")


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], Mapping):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return tuple(torch.cat([p[j] for p in parts]) for j in range(len(parts[0])))


def _extended(parts: Iterable[torch.Tensor], expected: int | None, normalize: bool) -> torch.Tensor:
    """``h̃ = [h, 1]`` float64 (``Tensor[Σ b, d+1]``, ``h`` normalised per row if asked) of the features
    ``parts`` (each ``[b, d]``, the model's dtype), stacked as they come (:func:`~attrkit.plugin.stack_rows`:
    ``expected`` rows are expected)."""
    parts = iter(parts)
    first = next(parts)
    d = first.shape[1]
    out = stack_rows(itertools.chain([first], parts), expected, width=d + 1, dtype=torch.float64)
    del first
    if normalize:
        out[:, :d] /= out[:, :d].norm(dim=1, keepdim=True).clamp_min(1e-12)
    out[:, d] = 1.0
    return out


def _cross_entropy_objective(fn: Any, feats: torch.Tensor, labels: Any, lam: float,
                             classes: int) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
    """``W -> (objective, ∇_W objective)`` in closed form when ``fn`` is :func:`attrkit.targets.cross_entropy`
    (``None`` for any other loss, or labels it would refuse: those go through autograd and its errors).

    With ``Z = h̃ Wᵀ`` (``[n, C]``) and ``P = softmax(Z)``: the objective is
    ``(1/n) Σ_i (logsumexp(Z_i) − Z_{i,y_i}) + λ ‖W‖²`` and its gradient ``(P − Y)ᵀ h̃ / n + 2λW``:
    two GEMMs per evaluation of the refit, no autograd graph (L-BFGS evaluates it some hundred times).
    """
    if fn is not cross_entropy:
        return None
    y = labels.get("labels") if isinstance(labels, Mapping) else labels[1]
    if (not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool
            or y.shape != feats.shape[:1] or not bool(((y >= 0) & (y < classes)).all())):
        return None
    n, rows = feats.shape[0], torch.arange(feats.shape[0], device=feats.device)

    def objective(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = feats @ w.T
        lse = torch.logsumexp(z, 1)
        value = (lse.sum() - z[rows, y].sum()) / n + lam * (w * w).sum()
        dz = torch.exp(z - lse[:, None])
        dz[rows, y] -= 1
        return value, dz.T @ feats / n + 2 * lam * w

    return objective


def _dlogits(fn: Any, logits: torch.Tensor, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [b], ∂values_i/∂z_i [b, C])`` of ``fn`` at fixed ``logits``."""
    z = logits.detach().requires_grad_(True)
    with torch.enable_grad():
        values = fn(_Logits(z), batch)
        (dz,) = torch.autograd.grad(values.sum(), z)
    return values.detach(), dz


@attrs.frozen(kw_only=True)
class RPSConfig:
    """Config of ``rps``.

    Attributes:
        regularization: ``λ > 0``, the L2 strength in ``(1/n) Σ loss + λ ‖W‖²``.
        normalize: scale each penultimate feature vector ``h`` to unit length first.
        layer: module name of the output ``nn.Linear``; ``None`` picks the last one.
        max_iter: L-BFGS iterations of the refit (float64, full batch).
        tol: stop when the objective's gradient norm is below ``tol``.
        tol_change: stop when an iteration changes the objective by less than this: by then the
            changes are at the float64 round-off of its mean over the training set, where the line
            search works on noise (on the MNIST settings ``1e-14`` saves 17–22 % of the
            evaluations and moves ``α`` by 1.5–3.1e-7 relative; the same refit on one thread
            instead of two moves it by 3e-8; ``0`` runs on until the line search stalls).
    """

    regularization: float = float_field(3e-3, gt=0.0, examples=(3e-3, 0.1))
    normalize: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool),
                                  metadata={"examples": (False, True)})
    layer: str | None = None
    max_iter: int = positive_int(1000)
    tol: float = float_field(1e-10, gt=0.0)
    tol_change: float = float_field(1e-14, ge=0.0)


@attrs.frozen
class _Head:
    """One member's refit output layer."""

    member: Member
    weight: torch.Tensor  # [C, d+1] float64, W* with the bias as its last column
    features: torch.Tensor  # [n, d+1] float64, h̃ of the training set
    alpha: torch.Tensor  # [n, C] float64
    gradient_norm: float  # ‖∇ objective‖ at W*: how stationary the refit is


class RepresenterPoints(Attributor):
    """Representer point selection with an L2-regularised last layer.

    Works on any model whose output layer is an ``nn.Linear`` that ``loss_fn`` calls once
    (its output being what ``loss_fn`` and the target read). Memory: the training
    features ``[n, d+1]`` and ``α`` ``[n, C]`` per member. Slot: ensemble (members are
    summed with their weights).

    Attributes:
        heads: after ``fit``, per member the refit ``W*``, ``h̃``, ``α`` and the gradient
            norm of the objective at ``W*`` (``gradient_norms``).

    Example:
        >>> rps = attrkit.compose({"method": "rps", "regularization": 1e-3}, task).fit(train)  # doctest: +SKIP
        >>> scores = rps.attribute(test)  # doctest: +SKIP
    """

    name: ClassVar[str] = "rps"
    Config: ClassVar[type] = RPSConfig
    slots: ClassVar[frozenset[str]] = frozenset({"ensemble"})
    defaults: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: RPSConfig, *, task: AttributionTask, parts: Mapping[str, Part], resolved: Any = None):
        super().__init__(config, task=task, parts=parts, resolved=resolved)
        self.ensemble = parts["ensemble"].make() if "ensemble" in parts else None
        self.layer = resolve_linear_layer(task.model, config.layer)
        self.heads: list[_Head] | None = None
        self._guard: FitGuard | None = None
        #: ``LongTensor[n_train]``, after ``fit``: ``arange`` (RPS scores single examples).
        self.groups: torch.Tensor | None = None

    def members(self) -> list[Member]:
        """The ensemble's members (the task's checkpoints when no ensemble is given)."""
        return self.ensemble.members(self.task) if self.ensemble is not None else self.task.members()

    @property
    def gradient_norms(self) -> list[float]:
        """Per member, ``‖∇ objective(W*)‖``: near 0 when the representer identity holds."""
        return [h.gradient_norm for h in self._require_fit()]

    def _features(self, member: Member, batch: Any, fn: Any, where: str = "a batch", offset: int = 0) -> torch.Tensor:
        """``h̃ = [h, 1]`` (``h`` normalised if asked), ``Tensor[b, d+1]`` float64, of :meth:`_inputs`.

        Raises:
            LossFunctionError: ``fn`` failed on the batch (explained).
            NonFiniteError: an example's features are not finite.
        """
        return _extended([self._inputs(member, batch, fn, where, offset)], None, self.config.normalize)

    def _inputs(self, member: Member, batch: Any, fn: Any, where: str = "a batch", offset: int = 0) -> torch.Tensor:
        """``h``, the refit layer's inputs: ``Tensor[b, d]`` in the model's dtype, checked to be finite.

        Raises:
            LossFunctionError: ``fn`` failed on the batch (explained).
            NonFiniteError: an example's features are not finite.
        """
        batch = to_device(batch, self.task.device)
        with member.applied(self.task.model), user_code(self.task.model, fn, member.state, batch, where):
            h, _ = last_layer_features(self.task.model, fn, member.state, batch, self.layer)
        side, _, index = where.partition(" batch ")
        check_rows(h, side=side, batch=int(index) if index.isdigit() else 0, offset=offset, member=member.label,
                   explain=lambda row: cause(self.task.model, fn, member.state, batch, row), skippable=False)
        return h

    def _training_inputs(self, member: Member, train: Iterable[Any], labels: list[Any]) -> Iterator[torch.Tensor]:
        """``h`` of each training batch (:meth:`_inputs`), appending the batch's labels to ``labels``."""
        offset = 0
        for j, batch in enumerate(progress(train, f"rps: features ({member.label})")):
            yield self._inputs(member, batch, self.task.loss_fn, f"training batch {j}", offset)
            labels.append(_labels_only(to_device(batch, self.task.device)))
            offset += batch_size(batch)

    def _refit(self, member: Member, feats: torch.Tensor, labels: Any) -> _Head:
        layer = self.task.model.get_submodule(self.layer)
        prefix = f"{self.layer}." if self.layer else ""  # "" when the model is itself the Linear
        w0 = member.state[f"{prefix}weight"].double()
        bias = member.state.get(f"{prefix}bias") if layer.bias is not None else None
        start = torch.cat([w0, (bias.double() if bias is not None else torch.zeros(w0.shape[0], dtype=w0.dtype,
                                                                                    device=w0.device))[:, None]], 1)
        n, lam = feats.shape[0], self.config.regularization
        w = start.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([w], max_iter=self.config.max_iter, tolerance_grad=self.config.tol,
                                      tolerance_change=self.config.tol_change, history_size=50, line_search_fn="strong_wolfe")

        closed = _cross_entropy_objective(self.task.loss_fn, feats, labels, lam, start.shape[0])

        def objective() -> torch.Tensor:
            optimizer.zero_grad()
            if closed is not None:
                value, w.grad = closed(w.detach())
                return value
            value = self.task.loss_fn(_Logits(feats @ w.T), labels).double().mean() + lam * (w * w).sum()
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(objective)
            objective()
        _, dz = _dlogits(self.task.loss_fn, feats @ w.detach().T, labels)
        alpha = -dz.double() / (2 * lam * n)
        return _Head(member=member, weight=w.detach(), features=feats, alpha=alpha,
                     gradient_norm=float(w.grad.norm()))

    def fit(self, train: Iterable[Any]) -> RepresenterPoints:
        """Collect the training features and refit the output layer of every member.

        Returns:
            ``self``.

        Checks as :meth:`attrkit.GradientAttributor.fit` does with ``nonfinite="raise"``: a
        fixed order, finite weights and features, weights unchanged during the fit (and, when
        they are the model's own, until it attributes).

        Raises:
            DataLoaderError: a shuffling, dropping, changing or empty loader, or batches without labels.
            NonFiniteError: a non-finite weight or training example.
            LossFunctionError: ``loss_fn`` failed on a batch (explained).
            ModelChangedError: weights changed in place while fitting.
        """
        members = self.members()
        train = checked(train, "train", keep=len(members) > 1)  # one pass per member
        heads = []
        self._guard = guard = FitGuard(self.task, members)
        for member in members:
            labels: list[Any] = []
            feats = _extended(self._training_inputs(member, train, labels), train.estimated_examples,
                              self.config.normalize)
            heads.append(self._refit(member, feats, _concat(labels)))
        guard.finished()
        self.heads = heads
        self.groups = torch.arange(heads[0].features.shape[0])
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the refit heads to the folder ``path``; :func:`attrkit.load` reads them back.

        Saved per member: ``W*``, the training features ``h̃`` (``[n, d+1]``), ``α`` (``[n, C]``) and
        the gradient norm, with the members' weight digests (checked at load). Scores of the
        loaded attributor are bit-identical.

        Raises:
            NotFittedError: before ``fit``.
            ModelChangedError: the model's weights changed since ``fit``.
            SaveError: a ``path`` that holds other files, or a distributed run.
        """
        heads = self._require_fit()
        self._guard.check(self.task)
        tensors: dict[str, Any] = {}
        for i, head in enumerate(heads):
            tensors.update({f"head.{i}.weight": head.weight, f"head.{i}.features": head.features,
                            f"head.{i}.alpha": head.alpha, f"head.{i}.gradient_norm": head.gradient_norm})
        save_attributor(path, self, [h.member for h in heads], tensors)

    def restore(self, saved: Saved) -> None:
        """Take the heads ``saved`` holds, for the members this task gives (checked against the saved ones).

        Raises:
            LoadError: the members' weights differ from those fitted at.
        """
        members = self.members()
        saved.check_members(members)
        heads = []
        for i, member in enumerate(members):
            state = saved.part(f"head.{i}.", self.task.device)
            heads.append(_Head(member=member, weight=state["weight"], features=state["features"],
                               alpha=state["alpha"], gradient_norm=float(state["gradient_norm"])))
        self._guard = FitGuard(self.task, members)
        self.heads = heads
        self.groups = torch.arange(heads[0].features.shape[0])

    def _require_fit(self) -> list[_Head]:
        if self.heads is None:
            raise NotFittedError("call RepresenterPoints.fit(train_loader) before attributing")
        return self.heads

    def _test_side(
        self, head: _Head, batch: Any, fn: Any, where: str = "a batch", offset: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h̃_t [b, d+1], −∂fn_t/∂z_t [b, C])`` at the refit layer."""
        feats = self._features(head.member, batch, fn, where, offset)
        _, dz = _dlogits(fn, feats @ head.weight.T, _labels_only(to_device(batch, self.task.device)))
        return feats, -dz.double()

    def attribute(self, test: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n_test, n_train]`` float32 CPU: ``Σ_m w_m ⟨−∂target_t/∂z_t, α_i⟩ h̃_iᵀ h̃_t``."""
        heads = self._require_fit()
        self._guard.check(self.task)
        test = checked(test, "test")
        return stack_rows(self._score_rows(heads, test), test.estimated_examples)

    def _score_rows(self, heads: list[_Head], test: Iterable[Any]) -> Iterator[torch.Tensor]:
        """The scores of each test batch, in tiles of rows (``Tensor[rows, n_train]`` float32 CPU, at most
        :data:`_TILE_ELEMENTS` entries each), checked to be finite: no whole batch of scores is held
        beside the result it is copied into."""
        offset, n = 0, heads[0].features.shape[0]
        step = max(1, _TILE_ELEMENTS // n)
        for j, batch in enumerate(progress(test, "rps: scoring")):
            sides = [self._test_side(head, batch, self.task.target, f"test batch {j}", offset) for head in heads]
            for lo in range(0, sides[0][0].shape[0], step):  # the [rows, n] float64 products are the largest temporaries
                total = None
                for head, (feats, push) in zip(heads, sides):
                    share = (feats[lo : lo + step] @ head.features.T).mul_(push[lo : lo + step] @ head.alpha.T)
                    share.mul_(head.member.weight)
                    total = share if total is None else total.add_(share)
                    del share
                tile = total.float().cpu()
                del total
                check_scores(tile, first_row=offset)
                offset += tile.shape[0]
                yield tile

    def representer_values(self, test: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n_test, n_train, C]`` float64: ``α_i (h̃_iᵀ h̃_t)`` of the first member.

        Summed over training points it gives the refit layer's logits ``W* h̃_t``.
        Memory ``n_test · n_train · C``: for inspection on small sets.
        """
        head = self._require_fit()[0]
        self._guard.check(self.task)
        feats = torch.cat([self._features(head.member, b, self.task.target, f"test batch {j}")
                           for j, b in enumerate(checked(test, "test"))])
        return (feats @ head.features.T)[:, :, None] * head.alpha[None]

    def self_influence(self, train: Iterable[Any]) -> torch.Tensor:
        """``Tensor[n]`` float32 CPU: each example's score for itself with its loss as target."""
        heads = self._require_fit()
        self._guard.check(self.task)
        train = checked(train, "train")
        total = 0.0
        for head in heads:
            parts = [self._test_side(head, b, self.task.loss_fn, f"training batch {j}")
                     for j, b in enumerate(progress(train, "rps: self-influence"))]
            feats, push = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            if feats.shape[0] != head.features.shape[0]:
                raise DataLoaderError(f"self_influence needs the fitted training set ({head.features.shape[0]} "
                                      f"examples), got {feats.shape[0]}")
            total = total + head.member.weight * (push * head.alpha).sum(1) * (feats * head.features).sum(1)
        return total.float().cpu()


@hookimpl
def attrkit_components() -> list[type]:
    """The component classes this plugin registers."""
    return [RepresenterPoints]
