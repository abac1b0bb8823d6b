"""Performance metrics against hand computations and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from audit.metrics import classification_metrics, expected_calibration_error


def test_ece_by_hand():
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.55, 0.65, 0.95, 0.95])
    ece, table = expected_calibration_error(y, p, n_bins=2)
    # bin [0, .5): p mean .10, y mean 0 -> gap .10 (2 rows); bin [.5, 1]: p mean .775, y mean .75 -> gap .025 (4 rows)
    assert ece == pytest.approx((2 * 0.10 + 4 * 0.025) / 6)
    assert list(table["rows"]) == [2, 4]


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.uniform(0, 0.7, 500), 0, 1)
    m = classification_metrics(y, p, threshold=0.5)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["log_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15)))
    assert m["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))


@pytest.mark.parametrize("case", ["ties", "float32", "extremes", "few_positives", "no_predicted_positive", "tiny"])
def test_metrics_equal_sklearn_to_1e12(case):
    """classification_metrics computes every metric itself (issue 17: scikit-learn's checks cost 10 s on 5M rows);
    each equals scikit-learn's within 1e-12, accuracy and F1 to the bit, with ties, float32 scores, scores of exactly
    0 and 1, rare positives, no predicted positive and a handful of rows."""
    from sklearn.metrics import accuracy_score, average_precision_score, brier_score_loss, f1_score

    rng = np.random.default_rng(7)
    n = 4 if case == "tiny" else 20000
    y = (rng.uniform(size=n) < (0.02 if case == "few_positives" else 0.4)).astype(int)
    p = np.clip(0.3 * y + 0.7 * rng.uniform(size=n), 0, 1)
    if case == "ties":
        p = np.round(p, 2)
    elif case == "float32":
        p = p.astype(np.float32).astype(np.float64)
    elif case == "extremes":
        p[rng.uniform(size=n) < 0.1] = 0.0
        p[rng.uniform(size=n) < 0.1] = 1.0
    elif case == "no_predicted_positive":
        p = p * 0.4
    elif case == "tiny":
        y, p = np.array([0, 1, 1, 0]), np.array([0.2, 0.9, 0.2, 0.6])
    threshold = 0.5
    m = classification_metrics(y, p, threshold=threshold)
    pred = (p >= threshold).astype(int)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert m["accuracy"] == accuracy_score(y, pred)
    assert m["f1"] == f1_score(y, pred, zero_division=0)
    assert m["log_loss"] == pytest.approx(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1]), abs=1e-12)
    assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert m["positive_rate"] == y.mean() and m["rows"] == n


def test_metrics_of_one_class_and_bad_scores():
    m = classification_metrics(np.ones(5, dtype=int), np.linspace(0.1, 0.9, 5), threshold=0.5)
    assert np.isnan(m["roc_auc"]) and np.isnan(m["pr_auc"]) and m["accuracy"] == 0.6
    with pytest.raises(ValueError, match="NaN or infinite"):
        classification_metrics(np.array([0, 1]), np.array([0.2, np.nan]), threshold=0.5)


def test_weighted_metrics_equal_sklearn_with_sample_weight():
    from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score

    from audit.metrics import expected_calibration_error, weighted_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 3000)
    p = np.round(np.clip(0.3 * y + 0.7 * rng.uniform(size=3000), 0, 1), 2)  # many ties
    W = rng.poisson(1.0, size=(3000, 3)).astype(float)
    out = weighted_metrics(y, p, W, threshold=0.5)
    for b in range(3):
        w = W[:, b]
        assert out["roc_auc"][b] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
        assert out["accuracy"][b] == pytest.approx(accuracy_score(y, p >= 0.5, sample_weight=w), abs=1e-12)
        assert out["f1"][b] == pytest.approx(f1_score(y, p >= 0.5, sample_weight=w), abs=1e-12)
        assert out["log_loss"][b] == pytest.approx(log_loss(y, p.clip(1e-15, 1 - 1e-15), sample_weight=w), abs=1e-12)
        assert out["brier"][b] == pytest.approx(brier_score_loss(y, p, sample_weight=w), abs=1e-12)
        rep = np.repeat(np.arange(3000), w.astype(int))  # a weight is that many copies of the row
        assert out["ece"][b] == pytest.approx(expected_calibration_error(y[rep], p[rep])[0], abs=1e-12)


def test_whole_number_weight_auc_is_the_general_path_to_the_bit():
    """Issue 17: bootstrap counts take the integer path of weighted_auc; it must equal the general (grouped) path
    exactly, with ties inside and across classes, and both must equal scikit-learn; other weights (dataset.weight
    times the counts) take the same sums in floating point, equal to the general path to 1e-12."""
    from sklearn.metrics import roc_auc_score

    from audit.metrics import _weighted_auc_counts, _weighted_auc_grouped, weighted_auc

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 5000)
    p = np.clip(0.3 * y + 0.7 * rng.uniform(size=5000), 0, 1)
    p[:2000] = np.round(p[:2000], 2)  # ties
    W = rng.poisson(1.0, size=(5000, 40))
    W[:, 0] = 0  # an empty resample column gives nan on both paths
    W[:, 1] = 1
    fast, general = _weighted_auc_counts(y, p, W.astype(np.int32)), _weighted_auc_grouped(y, p, W.astype(float))
    np.testing.assert_array_equal(fast, general)
    np.testing.assert_array_equal(weighted_auc(y, p, W.astype(float)), general)
    assert np.isnan(fast[0]) and fast[1] == pytest.approx(roc_auc_score(y, p), abs=1e-15)
    for b in range(2, 6):
        assert fast[b] == pytest.approx(roc_auc_score(y, p, sample_weight=W[:, b]), abs=1e-12)
    frac = W.astype(float) * rng.uniform(0.1, 3.0, size=(5000, 1))
    np.testing.assert_allclose(weighted_auc(y, p, frac), _weighted_auc_grouped(y, p, frac), rtol=0, atol=1e-12)
    for b in range(2, 6):
        assert weighted_auc(y, p, frac)[b] == pytest.approx(roc_auc_score(y, p, sample_weight=frac[:, b]), abs=1e-12)
