"""Performance metrics against hand computations and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from audit.modules.performance import classification_metrics, expected_calibration_error


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
