"""DataInf (attrkit.functional.datainf) against its explicit per-layer target in float64."""

import pytest
import torch
from torch import nn

from attrkit.errors import DataLoaderError
from attrkit.functional.datainf import datainf_ihvp_at
from attrkit.functional.gradients import per_example_gradients, select_parameters

TOL = {"rtol": 1e-6, "atol": 1e-6}


def _ce(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y, reduction="none")


def _problem(n=10):
    """Linear -> tanh -> LayerNorm -> Linear: three layers (the LayerNorm's weight and bias are one)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.LayerNorm(5), nn.Linear(5, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (n,), generator=gen)
    state = {**{k: p.detach() for k, p in model.named_parameters()}, **dict(model.named_buffers())}
    return model, state, select_parameters(model, ["*"]), x, y


def _batches(x, y, size):
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _brute_force(model, state, names, x, y, v, regularization=None):
    """(1/n) Σ_i (λ_l I + g_i g_iᵀ)⁻¹ v_l per module, each term by torch.linalg.solve;
    default λ_l = 0.1 · mean over examples and entries of g_l² (the paper's code)."""
    grads = per_example_gradients(model, _ce, state, (x, y), names)
    sizes = [state[n].numel() for n in names]
    cols = dict(zip(names, torch.arange(sum(sizes)).split(sizes)))
    out, damping = torch.empty_like(v), []
    for module in ("0", "2", "3"):
        idx = torch.cat([cols[f"{module}.weight"], cols[f"{module}.bias"]])
        g = grads[:, idx]
        lam = 0.1 * g.square().mean() if regularization is None else torch.tensor(regularization, dtype=torch.float64)
        damping.append(lam)
        eye = torch.eye(len(idx), dtype=torch.float64)
        terms = [torch.linalg.solve(lam * eye + torch.outer(gi, gi), v[:, idx].T).T for gi in g]
        out[:, idx] = torch.stack(terms).mean(0)
    return out, torch.stack(damping)


def _vectors(m=4, p=53, seed=2):
    return torch.randn(m, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("regularization", [None, 0.05])
def test_equals_the_explicit_per_layer_formula(regularization):
    model, state, names, x, y = _problem()
    v = _vectors()
    solve = datainf_ihvp_at(model, _ce, state, names, _batches(x, y, 4), regularization=regularization)
    expected, damping = _brute_force(model, state, names, x, y, v, regularization)
    assert solve.layers == (("0.weight", "0.bias"), ("2.weight", "2.bias"), ("3.weight", "3.bias"))
    torch.testing.assert_close(solve.damping, damping.double(), rtol=1e-10, atol=0)
    torch.testing.assert_close(solve(v), expected, **TOL)


def test_independent_of_batch_size():
    model, state, names, x, y = _problem()
    v = _vectors()
    small = datainf_ihvp_at(model, _ce, state, names, _batches(x, y, 3))
    whole = datainf_ihvp_at(model, _ce, state, names, _batches(x, y, 10))
    torch.testing.assert_close(small.damping, whole.damping, rtol=1e-12, atol=0)
    torch.testing.assert_close(small(v), whole(v), rtol=1e-10, atol=1e-12)


def test_block_equals_one_by_one_and_keeps_dtype():
    model, state, names, x, y = _problem()
    v = _vectors()
    solve = datainf_ihvp_at(model, _ce, state, names, _batches(x, y, 4))
    block = solve(v)
    torch.testing.assert_close(block, torch.cat([solve(row[None]) for row in v]), rtol=1e-10, atol=1e-12)
    got = solve(v.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, block.float(), rtol=1e-4, atol=1e-5)


def test_selected_parameters_form_their_own_layers():
    """Only the selected parameters count: a module's bias alone is a layer."""
    model, state, _, x, y = _problem()
    names = ["0.bias", "3.weight", "3.bias"]
    solve = datainf_ihvp_at(model, _ce, state, names, _batches(x, y, 4), regularization=0.1)
    assert solve.layers == (("0.bias",), ("3.weight", "3.bias"))
    v = _vectors(p=5 + 18)
    grads = per_example_gradients(model, _ce, state, (x, y), names)
    expected = torch.empty_like(v)
    for idx in (torch.arange(5), torch.arange(5, 23)):
        eye = torch.eye(len(idx), dtype=torch.float64)
        terms = [torch.linalg.solve(0.1 * eye + torch.outer(g, g), v[:, idx].T).T for g in grads[:, idx]]
        expected[:, idx] = torch.stack(terms).mean(0)
    torch.testing.assert_close(solve(v), expected, **TOL)


def test_names_out_of_module_order_are_gathered_into_their_layers():
    """A layer whose parameters are not adjacent in ``names`` is gathered from its columns and scattered back:
    the same solve as with the names in module order, its columns permuted alike."""
    model, state, names, x, y = _problem()
    shuffled = ["0.weight", "3.weight", "2.weight", "0.bias", "3.bias", "2.bias"]
    sizes = {n: state[n].numel() for n in names}
    starts = dict(zip(names, torch.tensor([0, *sizes.values()]).cumsum(0).tolist()))
    permutation = torch.cat([torch.arange(starts[n], starts[n] + sizes[n]) for n in shuffled])
    v = _vectors()
    ordered = datainf_ihvp_at(model, _ce, state, names, _batches(x, y, 4), regularization=0.05)
    gathered = datainf_ihvp_at(model, _ce, state, shuffled, _batches(x, y, 4), regularization=0.05)
    assert gathered.layers == (("0.weight", "0.bias"), ("3.weight", "3.bias"), ("2.weight", "2.bias"))
    torch.testing.assert_close(gathered(v[:, permutation]), ordered(v)[:, permutation], rtol=1e-10, atol=1e-12)


def test_errors_name_the_problem():
    model, state, names, x, y = _problem()
    with pytest.raises(ValueError, match="regularization must be > 0"):
        datainf_ihvp_at(model, _ce, state, names, _batches(x, y, 4), regularization=0.0)
    with pytest.raises(DataLoaderError, match="empty"):
        datainf_ihvp_at(model, _ce, state, names, [])
    solve = datainf_ihvp_at(model, _ce, state, names, _batches(x, y, 4))
    with pytest.raises(ValueError, match=r"Tensor\[m, 53\]"):
        solve(torch.zeros(53))
    unused = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 3)).double()  # the loss never calls the second layer
    state = {k: p.detach() for k, p in unused.named_parameters()}
    with pytest.raises(ValueError, match=r"default damping is 0 for layer\(s\) \['1.bias'\]"):
        datainf_ihvp_at(unused, lambda m, b: m[0](b[0]).sum(1), state, ["0.weight", "1.bias"], _batches(x, y, 4))
