"""Conformance checks per component kind, run on tiny problems.

Each check raises ``AssertionError`` naming the component and the broken contract.
``check_component(entry)`` dispatches on ``entry.kind``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from typing import Any

import attrs
import torch

from attrkit.compose import compose
from attrkit.config import field_examples
from attrkit.feature_matrix import FeatureMatrix
from attrkit.context import FitContext
from attrkit.errors import SaveError
from attrkit.functional.factored import factored_gradients, plan_factors
from attrkit.capabilities import FACTORED, HVP
from attrkit.functional.gradients import flat_dimension, select_parameters
from attrkit.selection import check_partition
from attrkit.registry import Entry, Registry, default_registry
from attrkit.results import MetricResult
from attrkit.testing.toy import ToyProblem, autograd_gradients, toy_problem

__all__ = ["check_component", "check_saved", "example_config"]


def example_config(cls: type) -> Any:
    """``cls.Config`` built from each field's first example (or its default)."""
    values = {f.alias: field_examples(f)[0] for f in attrs.fields(cls.Config) if field_examples(f)}
    return cls.Config(**values)


def _context(toy: ToyProblem, dimension: int, features: torch.Tensor | None = None) -> FitContext:
    """A fit context on the toy problem; with ``features``, both forms of them, as the engine gives them."""
    return FitContext(
        task=toy.task,
        member=toy.task.members()[0],
        train=toy.train_loader(),
        gradients=None,
        dimension=dimension,
        n_train=len(toy.y_train),
        features=features,
        feature_matrix=FeatureMatrix.whole(features) if features is not None else None,
    )


def _close(a: torch.Tensor, b: torch.Tensor, what: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    if a.shape != b.shape or not torch.allclose(a, b, rtol=rtol, atol=atol):
        err = (a - b).abs().max().item() if a.shape == b.shape else f"shapes {tuple(a.shape)} vs {tuple(b.shape)}"
        raise AssertionError(f"{what}: mismatch (max abs error {err})")


def _dense(grads: Any) -> torch.Tensor:
    return grads if isinstance(grads, torch.Tensor) else grads.materialize()


def check_gradients(entry: Entry) -> None:
    """Per-example gradients equal a plain autograd loop, do not depend on batching, and
    leave frozen parameters (``requires_grad=False``) out by default."""
    toy = toy_problem()
    source = entry.cls(example_config(entry.cls))
    member = toy.task.members()[0]
    batch = (toy.x_train, toy.y_train)
    grads = _dense(source.loss_gradients(toy.task, member, batch))
    assert grads.shape == (len(toy.y_train), source.dimension(toy.task)), f"{entry.name}: wrong shape {grads.shape}"
    if source.dimension(toy.task) == sum(p.numel() for p in toy.task.model.parameters()):
        _close(grads, autograd_gradients(toy.task.model, toy.task.loss_fn, *batch), f"{entry.name} vs autograd")
    halves = [
        _dense(source.loss_gradients(toy.task, member, (toy.x_train[s], toy.y_train[s])))
        for s in (slice(0, 5), slice(5, None))
    ]
    _close(torch.cat(halves), grads, f"{entry.name}: batch-size independence")
    _check_frozen_left_out(entry)


def _check_frozen_left_out(entry: Entry) -> None:
    """With the toy's first layer frozen, the default config differentiates at most the
    trainable parameters (exactly them, when it differentiates as many entries)."""
    toy = toy_problem()
    toy.task.model[0].requires_grad_(False)
    source = entry.cls(example_config(entry.cls))
    if attrs.fields_dict(type(source.config)).get("frozen") is not None and source.config.frozen:
        return
    trainable = sum(p.numel() for p in toy.task.model.parameters() if p.requires_grad)
    p = source.dimension(toy.task)
    assert p <= trainable, (
        f"{entry.name}: differentiates {p} entries, but the model has only {trainable} trainable ones: parameters "
        "with requires_grad=False must be left out unless the config asks for them (frozen=True)"
    )
    if p == trainable:
        batch = (toy.x_train[:6], toy.y_train[:6])
        grads = _dense(source.loss_gradients(toy.task, toy.task.members()[0], batch))
        brute = autograd_gradients(toy.task.model, toy.task.loss_fn, *batch, frozen=False)
        _close(grads, brute, f"{entry.name} vs autograd of the trainable parameters")


def _factored_inputs(toy: ToyProblem) -> tuple[Any, Any, int]:
    """Two factored gradient blocks of 6 toy examples each, and their dimension ``p``."""
    model, state = toy.task.model, toy.task.members()[0].state
    plan = plan_factors(model, select_parameters(model, ("*",)))
    x, y = (
        factored_gradients(model, toy.task.loss_fn, state, (toy.x_train[s], toy.y_train[s]), plan)
        for s in (slice(0, 6), slice(6, 12))
    )
    return x, y, x.shape[1]


def check_saved(entry: Entry, part: Any, apply: Callable[[Any], torch.Tensor]) -> None:
    """A fitted part either saves, or refuses with a :class:`~attrkit.errors.SaveError` naming it.

    A part that saves gives a flat ``{str: Tensor | int | float | str | None}`` that survives
    ``torch.save`` / ``torch.load(weights_only=True)``, and a fresh instance of the same config
    given it (``load_state_dict``, no ``fit``) answers ``apply`` bit for bit as ``part`` does.
    """
    try:
        state = part.state_dict()
    except SaveError as exc:
        assert entry.name in str(exc), f"{entry.name}: its SaveError must name it, got {exc}"
        return
    plain = isinstance(state, dict) and all(
        isinstance(k, str) and isinstance(v, (torch.Tensor, int, float, str, type(None))) for k, v in state.items())
    assert plain, f"{entry.name}: state_dict() must be a flat dict of tensors, numbers, strings and None"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = entry.cls(part.config)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    same = torch.equal(apply(fresh), apply(part))
    assert same, f"{entry.name}: a fresh instance given its state_dict() answers differently"


def check_projector(entry: Entry) -> None:
    """A projector is linear, seeded (two instances agree) and batch-independent, and saves
    (or refuses to) as :func:`check_saved` says.

    A projector that requires factored gradients is fed factored gradient blocks of a toy MLP;
    one that requires HVPs is fitted on the toy model's training loss.
    """
    toy = toy_problem()
    gen = torch.Generator().manual_seed(0)
    if FACTORED in entry.cls.requires:
        x, y, p = _factored_inputs(toy)
    else:  # a projector fitted on curvature (HVP) needs the toy model's own dimension
        p = flat_dimension(toy.task.model, select_parameters(toy.task.model, ("*",))) if HVP in entry.cls.requires else 50
        x, y = torch.randn(6, p, generator=gen), torch.randn(6, p, generator=gen)
    first, second = entry.cls(example_config(entry.cls)), entry.cls(example_config(entry.cls))
    for projector in (first, second):
        projector.fit(_context(toy, p))
    out = first.project(x)
    assert out.dim() == 2 and out.shape[0] == 6, f"{entry.name}: project must map [b, p] to [b, k], got {tuple(out.shape)}"
    _close(second.project(x), out, f"{entry.name}: determinism under a seed")
    _close(first.project(2 * x - 3 * y), 2 * out - 3 * first.project(y), f"{entry.name}: linearity", atol=1e-4)
    _close(torch.cat([first.project(x[:2]), first.project(x[2:])]), out, f"{entry.name}: batch-size independence")
    check_saved(entry, first, lambda projector: projector.project(x))


def check_solver(entry: Entry) -> None:
    """A solver fits (on features, or on the toy training set in parameter space), keeps
    shapes, is linear and batch-independent, and saves (or refuses to) as :func:`check_saved` says."""
    toy = toy_problem()
    gen = torch.Generator().manual_seed(0)
    solver = entry.cls(example_config(entry.cls))
    assert solver.space in ("feature", "parameter"), f"{entry.name}: space must be 'feature' or 'parameter'"
    if solver.space == "parameter":
        d = flat_dimension(toy.task.model, select_parameters(toy.task.model, ("*",)))
        solver.fit(_context(toy, d))
    else:
        d = 7
        solver.fit(_context(toy, d, torch.randn(len(toy.y_train), d, generator=gen)))
    v, w = torch.randn(4, d, generator=gen), torch.randn(4, d, generator=gen)
    out = solver.solve(v)
    assert out.shape == v.shape, f"{entry.name}: solve must keep the shape"
    if entry.cls.linear:  # truncated iterative solvers declare linear = False
        _close(solver.solve(v + 2 * w), out + 2 * solver.solve(w), f"{entry.name}: linearity", atol=1e-4)
    _close(torch.cat([solver.solve(v[:1]), solver.solve(v[1:])]), out, f"{entry.name}: batch-size independence")
    check_saved(entry, solver, lambda fitted: fitted.solve(v))


def check_grouper(entry: Entry) -> None:
    """A grouper returns a seeded partition of the training set."""
    toy = toy_problem()
    feats = autograd_gradients(toy.task.model, toy.task.loss_fn, toy.x_train, toy.y_train)
    context = _context(toy, feats.shape[1], feats)
    groups = entry.cls(example_config(entry.cls)).assign(context)
    check_partition(groups, len(toy.y_train), entry.name)
    again = entry.cls(example_config(entry.cls)).assign(context)
    assert torch.equal(groups, again), f"{entry.name}: groups differ between two runs with one config"


def check_metric(entry: Entry) -> None:
    """A metric evaluates its own example inputs deterministically and reports missing ground truth.

    A metric's ``example_inputs(n_test, n_train) -> (scores, ground_truth)`` gives a small
    seeded case it accepts (a metric whose ``example_inputs`` returns ``None``, the default,
    is only checked for ``higher_is_better``). The result must be a :class:`MetricResult` with a float value,
    JSON-able details, ``per_target`` of one entry per score row, the same on a second
    call; dropping any entry of ``needs`` must raise ``KeyError`` naming it. A metric
    whose ``target_axes`` names the ground-truth entries indexed by target (and the axis)
    must give the same per-target values when the targets are split in two.
    """
    metric = entry.cls(example_config(entry.cls))
    assert isinstance(metric.higher_is_better, bool), f"{entry.name}: higher_is_better must be a bool"
    case = entry.cls.example_inputs(6, 40)
    if case is None:
        return  # nothing to evaluate on: the plugin's own tests cover it
    scores, truth = case
    whole = metric.evaluate(scores, truth)
    valid = isinstance(whole, MetricResult) and isinstance(whole.value, float)
    assert valid, f"{entry.name}: evaluate must return a MetricResult with a float value"
    again = metric.evaluate(scores, truth).value
    assert again == whole.value or (math.isnan(again) and math.isnan(whole.value)), f"{entry.name}: value differs between two calls"
    try:
        json.dumps(dict(whole.details))
    except TypeError as exc:
        raise AssertionError(f"{entry.name}: details must be JSON-able: {exc}") from None
    for key in metric.needs:
        try:
            metric.evaluate(scores, {k: v for k, v in truth.items() if k != key})
        except KeyError as exc:
            assert key in str(exc), f"{entry.name}: the KeyError for missing {key!r} must name it, got {exc}"
        else:
            raise AssertionError(f"{entry.name}: ground truth without {key!r} (in needs) must raise KeyError")
    if whole.per_target is None:
        return
    assert whole.per_target.shape == (scores.shape[0],), f"{entry.name}: per_target must be Tensor[n_test]"
    axes = entry.cls.target_axes
    if axes:
        parts = []
        for s in (slice(0, 2), slice(2, None)):
            sliced = {k: torch.as_tensor(truth[k])[(slice(None),) * axes[k] + (s,)] for k in axes}
            parts.append(metric.evaluate(scores[s], {**truth, **sliced}).per_target)
        _close(torch.cat(parts), whole.per_target, f"{entry.name}: split targets", atol=1e-5)


def check_method(entry: Entry, registry: Registry | None = None) -> None:
    """A method with its default parts gives float32 ``[n_test, n_train]`` scores that do
    not depend on batch size and follow a permutation of the training set."""
    toy = toy_problem()
    attributor = compose({"method": entry.name}, toy.task, registry)
    scores = attributor.fit(toy.train_loader(8)).attribute(toy.test_loader(4))
    assert scores.shape == (len(toy.y_test), len(toy.y_train)), f"{entry.name}: wrong shape {tuple(scores.shape)}"
    assert scores.dtype == torch.float32 and scores.device.type == "cpu", f"{entry.name}: scores must be float32 on CPU"
    rebatched = compose({"method": entry.name}, toy.task, registry).fit(toy.train_loader(5)).attribute(toy.test_loader(6))
    _close(rebatched, scores, f"{entry.name}: batch-size independence")
    order = torch.randperm(len(toy.y_train), generator=torch.Generator().manual_seed(1))
    permuted = compose({"method": entry.name}, toy.task, registry).fit(toy.train_loader(8, order)).attribute(toy.test_loader(4))
    _close(permuted, scores[:, order], f"{entry.name}: permuting the training set permutes the columns")


def check_ensemble(entry: Entry) -> None:
    """An ensemble gives a non-empty, seeded list of members whose states fit the model.

    Runs on a toy task that has what every kind of ensemble draws on: checkpoints, an
    ``nn.Dropout`` and a LoRA output layer.
    """
    toy = toy_problem(dropout=0.2, lora_rank=2, checkpoints=3)
    first = entry.cls(example_config(entry.cls)).members(toy.task)
    second = entry.cls(example_config(entry.cls)).members(toy.task)
    assert first, f"{entry.name}: an ensemble needs at least one member"
    expected = set(toy.task.model.state_dict())
    for a, b in zip(first, second, strict=True):
        assert expected <= set(a.state), f"{entry.name}: member {a.label} lacks {sorted(expected - set(a.state))}"
        assert a.weight == b.weight, f"{entry.name}: member weights differ between two runs with one config"
        for key in a.state:
            _close(a.state[key].float(), b.state[key].float(), f"{entry.name}: member {a.label} {key} under a seed")


_CHECKS = {
    "ensemble": check_ensemble,
    "gradients": check_gradients,
    "projector": check_projector,
    "solver": check_solver,
    "grouper": check_grouper,
    "metric": check_metric,
}


def check_component(entry: Entry, registry: Registry | None = None) -> None:
    """Run the conformance checks of ``entry``'s kind.

    Raises:
        AssertionError: a broken contract, naming the component.
    """
    if entry.kind == "method":
        check_method(entry, registry or default_registry())
    else:
        _CHECKS[entry.kind](entry)
