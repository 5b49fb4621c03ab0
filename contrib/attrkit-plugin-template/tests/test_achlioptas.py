"""The template plugin's tests: attrkit's conformance kit plus its own maths."""

import ast
from pathlib import Path

import torch

import attrkit
from attrkit.functional import block_generator
from attrkit.testing import check_component, toy_problem
from attrkit_plugin_template.achlioptas import achlioptas_sampler

SRC = Path(__file__).resolve().parents[1] / "src"


def test_registered_through_the_entry_point_group():
    entry = attrkit.default_registry().get("projector", "achlioptas")
    assert entry.plugin.distribution == "attrkit-plugin-template"


def test_conformance():
    check_component(attrkit.default_registry().get("projector", "achlioptas"))


def test_written_against_the_plugin_module_only():
    """The plugin imports ``attrkit.plugin`` and ``attrkit.functional`` and nothing else of attrkit."""
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [f"{node.module}.{a.name}" if node.module == "attrkit" else node.module for a in node.names]
            else:
                continue
            for module in modules:
                if module.split(".")[0] == "attrkit":
                    allowed = module == "attrkit.plugin" or module.startswith("attrkit.functional")
                    assert allowed, f"{path.relative_to(SRC)} imports {module}"


def test_entries_have_the_documented_law():
    sample = achlioptas_sampler(block_generator(0, 0, torch.device("cpu")), 600, 100, torch.device("cpu"))
    values, counts = torch.unique(sample, return_counts=True)
    assert torch.allclose(values, torch.tensor([-3**0.5, 0.0, 3**0.5]))
    assert abs(counts[1].item() / sample.numel() - 2 / 3) < 0.01
    assert abs(sample.var().item() - 1.0) < 0.02


def test_composes_with_grad_dot_and_approximates_it():
    toy = toy_problem(n_train=30)
    exact = attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())
    spec = {"method": "grad-dot", "projector": {"name": "achlioptas", "dim": 4096, "seed": 1}}
    sketched = attrkit.compose(spec, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())
    assert sketched.shape == exact.shape
    rel = (sketched - exact).norm() / exact.norm()
    assert rel < 0.1, rel
