"""Hypothesis property tests over specs drawn from the live registry.

Every spec the registry can build runs; scores have the right shape, are
deterministic under a seed, independent of batch size, and permuting the training
set permutes the columns.
"""

from types import SimpleNamespace

import attrs
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import attrkit
from attrkit.functional.ihvp import CurvatureError
from attrkit.plugins import load_plugins
from attrkit.protocols import Projector
from attrkit.registry import Registry
from attrkit.testing import toy_problem
from attrkit.testing.strategies import specs

REGISTRY = attrkit.default_registry()
# float64: the properties are exact statements; in float32, a damped solve of an
# ill-conditioned curvature amplifies round-off (which differs with batch size) past any
# fixed tolerance, a matter of conditioning that tests/test_influence.py covers separately.
# Checkpoints, a dropout layer and a LoRA output layer, so that every ensemble composes.
TOY = toy_problem(n_train=14, n_test=5, dtype=torch.float64, dropout=0.2, lora_rank=2, checkpoints=2)
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _scores(spec, train_batch=4, test_batch=3, order=None):
    """Scores, or a hypothesis rejection when fitting refuses a curvature that is not positive
    definite at this damping (a clear error naming the damping needed, not a failure)."""
    attributor = attrkit.compose(spec, TOY.task)
    try:
        return attributor.fit(TOY.train_loader(train_batch, order)).attribute(TOY.test_loader(test_batch))
    except CurvatureError as exc:
        assert "regularization" in str(exc)
        assume(False)


def _compose_or_refuse(spec):
    """Compose, or refuse with a SpecError (never another exception)."""
    try:
        attrkit.compose(spec, TOY.task)
    except attrkit.SpecError as exc:
        assert exc.problems
        return False
    return True


def _n_columns(spec):
    attributor = attrkit.compose(spec, TOY.task).fit(TOY.train_loader())
    return int(attributor.groups.max()) + 1


@PROPERTY
@given(spec=specs(REGISTRY))
def test_every_buildable_spec_runs_with_the_right_shape(spec):
    if not _compose_or_refuse(spec):
        return
    scores = _scores(spec)
    assert scores.shape == (len(TOY.y_test), _n_columns(spec))
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()


@PROPERTY
@given(spec=specs(REGISTRY))
def test_deterministic_under_a_seed(spec):
    if _compose_or_refuse(spec):
        assert torch.equal(_scores(spec), _scores(spec))


@PROPERTY
@given(spec=specs(REGISTRY), train_batch=st.integers(1, 14), test_batch=st.integers(1, 5))
def test_independent_of_batch_size(spec, train_batch, test_batch):
    if _compose_or_refuse(spec):
        _assert_same_scores(_scores(spec, train_batch, test_batch), _scores(spec))


@PROPERTY
@given(spec=specs(REGISTRY, kinds={"grouper": ["singleton"]}), seed=st.integers(0, 1000))
def test_permuting_the_training_set_permutes_the_columns(spec, seed):
    solver = spec.get("solver", {})
    # LiSSA samples its mini-batches by position: another order is another sample.
    assume(solver.get("name") != "lissa" or solver.get("batch_size", 10) >= len(TOY.y_train))
    if _compose_or_refuse(spec):
        order = torch.randperm(len(TOY.y_train), generator=torch.Generator().manual_seed(seed))
        _assert_same_scores(_scores(spec, order=order), _scores(spec)[:, order])


def _assert_same_scores(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to float32 round-off of the sums behind them: ``rtol=1e-4`` per entry, and an absolute
    ``1e-5`` per unit of the largest score, since a small score summed from terms as large as the
    largest ones (a group of examples, an ensemble's members) carries their round-off, not its own."""
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)


@attrs.frozen(kw_only=True)
class _OrthogonalConfig:
    seed: int = 0


class _Orthogonal(Projector):
    """A full-rank orthogonal projector ``x -> x Q`` (Q from a QR decomposition)."""

    name, Config = "orthogonal", _OrthogonalConfig

    def fit(self, context):
        gen = torch.Generator().manual_seed(self.config.seed)
        self.q = torch.linalg.qr(torch.randn(context.dimension, context.dimension, generator=gen, dtype=torch.float64))[0]

    def project(self, vectors):
        return (vectors.double() @ self.q).to(vectors.dtype)


@settings(max_examples=5, deadline=None)
@given(method=st.sampled_from(["grad-dot", "grad-cos"]), seed=st.integers(0, 100))
def test_a_full_rank_orthogonal_projection_changes_nothing(method, seed):
    plugin = SimpleNamespace(attrkit_components=attrkit.hookimpl(lambda: [_Orthogonal]))
    registry = Registry(*load_plugins(extra=[("orthogonal", plugin)]))
    spec = {"method": method, "projector": {"name": "orthogonal", "seed": seed}}
    rotated = attrkit.compose(spec, TOY.task, registry).fit(TOY.train_loader()).attribute(TOY.test_loader())
    identity = _scores({"method": method, "projector": "identity"})
    torch.testing.assert_close(rotated, identity, rtol=1e-4, atol=1e-5)
