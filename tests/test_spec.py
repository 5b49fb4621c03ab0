"""Specs round-trip through dicts and JSON, and report every malformed part."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

import attrkit
from attrkit.spec import KEYS, ComponentSpec, Spec

names = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4}){0,2}", fullmatch=True)
scalars = st.one_of(st.integers(-5, 5), st.floats(-2, 2, allow_nan=False), st.booleans(), st.text(max_size=4))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)
params = st.dictionaries(st.from_regex(r"[a-z_]{1,6}", fullmatch=True).filter(lambda k: k != "name"), values, max_size=3)
components = st.one_of(names, st.builds(lambda n, p: {"name": n, **p}, names, params))
spec_dicts = st.fixed_dictionaries({"method": components}, optional={k: components for k in KEYS[1:]})


@given(spec_dicts)
def test_dict_and_json_round_trip(data):
    spec = Spec.from_dict(data)
    assert Spec.from_dict(spec.to_dict()) == spec
    assert Spec.from_json(spec.to_json()) == spec
    assert hash(Spec.from_json(spec.to_json())) == hash(spec)
    assert json.loads(spec.to_json()) == spec.to_dict()


def test_plain_name_and_params_forms():
    spec = Spec.parse('{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 256, "seed": 0}}')
    assert spec.method == ComponentSpec(name="grad-dot")
    assert spec.projector.params == {"dim": 256, "seed": 0}
    assert spec.to_dict() == {"method": "grad-dot", "projector": {"name": "gaussian", "dim": 256, "seed": 0}}


def test_every_problem_in_one_error():
    with pytest.raises(attrkit.SpecError) as info:
        Spec.from_dict({"projector": {"dim": 3}, "solvr": "cg", "grouper": 7})
    problems = info.value.problems
    assert len(problems) == 4
    assert any(p.startswith("solvr: unknown spec key") for p in problems)
    assert any(p.startswith("method: missing") for p in problems)
    assert any(p.startswith("projector: a component given as a dict needs a string 'name'") for p in problems)
    assert any(p.startswith("grouper: expected a name") for p in problems)
    assert isinstance(info.value, ValueError)


def test_invalid_json():
    with pytest.raises(attrkit.SpecError, match="not valid JSON"):
        Spec.parse("{method: grad-dot")
