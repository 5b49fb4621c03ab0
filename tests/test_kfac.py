"""K-FAC and EK-FAC (attrkit.functional.kfac_factors, .ihvp_kfac) against brute-force curvature in float64."""

import pytest
import torch
from torch import nn

from attrkit.errors import DataLoaderError
from attrkit.functional.gradients import per_example_gradients, select_parameters
from attrkit.functional import ekfac_ihvp_at, kfac_ihvp_at
from attrkit.functional.ihvp_kfac import ekfac_solve, kfac_solve
from attrkit.functional.kfac_factors import fit_ekfac, fit_kfac
from test_structured_products import Block

TOL = {"rtol": 1e-9, "atol": 1e-10}


def _ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def _ce_seq(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x).mean(1), y, reduction="none")


def _squared(model, batch):
    x, y = batch
    return 0.5 * (model(x) - y).square().sum(1)


def _state(model):
    return {**{n: p.detach() for n, p in model.named_parameters()}, **dict(model.named_buffers())}


def _batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _mlp(seed=0):
    """Linear (factored) -> tanh -> LayerNorm (fallback) -> Linear without bias (factored)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.LayerNorm(5), nn.Linear(5, 3, bias=False)).double()


def _conv():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).double()


def _seq():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def _block():
    """Embedding, LayerNorm and self-attention fall back (their weights are not used through a
    factored module call); the position-wise MLP is factored at 5 positions, the head at one."""
    torch.manual_seed(0)
    return Block().double()


def _data(n, *shape, classes=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=gen, dtype=torch.float64), torch.randint(0, classes, (n,), generator=gen)


def _tokens(n, length, classes=3, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 11, (n, length), generator=gen), torch.randint(0, classes, (n,), generator=gen)


CASES = {  # name: (model, loss, inputs [n, ...], data)
    "mlp": (_mlp, _ce, (4,), _data),
    "conv2d": (_conv, _ce, (1, 4, 4), _data),
    "sequence": (_seq, _ce_seq, (5, 3), _data),
    "transformer-block": (_block, _ce, (5,), _tokens),
}


def _case(name, n=12):
    build, loss, shape, data = CASES[name]
    model = build()
    x, y = data(n, *shape)
    return model, loss, _state(model), select_parameters(model, ["*"]), x, y


def _fisher(model, loss, state, names, x, y):
    grads = per_example_gradients(model, loss, state, (x, y), names)
    return grads.T @ grads / len(x)


def _extended(factors, layer):
    """Parameter coordinates of the layer's extended gradient ``[d_out, d_in + 1]``, row-major."""
    starts, offset = {}, 0
    for name in factors.names:
        starts[name], offset = offset, offset + factors.sizes[name]
    d_out, d_in = layer.output_basis.shape[0], layer.input_basis.shape[0] - (layer.bias is not None)
    rows = torch.arange(d_out)[:, None]
    parts = [starts[layer.weight] + rows * d_in + torch.arange(d_in)] if layer.weight else []
    parts += [starts[layer.bias] + rows] if layer.bias else []
    return torch.cat(parts, 1).reshape(-1)


def _dense(factors, blocks):
    """The block-diagonal approximate curvature ``[p, p]`` with the given per-layer blocks."""
    p = sum(factors.sizes.values())
    out = torch.zeros(p, p, dtype=torch.float64)
    for layer, block in zip(factors.layers, blocks):
        idx = _extended(factors, layer)
        out[idx[:, None], idx] = block
    fallback = torch.cat([torch.arange(p)[_slice(factors, n)] for n in factors.fallback]) if factors.fallback else []
    out[fallback, fallback] = factors.fallback_diagonal
    return out


def _slice(factors, name):
    start = sum(factors.sizes[n] for n in factors.names[: factors.names.index(name)])
    return slice(start, start + factors.sizes[name])


def _kfac_blocks(factors):
    return [torch.kron(x.output_covariance, x.input_covariance) for x in factors.layers]


def _ekfac_blocks(ekfac):
    blocks = []
    for layer, values in zip(ekfac.kfac.layers, ekfac.eigenvalues):
        q = torch.kron(layer.output_basis, layer.input_basis)
        blocks.append(q @ torch.diag(values.reshape(-1)) @ q.T)
    return blocks


def _positions(module, x, out):
    """Brute-force ``(ā, g)``: ``[n, T, d_in (+1)]`` inputs and ``[n, T, d_out]`` output gradients."""
    if isinstance(module, nn.Conv2d):
        a = nn.functional.unfold(x, module.kernel_size, padding=module.padding).transpose(1, 2)
        g = out.grad.flatten(2).transpose(1, 2)
    else:
        a, g = x.reshape(len(x), -1, x.shape[-1]), out.grad.reshape(len(x), -1, out.shape[-1])
    if module.bias is not None:
        a = torch.cat([a, torch.ones_like(a[..., :1])], -1)
    return a, g


def _recorder(seen, name):
    def record(module, args, out):
        out.retain_grad()
        seen[name] = (args[0].detach(), out)

    return record


@pytest.mark.parametrize("name", sorted(CASES))
def test_factors_are_their_brute_force_definitions(name):
    """A = mean over examples and positions of ā āᵀ; G = mean over examples of Σ_t g gᵀ."""
    model, loss, state, names, x, y = _case(name)
    factors = fit_kfac(model, loss, state, names, _batches(x, y, 5))
    seen = {}
    modules = {layer.module: model.get_submodule(layer.module) for layer in factors.layers}
    hooks = [mod.register_forward_hook(_recorder(seen, m)) for m, mod in modules.items()]
    loss(model, (x, y)).sum().backward()  # examples are independent: summed-loss gradients are per-example
    for hook in hooks:
        hook.remove()
    for layer in factors.layers:
        a, g = _positions(modules[layer.module], *seen[layer.module])
        a, g = a.flatten(0, 1), g.flatten(0, 1)
        torch.testing.assert_close(layer.input_covariance, a.T @ a / a.shape[0], **TOL)
        torch.testing.assert_close(layer.output_covariance, g.T @ g / len(x), **TOL)
    assert factors.n_examples == len(x)
    if factors.fallback:
        grads = per_example_gradients(model, loss, state, (x, y), factors.fallback)
        torch.testing.assert_close(factors.fallback_diagonal, grads.square().mean(0), **TOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_corrected_eigenvalues_are_the_fisher_diagonal_in_the_kronecker_basis(name):
    """Λ = diag((Q_G ⊗ Q_A)ᵀ F_l (Q_G ⊗ Q_A)), F_l the exact empirical Fisher block."""
    model, loss, state, names, x, y = _case(name)
    ekfac = fit_ekfac(model, loss, state, names, _batches(x, y, 5))
    fisher = _fisher(model, loss, state, names, x, y)
    for layer, values in zip(ekfac.kfac.layers, ekfac.eigenvalues):
        idx = _extended(ekfac.kfac, layer)
        q = torch.kron(layer.output_basis, layer.input_basis)
        torch.testing.assert_close(values.reshape(-1), torch.diag(q.T @ fisher[idx[:, None], idx] @ q), **TOL)


@pytest.mark.parametrize("name", sorted(CASES))
def test_solves_invert_the_damped_approximate_curvature(name):
    """kfac_solve / ekfac_solve == torch.linalg.solve(F_approx + λI, v), fallback diagonal included;
    the approximate curvatures are symmetric PSD (Conv2d and [b, T, d] sequences included)."""
    model, loss, state, names, x, y = _case(name)
    ekfac = fit_ekfac(model, loss, state, names, _batches(x, y, 5))
    kfac, lam = ekfac.kfac, 0.05
    v = torch.randn(4, sum(kfac.sizes.values()), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for dense, got in ((_dense(kfac, _kfac_blocks(kfac)), kfac_solve(kfac, v, lam)),
                       (_dense(kfac, _ekfac_blocks(ekfac)), ekfac_solve(ekfac, v, lam))):
        torch.testing.assert_close(dense, dense.T, **TOL)
        assert torch.linalg.eigvalsh(dense).min() > -1e-10
        eye = torch.eye(len(dense), dtype=torch.float64)
        torch.testing.assert_close(got, torch.linalg.solve(dense + lam * eye, v.T).T, **TOL)
    for layer in kfac.layers:
        for cov in (layer.input_covariance, layer.output_covariance):
            torch.testing.assert_close(cov, cov.T, **TOL)


def test_ekfac_is_at_least_as_close_to_the_fisher_as_kfac():
    """EK-FAC's diagonal is the Frobenius-optimal one in K-FAC's eigenbasis (random MLP)."""
    model, loss, state, names, x, y = _case("mlp", n=16)
    ekfac = fit_ekfac(model, loss, state, names, _batches(x, y, 16))
    fisher = _fisher(model, loss, state, names, x, y)
    for layer, kfac_block, ekfac_block in zip(ekfac.kfac.layers, _kfac_blocks(ekfac.kfac), _ekfac_blocks(ekfac)):
        idx = _extended(ekfac.kfac, layer)
        exact = fisher[idx[:, None], idx]
        assert torch.linalg.norm(exact - ekfac_block) < torch.linalg.norm(exact - kfac_block)


def _exact_solve(model, loss, state, names, x, y, v, lam):
    fisher = _fisher(model, loss, state, names, x, y)
    return torch.linalg.solve(fisher + lam * torch.eye(len(fisher), dtype=torch.float64), v.T).T


def test_exact_on_one_sample_per_class_sharing_one_input():
    """One Linear layer (with bias), one example per class, all with the same input ā: then
    F = (1/n) Σ_i (g_i g_iᵀ) ⊗ (ā āᵀ) = G ⊗ A exactly, and K-FAC and EK-FAC equal the explicit
    damped empirical Fisher inverse."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x = torch.randn(1, 4, dtype=torch.float64).expand(3, 4)
    y = torch.arange(3)
    state, names = _state(model), select_parameters(model, ["*"])
    v = torch.randn(5, 15, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = _exact_solve(model, _ce, state, names, x, y, v, 0.01)
    ekfac = fit_ekfac(model, _ce, state, names, _batches(x, y, 2))
    torch.testing.assert_close(ekfac_solve(ekfac, v, 0.01), expected, **TOL)
    torch.testing.assert_close(kfac_solve(ekfac.kfac, v, 0.01), expected, **TOL)


def test_ekfac_exact_where_kfac_is_not():
    """Squared error of a zero-weight Linear (no bias) on axis-aligned data: example i's gradient
    is -y_i x_iᵀ with a single non-zero entry, so F is diagonal, as are A and G (with distinct
    eigenvalues): the Kronecker eigenbasis is the standard one and diagonalises F. EK-FAC is the
    explicit damped Fisher inverse; K-FAC (products of marginals) is not."""
    model = nn.Linear(3, 2, bias=False).double()
    nn.init.zeros_(model.weight)
    eye2, eye3 = torch.eye(2, dtype=torch.float64), torch.eye(3, dtype=torch.float64)
    x = torch.stack([1.0 * eye3[0], 3.0 * eye3[1], 0.5 * eye3[2]])
    y = torch.stack([2.0 * eye2[0], 1.0 * eye2[1], 1.5 * eye2[0]])
    state, names = _state(model), ["weight"]
    v = torch.randn(4, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = _exact_solve(model, _squared, state, names, x, y, v, 0.1)
    ekfac = fit_ekfac(model, _squared, state, names, _batches(x, y, 1))
    torch.testing.assert_close(ekfac_solve(ekfac, v, 0.1), expected, **TOL)
    assert (kfac_solve(ekfac.kfac, v, 0.1) - expected).abs().max() > 0.1


def test_independent_of_batch_size():
    model, loss, state, names, x, y = _case("mlp", n=20)
    v = torch.randn(3, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    results = []
    for size in (3, 7, 20):
        ekfac = fit_ekfac(model, loss, state, names, _batches(x, y, size))
        results.append((kfac_solve(ekfac.kfac, v, 0.1), ekfac_solve(ekfac, v, 0.1)))
    for other in results[1:]:
        for got, expected in zip(other, results[0]):
            torch.testing.assert_close(got, expected, **TOL)


def test_selected_parameters_and_dtype_round_trip():
    """A bias without its weight is a layer with d_in = 0; float32 vectors come back float32."""
    model, loss, state, names, x, y = _case("mlp")
    names = ["0.bias", "2.weight", "3.weight"]
    ekfac = fit_ekfac(model, loss, state, names, _batches(x, y, 5))
    assert [(layer.weight, layer.bias) for layer in ekfac.kfac.layers] == [(None, "0.bias"), ("3.weight", None)]
    fisher = _fisher(model, loss, state, names, x, y)
    v = torch.randn(2, len(fisher), dtype=torch.float32)
    got = ekfac_solve(ekfac, v, 0.1)
    assert got.dtype == torch.float32
    dense = _dense(ekfac.kfac, _ekfac_blocks(ekfac))
    expected = torch.linalg.solve(dense + 0.1 * torch.eye(len(dense), dtype=torch.float64), v.double().T).T
    torch.testing.assert_close(got, expected.float(), rtol=1e-4, atol=1e-5)


def test_errors_name_the_problem():
    model, loss, state, names, x, y = _case("mlp")
    kfac = fit_kfac(model, loss, state, names, _batches(x, y, 5))
    p = sum(kfac.sizes.values())
    with pytest.raises(ValueError, match=rf"Tensor\[m, {p}\]"):
        kfac_solve(kfac, torch.zeros(p), 0.1)
    with pytest.raises(ValueError, match="regularization must be >= 0"):
        kfac_solve(kfac, torch.zeros(1, p), -1.0)
    linear = nn.Linear(3, 2, bias=False).double()  # inputs never use the last coordinate: A is singular
    x3 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    singular = fit_kfac(linear, _squared, _state(linear), ["weight"], [(x3, torch.ones(2, 2, dtype=torch.float64))])
    with pytest.raises(ValueError, match="regularization=0 but the curvature of layer '<root>' is singular"):
        kfac_solve(singular, torch.zeros(1, 6), 0.0)
    with pytest.raises(DataLoaderError, match="empty"):
        fit_kfac(model, loss, state, names, [])


@pytest.mark.parametrize(("build", "fit", "solve", "passes"),
                         [(kfac_ihvp_at, fit_kfac, kfac_solve, 1), (ekfac_ihvp_at, fit_ekfac, ekfac_solve, 1)])
def test_the_public_builders_run_the_fit_and_the_solve(build, fit, solve, passes):
    """``kfac_ihvp_at`` / ``ekfac_ihvp_at``: the helpers' results bit for bit, with their costs recorded
    (one row alone to round-off: BLAS may pick another kernel for another block height)."""
    model, loss, state, names, x, y = _case("mlp")
    inverse = build(model, loss, state, names, _batches(x, y, 5), regularization=0.1)
    v = torch.randn(3, inverse.p, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = solve(fit(model, loss, state, names, _batches(x, y, 5)), v, 0.1)
    torch.testing.assert_close(inverse(v), expected, rtol=0, atol=0)
    torch.testing.assert_close(inverse.solve(v[:1]), expected[:1], rtol=1e-12, atol=1e-14)
    assert inverse.p == sum(p.numel() for p in model.parameters())
    assert (inverse.stats.build.passes, inverse.stats.build.example_hvps) == (passes, 0)
    assert (inverse.stats.solves, inverse.stats.solve.passes) == (2, 0)
    with pytest.raises(ValueError, match="regularization .* >= 0"):
        build(model, loss, state, names, _batches(x, y, 5), regularization=-1.0)
    with pytest.raises(ValueError, match=r"v\[None\]"):
        inverse(v[0])
    with pytest.raises(DataLoaderError, match="empty"):
        build(model, loss, state, names, [])


def _passes(build, model, loss, state, names, x, y):
    return build(model, loss, state, names, _batches(x, y, 5), regularization=0.1).stats.build.passes


@pytest.mark.parametrize("name", sorted(CASES))
def test_ekfac_corrects_from_the_kept_factors_bit_for_bit_as_a_second_pass_would(name, monkeypatch):
    """One-position layers only (an MLP): the K-FAC pass keeps ``ā`` and ``g`` and EK-FAC takes one
    pass; with no memory for them (or a layer with positions) it takes the second pass, and the
    eigenvalues are the same bits either way."""
    model, loss, state, names, x, y = _case(name)
    kept = fit_ekfac(model, loss, state, names, _batches(x, y, 5))
    one_position = _passes(ekfac_ihvp_at, model, loss, state, names, x, y) == 1
    assert one_position == (name == "mlp")
    monkeypatch.setattr("attrkit.functional.kfac_factors.available_bytes", lambda device: 0)
    assert _passes(ekfac_ihvp_at, model, loss, state, names, x, y) == 2
    second = fit_ekfac(model, loss, state, names, _batches(x, y, 5))
    for a, b in zip(kept.eigenvalues, second.eigenvalues, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["mlp", "conv2d", "sequence"])
def test_float32_vectors_are_solved_in_float32_to_its_round_off(name):
    # the factors stay float64; a float32 block is rotated in float32, in blocks of vectors
    model, loss, state, names, x, y = _case(name, n=40)
    ekfac = fit_ekfac(model, loss, state, names, _batches(x, y, 7))
    vectors = per_example_gradients(model, loss, state, (x, y), names)
    exact = ekfac_solve(ekfac, vectors, 1e-3)
    single = ekfac_solve(ekfac, vectors.float(), 1e-3)
    assert single.dtype == torch.float32
    assert float((single.double() - exact).norm() / exact.norm()) < 1e-5


@pytest.mark.parametrize("solve", [kfac_solve, ekfac_solve])
def test_rank_one_blocks_are_solved_from_their_factors(solve):
    """Vectors whose factored layers' blocks are g āᵀ, given as ``rank_one`` factors, solve as the dense
    blocks do (float64 round-off; float32 to its round-off); factors that do not fit a layer (another bias
    offset, another width) are ignored, bit for bit."""
    model, loss, state, names, x, y = _case("mlp", n=20)
    ekfac = fit_ekfac(model, loss, state, names, _batches(x, y, 7))
    factors = ekfac.kfac if solve is kfac_solve else ekfac
    kfac = ekfac.kfac
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(6, sum(kfac.sizes.values()), generator=gen, dtype=torch.float64)
    starts = {n: sum(kfac.sizes[m] for m in kfac.names[: kfac.names.index(n)]) for n in kfac.names}
    hints = {}
    for layer in kfac.layers:  # overwrite each factored layer's block with a rank-one one
        d_out, d_in = layer.output_basis.shape[0], layer.input_basis.shape[0]
        a, g = torch.randn(6, d_in, generator=gen, dtype=torch.float64), torch.randn(6, d_out, generator=gen,
                                                                                      dtype=torch.float64)
        d_raw = d_in - (layer.bias is not None)
        if layer.bias is not None:
            a[:, -1] = 1.0
            v[:, starts[layer.bias] : starts[layer.bias] + d_out] = g
        v[:, starts[layer.weight] : starts[layer.weight] + d_out * d_raw] = (g[:, :, None] * a[:, None, :d_raw]).flatten(1)
        hints[starts[layer.weight]] = (starts[layer.bias] if layer.bias is not None else None, a, g)
    assert len(hints) == 2  # both Linear layers (one with a bias, one without)
    dense = solve(factors, v, 0.05)
    torch.testing.assert_close(solve(factors, v, 0.05, rank_one=hints), dense, **TOL)
    single = solve(factors, v.float(), 0.05, rank_one={k: (b, a.float(), g.float()) for k, (b, a, g) in hints.items()})
    assert float((single.double() - dense).norm() / dense.norm()) < 1e-5
    wrong = {k: (None if b is not None else 0, a, g) for k, (b, a, g) in hints.items()}
    narrow = {k: (b, a[:, 1:], g) for k, (b, a, g) in hints.items()}
    for ignored in (wrong, narrow):
        assert torch.equal(solve(factors, v, 0.05, rank_one=ignored), dense)
