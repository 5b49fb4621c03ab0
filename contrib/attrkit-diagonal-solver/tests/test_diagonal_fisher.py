"""``diagonal-fisher``: attrkit's conformance kit, brute force, composition and batching.

The brute force is deliberately plain: per-example gradients by a ``backward`` loop
(``attrkit.testing.autograd_gradients``), ``d = mean(g²)``, then ``g_tᵀ (diag(d) + λ)⁻¹ g_i``.
"""

import ast
import copy
from pathlib import Path

import pytest
import torch

import attrkit
from attrkit.testing import autograd_gradients, check_component, toy_problem
from attrkit_diagonal_solver import DiagonalFisherSolver, diagonal_solve, fisher_diagonal

LAM = 1e-2
SOLVER = {"name": "diagonal-fisher", "regularization": LAM}
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def toy():
    """A float64 toy, so that equalities hold to float32 round-off of the scores."""
    return toy_problem(dtype=torch.float64)


def _grads(model, fn, x, y):
    return autograd_gradients(model, fn, x, y).double()


def _at(model, state):
    """A copy of ``model`` holding ``state``."""
    copied = copy.deepcopy(model)
    copied.load_state_dict(state)
    return copied


def _brute(model, x_train, y_train, x_test, y_test, lam=LAM, fn=attrkit.cross_entropy):
    """``G_test (diag(d) + λ)⁻¹ G_trainᵀ``, ``[n_test, n_train]``, with ``d`` of the training loss."""
    train = _grads(model, attrkit.cross_entropy, x_train, y_train)
    d = train.square().mean(0)
    test_side = _grads(model, fn, x_test, y_test) / (d + lam)
    return test_side @ _grads(model, fn, x_train, y_train).T


def _scores(spec, task, train, test):
    return attrkit.compose(spec, task).fit(train).attribute(test)


def _close(scores, brute, rtol=1e-6):
    torch.testing.assert_close(scores.double(), brute, rtol=rtol, atol=rtol * brute.abs().max().item())


# -- (a) registration and the conformance kit ----------------------------------------------


def test_registered_through_the_entry_point_group():
    entry = attrkit.default_registry().get("solver", "diagonal-fisher")
    assert entry.cls is DiagonalFisherSolver
    assert entry.plugin.distribution == "attrkit-diagonal-solver"
    assert entry.cls.space == "parameter" and entry.cls.local_solve and entry.cls.linear


def test_conformance():
    check_component(attrkit.default_registry().get("solver", "diagonal-fisher"))


def test_written_against_the_plugin_module_only():
    """The distribution imports ``attrkit.plugin`` and ``attrkit.functional`` and nothing else of attrkit."""
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


def test_config_validation():
    config = DiagonalFisherSolver.Config
    assert config().regularization == 1e-3
    for bad in (-1.0, True, float("nan")):
        with pytest.raises((TypeError, ValueError), match="regularization"):
            config(regularization=bad)
    with pytest.raises(attrkit.SpecError, match="regularization"):
        attrkit.compose({"method": "if", "solver": {"name": "diagonal-fisher", "regularization": -1}}, toy_problem().task)


# -- (b) brute force ---------------------------------------------------------------------


def test_diagonal_is_the_mean_of_squared_per_example_gradients(toy):
    model = toy.task.model
    names = [n for n, _ in model.named_parameters()]
    state = toy.task.members()[0].state
    diagonal = fisher_diagonal(model, toy.task.loss_fn, state, names, toy.train_loader(5))
    brute = _grads(model, toy.task.loss_fn, toy.x_train, toy.y_train).square().mean(0)
    torch.testing.assert_close(diagonal, brute, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("lam", [LAM, 0.0, 1.0])
def test_influence_scores_equal_brute_force(toy, lam):
    spec = {"method": "if", "solver": {"name": "diagonal-fisher", "regularization": lam}}
    scores = _scores(spec, toy.task, toy.train_loader(), toy.test_loader())
    assert scores.shape == (len(toy.y_test), len(toy.y_train)) and scores.dtype == torch.float32
    _close(scores, _brute(toy.task.model, toy.x_train, toy.y_train, toy.x_test, toy.y_test, lam))


def test_default_regularization_on_a_float32_model():
    toy = toy_problem()
    scores = _scores({"method": "if", "solver": "diagonal-fisher"}, toy.task, toy.train_loader(), toy.test_loader())
    _close(scores, _brute(toy.task.model, toy.x_train, toy.y_train, toy.x_test, toy.y_test, 1e-3), rtol=1e-4)


def test_self_influence_equals_brute_force(toy):
    attributor = attrkit.compose({"method": "if", "solver": SOLVER}, toy.task).fit(toy.train_loader())
    brute = _brute(toy.task.model, toy.x_train, toy.y_train, toy.x_train, toy.y_train).diagonal()
    _close(attributor.self_influence(toy.train_loader(7)), brute)


def _dead_unit_task():
    """A ReLU MLP whose hidden unit 0 is never active: 5 + 1 + 3 parameters with zero gradients."""
    toy = toy_problem(dtype=torch.float64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[0].bias[0] = -1e3
    return toy, attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)


def test_zero_regularization_with_a_zero_diagonal_entry_is_refused_naming_the_fix():
    toy, task = _dead_unit_task()
    spec = {"method": "if", "solver": {"name": "diagonal-fisher", "regularization": 0}}
    with pytest.raises(attrkit.CurvatureError) as info:
        _scores(spec, task, toy.train_loader(), toy.test_loader())
    message = str(info.value)
    assert "9 of the 39" in message
    assert "0.weight (5 of 20), 0.bias (1 of 4), 2.weight (3 of 12)" in message
    assert "regularization > 0" in message
    assert isinstance(info.value, ValueError)


def test_damping_makes_a_zero_diagonal_entry_harmless(toy):
    _, task = _dead_unit_task()
    scores = _scores({"method": "if", "solver": SOLVER}, task, toy.train_loader(), toy.test_loader())
    _close(scores, _brute(task.model, toy.x_train, toy.y_train, toy.x_test, toy.y_test))


def test_solve_is_elementwise_and_keeps_dtype_and_device():
    d = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    out = diagonal_solve(d, torch.ones(2, 3), 1.0)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[0.5, 1.0, 0.25]] * 2))
    with pytest.raises(ValueError, match=r"Tensor\[m, 3\]"):
        diagonal_solve(d, torch.ones(3), 1.0)


def test_empty_training_data_is_refused():
    toy = toy_problem()
    names = [n for n, _ in toy.task.model.named_parameters()]
    with pytest.raises(attrkit.DataLoaderError, match="empty"):
        fisher_diagonal(toy.task.model, toy.task.loss_fn, toy.task.members()[0].state, names, [])


# -- (c) composition with existing methods and parts -------------------------------------------


def test_relatif(toy):
    scores = _scores({"method": "relatif", "solver": SOLVER}, toy.task, toy.train_loader(), toy.test_loader())
    model = toy.task.model
    pairwise = _brute(model, toy.x_train, toy.y_train, toy.x_test, toy.y_test)
    self_influence = _brute(model, toy.x_train, toy.y_train, toy.x_train, toy.y_train).diagonal()
    _close(scores, pairwise / self_influence.clamp_min(1e-12).sqrt())


def test_gaussian_projector_is_applied_after_the_parameter_space_solve(toy):
    spec = {"method": "if", "solver": SOLVER, "projector": {"name": "gaussian", "dim": 16, "seed": 3}}
    attributor = attrkit.compose(spec, toy.task).fit(toy.train_loader())
    scores = attributor.attribute(toy.test_loader())
    p = attributor.dimension
    projection = attributor.fitted.members[0].projector.project(torch.eye(p, dtype=torch.float64)).double()  # [p, k]
    model = toy.task.model
    train = _grads(model, attrkit.cross_entropy, toy.x_train, toy.y_train)
    solved = _grads(model, attrkit.cross_entropy, toy.x_test, toy.y_test) / (train.square().mean(0) + LAM)
    _close(scores, (solved @ projection) @ (train @ projection).T, rtol=1e-5)


@pytest.mark.parametrize("gradients", ["per-example", "group"])
def test_random_groups_sum_the_pointwise_columns(toy, gradients):
    pointwise = _scores({"method": "if", "solver": SOLVER}, toy.task, toy.train_loader(), toy.test_loader())
    spec = {"method": "if", "solver": SOLVER, "gradients": gradients, "grouper": {"name": "random", "n_groups": 5}}
    attributor = attrkit.compose(spec, toy.task).fit(toy.train_loader())
    scores = attributor.attribute(toy.test_loader())
    groups = attributor.groups
    assert scores.shape == (len(toy.y_test), 5) and groups.shape == (len(toy.y_train),)
    one_hot = torch.nn.functional.one_hot(groups, 5).double()
    _close(scores, pointwise.double() @ one_hot, rtol=1e-5)


def test_checkpoint_ensemble_sums_each_members_own_solve():
    toy = toy_problem(dtype=torch.float64, checkpoints=3)
    spec = {"method": "if", "solver": SOLVER, "ensemble": "checkpoints"}
    scores = _scores(spec, toy.task, toy.train_loader(), toy.test_loader())
    brute = sum(
        _brute(_at(toy.task.model, state), toy.x_train, toy.y_train, toy.x_test, toy.y_test)
        for state in toy.task.checkpoints
    )
    _close(scores, brute)


def test_trak_accepts_it_as_a_parameter_space_curvature(toy):
    """TRAK's default solver is feature space (``gauss-newton``); the composer accepts any solver and
    the engine applies a parameter-space one to the raw margin gradient before projecting:
    ``score = φ_tᵀ (diag(F) + λ)⁻¹ φ_i · Q_i``, ``F`` the Fisher of the training *loss*."""
    spec = {"method": "trak", "projector": "identity", "solver": SOLVER}
    attributor = attrkit.compose(spec, toy.task)
    assert attributor.resolved.spec.to_dict()["solver"]["name"] == "diagonal-fisher"
    scores = attributor.fit(toy.train_loader()).attribute(toy.test_loader())
    model = toy.task.model
    pairwise = _brute(model, toy.x_train, toy.y_train, toy.x_test, toy.y_test, fn=attrkit.negated_margin)
    with torch.no_grad():
        q = torch.sigmoid(attrkit.negated_margin(model, (toy.x_train, toy.y_train))).double()
    _close(scores, pairwise * q)
    default = _scores({"method": "trak", "solver": "diagonal-fisher"}, toy.task, toy.train_loader(), toy.test_loader())
    assert default.shape == scores.shape and bool(default.isfinite().all())


# -- (d) batch-size independence ------------------------------------------------------------


@pytest.mark.parametrize(("train_batch", "test_batch"), [(1, 1), (5, 4), (7, 6), (24, 2)])
def test_independent_of_batch_size(toy, train_batch, test_batch):
    spec = {"method": "if", "solver": SOLVER}
    reference = _scores(spec, toy.task, toy.train_loader(8), toy.test_loader(3))
    _close(_scores(spec, toy.task, toy.train_loader(train_batch), toy.test_loader(test_batch)), reference.double())
