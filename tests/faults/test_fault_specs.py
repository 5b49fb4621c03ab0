"""Faults in specs and configs that used to pass silently or with the wrong message.

JSON text that is not an object, a method's bare name, bools taken as numbers
(``dim: true`` was ``dim=1``) and infinite damping or tolerances; a method's parameters at
the top level (the flat form), spec files and their labels, and the refusals the task
decides, which used to come at ``fit`` after the work (or not at all).
"""

import math
import warnings
from pathlib import Path

import attrs
import pytest
import torch

import attrkit
import attrkit.testing
from attrkit import plugin
from attrkit.config import build_config, field_examples
from attrkit.plugins import load_plugins
from attrkit.registry import Registry
from attrkit.spec import Spec
from attrkit.errors import SpecFileWarning


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


# -- the flat method form: a method's parameters at the top level ------------------------------

def test_a_methods_parameter_at_the_top_level_is_the_methods(toy):
    task = attrkit.testing.toy_problem(checkpoints=2).task
    flat = attrkit.compose({"method": "tracin", "learning_rates": [0.5, 0.25]}, task).resolved.spec
    nested = attrkit.compose({"method": {"name": "tracin", "learning_rates": [0.5, 0.25]}}, task).resolved.spec
    assert flat == nested and flat.method.params["learning_rates"] == (0.5, 0.25)


def test_the_flat_form_works_with_a_method_dict_and_in_json(toy):
    spec = attrkit.compose({"method": {"name": "rps", "max_iter": 5}, "regularization": 0.01}, toy.task).resolved.spec
    assert (spec.method.params["regularization"], spec.method.params["max_iter"]) == (0.01, 5)
    text = '{"method": "rps", "regularization": 0.01, "max_iter": 5}'
    assert attrkit.compose(text, toy.task).resolved.spec == spec


def test_a_key_that_is_neither_a_spec_key_nor_a_parameter_lists_both(toy):
    with pytest.raises(attrkit.SpecError) as info:
        spec = {"method": "tracin", "learning_rate": 0.1, "projector": {"name": "gaussian", "dim": 0}}
        attrkit.compose(spec, toy.task)
    assert info.value.problems[0] == (
        "learning_rate: unknown spec key; allowed keys are method, gradients, projector, solver, grouper, ensemble, "
        "and the parameters of method 'tracin': learning_rates. Did you mean 'learning_rates'?"
    )
    assert len(info.value.problems) == 2  # with the projector's problem, in one error


def test_a_method_without_parameters_says_so(toy):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose({"method": "grad-dot", "learning_rates": [0.1]}, toy.task)
    assert info.value.problems == ["learning_rates: unknown spec key; allowed keys are method, gradients, projector, "
                                   "solver, grouper, ensemble (method 'grad-dot' has no parameters)"]


def test_a_parameter_given_twice_is_refused(toy):
    with pytest.raises(attrkit.SpecError, match="method.regularization: given twice, at the top level and inside"):
        attrkit.compose({"method": {"name": "rps", "regularization": 0.1}, "regularization": 0.01}, toy.task)


def test_a_flat_parameter_is_validated_like_a_nested_one(toy):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose({"method": "rps", "regularization": True}, toy.task)
    assert info.value.problems == ["method.regularization must be a number, got True (a bool)"]


# -- spec files: one spec, or a list of labelled specs chosen by '#label' ----------------------

BENCH_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "specs" / "mnist-lr.json"


def test_a_file_of_one_spec_composes(toy, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text('{"method": "grad-dot", "projector": {"name": "gaussian", "dim": 8}}')
    for ref in (path, str(path)):
        assert attrkit.compose(ref, toy.task).resolved.spec.projector.params["dim"] == 8


def test_a_label_chooses_a_benchmark_spec_and_bench_keys_are_ignored_with_a_warning(toy):
    task = attrkit.testing.toy_problem(checkpoints=2).task
    ignored = r"#trak-10: ignored the benchmark-only keys 'members' \(\"independent:10\"\)"
    with pytest.warns(SpecFileWarning, match=ignored):
        spec = attrkit.compose(f"{BENCH_FILE}#trak-10", task).resolved.spec
    assert (spec.method.name, spec.ensemble.name, spec.projector.params["dim"]) == ("trak", "checkpoints", 512)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the label: nothing is ignored
        assert attrkit.compose(f"{BENCH_FILE}#grad-dot", toy.task).resolved.spec.method.name == "grad-dot"


def test_a_list_file_without_a_label_names_the_labels(toy):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose(str(BENCH_FILE), toy.task)
    (line,) = info.value.problems
    assert line.startswith(f"{BENCH_FILE}: holds 20 specs; choose one by its label, as '{BENCH_FILE}#LABEL' (labels: ")
    assert "trak-10" in line


def test_an_unknown_label_names_the_file_and_close_labels(toy):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose(f"{BENCH_FILE}#trak-100", toy.task)
    assert info.value.problems[0].startswith(f"{BENCH_FILE}: no spec is labelled 'trak-100'. Did you mean: trak-10")


def test_problems_of_a_spec_from_a_file_name_the_file(toy, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"label": "a", "method": "grad-dot", "projector": {"name": "gaussian", "dim": 0}, "skip": []}]')
    with pytest.warns(SpecFileWarning, match="'label'.*'skip'"), pytest.raises(attrkit.SpecError) as info:
        attrkit.compose(str(path), toy.task)
    assert info.value.problems == [f"{path}: projector.dim: 'dim' must be >= 1: 0"]
    missing = tmp_path / "missing.json"
    with pytest.raises(attrkit.SpecError, match=f"{missing}: cannot read the spec file"):
        attrkit.compose(missing, toy.task)
    path.write_text("[1, 2")
    with pytest.raises(attrkit.SpecError, match=f"{path}: not valid JSON"):
        attrkit.compose(str(path), toy.task)


def test_bench_keys_outside_a_file_are_refused_with_the_hint(toy):
    hint = "'label' is a benchmark key: attrkit.compose ignores it in a spec file"
    with pytest.raises(attrkit.SpecError, match=hint):
        attrkit.compose({"method": "grad-dot", "label": "x"}, toy.task)


# -- refusals the spec and the task decide, at compose, before any work ------------------------

def _problems(spec, task):
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose(spec, task)
    return info.value.problems


def test_more_parameters_than_the_explicit_solvers_max_dim(toy):
    (line,) = _problems({"method": "if", "solver": {"name": "explicit", "max_dim": 10}}, toy.task)
    assert line.startswith("solver.max_dim: the explicit solver builds a p × p matrix")
    assert "selects p=57 parameters, more than max_dim=10" in line
    restricted = {"method": "if", "gradients": {"name": "per-example", "params": ["2.*"]},
                  "solver": {"name": "explicit", "max_dim": 21}}
    assert attrkit.compose(restricted, toy.task)  # p = 6 * 3 + 3 = 21


@pytest.mark.parametrize("ensemble", ["checkpoints", "lora"])
def test_an_ensemble_over_checkpoints_on_a_task_without_any(ensemble):
    task = attrkit.testing.toy_problem(lora_rank=2 if ensemble == "lora" else 0).task
    assert _problems({"method": "trak", "ensemble": ensemble}, task) == [
        f"ensemble {ensemble!r} sums over the task's checkpoints, but the task has none: pass "
        "AttributionTask(..., checkpoints=[state_dict, ...])"
    ]


def test_checkpoint_weights_that_do_not_match():
    task = attrkit.testing.toy_problem(checkpoints=2).task
    assert _problems({"method": "grad-dot", "ensemble": {"name": "checkpoints", "weights": [1, 2, 3]}}, task) == [
        "ensemble.weights: ensemble 'checkpoints' got 3 weights for 2 checkpoints"
    ]


def test_lora_on_a_model_without_lora_layers():
    task = attrkit.testing.toy_problem(checkpoints=2).task
    (line,) = _problems({"method": "trak", "ensemble": "lora"}, task)
    assert line.startswith("ensemble 'lora': the model needs LoRA layers, and Sequential has none")


def test_dropout_on_a_model_without_dropout(toy):
    assert _problems({"method": "trak", "ensemble": "dropout"}, toy.task) == [
        "ensemble 'dropout' needs nn.Dropout modules in the model, and Sequential has none; use the 'checkpoints' "
        "or 'lora' ensemble"
    ]


def test_last_layer_on_a_model_without_linear_and_every_problem_at_once(toy):
    task = attrkit.AttributionTask(model=torch.nn.Sequential(torch.nn.Conv1d(1, 2, 1), torch.nn.Flatten()),
                                   loss_fn=toy.task.loss_fn)
    assert _problems({"method": "grad-dot", "gradients": "last-layer", "ensemble": "dropout"}, task) == [
        "gradients: last-layer gradients need an nn.Linear output layer, but Sequential has none; use the "
        "'per-example' gradient source with params=[...] instead",
        "ensemble 'dropout' needs nn.Dropout modules in the model, and Sequential has none; use the 'checkpoints' "
        "or 'lora' ensemble",
    ]


@pytest.mark.parametrize(("spec", "kwargs"), [
    ({"method": "tracin", "learning_rates": [0.1, 0.2]}, {"checkpoints": 3}),
    ({"method": "tracin", "learning_rates": [0.1, 0.2], "ensemble": "checkpoints"}, {"checkpoints": 3}),
    ({"method": "tracin", "learning_rates": [0.1, 0.2], "ensemble": {"name": "dropout", "members": 3}},
     {"dropout": 0.1}),
])
def test_tracin_learning_rates_that_do_not_match_the_members(spec, kwargs):
    task = attrkit.testing.toy_problem(**kwargs).task
    assert _problems(spec, task) == [
        "method.learning_rates: 2 learning rates for 3 checkpoints (ensemble members); give one per member, in order, "
        "or a single rate for all"
    ]
    assert attrkit.compose({**spec, "learning_rates": [0.1]}, task)  # one rate for every member


def test_a_check_hook_that_raises_is_reported_as_its_plugins_bug(toy):
    class Faulty(plugin.Projector):
        name, Config = "faulty", attrkit.default_registry().get("projector", "identity").cls.Config

        @classmethod
        def check(cls, config, task, parts):
            raise KeyError("oops")

        def project(self, vectors):
            return vectors

    class Plugin:
        @plugin.hookimpl
        def attrkit_components(self):
            return [Faulty]

    registry = Registry(*load_plugins(extra=[("faulty-plugin", Plugin())]))
    with pytest.raises(attrkit.SpecError) as info:
        attrkit.compose({"method": "grad-dot", "projector": "faulty"}, toy.task, registry)
    (line,) = info.value.problems
    assert line.startswith("projector 'faulty''s check raised KeyError: 'oops'")
    assert "report it to 'faulty-plugin'" in line
