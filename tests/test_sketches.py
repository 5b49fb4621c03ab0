"""The ``rademacher`` and ``sjlt`` projectors: conformance, JL accuracy, chunking, sparsity, low precision."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attrkit
from attrkit.context import FitContext
from attrkit.functional.projection import BLOCK_ROWS, SeededMatrix, rademacher_sampler
from attrkit.functional.sparse import sjlt_hashes, sjlt_matrix, sjlt_project
from attrkit.testing import check_component, toy_problem

REGISTRY = attrkit.default_registry()
JL = settings(max_examples=8, deadline=None, derandomize=True)


def _projector(name, p, **params):
    entry = REGISTRY.get("projector", name)
    projector = entry.cls(entry.cls.Config(**params))
    toy = toy_problem()
    member = toy.task.members()[0]
    projector.fit(FitContext(task=toy.task, member=member, train=[], gradients=None, dimension=p, n_train=0))
    return projector


def _unit_rows(n, p, density, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    x *= torch.rand(n, p, generator=gen, dtype=torch.float64) < density
    return torch.nn.functional.normalize(x, dim=1)


@pytest.mark.parametrize("name", ["rademacher", "sjlt"])
def test_conformance(name):
    check_component(REGISTRY.get("projector", name))


@JL
@given(
    name=st.sampled_from(["rademacher", "sjlt"]),
    p=st.integers(300, 3000),
    density=st.sampled_from([1.0, 0.2]),
    seed=st.integers(0, 2**31),
)
def test_johnson_lindenstrauss_inner_products(name, p, density, seed):
    """At k = 2048, every <xP, yP> of unit vectors is within 6/sqrt(k) (> 4 standard deviations) of <x, y>."""
    k = 2048
    x = _unit_rows(8, p, density, seed)
    px = _projector(name, p, dim=k, seed=seed).project(x).double()
    err = (px @ px.T - x @ x.T).abs().max().item()
    assert err < 6 / math.sqrt(k), (name, err)


@settings(max_examples=10, deadline=None)
@given(p=st.integers(1, 3 * BLOCK_ROWS), chunk=st.integers(1, 4 * BLOCK_ROWS), seed=st.integers(0, 2**40),
       nnz=st.integers(1, 6))
def test_sjlt_does_not_depend_on_chunk_or_batch_size(p, chunk, seed, nnz):
    x = torch.randn(5, p, generator=torch.Generator().manual_seed(1))
    whole = sjlt_project(x, 16, seed, nnz, chunk_rows=4 * BLOCK_ROWS)
    torch.testing.assert_close(sjlt_project(x, 16, seed, nnz, chunk_rows=chunk), whole)
    halves = [sjlt_project(x[:2], 16, seed, nnz), sjlt_project(x[2:], 16, seed, nnz)]
    torch.testing.assert_close(torch.cat(halves), whole)


@pytest.mark.parametrize(("k", "nnz"), [(16, 4), (10, 3), (7, 7), (32, 1)])
def test_sjlt_has_exactly_nnz_distinct_signed_entries_per_coordinate(k, nnz):
    p = 2500
    matrix = sjlt_matrix(p, k, seed=3, nnz=nnz).to_dense()
    assert ((matrix != 0).sum(1) == nnz).all()
    assert torch.allclose(matrix[matrix != 0].abs(), torch.tensor(1 / math.sqrt(nnz)))
    assert torch.allclose(matrix.norm(dim=1), torch.ones(p))
    x = torch.randn(3, p, dtype=torch.float64)
    torch.testing.assert_close(sjlt_project(x, k, 3, nnz), x @ matrix.double())


def test_sjlt_hashes_of_any_range_are_slices_of_the_whole():
    buckets, signs = sjlt_hashes(7, 0, 3000, 64, 4)
    part_b, part_s = sjlt_hashes(7, 1500, 2049, 64, 4)
    assert torch.equal(part_b, buckets[1500:2049]) and torch.equal(part_s, signs[1500:2049])
    assert sjlt_hashes(7, 5, 5, 64, 4)[0].shape == (0, 4)
    assert not torch.equal(sjlt_hashes(8, 0, 3000, 64, 4)[0], buckets)


def test_sjlt_keeps_its_hashes_between_batches_within_the_budget(monkeypatch):
    import attrkit_plugins.sketches as sketches

    x = torch.randn(4, 2500, generator=torch.Generator().manual_seed(2))
    drawn = sjlt_project(x, 32, 5, 2, chunk_rows=BLOCK_ROWS)
    kept = _projector("sjlt", 2500, dim=32, seed=5, nnz=2, chunk_rows=BLOCK_ROWS)
    assert torch.equal(kept.project(x), drawn) and torch.equal(kept.project(x[:1]), drawn[:1])
    assert kept._hashes is not None and kept._hashes[0].shape == (2500, 2)
    monkeypatch.setattr(sketches, "KEPT_HASH_BYTES", 2500 * 2 * 12 - 1)  # one byte short: drawn per batch
    small = _projector("sjlt", 2500, dim=32, seed=5, nnz=2, chunk_rows=BLOCK_ROWS)
    assert torch.equal(small.project(x), drawn) and small._hashes is None


def test_rademacher_is_the_seeded_sign_matrix():
    x = torch.randn(4, 3000)
    expected = SeededMatrix(3000, 32, 5, rademacher_sampler).project(x)
    torch.testing.assert_close(_projector("rademacher", 3000, dim=32, seed=5).project(x), expected)
    streamed = _projector("rademacher", 3000, dim=32, seed=5, cache_mb=0.0, chunk_rows=1000)
    torch.testing.assert_close(streamed.project(x), expected)


@pytest.mark.parametrize(("dtype", "tolerance"), [("bfloat16", 8e-3), ("float16", 1e-3)])
@pytest.mark.parametrize("cache_mb", [256.0, 0.0])
@pytest.mark.parametrize("name", ["rademacher", "gaussian"])
def test_low_precision_is_within_its_documented_tolerance(name, dtype, tolerance, cache_mb):
    """Relative error ||y - y_float32|| / ||y_float32|| per row is about the unit roundoff (see the docstring)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5000, generator=gen) * torch.logspace(-6, 3, 6).unsqueeze(1)  # rows far outside float16 range
    reference = _projector(name, 5000, dim=256, seed=1).project(x)
    projector = _projector(name, 5000, dim=256, seed=1, dtype=dtype, cache_mb=cache_mb, chunk_rows=2048)
    low = projector.project(x)
    assert low.dtype == torch.float32
    rel = (low - reference).norm(dim=1) / reference.norm(dim=1)
    assert (rel < tolerance).all(), rel
    one_by_one = torch.cat([projector.project(x[i : i + 1]) for i in range(6)])  # batch size: up to rounding only
    assert ((one_by_one - low).norm(dim=1) / low.norm(dim=1) < tolerance).all()


def test_bad_configs_are_spec_errors():
    toy = toy_problem()
    with pytest.raises(attrkit.SpecError, match="nnz must be <= dim"):
        attrkit.compose({"method": "grad-dot", "projector": {"name": "sjlt", "dim": 4, "nnz": 8}}, toy.task, REGISTRY)
    with pytest.raises(attrkit.SpecError, match="projector.dtype"):
        attrkit.compose({"method": "grad-dot", "projector": {"name": "rademacher", "dtype": "int8"}}, toy.task,
                        REGISTRY)


def test_unfitted_or_wrong_dimension_is_refused():
    entry = REGISTRY.get("projector", "sjlt")
    with pytest.raises(attrkit.NotFittedError):
        entry.cls(entry.cls.Config()).project(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="fitted for dimension 50"):
        _projector("sjlt", 50, dim=8).project(torch.zeros(1, 49))
    with pytest.raises(ValueError, match="fitted for dimension 50"):
        _projector("rademacher", 50, dim=8, dtype="bfloat16").project(torch.zeros(1, 49))


@pytest.mark.parametrize("name", ["rademacher", "sjlt"])
def test_grad_dot_through_a_sketch_approximates_grad_dot(name):
    toy = toy_problem()
    exact = attrkit.compose({"method": "grad-dot"}, toy.task, REGISTRY).fit(toy.train_loader())
    exact = exact.attribute(toy.test_loader())
    spec = {"method": "grad-dot", "projector": {"name": name, "dim": 4096, "seed": 0}}
    sketched = attrkit.compose(spec, toy.task, REGISTRY).fit(toy.train_loader()).attribute(toy.test_loader())
    assert torch.corrcoef(torch.stack([exact.flatten(), sketched.flatten()]))[0, 1] > 0.95
