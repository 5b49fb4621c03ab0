"""The composer: defaults, capability checks, refusals and one error for all problems."""

from types import SimpleNamespace

import attrs
import pytest

import attrkit
from attrkit.protocols import Projector
from attrkit.plugins import load_plugins
from attrkit.registry import Registry


def test_defaults_are_filled_and_recorded(toy):
    attributor = attrkit.compose({"method": "grad-dot"}, toy.task)
    full = attributor.resolved.spec.to_dict()
    assert full == {
        "method": "grad-dot",
        "gradients": {"name": "per-example", "params": ["*"], "frozen": False, "products": "auto"},
        "projector": "identity",
        "grouper": "singleton",
    }
    assert attributor.resolved.provenance()["projector"]["plugin"] == "attrkit-projectors"
    assert attrkit.Spec.from_dict(full) == attributor.resolved.spec


def test_json_and_spec_objects_compose_alike(toy):
    spec = {"method": "grad-cos", "projector": {"name": "gaussian", "dim": 16}}
    from_dict = attrkit.compose(spec, toy.task).resolved.spec
    assert attrkit.compose(attrkit.Spec.from_dict(spec).to_json(), toy.task).resolved.spec == from_dict
    assert attrkit.compose(attrkit.Spec.from_dict(spec), toy.task).resolved.spec == from_dict


def test_one_error_lists_every_problem(toy):
    spec = {
        "method": "grad-dot",
        "projector": {"name": "gaussian", "dim": 0, "sed": 1},
        "solver": "identity",
        "grouper": "nope",
        "extra": 1,
    }
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose(spec, toy.task)
    text = "\n".join(info.value.problems)
    assert "extra: unknown spec key" in text
    assert "solver: method 'grad-dot' does not use a solver" in text
    assert "projector.dim: 'dim' must be >= 1: 0" in text
    assert "projector.sed: unknown parameter (did you mean 'seed'?)" in text
    assert "grouper: unknown grouper 'nope'" in text
    assert len(info.value.problems) == 5


def test_unknown_method_still_checks_the_slots(toy):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose({"method": "grad-dott", "projector": "gausian"}, toy.task)
    assert [p.split(":")[0] for p in info.value.problems] == ["method", "projector"]


@attrs.frozen
class _Empty:
    pass


class _NeedsFactors(Projector):
    name, Config = "needs-factors", _Empty
    requires = frozenset({"factored"})

    def project(self, vectors):
        return vectors


class _Unavailable(Projector):
    name, Config = "gpu-only", _Empty

    def project(self, vectors):
        return vectors

    @classmethod
    def availability(cls):
        return "CUDA is not available; install with pip install 'attrkit[gpu]' on a CUDA machine"


def _registry_with(*classes):
    plugin = SimpleNamespace(attrkit_components=attrkit.hookimpl(lambda: list(classes)))
    return Registry(*load_plugins(extra=[("test-extra", plugin)]))


def test_missing_capability_is_refused_with_a_reason(toy):
    registry = _registry_with(_NeedsFactors)
    with pytest.raises(attrkit.SpecError, match="requires 'factored', which no part of this spec provides"):
        attrkit.compose({"method": "grad-dot", "projector": "needs-factors"}, toy.task, registry)


def test_unavailable_component_refuses_to_compose_and_never_falls_back(toy):
    registry = _registry_with(_Unavailable)
    assert registry.get("projector", "gpu-only").unavailable.startswith("CUDA is not available")
    with pytest.raises(attrkit.SpecError, match="unavailable on this machine: CUDA is not available"):
        attrkit.compose({"method": "grad-dot", "projector": "gpu-only"}, toy.task, registry)


def test_task_must_be_an_attribution_task():
    with pytest.raises(TypeError, match="AttributionTask"):
        attrkit.compose({"method": "grad-dot"}, object())


def test_unknown_preset_or_text(toy):
    with pytest.raises(attrkit.SpecError, match="neither a preset nor a registered method name"):
        attrkit.compose("grad-dot-fast", toy.task)
