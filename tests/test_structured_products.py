"""Structured inner products (per-layer factors) equal the dense path: an MLP, a CNN, a transformer block."""

import warnings

import pytest
import torch

import attrkit
from attrkit import AttributionTask
from attrkit.errors import FactorisationError, SpecError
from attrkit.functional import factored_gradients, plan_factors, select_parameters
from attrkit.functional import projection
from attrkit.functional.kfac_factors import fit_ekfac
from attrkit.functional.scoring import normalize_rows
from attrkit.functional.structured_products import ProductLayout, cheaper_solved, cheaper_structured, product_layout
from attrkit.targets import cross_entropy


class Block(torch.nn.Module):
    """A small transformer block: embedding, LayerNorm, self-attention, an MLP over positions, a head."""

    def __init__(self, vocab=11, width=8, classes=3):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.norm = torch.nn.LayerNorm(width)
        self.attention = torch.nn.MultiheadAttention(width, 2, batch_first=True)
        self.up = torch.nn.Linear(width, 16)
        self.down = torch.nn.Linear(16, width, bias=False)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, tokens):
        h = self.norm(self.embed(tokens))
        h = h + self.attention(h, h, h, need_weights=False)[0]
        h = h + self.down(torch.relu(self.up(h)))
        return self.head(h.mean(1))


def _mlp():
    return torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def _cnn():
    return torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 4 * 4, 3))


def _data(kind, n, gen):
    if kind == "mlp":
        return torch.randn(n, 6, generator=gen)
    if kind == "cnn":
        return torch.randn(n, 2, 6, 6, generator=gen)
    return torch.randint(0, 11, (n, 5), generator=gen)


MODELS = {"mlp": _mlp, "cnn": _cnn, "block": Block}


def _problem(kind, n_train=18, n_test=5, seed=0):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = MODELS[kind]().eval()
    x, y = _data(kind, n_train + n_test, gen), torch.randint(0, 3, (n_train + n_test,), generator=gen)
    train = [(x[i : i + 6], y[i : i + 6]) for i in range(0, n_train, 6)]
    test = [(x[n_train:], y[n_train:])]
    return AttributionTask(model=model, loss_fn=cross_entropy), train, test


def _factors(kind):
    task, train, _ = _problem(kind)
    model = task.model
    state = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    return factored_gradients(model, cross_entropy, state, train[0], plan_factors(model, select_parameters(model, ["*"])))


def _layout_case(kind, structured):
    """``(factored gradients, their dense form, a layout: auto for None, else every layer structured or not)``."""
    grads = _factors(kind)
    return grads, grads.materialize(), product_layout(grads, None if structured is None else [structured] * len(grads.layers))


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("structured", [None, True, False])
def test_packed_products_equal_the_dense_gram(kind, structured):
    grads, dense, layout = _layout_case(kind, structured)
    packed = layout.pack(grads)
    assert packed.shape == (dense.shape[0], layout.width)
    torch.testing.assert_close(layout.products(packed[:2], packed), dense[:2] @ dense.T, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layout.squared_norms(packed), (dense * dense).sum(1), rtol=1e-5, atol=1e-6)
    unit = layout.normalize(packed)
    torch.testing.assert_close(layout.products(unit, unit), normalize_rows(dense) @ normalize_rows(dense).T,
                               rtol=1e-5, atol=1e-6)
    factors = torch.linspace(-2.0, 3.0, dense.shape[0])
    torch.testing.assert_close(layout.products(layout.scale(packed, factors), packed),
                               factors[:, None] * (dense @ dense.T), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("structured", [None, True, False])
def test_solved_products_equal_the_dense_product(kind, structured):
    grads, dense, layout = _layout_case(kind, structured)
    solved = torch.randn(3, dense.shape[1], generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(layout.solved_products(solved, layout.pack(grads)), solved @ dense.T,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(FactorisationError, match="columns"):
        layout.solved_products(solved[:, 1:], layout.pack(grads))


def test_a_layout_without_the_parameters_places_refuses_solved_products():
    grads = _factors("mlp")
    layout = product_layout(grads, [True, True])
    record = layout.to_dict()
    for slot in record["layers"]:
        slot.pop("weight_at"), slot.pop("bias_at")
    old = ProductLayout.from_dict({k: v for k, v in record.items() if k != "dense_at"})
    with pytest.raises(FactorisationError, match="fit again"):
        old.solved_products(torch.zeros(1, grads.shape[1]), layout.pack(grads))
    assert ProductLayout.from_dict(layout.to_dict()) == layout


def test_auto_keeps_a_layer_as_factors_only_where_cheaper():
    assert cheaper_structured(1, 785, 10)  # logistic regression on MNIST: 795 against 7850 per pair
    assert not cheaper_structured(576, 19, 8)  # a convolution's 576 patches: dense is cheaper
    layout = product_layout(_factors("cnn"))
    assert [slot.structured for slot in layout.layers] == [False, True]


def test_normalize_is_scale_free_and_keeps_zero_and_nan_rows():
    grads = _factors("mlp")
    layout = product_layout(grads, [True, True])
    packed = layout.pack(grads)
    huge = layout.scale(packed, torch.full((packed.shape[0],), 1e30))
    torch.testing.assert_close(layout.normalize(huge), layout.normalize(packed), rtol=1e-5, atol=1e-6)
    packed[1] = 0.0
    packed[2, 0] = float("nan")
    unit = layout.normalize(packed)
    assert bool((unit[1] == 0).all()) and bool(unit[2].isnan().all())


def test_more_positions_than_the_layout_kept_are_refused():
    grads = _factors("block")
    layout = product_layout(grads, [True] * len(grads.layers))
    longer = grads + grads  # a sum concatenates positions: 10 where the layout keeps 5
    with pytest.raises(FactorisationError, match="positions"):
        layout.pack(longer)


def _spec(method, products, **extra):
    return {"method": method, "gradients": {"name": "per-example", "products": products}, **extra}


METHODS = {
    "grad-dot": {},
    "grad-cos": {},
    "if": {"solver": "identity"},
    "tracin": {"ensemble": "checkpoints"},
    "if-kfac": {"solver": {"name": "kfac", "regularization": 0.1}},
    "if-ekfac": {"solver": {"name": "ekfac", "regularization": 0.1}},
    "if-cg": {"solver": {"name": "cg", "curvature": "gauss-newton", "regularization": 0.1, "max_iter": 5}},
    "if-explicit": {"solver": {"name": "explicit", "regularization": 0.1}},
    "relatif-ekfac": {"solver": {"name": "ekfac", "regularization": 0.1}},
    "if-arnoldi": {"solver": {"name": "arnoldi", "rank": 2, "max_iter": 10, "regularization": 0.1}},
}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_structured_and_dense_scores_agree(kind, method):
    task, train, test = _problem(kind)
    if method == "tracin":
        task = _with_checkpoints(task)
    results = {}
    for products in ("dense", "structured", "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spec = _spec(method.split("-")[0] if method.startswith(("if-", "relatif")) else method, products,
                         **METHODS[method])
            attributor = attrkit.compose(spec, task).fit(train)
            results[products] = (attributor.attribute(test), attributor.self_influence(train),
                                 attributor.top_k(test, 3).proponents,
                                 [f.layout for f in attributor.fitted.members])
    dense = results["dense"]
    assert not any(dense[3])
    assert all(results["structured"][3])
    if "solver" in METHODS[method] and METHODS[method]["solver"] != "identity":  # auto: layers at one position
        slots = results["auto"][3][0].layers
        assert [slot.structured for slot in slots] == [cheaper_solved(slot.positions) for slot in slots]
    for products in ("structured", "auto"):
        scores, self_scores, top, _ = results[products]
        torch.testing.assert_close(scores, dense[0], rtol=1e-4, atol=1e-5 * float(dense[0].abs().max()))
        torch.testing.assert_close(self_scores, dense[1], rtol=1e-4, atol=1e-5 * float(dense[1].abs().max()))
        assert (top == dense[2]).float().mean() > 0.9  # ties at round-off may swap


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("solver", ["kfac", "ekfac"])
def test_kronecker_queries_are_solved_from_their_rank_one_factors(kind, solver, monkeypatch):
    """Behind structured products, K-FAC and EK-FAC rotate a test gradient's layers at one position from
    their factors (``rank_one``), with the dense path's scores."""
    from attrkit.functional import ihvp_kfac

    task, train, test = _problem(kind)
    found, original = [], ihvp_kfac._factors_of
    monkeypatch.setattr(ihvp_kfac, "_factors_of", lambda *a: (lambda got: found.append(got is not None) or got)(
        original(*a)))
    scores, used = {}, {}
    for products in ("dense", "structured"):
        found.clear()
        spec = _spec("if", products, solver={"name": solver, "regularization": 0.1})
        scores[products] = attrkit.compose(spec, task).fit(train).attribute(test)
        used[products] = any(found)
    assert used == {"dense": False, "structured": True}
    torch.testing.assert_close(scores["structured"], scores["dense"], rtol=1e-4,
                               atol=1e-5 * float(scores["dense"].abs().max()))


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("products", ["dense", "structured"])
def test_a_low_rank_solve_scores_its_coefficients_as_the_solved_gradients(kind, products, tmp_path, monkeypatch):
    task, train, test = _problem(kind)
    spec = _spec("if", products, solver={"name": "arnoldi", "rank": 2, "max_iter": 10, "regularization": 0.1})
    attributor = attrkit.compose(spec, task).fit(train)
    low = attributor.fitted.members[0].low_rank
    assert low is not None and low.rank == 2 and low.worth(5) and not low.worth(1)
    calls = []
    original = type(low).products
    monkeypatch.setattr(type(low), "products", lambda self, *a: calls.append(a[1].shape) or original(self, *a))
    (x, y), = test
    singles = attributor.attribute([(x[i : i + 1], y[i : i + 1]) for i in range(len(y))])  # solved gradients
    assert calls == []
    whole = attributor.attribute(test)  # five queries: two coefficients each
    assert calls and all(shape == (5, 2) for shape in calls)
    torch.testing.assert_close(whole, singles, rtol=1e-4, atol=1e-5 * float(singles.abs().max()))
    top = attributor.top_k(test, 3)
    assert torch.equal(top.proponents, whole.topk(3, dim=1).indices)
    attributor.save(tmp_path / "saved")
    again = attrkit.load(tmp_path / "saved", task)
    assert again.fitted.members[0].low_rank is not None
    assert torch.equal(again.attribute(test), whole)


def test_a_full_rank_or_projected_arnoldi_solve_is_not_scored_as_coefficients():
    task, train, test = _problem("mlp")
    full = {"name": "arnoldi", "rank": 200, "max_iter": 200, "regularization": 0.1}  # clamped to p: the exact inverse
    assert attrkit.compose(_spec("if", "auto", solver=full), task).fit(train).fitted.members[0].low_rank is None
    projected = _spec("if", "auto", solver={**full, "rank": 2, "max_iter": 10},
                      projector={"name": "gaussian", "dim": 8, "seed": 0})
    assert attrkit.compose(projected, task).fit(train).fitted.members[0].low_rank is None


def _with_checkpoints(task):
    states, gen = [], torch.Generator().manual_seed(1)
    for _ in range(2):
        state = {k: v.detach().clone() for k, v in task.model.state_dict().items()}
        for name, value in state.items():
            if value.is_floating_point():
                value += 0.2 * torch.randn(value.shape, generator=gen)
        states.append(state)
    return AttributionTask(model=task.model, loss_fn=task.loss_fn, checkpoints=states)


def test_a_saved_structured_attributor_scores_the_same(tmp_path):
    task, train, test = _problem("mlp")
    attributor = attrkit.compose(_spec("grad-cos", "structured"), task).fit(train)
    attributor.save(tmp_path / "saved")
    again = attrkit.load(tmp_path / "saved", task)
    assert again.fitted.members[0].layout == attributor.fitted.members[0].layout
    assert torch.equal(again.attribute(test), attributor.attribute(test))


PROJECTED = {
    "trak": {"projector": {"name": "gaussian", "dim": 16, "seed": 3}, "solver": {"name": "gauss-newton",
                                                                                 "regularization": 0.01}},
    "grad-dot": {"projector": {"name": "rademacher", "dim": 16, "seed": 3}},
    "if": {"solver": {"name": "gauss-newton", "regularization": 0.1}},
    "if-arnoldi-projected": {"projector": {"name": "arnoldi", "dim": 6, "scale": True, "regularization": 0.1,
                                           "curvature": "gauss-newton"}, "solver": "identity"},
    "trak-sjlt": {"projector": {"name": "sjlt", "dim": 16, "nnz": 1, "seed": 3},
                  "solver": {"name": "gauss-newton", "regularization": 0.01}},
}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("method", PROJECTED)
@pytest.mark.parametrize("formed", [False, True], ids=["per-layer", "formed"])
def test_projected_features_from_factors_equal_the_dense_ones(kind, method, formed, monkeypatch):
    """A dense projector takes the packed factor rows: per layer, or (within ``FORMED_BYTES``) forming
    the gradients first for one GEMM; a sparse sketch, or a feature-space solver alone, gets the
    training gradients formed from them; all equal the dense path."""
    monkeypatch.setattr(projection, "FORMED_BYTES", 2**40 if formed else 0)
    task, train, test = _problem(kind)
    calls = {"materialize": [], "project": []}
    for name in calls:
        original = getattr(ProductLayout, name)
        monkeypatch.setattr(ProductLayout, name, lambda self, x, *rest, _f=original, _n=name: calls[_n].append(len(x))
                            or _f(self, x, *rest))
    results = {}
    for products in ("dense", "structured", "auto"):
        for seen in calls.values():
            seen.clear()
        name = "if" if method.startswith("if") else method.removesuffix("-sjlt")
        attributor = attrkit.compose(_spec(name, products, **PROJECTED[method]), task).fit(train)
        results[products] = (attributor.attribute(test), attributor.self_influence(train),
                             {name: sum(seen) for name, seen in calls.items()})
        assert all(f.layout is None for f in attributor.fitted.members)  # the training side is projected features
    projector = PROJECTED[method].get("projector", {}).get("name")
    projects = projector in ("gaussian", "rademacher", "arnoldi")  # these take the factors as they are
    assert results["dense"][2] == {"materialize": 0, "project": 0}
    seeded = projector in ("gaussian", "rademacher")  # may form them
    packed = {"materialize": 18 + 5, "project": 0} if formed and seeded else {"materialize": 0, "project": 18 + 5}
    assert results["structured"][2] == (packed if projects  # train and test rows
                                        else {"materialize": 18, "project": 0})
    # auto keeps the layers at one position (the head at least) as factors: projected from them, or formed
    assert results["auto"][2] == (packed if projects else {"materialize": 18, "project": 0})
    for products in ("structured", "auto"):
        scores, self_scores, _ = results[products]
        dense = results["dense"]
        torch.testing.assert_close(scores, dense[0], rtol=1e-4, atol=1e-5 * float(dense[0].abs().max()))
        torch.testing.assert_close(self_scores, dense[1], rtol=1e-4, atol=1e-5 * float(dense[1].abs().max()))


def test_projection_from_factors_equals_the_dense_projection():
    for kind in MODELS:
        for structured in (None, True, False):
            grads, dense, layout = _layout_case(kind, structured)
            matrix = torch.randn(dense.shape[1], 7, generator=torch.Generator().manual_seed(4))
            torch.testing.assert_close(layout.project(layout.pack(grads), lambda a, b: matrix[a:b]), dense @ matrix,
                                       rtol=1e-5, atol=1e-5 * float((dense @ matrix).abs().max()))


def test_packed_rows_materialize_to_the_dense_gradients():
    for kind in MODELS:
        for structured in (None, True, False):
            grads, dense, layout = _layout_case(kind, structured)
            torch.testing.assert_close(layout.materialize(layout.pack(grads)), dense, rtol=1e-5, atol=1e-6)


def test_forced_structured_names_what_needs_dense_gradients(tmp_path):
    task, train, _ = _problem("mlp")
    cases = [
        (_spec("grad-dot", "structured", grouper={"name": "random", "n_groups": 3}), {}, "grouper 'random'"),
        (_spec("grad-dot", "structured"), {"store": tmp_path / "store"}, "feature store"),
    ]
    for spec, kwargs, reason in cases:
        with pytest.raises(SpecError, match=reason):
            attrkit.compose(spec, task).fit(train, **kwargs)


def test_auto_takes_dense_products_where_it_must():
    task, train, test = _problem("mlp")
    spec = _spec("grad-dot", "auto", projector={"name": "gaussian", "dim": 4})
    attributor = attrkit.compose(spec, task).fit(train)
    assert attributor.fitted.members[0].layout is None
    weighted = attrkit.compose(_spec("if", "structured", solver="identity"), task)
    weighted.example_weights = lambda members, loader: torch.ones(18)
    with pytest.raises(SpecError, match="weights the training examples"):
        weighted.fit(train)


def test_products_must_be_a_known_mode():
    task, _, _ = _problem("mlp")
    with pytest.raises(SpecError, match="products"):
        attrkit.compose(_spec("grad-dot", "fast"), task)


def test_structured_on_a_model_without_factored_layers_is_refused():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Flatten(), torch.nn.LayerNorm(6))
    task = AttributionTask(model=model, loss_fn=lambda m, b: m(b[0]).pow(2).sum(1))
    train = [(torch.randint(0, 5, (4, 2)), torch.zeros(4))]
    with pytest.raises(SpecError, match="no nn.Linear"):
        attrkit.compose(_spec("grad-dot", "structured"), task).fit(train)
    auto = attrkit.compose(_spec("grad-dot", "auto"), task).fit(train)
    assert auto.fitted.members[0].layout is None


def test_kronecker_factors_fitted_from_packed_rows_equal_the_pass_in_float64():
    task, train, _ = _problem("mlp")
    model = task.model
    names = select_parameters(model, ["*"])
    plan = plan_factors(model, names)
    state = {k: v.detach() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    blocks = [factored_gradients(model, cross_entropy, state, batch, plan) for batch in train]
    layout = product_layout(blocks[0], [True] * len(blocks[0].layers))
    sizes = {name: state[name].numel() for name in names}
    unpacked = [layout.unpack(layout.pack(b), plan, sizes) for b in blocks]  # float32, as the engine holds them
    for b, u in zip(blocks, unpacked):
        torch.testing.assert_close(u.materialize(), b.materialize())
    double = {k: v.double() for k, v in state.items()}
    batches = [(x.double(), y) for x, y in train]
    reference = fit_ekfac(model, cross_entropy, double, names, batches)
    read = []
    held = fit_ekfac(model, cross_entropy, double, names, (read.append(b) or b for b in []), factors=unpacked)
    assert not read  # the batches were not read
    for got, want in zip([*held.kfac.layers], [*reference.kfac.layers]):
        torch.testing.assert_close(got.input_covariance, want.input_covariance, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got.output_covariance, want.output_covariance, rtol=1e-5, atol=1e-7)
    for got, want in zip(held.eigenvalues, reference.eigenvalues):  # float32 products, float64 sums
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.max()))
    with pytest.raises(FactorisationError, match="materialised"):
        product_layout(blocks[0], [False] * len(blocks[0].layers)).unpack(layout.pack(blocks[0]), plan, sizes)


def test_a_kronecker_solver_fits_from_the_rows_the_engine_holds(monkeypatch):
    task, train, _ = _problem("mlp")
    seen = []
    original = fit_ekfac
    monkeypatch.setattr("attrkit.functional.ihvp_kfac.fit_ekfac",
                        lambda *args, factors=None: seen.append(factors is not None) or original(*args, factors=factors))
    for products in ("auto", "dense"):
        attrkit.compose(_spec("if", products, solver={"name": "ekfac", "regularization": 0.1}), task).fit(train)
    assert seen == [True, False]  # auto keeps the MLP's layers (one position each) as factors
