"""Grad-Dot and Grad-Cos against per-example gradients from a plain autograd loop."""

import pytest
import torch

import attrkit
from attrkit.testing import autograd_gradients, toy_problem


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture
def brute(toy):
    model, fn = toy.task.model, toy.task.loss_fn
    return autograd_gradients(model, fn, toy.x_test, toy.y_test), autograd_gradients(model, fn, toy.x_train, toy.y_train)


def test_grad_dot_matches_autograd(toy, brute):
    test, train = brute
    scores = attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())
    assert _max_rel(scores, test @ train.T) < 1e-4


def test_grad_cos_matches_autograd(toy, brute):
    test, train = brute
    expected = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T
    scores = attrkit.compose({"method": "grad-cos"}, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())
    assert _max_rel(scores, expected) < 1e-4


def test_self_influence(toy, brute):
    _, train = brute
    dot = attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader())
    assert _max_rel(dot.self_influence(toy.train_loader()), (train * train).sum(1)) < 1e-4
    cos = attrkit.compose({"method": "grad-cos"}, toy.task).fit(toy.train_loader())
    assert torch.allclose(cos.self_influence(toy.train_loader()), torch.ones(len(toy.y_train)), atol=1e-5)


def test_selected_parameters_only(toy):
    spec = {"method": "grad-dot", "gradients": {"name": "per-example", "params": ["2.*"]}}
    scores = attrkit.compose(spec, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())
    full_test = autograd_gradients(toy.task.model, toy.task.loss_fn, toy.x_test, toy.y_test)
    full_train = autograd_gradients(toy.task.model, toy.task.loss_fn, toy.x_train, toy.y_train)
    last = slice(6 * 5 + 6, None)  # after 0.weight [6, 5] and 0.bias [6]
    assert _max_rel(scores, full_test[:, last] @ full_train[:, last].T) < 1e-4


def test_target_fn_is_used_on_the_test_side(toy):
    task = attrkit.AttributionTask(model=toy.task.model, loss_fn=toy.task.loss_fn, target_fn=attrkit.negated_margin)
    scores = attrkit.compose({"method": "grad-dot"}, task).fit(toy.train_loader()).attribute(toy.test_loader())
    test = autograd_gradients(toy.task.model, attrkit.negated_margin, toy.x_test, toy.y_test)
    train = autograd_gradients(toy.task.model, toy.task.loss_fn, toy.x_train, toy.y_train)
    assert _max_rel(scores, test @ train.T) < 1e-4


def test_sign_convention_a_step_on_a_proponent_lowers_the_target():
    toy = toy_problem(n_train=12, n_test=1, hidden=0, seed=3)
    scores = attrkit.compose({"method": "grad-dot"}, toy.task).fit(toy.train_loader()).attribute(toy.test_loader())[0]
    model, loss = toy.task.model, toy.task.loss_fn
    before = loss(model, (toy.x_test, toy.y_test)).item()
    for i in (int(scores.argmax()), int(scores.argmin())):
        copy = torch.nn.Sequential(torch.nn.Linear(5, 3))
        copy.load_state_dict(model.state_dict())
        step = torch.optim.SGD(copy.parameters(), lr=1e-3)
        loss(copy, (toy.x_train[i : i + 1], toy.y_train[i : i + 1])).sum().backward()
        step.step()
        change = loss(copy, (toy.x_test, toy.y_test)).item() - before
        assert (change < 0) == (i == int(scores.argmax())), (i, change)


def test_checkpoints_are_summed_as_members(toy):
    state = toy.task.model.state_dict()
    doubled = {k: v * 2 for k, v in state.items()}
    task = attrkit.AttributionTask(model=toy.task.model, loss_fn=toy.task.loss_fn, checkpoints=[state, doubled])
    both = attrkit.compose({"method": "grad-dot"}, task).fit(toy.train_loader()).attribute(toy.test_loader())
    single = [
        attrkit.compose({"method": "grad-dot"}, attrkit.AttributionTask(model=toy.task.model, loss_fn=toy.task.loss_fn, checkpoints=[s]))
        .fit(toy.train_loader())
        .attribute(toy.test_loader())
        for s in (state, doubled)
    ]
    assert torch.allclose(both, single[0] + single[1], rtol=1e-5, atol=1e-6)
    assert torch.equal(toy.task.model.state_dict()["0.weight"], state["0.weight"])


def test_batchnorm_uses_running_statistics_in_eval_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5), torch.nn.Linear(5, 2))
    model.train()
    with torch.no_grad():
        model(torch.randn(64, 4) * 3 + 1)  # non-trivial running statistics
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    task = attrkit.AttributionTask(model=model, loss_fn=attrkit.cross_entropy)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    scores = attrkit.compose({"method": "grad-dot"}, task).fit(loader).attribute(loader)
    assert model.training  # the user's mode is restored
    model.eval()
    grads = autograd_gradients(model, attrkit.cross_entropy, x, y)
    assert _max_rel(scores, grads @ grads.T) < 1e-4


def test_dict_batches():
    torch.manual_seed(0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(11, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, input_ids, mask):
            h = (self.emb(input_ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            return self.head(h)

    ids, mask = torch.randint(0, 11, (6, 5)), torch.ones(6, 5)
    labels = torch.randint(0, 2, (6,))
    batches = [{"input_ids": ids[i : i + 3], "mask": mask[i : i + 3], "labels": labels[i : i + 3]} for i in (0, 3)]
    task = attrkit.AttributionTask(model=Model(), loss_fn=attrkit.cross_entropy)
    scores = attrkit.compose({"method": "grad-dot"}, task).fit(batches).attribute(batches)
    rows = []
    for i in range(6):
        value = attrkit.cross_entropy(task.model, {"input_ids": ids[i : i + 1], "mask": mask[i : i + 1], "labels": labels[i : i + 1]})
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(value.sum(), list(task.model.parameters()))]))
    grads = torch.stack(rows)
    assert _max_rel(scores, grads @ grads.T) < 1e-4
