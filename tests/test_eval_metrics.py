"""The evaluation metrics ``loo``, ``auc``, ``retraining``, ``pruning`` and ``brittleness``:
hand-built cases with known answers, one real retraining of a logistic regression, and the
conformance kit on each."""

import doctest

import pytest
import torch
from scipy.stats import pearsonr
from torch.utils.data import DataLoader, TensorDataset

import attrkit
from attrkit.functional import GroundTruthError, MissingGroundTruthError, detection_curve, importance_order, roc_auc, top_count
from attrkit.plugins import load_plugins
from attrkit.registry import Registry
from attrkit.targets import cross_entropy
from attrkit.testing import check_component
from attrkit_plugins import brittleness, label_metrics, loo, metrics, retraining_metrics

MODULES = {"loo": loo, "label": label_metrics, "retraining": retraining_metrics, "brittleness": brittleness}
REGISTRY = Registry(*load_plugins(entry_points=[], extra=[*MODULES.items(), ("metrics", metrics)]))


def _metric(name, **params):
    cls = REGISTRY.get("metric", name).cls
    return cls(cls.Config(**params))


@pytest.mark.parametrize("name", ["loo", "auc", "retraining", "pruning", "brittleness", "lds"])
def test_conformance(name):
    check_component(REGISTRY.get("metric", name))


@pytest.mark.parametrize("module", MODULES.values(), ids=MODULES)
def test_docstring_examples_run(module):
    assert doctest.testmod(module).failed == 0


# -- loo -------------------------------------------------------------------------------


def _loo_truth(scores, indices, effects, base):
    return {"indices": indices, "values": base + effects, "base": base}


@pytest.mark.parametrize("correlation", ["pearson", "spearman"])
def test_loo_is_one_for_proportional_effects_and_minus_one_reversed(correlation):
    scores = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    indices, base = torch.tensor([0, 2, 3, 7, 9]), torch.tensor([1.0, -2.0, 0.5])
    truth = _loo_truth(scores, indices, 0.3 * scores[:, indices].T, base)
    result = _metric("loo", correlation=correlation).evaluate(scores, truth)
    torch.testing.assert_close(result.per_target, torch.ones(3))
    assert result.value == pytest.approx(1.0) and result.details == {"n_removed": 5, "n_targets": 3}
    assert _metric("loo", correlation=correlation).evaluate(-scores, truth).value == pytest.approx(-1.0)


def test_loo_matches_scipy_and_leaves_out_constant_targets():
    gen = torch.Generator().manual_seed(1)
    scores, indices, base = torch.randn(4, 12, generator=gen), torch.arange(0, 12, 2), torch.randn(4, generator=gen)
    effects = scores[:, indices].T + torch.randn(6, 4, generator=gen)
    effects[:, 3] = 0.0  # removing anything leaves target 3 unchanged: correlation undefined
    result = _metric("loo").evaluate(scores, _loo_truth(scores, indices, effects, base))
    expected = [pearsonr(scores[t, indices].numpy(), effects[:, t].numpy())[0] for t in range(3)]
    torch.testing.assert_close(result.per_target[:3], torch.tensor(expected, dtype=torch.float32))
    assert torch.isnan(result.per_target[3]) and result.value == pytest.approx(sum(expected) / 3, rel=1e-5)


def test_loo_errors_name_shapes_and_keys():
    scores = torch.randn(3, 10)
    truth = {"indices": torch.tensor([0, 1]), "values": torch.randn(2, 4), "base": torch.randn(3)}
    with pytest.raises(GroundTruthError, match=r"scores \(3, 10\) \[n_test, n_train\].*values \(2, 4\) \[m, n_test\]"):
        _metric("loo").evaluate(scores, truth)
    with pytest.raises(MissingGroundTruthError, match=r"needs ground truth \['base', 'values'\]"):
        _metric("loo").evaluate(scores, {"indices": truth["indices"]})
    with pytest.raises(GroundTruthError, match="indices"):
        _metric("loo").evaluate(scores, {**truth, "indices": torch.tensor([0, 10]), "values": torch.randn(2, 3)})


# -- auc -------------------------------------------------------------------------------


def _brute_auc(scores, labels):
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


def test_auc_perfect_reversed_tied_and_brute_force():
    flipped = torch.tensor([True, False, False, True, False])
    rank = torch.tensor([5.0, 1.0, 2.0, 4.0, 3.0])
    auc = _metric("auc")
    assert auc.evaluate(rank, {"flipped": flipped}).value == 1.0
    assert auc.evaluate(-rank[None], {"flipped": flipped}).value == 0.0  # [1, n_train] is accepted too
    assert auc.evaluate(torch.zeros(5), {"flipped": flipped}).value == 0.5
    tied = torch.tensor([2.0, 1.0, 2.0, 3.0, 0.0])  # positive 2.0 ties with a negative: counts one half
    assert auc.evaluate(tied, {"flipped": flipped}).value == pytest.approx(5.5 / 6)
    gen = torch.Generator().manual_seed(0)
    scores, labels = torch.randint(0, 5, (200,), generator=gen).double(), torch.rand(200, generator=gen) < 0.3
    assert roc_auc(scores, labels) == pytest.approx(_brute_auc(scores, labels))


def test_detection_curve_counts_found_positives_and_shares_ties():
    labels = torch.arange(100) < 10
    result = _metric("auc").evaluate(-torch.arange(100.0), {"flipped": labels})
    assert result.details["curve"] == [1.0, 1.0, 1.0] and result.details["n_positive"] == 10
    assert detection_curve(torch.arange(100.0), labels, [0.1, 0.95]).tolist() == [0.0, 0.5]
    torch.testing.assert_close(detection_curve(torch.zeros(100), labels, [0.1, 0.3]), torch.tensor([0.1, 0.3], dtype=torch.float64))


def test_auc_at_group_level_any_or_threshold():
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
    flipped = torch.tensor([True, False, False, False, True, True, False, False])
    scores = torch.tensor([0.5, 0.1, 0.9, 0.2])  # one per group; group 2 has 2/3 flipped, group 0 has 1/2
    result = _metric("auc").evaluate(scores, {"flipped": flipped, "groups": groups})
    assert result.details["level"] == "group" and result.details["n_positive"] == 2
    assert result.value == pytest.approx(_brute_auc(scores, torch.tensor([True, False, True, False])))
    strict = _metric("auc", group_threshold=0.6).evaluate(scores, {"flipped": flipped, "groups": groups})
    assert strict.details["n_positive"] == 1 and strict.value == 1.0


def test_auc_errors():
    flipped = torch.tensor([True, False, False])
    with pytest.raises(GroundTruthError, match=r"scores \(4,\) \[n_train\] or \[n_groups\], flipped \(3,\) \[n_train\]"):
        _metric("auc").evaluate(torch.zeros(4), {"flipped": flipped})
    with pytest.raises(GroundTruthError, match="both classes"):
        _metric("auc").evaluate(torch.zeros(3), {"flipped": torch.zeros(3, dtype=torch.bool)})
    with pytest.raises(GroundTruthError, match=r"Tensor\[n\] or Tensor\[1, n\]"):
        _metric("auc").evaluate(torch.zeros(2, 3), {"flipped": flipped})
    with pytest.raises(KeyError, match="flipped"):
        _metric("auc").evaluate(torch.zeros(3), {})
    with pytest.raises(ValueError, match=r"fractions must be in \(0, 1\]"):
        REGISTRY.get("metric", "auc").cls.Config(fractions=(0.0,))


# -- retraining and pruning ------------------------------------------------------------


class _Recorder:
    """A fake ``retrain``: accuracy = kept share of a known per-example usefulness."""

    def __init__(self, usefulness):
        self.usefulness, self.masks = usefulness.double(), []

    def __call__(self, keep):
        self.masks.append(keep.clone())
        return float(self.usefulness[keep].sum() / self.usefulness.sum())


def test_retraining_removes_the_most_important_and_reports_the_mean_drop():
    usefulness = torch.arange(20, 0, -1)  # example 0 is the most useful
    scores = torch.stack([usefulness.float(), usefulness.float() / 2])  # sum over targets orders as usefulness
    retrain = _Recorder(usefulness)
    result = _metric("retraining", fractions=(0.1, 0.25)).evaluate(scores, {"retrain": retrain})
    total = usefulness.sum().item()
    drops = [(20 + 19) / total, (20 + 19 + 18 + 17 + 16) / total]
    assert result.details["removed"] == [2, 5] and result.details["base_accuracy"] == 1.0
    assert result.details["drops"] == pytest.approx(drops) and result.value == pytest.approx(sum(drops) / 2)
    assert result.details["retrains"] == 3 and retrain.masks[-1].all()
    assert not retrain.masks[1][:5].any() and retrain.masks[1][5:].all()
    assert _metric("retraining", fractions=(0.1, 0.25)).evaluate(-scores, {"retrain": retrain}).value < 0.1


def test_pruning_removes_the_least_important():
    usefulness = torch.arange(20, 0, -1)
    retrain = _Recorder(usefulness)
    result = _metric("pruning", fractions=(0.25, 0.5)).evaluate(usefulness[None].float(), {"retrain": retrain})
    total = usefulness.sum().item()
    accuracies = [1 - sum(range(1, 6)) / total, 1 - sum(range(1, 11)) / total]
    assert result.details["accuracies"] == pytest.approx(accuracies) and result.value == pytest.approx(sum(accuracies) / 2)
    assert result.details["retrains"] == 2 and retrain.masks[0][:15].all() and not retrain.masks[0][15:].any()


def test_group_removal_drops_whole_groups():
    groups = torch.tensor([0, 1, 1, 2, 2, 2, 3, 0])
    retrain = _Recorder(torch.ones(8))
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0]])  # group 1 first, then 3
    result = _metric("retraining", fractions=(0.25, 0.5)).evaluate(scores, {"retrain": retrain, "groups": groups})
    assert result.details["level"] == "group" and result.details["removed"] == [1, 2]
    assert retrain.masks[0].tolist() == [True, False, False, True, True, True, True, True]
    assert retrain.masks[1].tolist() == [True, False, False, True, True, True, False, True]
    with pytest.raises(GroundTruthError, match=r"scores \(1, 8\) \[n_test, n_groups\], groups \(8,\)"):
        _metric("retraining").evaluate(torch.zeros(1, 8), {"retrain": retrain, "groups": groups})


def test_rank_aggregation_weighs_targets_equally_and_ties_follow_the_seed():
    scores = torch.tensor([[100.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    retrain = _Recorder(torch.ones(4))
    _metric("retraining", fractions=(0.25,)).evaluate(scores, {"retrain": retrain})
    _metric("retraining", fractions=(0.25,), aggregate="rank").evaluate(scores, {"retrain": retrain})
    assert not retrain.masks[0][0] and not retrain.masks[2][3]  # sum: the outsized score wins; rank: example 3
    orders = {seed: importance_order(torch.zeros(50), seed) for seed in (0, 1)}
    assert torch.equal(orders[0], importance_order(torch.zeros(50), 0)) and not torch.equal(orders[0], orders[1])
    assert top_count(0.1, 30) == 3 and top_count(0.01, 50) == 1


def test_retraining_errors():
    with pytest.raises(KeyError, match="retrain"):
        _metric("retraining").evaluate(torch.zeros(2, 10), {})
    with pytest.raises(GroundTruthError, match="must return an accuracy"):
        _metric("pruning").evaluate(torch.zeros(2, 10), {"retrain": lambda keep: "high"})
    with pytest.raises(GroundTruthError, match="callable"):
        _metric("pruning").evaluate(torch.zeros(2, 10), {"retrain": 0.9})
    with pytest.raises(ValueError, match=r"fractions must each be in \(0, 1\)"):
        REGISTRY.get("metric", "pruning").cls.Config(fractions=(0.5, 1.0))


def test_real_retraining_of_logistic_regression_ranks_grad_dot_above_random():
    gen = torch.Generator().manual_seed(0)
    n_train, n_test = 80, 60
    y = torch.randint(0, 2, (n_train + n_test,), generator=gen)
    x = (2 * y[:, None] - 1) * torch.tensor([1.0, 0.5, 0.0, 0.0]) + torch.randn(n_train + n_test, 4, generator=gen)
    x_train, y_train, x_test, y_test = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    def fit(keep):  # L2-regularised logistic regression (2-class softmax), a few LBFGS steps from zero
        model = torch.nn.Linear(4, 2)
        torch.nn.init.zeros_(model.weight), torch.nn.init.zeros_(model.bias)
        opt = torch.optim.LBFGS(model.parameters(), max_iter=30, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[keep]), y_train[keep]) + 1e-2 * model.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        return model

    def retrain(keep):
        with torch.no_grad():
            return float((fit(keep)(x_test).argmax(1) == y_test).double().mean())

    task = attrkit.AttributionTask(model=fit(torch.ones(n_train, dtype=torch.bool)), loss_fn=cross_entropy)
    train, test = DataLoader(TensorDataset(x_train, y_train), batch_size=40), DataLoader(TensorDataset(x_test, y_test), batch_size=60)
    scores = attrkit.compose({"method": "grad-dot"}, task).fit(train).attribute(test)
    metric = _metric("retraining", fractions=(0.1, 0.2, 0.3))
    grad_dot = metric.evaluate(scores, {"retrain": retrain}).value
    random = [metric.evaluate(torch.randn(scores.shape, generator=gen), {"retrain": retrain}).value for _ in range(3)]
    assert grad_dot > 0.05 and grad_dot > max(random) + 0.03


# -- brittleness -----------------------------------------------------------------------


class _Predictor:
    """A fake ``retrain_predict``: target t flips once the removed examples' true
    influence on it exceeds ``thresholds[t]``; records every call."""

    def __init__(self, influence, labels, thresholds):
        self.influence, self.labels, self.thresholds, self.calls = influence, labels, thresholds, []

    def __call__(self, keep, targets):
        self.calls.append((keep.clone(), targets.clone()))
        lost = self.influence[targets][:, ~keep].sum(1)
        return torch.where(lost > self.thresholds[targets], 1 - self.labels[targets], self.labels[targets])


def test_brittleness_finds_the_smallest_flipping_k():
    influence = torch.arange(20, 0, -1.0).repeat(3, 1)  # top-k proponents remove 20 + 19 + ... influence
    predictor = _Predictor(influence, torch.tensor([0, 1, 1]), torch.tensor([15.0, 50.0, 1000.0]))
    truth = {"retrain_predict": predictor, "labels": predictor.labels}
    result = _metric("brittleness", ks=(4, 1, 2)).evaluate(influence, truth)
    assert result.details["ks"] == [1, 2, 4] and result.details["smallest_k"] == [1, 4, None]
    assert result.value == pytest.approx(2 / 3) and result.per_target.tolist() == [1.0, 1.0, 0.0]
    # rows are identical, so each k needs one retraining for all pending targets; flipped targets are not retried
    assert result.details["retrains"] == 3 and [c[1].tolist() for c in predictor.calls] == [[0, 1, 2], [1, 2], [1, 2]]
    reversed_ = _metric("brittleness", ks=(1, 2, 4)).evaluate(-influence, {**truth, "retrain_predict": predictor})
    assert reversed_.value == pytest.approx(0.0)


def test_brittleness_caps_targets_and_checks_inputs():
    gen = torch.Generator().manual_seed(0)
    influence = torch.randn(5, 30, generator=gen)
    predictor = _Predictor(influence, torch.zeros(5, dtype=torch.long), torch.full((5,), 2.0))
    truth = {"retrain_predict": predictor, "labels": predictor.labels}
    result = _metric("brittleness", ks=(2, 4, 8), max_targets=2).evaluate(influence, truth)
    assert result.details["targets"] == [0, 1] and torch.isnan(result.per_target[2:]).all()
    with pytest.raises(GroundTruthError, match="below n_train=30"):
        _metric("brittleness").evaluate(influence, truth)
    with pytest.raises(GroundTruthError, match=r"labels \(4,\) \[n_test\]"):
        _metric("brittleness", ks=(2,)).evaluate(influence, {**truth, "labels": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(GroundTruthError, match=r"must return LongTensor\[1\]"):
        _metric("brittleness", ks=(2,)).evaluate(influence, {**truth, "retrain_predict": lambda keep, t: torch.zeros(2)})
    with pytest.raises(KeyError, match=r"\['labels'\]"):
        _metric("brittleness", ks=(2,)).evaluate(influence, {"retrain_predict": predictor})
