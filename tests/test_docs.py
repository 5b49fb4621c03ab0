"""README and CI agree: CI runs exactly the README's test command; and every spec the
documentation shows (README, docstrings, the benchmark spec files) composes."""

import ast
import importlib
import inspect
import json
import pkgutil
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import attrkit
import attrkit.spec
import attrkit_plugins
from attrkit.functional.lora import add_lora
from attrkit.errors import SpecFileWarning

ROOT = Path(__file__).resolve().parents[1]


def _commands(text):
    lines = text.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if line.strip() == "```bash"]


def test_ci_runs_the_readme_test_command():
    readme = _commands((ROOT / "README.md").read_text())
    test_command = next(c for c in readme if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_main_job_runs_the_mnist_benchmark():
    assert any(c.endswith("attrkit bench mnist-lr") for c in _commands((ROOT / "README.md").read_text()))


# -- every spec the documentation shows composes ------------------------------------------------

def _balanced(text, start):
    """The ``{...}`` starting at ``text[start]``."""
    depth = 0
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start:end + 1]
    raise AssertionError(f"unbalanced braces from: {text[start:start + 80]}")


def _specs(text):
    """Every dict or JSON object in ``text`` whose first key is ``"method"`` (doctest ``...`` prompts removed)."""
    text = re.sub(r"\n\s*\.\.\. ", "\n", text)
    found = []
    for match in re.finditer(r'\{\s*"method"', text):
        literal = _balanced(text, match.start())
        try:
            value = json.loads(literal)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(literal)
            except (ValueError, SyntaxError):  # an expression built in code (f"{...}", name or ...): no example
                continue
        if "..." not in literal:  # a placeholder like {"method": ...}
            found.append(value)
    return found


def _readme_task():
    """A task every README spec fits: Linear layers named fc1/fc2 (LoRA on fc2), a dropout, two checkpoints."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(4, 5), act=torch.nn.Tanh(),
                                            drop=torch.nn.Dropout(0.1), fc2=torch.nn.Linear(5, 3)))
    add_lora(model, rank=2, targets=["fc2"])
    model.requires_grad_(True)
    checkpoints = [{k: v + 0.1 * i for k, v in model.state_dict().items()} for i in range(2)]
    return attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy, checkpoints=checkpoints)


README_SPECS = _specs((ROOT / "README.md").read_text())


def test_the_readme_shows_the_nested_and_the_flat_form():
    assert len(README_SPECS) >= 8
    assert any(set(s) - set(attrkit.spec.KEYS) for s in README_SPECS)  # a method parameter at the top level
    assert any(isinstance(s["method"], dict) for s in README_SPECS)


@pytest.mark.parametrize("spec", README_SPECS, ids=[json.dumps(s)[:60] for s in README_SPECS])
def test_every_readme_spec_composes(spec):
    attributor = attrkit.compose(spec, _readme_task())
    assert attributor.resolved.spec.method.name == (spec["method"] if isinstance(spec["method"], str)
                                                    else spec["method"]["name"])


def test_every_spec_file_the_readme_names_composes(monkeypatch):
    monkeypatch.chdir(ROOT)
    refs = re.findall(r'attrkit\.compose\("([^"]+\.json(?:#[^"]+)?)"', (ROOT / "README.md").read_text())
    assert "benchmarks/specs/mnist-lr.json#trak-10" in refs
    for ref in refs:
        if Path(ref.partition("#")[0]).exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SpecFileWarning)
                assert attrkit.compose(ref, _readme_task())


def _docstrings():
    for package in (attrkit, attrkit_plugins):
        for info in [None, *pkgutil.walk_packages(package.__path__, package.__name__ + ".")]:
            name = package.__name__ if info is None else info.name
            if name.endswith("__main__"):
                continue
            module = importlib.import_module(name)
            yield name, inspect.getdoc(module) or ""
            for obj in vars(module).values():
                if getattr(obj, "__module__", None) == name and (inspect.isclass(obj) or inspect.isfunction(obj)):
                    yield f"{name}.{obj.__name__}", inspect.getdoc(obj) or ""
                    for member in vars(obj).values() if inspect.isclass(obj) else ():
                        member = getattr(member, "__func__", member)
                        if inspect.isfunction(member):
                            yield f"{name}.{obj.__name__}.{member.__name__}", inspect.getdoc(member) or ""


DOCSTRING_SPECS = [(where, spec) for where, doc in _docstrings() for spec in _specs(doc)]


def test_docstrings_show_specs():
    assert len(DOCSTRING_SPECS) >= 15


@pytest.mark.parametrize(("where", "spec"), DOCSTRING_SPECS, ids=[w for w, _ in DOCSTRING_SPECS])
def test_every_docstring_spec_resolves(where, spec, registry):
    assert attrkit.resolve(spec, registry).spec.method.name


def _bench_refs():
    for path in sorted((ROOT / "benchmarks" / "specs").glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, list):
            yield from (f"{path}#{item['label']}" for item in data)


@pytest.mark.parametrize("ref", list(_bench_refs()), ids=lambda r: Path(r).name)
def test_every_labelled_benchmark_spec_resolves_through_compose_s_file_form(ref, registry):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpecFileWarning)
        assert attrkit.resolve(ref, registry).spec.method.name
