"""The explicit solver's structured build (attrkit.functional.explicit_structured) against its HVP build."""

import pytest
import torch

import attrkit
from attrkit.errors import ArgumentError, CurvatureError
from attrkit.functional import explicit_ihvp_at, select_parameters
from attrkit.targets import cross_entropy
from attrkit.testing import toy_problem
from thread_ranks import structure_broken_on_rank_1, threaded

pytestmark = pytest.mark.usefixtures("one_thread")

LAM = 0.1


def _data(n=64, dim=20, classes=3, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=gen).to(dtype)
    y = torch.randint(0, classes, (n,), generator=gen)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _logistic(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Linear(20, 3).to(dtype)


def _mlp(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).to(dtype)


def _build(model, patterns=("*",), dtype=torch.float32, regularization=LAM, data=None, **kw):
    """The ``InverseHVP`` of ``model`` on the shared data and its damped matrix ``L Lᵀ`` (float64)."""
    names = select_parameters(model, patterns)
    solve = explicit_ihvp_at(model, cross_entropy, dict(model.state_dict()), names, data or _data(dtype=dtype),
                             regularization=regularization, **kw)
    factor = solve.state["factor"]
    return solve, factor @ factor.T


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def _vectors(p):
    return torch.randn(3, p, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("curvature", ["gauss-newton", "hessian"])
@pytest.mark.parametrize("patterns", [("*",), ("weight",), ("bias",)], ids=["weight+bias", "weight", "bias"])
def test_logistic_regression_structured_equals_the_hvp_build(curvature, patterns):
    structured, matrix = _build(_logistic(), patterns, curvature=curvature, build="structured")
    hvp, reference = _build(_logistic(), patterns, curvature=curvature, build="hvp")
    assert structured.stats.info["structured"] == 1.0 and hvp.stats.info["structured"] == 0.0
    assert _relative(matrix, reference) < 1e-6
    vectors = _vectors(structured.p)
    expected = hvp(vectors)  # float32 solves: round-off relative to the largest entry (BLAS kernels differ by CPU)
    torch.testing.assert_close(structured(vectors), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    if curvature == "hessian":  # probed: the Hessian of logistic regression is its Gauss-Newton matrix
        assert structured.stats.info["hessian_probe"] < 1e-5
        assert structured.stats.build.passes == 1  # outputs affine (B_i = I): the first batch's probe decides
        assert structured.stats.info["outputs_affine"] == 1.0


def test_auto_is_structured_beyond_one_pass_of_hvps():
    assert _build(_logistic(), chunk_size=16)[0].stats.info["structured"] == 1.0  # p = 63 > 16
    assert _build(_logistic())[0].stats.info["structured"] == 0.0  # p = 63 <= 256: one pass of HVPs


def test_float32_structured_build_is_near_the_float64_matrix():
    """GEMMs in float32 summed in float64 chunk by chunk: the error is float32 round-off."""
    _, matrix = _build(_logistic(), build="structured", curvature="gauss-newton")
    _, reference = _build(_logistic(torch.float64), dtype=torch.float64, build="hvp", curvature="gauss-newton")
    _, exact = _build(_logistic(torch.float64), dtype=torch.float64, build="structured", curvature="gauss-newton")
    error = _relative(matrix, reference)
    assert error < 1e-5, error
    assert _relative(exact, reference) < 1e-13  # in float64 both builds agree to float64 round-off


def test_mlp_gauss_newton_structured_equals_the_hvp_build():
    for patterns in (("*",), ("0.weight", "2.*")):
        structured, matrix = _build(_mlp(), patterns, curvature="gauss-newton", build="structured")
        hvp, reference = _build(_mlp(), patterns, curvature="gauss-newton", build="hvp")
        assert structured.stats.info["structured"] == 1.0
        assert _relative(matrix, reference) < 1e-6
        vectors = _vectors(structured.p)
        torch.testing.assert_close(structured(vectors), hvp(vectors), rtol=1e-5, atol=1e-6)


def test_mlp_hessian_falls_back_to_the_hvp_build_or_refuses_the_structured_one():
    lam = 1.0  # the MLP's Hessian is indefinite
    auto, matrix = _build(_mlp(), curvature="hessian", chunk_size=64, regularization=lam)  # p = 195 > 64: tried
    _, reference = _build(_mlp(), curvature="hessian", chunk_size=64, regularization=lam, build="hvp")
    assert auto.stats.info["structured"] == 0.0 and auto.stats.info["hessian_probe"] > 1e-2
    assert torch.equal(matrix, reference)
    with pytest.raises(CurvatureError, match=r"build='structured' cannot be used: the Hessian is not the "
                                             r"Gauss-Newton matrix.*Use build='hvp'"):
        _build(_mlp(), curvature="hessian", regularization=lam, build="structured")


def test_structured_refuses_parameters_outside_factored_layers():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 3))
    with pytest.raises(CurvatureError, match=r"structured' cannot be used: the selected parameters 1.weight, 1.bias "
                                             r"are not in a factored layer.*1 \(LayerNorm\)"):
        _build(model, curvature="gauss-newton", build="structured")
    solve, _ = _build(model, curvature="gauss-newton", chunk_size=8)  # auto: the HVP build, silently
    assert solve.stats.info["structured"] == 0.0
    linear_only, _ = _build(model, ("0.*", "2.*"), curvature="gauss-newton", build="structured")
    assert linear_only.stats.info["structured"] == 1.0


def test_a_layer_at_several_positions_per_example_takes_the_hvp_build():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 3), torch.nn.Flatten())  # [b, 2, 10] -> [b, 2, 3] -> [b, 6]
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 2, 10, generator=gen), torch.randint(0, 6, (32,), generator=gen)
    data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    with pytest.raises(CurvatureError, match=r"layer '0' is applied at 2 positions per example"):
        _build(model, curvature="gauss-newton", build="structured", data=data)
    auto, matrix = _build(model, curvature="gauss-newton", chunk_size=8, data=data)
    assert auto.stats.info["structured"] == 0.0
    assert torch.equal(matrix, _build(model, curvature="gauss-newton", chunk_size=8, build="hvp", data=data)[1])


def test_unknown_build_is_refused():
    with pytest.raises(ArgumentError, match=r"build must be one of 'auto', 'hvp', 'structured', got 'fast'"):
        _build(_logistic(), build="fast")
    toy = toy_problem(n_train=8)
    with pytest.raises(attrkit.SpecError, match=r"solver.build: 'build' must be in \('auto', 'hvp', 'structured'\)"):
        attrkit.compose({"method": "if", "solver": {"name": "explicit", "build": "fast"}}, toy.task)


@pytest.mark.parametrize("curvature_", ["gauss-newton", "hessian"])
def test_ranks_sum_their_shards_into_the_single_process_matrix(curvature_, monkeypatch):
    """Each rank takes its shard of the batches; the partial sums (and the probes) are all-reduced."""
    single = _build(_logistic(), curvature=curvature_, build="structured")[1]
    models = [_logistic() for _ in range(2)]  # built before the threads: torch.manual_seed is process-wide
    got = threaded(monkeypatch).run(lambda rank: _build(models[rank], curvature=curvature_, build="structured"))
    for solve, matrix in got:
        assert solve.stats.info["structured"] == 1.0
        # the ranks' float32 GEMMs sum other chunks of examples: equal to float32 round-off
        assert _relative(matrix, single) < 1e-6
    assert torch.equal(got[0][1], got[1][1])


def test_ranks_agree_to_fall_back_when_one_cannot_use_the_structure(monkeypatch):
    """A rank whose batches break the structure makes every rank take the HVP build (no hang)."""
    ranks = threaded(monkeypatch)
    structure_broken_on_rank_1(monkeypatch, ranks)
    models = [_logistic() for _ in range(2)]
    got = ranks.run(lambda rank: _build(models[rank], curvature="gauss-newton", chunk_size=16))
    assert [solve.stats.info["structured"] for solve, _ in got] == [0.0, 0.0]
    assert torch.equal(got[0][1], got[1][1])
    raised = ranks.run(lambda rank: pytest.raises(CurvatureError, _build, models[rank], curvature="gauss-newton",
                                                  build="structured"))
    assert all("cannot be used: rank 1's batches" in str(info.value) for info in raised)
