"""Seeded block projections: independent of chunking and caching, and JL-accurate."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attrkit.functional.projection import BLOCK_ROWS, SeededMatrix, gaussian_sampler, rademacher_sampler


@settings(max_examples=15, deadline=None)
@given(p=st.integers(1, 3 * BLOCK_ROWS), chunk=st.integers(1, 4 * BLOCK_ROWS), seed=st.integers(0, 2**40))
def test_chunking_and_caching_do_not_change_the_matrix(p, chunk, seed):
    x = torch.randn(3, p, generator=torch.Generator().manual_seed(1))
    cached = SeededMatrix(p, 16, seed, gaussian_sampler, chunk_rows=chunk)
    streamed = SeededMatrix(p, 16, seed, gaussian_sampler, chunk_rows=chunk, cache_bytes=0)
    assert cached.cacheable and not streamed.cacheable
    torch.testing.assert_close(streamed.project(x), cached.project(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cached.rows(0, p, torch.device("cpu")), cached.matrix(torch.device("cpu")))


def test_seeds_differ_and_repeat():
    a = SeededMatrix(100, 8, 0, gaussian_sampler).matrix(torch.device("cpu"))
    assert torch.equal(a, SeededMatrix(100, 8, 0, gaussian_sampler).matrix(torch.device("cpu")))
    assert not torch.equal(a, SeededMatrix(100, 8, 1, gaussian_sampler).matrix(torch.device("cpu")))


def test_blocks_drawn_side_by_side_are_the_blocks_drawn_one_by_one():
    """Gaussian blocks are drawn on threads of their own, straight into the matrix; Rademacher's one by one."""
    from attrkit.functional.projection import block_generator

    cpu, p, k, threads = torch.device("cpu"), 3 * BLOCK_ROWS + 17, 8, torch.get_num_threads()
    for sampler in (gaussian_sampler, rademacher_sampler):
        one_by_one = torch.cat([sampler(block_generator(7, j, cpu), min(BLOCK_ROWS, p - j * BLOCK_ROWS), k, cpu)
                                for j in range(4)]) / k**0.5
        try:
            torch.set_num_threads(1)
            serial = SeededMatrix(p, k, 7, sampler).rows(5, p, cpu)
            torch.set_num_threads(2)
            pooled = SeededMatrix(p, k, 7, sampler).rows(5, p, cpu)
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(serial, one_by_one[5:]) and torch.equal(pooled, one_by_one[5:])


def test_johnson_lindenstrauss_inner_products():
    """With k = 2048, <xP, yP> is within a few 1/sqrt(k) of <x, y> for unit vectors."""
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(20, 3000, generator=gen), dim=1)
    for sampler in (gaussian_sampler, rademacher_sampler):
        px = SeededMatrix(3000, 2048, 5, sampler).project(x)
        err = (px @ px.T - x @ x.T).abs().max().item()
        assert err < 5 / 2048**0.5, (sampler.__name__, err)


def test_dtype_is_kept():
    x = torch.randn(2, 50, dtype=torch.float64)
    assert SeededMatrix(50, 4, 0, gaussian_sampler).project(x).dtype == torch.float64


def test_members_share_one_cache_budget_least_recently_used_first_out():
    """Three seeds whose matrices fit the budget two at a time: the cache never holds more than the budget,
    and an evicted matrix drawn again projects bit for bit as before."""
    from attrkit.functional.projection import CACHE

    CACHE.clear()
    p, k = 300, 16
    size = p * k * 4
    x = torch.randn(5, p, generator=torch.Generator().manual_seed(0))
    matrices = [SeededMatrix(p, k, seed, gaussian_sampler, cache_bytes=2 * size) for seed in range(3)]
    first = [m.project(x) for m in matrices]
    assert CACHE.nbytes == 2 * size  # the third evicted the first
    again = [m.project(x) for m in matrices]  # the first drawn again (evicting the second), and so on
    assert CACHE.nbytes <= 2 * size
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], first[1])
    del matrices  # the matrices go with the projectors that drew them
    assert CACHE.nbytes == 0
