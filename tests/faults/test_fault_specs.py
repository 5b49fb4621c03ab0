"""Faults in specs and configs that used to pass silently or with the wrong message.

JSON text that is not an object, a method's bare name, bools taken as numbers
(``dim: true`` was ``dim=1``) and infinite damping or tolerances.
"""

import math

import attrs
import pytest

import attrkit
from attrkit.config import build_config, field_examples
from attrkit.spec import Spec


@pytest.mark.parametrize(
    ("text", "kind"),
    [("[1, 2]", "a list"), ("3", "a number"), ('"grad-dot"', "a string"), ("null", "null"), ("true", "a boolean")],
)
def test_json_text_that_is_not_an_object_is_called_so(toy, text, kind):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose(text, toy.task)
    assert info.value.problems[0].startswith(f'spec: JSON text must be an object like {{"method": ...}}, got {kind}')


def test_a_json_string_says_to_drop_the_quotes(toy):
    with pytest.raises(attrkit.SpecError, match="pass the name without JSON quotes: 'grad-dot'"):
        attrkit.compose('"grad-dot"', toy.task)


@pytest.mark.parametrize("text", ["[1, 2", '"grad-dot', "3x"])
def test_invalid_json_that_looks_like_json_gets_the_parser_error(toy, text):
    with pytest.raises(attrkit.SpecError, match=r"spec: not valid JSON \("):
        attrkit.compose(text, toy.task)


def test_spec_from_json_refuses_a_list_as_an_object():
    with pytest.raises(attrkit.SpecError, match=r'JSON text must be an object like \{"method": ...\}, got a list'):
        Spec.from_json("[1, 2]")


@pytest.mark.parametrize("name", ["grad-dot", "trak", " tracin "])
def test_a_bare_method_name_means_that_method(toy, name):
    got = attrkit.compose(name, toy.task).resolved.spec
    assert got == attrkit.compose({"method": name.strip()}, toy.task).resolved.spec


def test_an_unknown_bare_name_gets_a_menu(toy, registry):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose("grad-dott", toy.task)
    (line,) = info.value.problems
    assert line.startswith("spec: 'grad-dott' is neither a preset nor a registered method name")
    assert "Did you mean: 'grad-dot'" in line
    assert "Presets: " in line
    assert "Methods: " in line and "grad-dot (" in line and "trak (" in line
    assert all(name in line for name in registry.names("method"))


def test_dim_true_is_refused(toy):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose({"method": "grad-dot", "projector": {"name": "gaussian", "dim": True}}, toy.task)
    assert info.value.problems == ["projector.dim must be an int, got True (a bool)"]


def test_a_float_given_for_an_int_is_refused(toy):
    with pytest.raises(attrkit.SpecError, match=r"projector.dim must be an int, got 8.5 \(a float\)"):
        attrkit.compose({"method": "grad-dot", "projector": {"name": "gaussian", "dim": 8.5}}, toy.task)


def test_regularization_true_is_refused(toy):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose({"method": "trak", "solver": {"name": "gauss-newton", "regularization": True}}, toy.task)
    assert info.value.problems == ["solver.regularization must be a number, got True (a bool)"]


def test_seed_true_is_refused_on_direct_construction(registry):
    config = registry.get("projector", "gaussian").cls.Config
    with pytest.raises(TypeError, match=r"seed must be an int, got True \(a bool\)"):
        config(seed=True)


@pytest.mark.parametrize(
    ("kind", "name", "field"),
    [("solver", "cg", "tol"), ("solver", "cg", "regularization"), ("solver", "lissa", "scale"),
     ("projector", "gaussian", "cache_mb"), ("solver", "gauss-newton", "regularization")],
)
def test_infinite_damping_and_tolerances_are_refused(registry, kind, name, field):
    config, problems = build_config(registry.get(kind, name).cls.Config, {field: math.inf}, kind)
    assert config is None
    assert problems == [f"{kind}.{field} must be finite (not NaN or infinite), got inf"]


def test_infinite_learning_rates_are_refused(toy):
    with pytest.raises(attrkit.SpecError, match="learning rates must be positive finite numbers, got \\[inf\\]"):
        attrkit.compose({"method": {"name": "tracin", "learning_rates": math.inf}}, toy.task)


def test_a_bool_in_a_list_of_numbers_is_refused(registry):
    _, problems = build_config(registry.get("ensemble", "checkpoints").cls.Config, {"weights": [1.0, True]}, "ensemble")
    assert problems == ["ensemble.weights[1] must be a number, got True (a bool)"]


def _numeric_fields(registry):
    """``(kind, name, field alias, example)`` of every field of every registered component
    whose examples (or default) hold a number or a tuple of numbers."""
    out = []
    for kind, named in registry.components().items():
        for name, entry in named.items():
            for f in attrs.fields(entry.cls.Config):
                for value in field_examples(f):
                    scalars = value if isinstance(value, tuple) else (value,)
                    if scalars and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scalars):
                        out.append((kind, name, f.alias, value))
                        break
    return out


def test_no_numeric_field_of_any_registered_component_takes_a_bool(registry):
    fields = _numeric_fields(registry)
    assert len(fields) > 20
    accepted = []
    for kind, name, alias, example in fields:
        value = (True,) * len(example) if isinstance(example, tuple) else True
        _, problems = build_config(registry.get(kind, name).cls.Config, {alias: value}, kind)
        if not any("(a bool)" in p for p in problems):
            accepted.append(f"{kind} {name!r}.{alias}: {problems}")
    assert not accepted, "fields that take a bool as a number:\n" + "\n".join(accepted)


def test_no_float_field_of_any_registered_component_takes_inf_or_nan(registry):
    floats = [(k, n, a, e) for k, n, a, e in _numeric_fields(registry)
              if any(isinstance(v, float) for v in (e if isinstance(e, tuple) else (e,)))]
    assert len(floats) > 10
    accepted = []
    for kind, name, alias, example in floats:
        for bad in (math.inf, math.nan):
            value = (bad,) * len(example) if isinstance(example, tuple) else bad
            _, problems = build_config(registry.get(kind, name).cls.Config, {alias: value}, kind)
            if not any("finite" in p for p in problems):
                accepted.append(f"{kind} {name!r}.{alias}={bad}: {problems}")
    assert not accepted, "float fields that take a non-finite value:\n" + "\n".join(accepted)
