"""The LDS metric against a brute-force computation with scipy."""

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

import attrkit


def _lds(correlation="spearman"):
    entry = attrkit.default_registry().get("metric", "lds")
    return entry.cls(entry.cls.Config(correlation=correlation))


def _ground_truth(seed=0, n_models=15, n_train=20, n_test=4):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_test, n_train, generator=gen)
    subsets = torch.rand(n_models, n_train, generator=gen) < 0.5
    values = -(subsets.float() @ scores.T) + torch.randn(n_models, n_test, generator=gen)
    return scores, {"subsets": subsets, "values": values}


@pytest.mark.parametrize("correlation, reference", [("spearman", spearmanr), ("pearson", pearsonr)])
def test_lds_matches_scipy(correlation, reference):
    scores, truth = _ground_truth()
    result = _lds(correlation).evaluate(scores, truth)
    predicted = truth["subsets"].double().numpy() @ scores.double().numpy().T
    expected = [reference(predicted[:, t], -truth["values"][:, t].numpy())[0] for t in range(scores.shape[0])]
    np.testing.assert_allclose(result.per_target.numpy(), expected, rtol=1e-5)
    assert result.value == pytest.approx(float(np.mean(expected)), rel=1e-5)
    assert result.value > 0.5


def test_lds_sign_convention_and_shapes():
    scores, truth = _ground_truth()
    assert _lds().evaluate(-scores, truth).value < -0.5
    with pytest.raises(ValueError, match="do not line up"):
        _lds().evaluate(scores[:, :5], truth)
    with pytest.raises(KeyError, match="needs ground truth"):
        _lds().evaluate(scores, {"subsets": truth["subsets"]})


def test_constant_target_is_left_out():
    scores, truth = _ground_truth()
    truth["values"][:, 0] = 1.0
    result = _lds().evaluate(scores, truth)
    assert torch.isnan(result.per_target[0]) and result.details["n_targets"] == 3
