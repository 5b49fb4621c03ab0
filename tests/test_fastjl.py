"""The fastjl projector: listed everywhere, refused loudly where it cannot run,
and wired correctly (checked with a fake fast_jl module, since no GPU is here)."""

import sys
from types import ModuleType, SimpleNamespace

import pytest
import torch

import attrkit
from attrkit.cli import main as attrkit_command
from attrkit_plugins import fastjl


@pytest.fixture
def no_fast_jl(monkeypatch):
    monkeypatch.setitem(sys.modules, "fast_jl", None)  # import fails


def test_listed_as_unavailable_with_reason_and_install_hint(no_fast_jl, capsys):
    entry = attrkit.default_registry().get("projector", "fastjl")
    assert "fast_jl does not import" in entry.unavailable and "attrkit[gpu]" in entry.unavailable
    attrkit_command(["plugins"])
    line = next(row for row in capsys.readouterr().out.splitlines() if row.strip().startswith("fastjl"))
    assert "attrkit-fastjl" in line and "[unavailable: fast_jl does not import" in line


def test_composing_it_fails_loudly_never_falls_back(no_fast_jl, toy):
    with pytest.raises(attrkit.SpecError, match="projector 'fastjl' is unavailable on this machine: fast_jl does not import"):
        attrkit.compose({"method": "grad-dot", "projector": "fastjl"}, toy.task)


def test_dim_must_be_a_multiple_of_512(toy):
    with pytest.raises(attrkit.SpecError, match="multiple of 512"):
        attrkit.resolve({"method": "grad-dot", "projector": {"name": "fastjl", "dim": 1000}})


def _fake_fast_jl(calls):
    """A CPU stand-in with fast_jl's call signature: x [B, F] -> x @ R, R ±1 seeded."""
    module = ModuleType("fast_jl")

    def make(kernel):
        def project(x, n, seed, num_sms):
            assert x.shape[0] % kernel == 0 and x.is_contiguous()
            calls.append((kernel, x.shape[0], x.dtype, n, seed, num_sms))
            gen = torch.Generator().manual_seed(seed)
            r = torch.randint(0, 2, (x.shape[1], n), generator=gen).float() * 2 - 1
            return x.float() @ r

        return project

    for kernel in (8, 16, 32):
        setattr(module, f"project_rademacher_{kernel}", make(kernel))
    return module


def test_wiring_with_a_fake_module(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "fast_jl", _fake_fast_jl(calls))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=7))
    monkeypatch.setattr(fastjl, "_require_cuda", lambda vectors: None)
    assert attrkit.default_registry().get("projector", "fastjl").unavailable is None
    projector = fastjl.FastJLProjector(fastjl.FastJLConfig(dim=512, seed=3))
    projector.fit(SimpleNamespace(task=SimpleNamespace(device="cuda:0")))
    x = torch.randn(11, 40)
    out = projector.project(x)
    assert out.shape == (11, 512) and out.dtype == torch.float32
    assert calls == [(16, 16, torch.float32, 512, 3, 7)]
    r = torch.randint(0, 2, (40, 512), generator=torch.Generator().manual_seed(3)).float() * 2 - 1
    torch.testing.assert_close(out, x @ r / 512**0.5)
    projector.project(torch.randn(40, 40))
    assert calls[-1][:2] == (32, 64)


def test_all_zero_output_is_an_error(monkeypatch):
    module = ModuleType("fast_jl")
    module.project_rademacher_8 = lambda x, n, seed, sms: torch.zeros(x.shape[0], n)
    monkeypatch.setitem(sys.modules, "fast_jl", module)
    monkeypatch.setattr(fastjl, "_require_cuda", lambda vectors: None)
    projector = fastjl.FastJLProjector(fastjl.FastJLConfig(dim=512))
    with pytest.raises(RuntimeError, match="all zeros"):
        projector.project(torch.ones(2, 5))


def test_cpu_tensors_are_refused():
    with pytest.raises(ValueError, match="CUDA tensors only"):
        fastjl._require_cuda(torch.ones(1))
