"""The cached structured curvature operator (attrkit.functional.structured_matvec) against dataset HVPs,
alone and inside CG, Arnoldi and LiSSA."""

import pytest
import torch

import attrkit
import attrkit.functional.structured_factors as structured_factors
import attrkit.functional.structured_matvec as structured_matvec
from attrkit.errors import ArgumentError, CurvatureError
from attrkit.functional import arnoldi_ihvp_at, cg_ihvp_at, explicit_ihvp_at, lissa_ihvp_at, select_parameters
from attrkit.functional.ihvp import prepare_at
from attrkit.functional.structured_matvec import MIN_DIM, curvature_matvec
from attrkit.targets import cross_entropy
from attrkit.testing import toy_problem
from test_structured_products import Block
from thread_ranks import structure_broken_on_rank_1, threaded

pytestmark = pytest.mark.usefixtures("one_thread")

LAM = 0.1


def _data(n=64, dim=20, classes=3):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, dim, generator=gen), torch.randint(0, classes, (n,), generator=gen)
    return [(x[i : i + 16], y[i : i + 16]) for i in range(0, n, 16)]


def _logistic(dim=20, bias=True):
    torch.manual_seed(0)
    return torch.nn.Linear(dim, 3, bias=bias)


def _mlp(bias=True):
    torch.manual_seed(0)  # p = 20·16 + 16 + 16·3 + 3 = 387 > MIN_DIM with biases
    return torch.nn.Sequential(torch.nn.Linear(20, 16, bias=bias), torch.nn.ReLU(), torch.nn.Linear(16, 3, bias=bias))


def _head(bias=True):
    """A fixed linear head after the selected layer: outputs affine in ``0.*`` but ``B_i = W_head``, not ``I``."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 8, bias=bias), torch.nn.Linear(8, 3, bias=bias))


def _probed_passes(make, patterns, curvature):
    """Passes of the collection and, for a Hessian whose ``B_i`` are not all the identity, the whole-set probe's ``H v``."""
    return 1 + (curvature == "hessian" and make is _head)


def _products(model, curvature, choice, patterns=("*",), data=None):
    """``(matvec, info, meter, p)`` of ``curvature_matvec`` on the shared data."""
    names = select_parameters(model, patterns)
    state = dict(model.state_dict())
    meter, p = prepare_at(state, names, data or _data(), LAM, curvature)
    matvec, info = curvature_matvec(meter, model, cross_entropy, state, names, curvature, choice, "test")
    return matvec, info, meter, p


def _relative(a, b):
    return float((a - b).norm() / b.norm())


def _vectors(p, m=5, dtype=torch.float32):
    return torch.randn(m, p, generator=torch.Generator().manual_seed(1), dtype=dtype)


_CASES = [
    ("logistic gauss-newton", _logistic, ("*",), "gauss-newton"),
    ("logistic hessian", _logistic, ("*",), "hessian"),
    ("logistic weight", _logistic, ("weight",), "hessian"),
    ("logistic bias", _logistic, ("bias",), "gauss-newton"),
    ("logistic no bias", lambda: _logistic(bias=False), ("*",), "hessian"),
    ("mlp", _mlp, ("*",), "gauss-newton"),
    ("mlp no bias", lambda: _mlp(bias=False), ("*",), "gauss-newton"),
    ("mlp some", _mlp, ("0.weight", "2.*"), "gauss-newton"),
    ("fixed head hessian", _head, ("0.*",), "hessian"),
]


@pytest.mark.parametrize(("make", "patterns", "curvature"), [c[1:] for c in _CASES], ids=[c[0] for c in _CASES])
def test_structured_products_equal_the_hvp_products(make, patterns, curvature):
    structured, info, meter, p = _products(make(), curvature, "structured", patterns)
    hvp, _, _, _ = _products(make(), curvature, "hvp", patterns)
    assert info["structured"] == 1.0
    assert meter.passes == _probed_passes(make, patterns, curvature)  # the collection (and the probe's H v)
    assert info.get("outputs_affine") == (1.0 if curvature == "hessian" and make is not _head else None)
    for dtype in (torch.float32, torch.float64):  # CG's float32 blocks, Lanczos's float64 vectors
        vectors = _vectors(p, dtype=dtype)
        got, expected = structured(vectors), hvp(vectors)
        assert got.dtype == dtype and got.shape == vectors.shape
        assert _relative(got, expected) < 2e-6  # float32 round-off of both
        assert _relative(structured(vectors[0]), expected[0]) < 2e-6  # one vector, Tensor[p]
    assert meter.passes == _probed_passes(make, patterns, curvature)  # the products read no batch


def test_products_chunked_over_examples_equal_the_whole(monkeypatch):
    structured, _, _, p = _products(_mlp(), "gauss-newton", "structured")
    vectors = _vectors(p)
    whole = structured(vectors)
    monkeypatch.setattr(structured_matvec, "_CHUNK", 5 * 16 * 7)  # chunks of 7 examples for 5 vectors, d_out <= 16
    assert _relative(structured(vectors), whole) < 1e-6


def test_float64_parameters_give_float64_products():
    model = _logistic().double()
    data = [(x.double(), y) for x, y in _data()]
    structured, _, _, p = _products(model, "hessian", "structured", data=data)
    hvp, _, _, _ = _products(model, "hessian", "hvp", data=data)
    vectors = _vectors(p, dtype=torch.float64)
    assert _relative(structured(vectors), hvp(vectors)) < 1e-13


def test_one_batched_backward_gives_every_output_row_and_the_loop_is_the_fallback(monkeypatch):
    factored = []
    real = structured_factors.factored_gradients
    monkeypatch.setattr(structured_factors, "factored_gradients", lambda *a: factored.append(1) or real(*a))
    batched, _, _, p = _products(_mlp(), "gauss-newton", "structured")
    assert len(factored) == len(_data())  # output 0 alone, checked; the other rows from one batched backward
    monkeypatch.setattr(structured_factors, "hooked_output_jacobians", lambda *a: None)
    looped, _, _, _ = _products(_mlp(), "gauss-newton", "structured")
    assert len(factored) == len(_data()) * (1 + 3)  # one pass per output, C = 3
    vectors = _vectors(p)
    assert _relative(batched(vectors), looped(vectors)) < 1e-6


def test_only_identity_jacobians_skip_their_products():
    eye = torch.eye(3).expand(4, 3, 3)
    assert structured_factors.is_identity(eye.clone())
    assert not structured_factors.is_identity(torch.cat([eye[:3], 2 * eye[3:]]))  # one example's B differs
    assert not structured_factors.is_identity(torch.eye(3, 4).expand(4, 3, 4))  # C != d_out
    assert not structured_factors.is_identity(torch.empty(0))  # a rank without examples


def test_a_hessian_that_differs_from_gauss_newton_after_the_first_batch_is_caught_by_the_whole_set_probe():
    """A fixed head that is nonlinear only beyond the first batch's inputs: the first batch's probe passes, the
    whole set's refuses (its ``B_i`` are not the identity, so the whole set is probed)."""

    class Bent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(20, 3)

        def forward(self, x):
            z = self.layer(x)
            bent = x[:, :1].abs() > 10  # only the later batches' examples, scaled below
            return torch.where(bent, z + 0.1 * z**3, z)

    data = _data()
    data = data[:1] + [(20 * x, y) for x, y in data[1:]]
    with pytest.raises(CurvatureError, match=r"the Hessian is not the Gauss-Newton matrix.*the whole training set"):
        _products(Bent(), "hessian", "structured", data=data)


def test_mlp_hessian_falls_back_under_auto_and_is_refused_when_forced():
    auto, info, _, p = _products(_mlp(), "hessian", "auto")  # p = 387 > MIN_DIM: tried, the probe says H != G
    hvp, _, _, _ = _products(_mlp(), "hessian", "hvp")
    assert p > MIN_DIM and info["structured"] == 0.0 and info["hessian_probe"] > 1e-2
    vectors = _vectors(p)
    assert torch.equal(auto(vectors), hvp(vectors))
    with pytest.raises(CurvatureError, match=r"test solver: matvec='structured' cannot be used: the Hessian is not the "
                                             r"Gauss-Newton matrix.*Use matvec='hvp'"):
        _products(_mlp(), "hessian", "structured")


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(72, 3))


def _positions_case(kind):
    """``(model, data)``: a CNN on 6×6 images or a transformer block on 5 tokens, 32 examples."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (32,), generator=gen)
    torch.manual_seed(0)
    model, x = (_cnn(), torch.randn(32, 1, 6, 6, generator=gen)) if kind == "cnn" else \
        (Block(), torch.randint(0, 11, (32, 5), generator=gen))
    return model, [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]


@pytest.mark.parametrize("kind", ["cnn", "transformer-block"])
def test_layers_at_several_positions_take_hvps_under_auto_and_refuse_the_structure(kind):
    """A convolution's patches and a sequence's tokens are several positions per example: CG / Arnoldi
    products and the explicit build take HVPs under "auto" (bit for bit the "hvp" path) and a forced
    structure is refused, naming the layer. The block's attention runs in eval mode, where
    ``nn.MultiheadAttention`` would take a fused kernel without forward-mode derivatives."""
    model, data = _positions_case(kind)
    for curvature in ("gauss-newton", "hessian"):
        auto, info, _, p = _products(model, curvature, "auto", data=data)
        hvp, _, _, _ = _products(model, curvature, "hvp", data=data)
        vectors = _vectors(p)
        assert info["structured"] == 0.0 and torch.equal(auto(vectors), hvp(vectors))
    linear = ("0.*", "3.*") if kind == "cnn" else ("up.*", "down.*", "head.*")  # the factored layers only
    with pytest.raises(CurvatureError, match=r"matvec='structured' cannot be used: layer '(0|up)' is applied at "
                                             r"(36|5) positions per example"):
        _products(model, "gauss-newton", "structured", linear, data=data)
    names, state = select_parameters(model, linear), dict(model.state_dict())
    builds = [explicit_ihvp_at(model, cross_entropy, state, names, data, regularization=LAM, curvature="gauss-newton",
                               chunk_size=8, build=b) for b in ("auto", "hvp")]
    assert builds[0].stats.info["structured"] == 0.0
    assert torch.equal(builds[0].state["factor"], builds[1].state["factor"])
    with pytest.raises(CurvatureError, match=r"build='structured' cannot be used: layer '(0|up)' is applied at "
                                             r"(36|5) positions per example"):
        explicit_ihvp_at(model, cross_entropy, state, names, data, regularization=LAM, curvature="gauss-newton",
                         build="structured")


def test_auto_is_structured_above_min_dim_only():
    assert _products(_logistic(), "hessian", "auto")[1]["structured"] == 0.0  # p = 63
    wide = _data(dim=100)
    _, info, meter, p = _products(_logistic(dim=100), "hessian", "auto", data=wide)  # p = 303
    assert p > MIN_DIM and info["structured"] == 1.0 and meter.passes == 1  # outputs affine: the first batch probed


def test_parameters_outside_factored_layers_are_refused():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 6), torch.nn.LayerNorm(6), torch.nn.Linear(6, 3))
    with pytest.raises(CurvatureError, match=r"cannot be used: the selected parameters 1.weight, 1.bias are not in a "
                                             r"factored layer"):
        _products(model, "gauss-newton", "structured")
    assert _products(model, "gauss-newton", "structured", ("0.*", "2.*"))[1]["structured"] == 1.0


def test_more_outputs_than_parameters_are_refused_before_any_backward_pass(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 2), torch.nn.Linear(2, 3))
    hessians = []
    monkeypatch.setattr(structured_factors, "_output_hessians", lambda *args: hessians.append(args))
    with pytest.raises(CurvatureError, match=r"more outputs per example \(C = 3\) than there are selected parameters "
                                             r"\(p = 2\)"):
        _products(model, "gauss-newton", "structured", ("0.bias",))
    assert not hessians


def test_unknown_matvec_is_refused():
    with pytest.raises(ArgumentError, match=r"matvec must be one of 'auto', 'hvp', 'structured', got 'fast'"):
        _products(_logistic(), "hessian", "fast")
    toy = toy_problem(n_train=8)
    for solver in ("cg", "arnoldi"):
        with pytest.raises(attrkit.SpecError, match=r"solver.matvec: 'matvec' must be in \('auto', 'hvp', "
                                                    r"'structured'\)"):
            attrkit.compose({"method": "if", "solver": {"name": solver, "matvec": "fast"}}, toy.task)


def test_factors_over_the_memory_budget_fall_back(monkeypatch):
    monkeypatch.setattr(structured_matvec, "available_bytes", lambda device: 36_000)  # a budget of 9 kB
    with pytest.raises(CurvatureError, match=r"the per-example factors of the first 64 examples take 9.75 KiB, more "
                                             r"than the structured operator's budget of 8.79 KiB \(25% of the 35.2 "
                                             r"KiB available on cpu\)"):
        _products(_logistic(), "gauss-newton", "structured")  # 64 × (21 + 3·3 + 3²) float32 = 9984 B
    wide = _data(dim=100)
    assert _products(_logistic(dim=100), "gauss-newton", "auto", data=wide)[1]["structured"] == 0.0


@pytest.mark.parametrize(("make", "curvature"), [(_logistic, "hessian"), (_mlp, "gauss-newton")],
                         ids=["logistic-hessian", "mlp-gauss-newton"])
def test_cg_solves_alike_on_both_paths_with_one_pass(make, curvature):
    names, data = select_parameters(make(), ("*",)), _data()
    solves = {choice: cg_ihvp_at(make(), cross_entropy, dict(make().state_dict()), names, data, regularization=LAM,
                                 curvature=curvature, max_iter=8, tol=0.0, matvec=choice)
              for choice in ("hvp", "structured")}
    vectors = _vectors(solves["hvp"].p, m=4, dtype=torch.float64)
    with pytest.warns(attrkit.errors.ConvergenceWarning):
        out = {choice: solve(vectors) for choice, solve in solves.items()}
    assert _relative(out["structured"], out["hvp"]) < 5e-6
    fast, slow = solves["structured"].stats, solves["hvp"].stats
    assert fast.info["structured"] == 1.0 and slow.info["structured"] == 0.0
    probe = curvature == "hessian"  # logistic regression: outputs affine, the first batch's probe alone
    assert (fast.build.passes, fast.solve.passes) == (1, 0)  # the collection only
    assert (slow.build.passes, slow.solve.passes) == (0, 8)
    n = 64  # every product counts n example-HVPs per vector: 8 iterations of 4 vectors (tol=0: none stops)
    assert fast.solve.example_hvps == slow.solve.example_hvps == 8 * 4 * n
    assert fast.build.example_hvps == (2 * 2 * 16 if probe else 0)


@pytest.mark.parametrize(("make", "curvature"), [(_logistic, "hessian"), (_mlp, "gauss-newton")],
                         ids=["logistic-hessian", "mlp-gauss-newton"])
def test_arnoldi_solves_alike_on_both_paths_with_one_pass(make, curvature):
    names, data = select_parameters(make(), ("*",)), _data()
    solves = {choice: arnoldi_ihvp_at(make(), cross_entropy, dict(make().state_dict()), names, data,
                                      regularization=LAM, curvature=curvature, rank=10, max_iter=40, matvec=choice)
              for choice in ("hvp", "structured")}
    vectors = _vectors(solves["hvp"].p, m=4, dtype=torch.float64)
    assert _relative(solves["structured"](vectors), solves["hvp"](vectors)) < 1e-5
    fast, slow = solves["structured"].stats, solves["hvp"].stats
    assert fast.info["structured"] == 1.0
    assert fast.info["largest_eigenvalue"] == pytest.approx(slow.info["largest_eigenvalue"], rel=1e-5)
    probe = curvature == "hessian"  # logistic regression: outputs affine, the first batch's probe alone
    assert fast.build.passes == 1 and slow.build.passes == 40  # the collection only
    assert slow.build.example_hvps == 40 * 64  # 40 products of one vector over 64 examples
    assert fast.build.example_hvps == 40 * 64 + (2 * 2 * 16 if probe else 0)


@pytest.mark.parametrize(("make", "patterns", "curvature"),
                         [(_logistic, ("*",), "hessian"), (_logistic, ("bias",), "gauss-newton"),
                          (_mlp, ("*",), "gauss-newton"), (_head, ("0.*",), "hessian")],
                         ids=["logistic-hessian", "logistic-bias", "mlp-gauss-newton", "head-hessian"])
def test_a_subset_of_the_examples_gives_their_own_curvature(make, patterns, curvature):
    model = make()
    names, state = select_parameters(model, patterns), dict(model.state_dict())
    meter, p = prepare_at(state, names, _data(), LAM, curvature)
    whole, _, _ = structured_matvec.structured_matvec(meter, model, cross_entropy, state, names, curvature)
    index = torch.tensor([3, 17, 40, 41, 63])
    x, y = (torch.cat(column)[index] for column in zip(*_data()))
    hvp, _, _, _ = _products(make(), curvature, "hvp", patterns, data=[(x, y)])
    vectors = _vectors(p, m=7)
    part = whole.subset(index)
    assert part.examples == 5 and _relative(part(vectors), hvp(vectors)) < 2e-6
    assert _relative(part(vectors[0]), hvp(vectors)[0]) < 2e-6  # one vector, Tensor[p]


@pytest.mark.parametrize(("make", "curvature"), [(_logistic, "hessian"), (_mlp, "gauss-newton")],
                         ids=["logistic-hessian", "mlp-gauss-newton"])
def test_lissa_samples_alike_on_both_paths_with_one_pass(make, curvature):
    names, data = select_parameters(make(), ("*",)), _data()
    solves = {choice: lissa_ihvp_at(make(), cross_entropy, dict(make().state_dict()), names, data, regularization=LAM,
                                    curvature=curvature, depth=30, scale=20.0, batch_size=8, seed=3, matvec=choice)
              for choice in ("hvp", "structured")}
    vectors = _vectors(solves["hvp"].p, m=4, dtype=torch.float64)
    out = {choice: solve(vectors) for choice, solve in solves.items()}
    assert _relative(out["structured"], out["hvp"]) < 1e-5  # the same samples, float32 products
    fast, slow = solves["structured"].stats, solves["hvp"].stats
    assert fast.info["structured"] == 1.0 and slow.info["structured"] == 0.0
    assert fast.build.passes == slow.build.passes == 1  # the collection, or the gathering
    assert fast.solve.example_hvps == slow.solve.example_hvps == 30 * 8 * 4
    assert (fast.solve.passes, slow.solve.passes) == (0, 0)


@pytest.mark.parametrize("vector_dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_lissa_steps_reuse_one_workspace_with_the_same_solves(vector_dtype, monkeypatch):
    """Every step's temporaries come from one workspace per solve, each buffer allocated once: the solve equals,
    bit for bit, the one whose steps allocate every temporary afresh."""
    names, data = select_parameters(_mlp(), ("*",)), _data()

    def solve():
        return lissa_ihvp_at(_mlp(), cross_entropy, dict(_mlp().state_dict()), names, data, regularization=LAM,
                             curvature="gauss-newton", depth=12, scale=20.0, batch_size=8, seed=3, matvec="structured")

    vectors = _vectors(solve().p, m=4, dtype=vector_dtype)
    reused = solve()(vectors)
    allocated: dict[str, set[int]] = {}
    original = structured_matvec.Workspace.get

    def recording(self, name, shape, dtype, device):
        buffer = original(self, name, shape, dtype, device)
        allocated.setdefault(name, set()).add(buffer.data_ptr())
        return buffer

    monkeypatch.setattr(structured_matvec.Workspace, "get", recording)
    assert torch.equal(solve()(vectors), reused)
    names_used = {"product", "layer 0", "layer 1"} | ({"rows", "result"} if vector_dtype == torch.float64 else set())
    assert set(allocated) == names_used and all(len(ptrs) == 1 for ptrs in allocated.values())
    monkeypatch.setattr(structured_matvec.Workspace, "get",
                        lambda self, name, shape, dtype, device: torch.empty(shape, dtype=dtype, device=device))
    assert torch.equal(solve()(vectors), reused)


def test_lissa_refuses_forced_structure_where_it_does_not_apply():
    model = _mlp()
    names = select_parameters(model, ("*",))
    with pytest.raises(CurvatureError, match="lissa solver: matvec='structured' cannot be used"):
        lissa_ihvp_at(model, cross_entropy, dict(model.state_dict()), names, _data(), regularization=LAM,
                      curvature="hessian", depth=2, matvec="structured")
    with pytest.raises(ArgumentError, match="matvec must be one of"):
        lissa_ihvp_at(model, cross_entropy, dict(model.state_dict()), names, _data(), depth=2, matvec="fast")


@pytest.mark.parametrize("curvature", ["gauss-newton", "hessian"])
def test_ranks_hold_their_shards_and_sum_their_products(curvature, monkeypatch):
    """Each rank caches the factors of its shard of the batches; every product is all-reduced."""
    single, _, _, p = _products(_logistic(), curvature, "structured")
    vectors = _vectors(p)
    expected = single(vectors)
    models = [_logistic() for _ in range(2)]  # built before the threads: torch.manual_seed is process-wide
    ranks = threaded(monkeypatch)

    def on_rank(rank):
        matvec, info, _, _ = _products(models[rank], curvature, "structured")
        return matvec(vectors), info

    got = ranks.run(on_rank)
    for out, info in got:
        assert info["structured"] == 1.0
        assert _relative(out, expected) < 1e-6  # other sums of the same float32 products
    assert torch.equal(got[0][0], got[1][0])


def test_ranks_agree_to_fall_back_when_one_cannot_use_the_structure(monkeypatch):
    ranks = threaded(monkeypatch)
    structure_broken_on_rank_1(monkeypatch, ranks)
    models = [_logistic(dim=100) for _ in range(2)]
    wide = _data(dim=100)
    got = ranks.run(lambda rank: _products(models[rank], "gauss-newton", "auto", data=wide)[1])
    assert [info["structured"] for info in got] == [0.0, 0.0]
    raised = ranks.run(lambda rank: pytest.raises(CurvatureError, _products, models[rank], "gauss-newton",
                                                  "structured", data=wide))
    assert all("cannot be used: rank 1's batches" in str(info.value) for info in raised)


def test_the_cg_solver_spec_takes_the_structured_products():
    toy = toy_problem(n_train=12, n_test=3)
    scores = {}
    for choice in ("hvp", "structured"):
        spec = {"method": "if", "solver": {"name": "cg", "max_iter": 5, "regularization": 0.1, "matvec": choice}}
        attributor = attrkit.compose(spec, toy.task)
        attributor.fit(toy.train_loader(4))
        scores[choice] = attributor.attribute(toy.test_loader(3))
    torch.testing.assert_close(scores["structured"], scores["hvp"], rtol=1e-4, atol=1e-5)


def test_cross_entropy_hessians_in_closed_form_equal_autograd():
    from attrkit.functional.curvature import loss_of_outputs
    from attrkit.targets import cross_entropy, negated_margin

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=gen)
    batch = (torch.zeros(7, 1), y)
    closed = structured_factors._cross_entropy_hessians(cross_entropy, batch, z)
    autograd = structured_factors._output_hessians(loss_of_outputs(cross_entropy, batch, lambda out: out), z)
    torch.testing.assert_close(closed, autograd, rtol=1e-12, atol=1e-14)
    assert structured_factors._cross_entropy_hessians(negated_margin, batch, z) is None  # another loss
    ignored = (batch[0], torch.tensor([0, 1, 2, 3, -100, 0, 1]))  # an ignored label: autograd's path
    assert structured_factors._cross_entropy_hessians(cross_entropy, ignored, z) is None
