"""The template plugin's tests: attrkit's conformance kit plus its own maths."""

import torch

import attrkit
from attrkit.functional.projection import block_generator
from attrkit.testing import check_component, toy_problem
from attrkit_plugin_template.achlioptas import achlioptas_sampler


def test_registered_through_the_entry_point_group():
    entry = attrkit.default_registry().get("projector", "achlioptas")
    assert entry.plugin.distribution == "attrkit-plugin-template"


def test_conformance():
    check_component(attrkit.default_registry().get("projector", "achlioptas"))


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
