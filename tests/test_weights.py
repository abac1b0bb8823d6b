"""``dataset.weight`` (issue 23): every weighted estimate against scikit-learn's ``sample_weight``, fairlearn, or the
same rows repeated; the weight column never a model input; weights of 1 give the unweighted report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from audit.cli import main
from audit.explain.partial_dependence import partial_dependence
from audit.explain.permutation import permutation_importance
from audit.explain.shapley import summarize_background
from audit.fairness import calibration_gap_null_p, encode_groups, group_fairness
from audit.metrics import bootstrap_intervals, classification_metrics, expected_calibration_error, make_scorer
from tests.conftest import base_config, light_config, synthetic_frame, write_config


def _scores(n: int = 3000, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = np.clip(0.3 * y + 0.7 * rng.uniform(size=n), 0, 1).round(3)  # rounded: ties, as real scores have
    w = rng.integers(1, 6, n).astype(float)
    return y, p, w


def test_weighted_metrics_equal_scikit_learn_sample_weight():
    y, p, w = _scores()
    w = w * np.random.default_rng(1).uniform(0.5, 2.0, len(w))  # not whole numbers
    m = classification_metrics(y, p, threshold=0.5, sample_weight=w)
    d = (p >= 0.5).astype(int)
    assert m["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p, sample_weight=w), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(skm.average_precision_score(y, p, sample_weight=w), abs=1e-12)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, d, sample_weight=w), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(y, d, sample_weight=w), abs=1e-12)
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, p, sample_weight=w), abs=1e-12)
    assert m["brier"] == pytest.approx(skm.brier_score_loss(y, p, sample_weight=w), abs=1e-12)
    assert m["positive_rate"] == pytest.approx(np.average(y, weights=w), abs=1e-12)
    assert m["rows"] == len(y)
    # the unweighted figures differ: the weights are used
    assert m["roc_auc"] != pytest.approx(classification_metrics(y, p, threshold=0.5)["roc_auc"], abs=1e-6)


def test_whole_number_weights_equal_repeated_rows():
    y, p, w = _scores()
    k = w.astype(int)
    yr, pr = np.repeat(y, k), np.repeat(p, k)
    weighted = classification_metrics(y, p, threshold=0.5, sample_weight=w)
    repeated = classification_metrics(yr, pr, threshold=0.5)
    for key in ("roc_auc", "pr_auc", "accuracy", "f1", "log_loss", "brier", "ece", "positive_rate"):
        assert weighted[key] == pytest.approx(repeated[key], abs=1e-12), key
    ece_w, table_w = expected_calibration_error(y, p, sample_weight=w)
    ece_r, table_r = expected_calibration_error(yr, pr)
    assert ece_w == pytest.approx(ece_r, abs=1e-12)
    np.testing.assert_allclose(table_w["weight"], table_r["rows"])
    np.testing.assert_array_equal(table_w["rows"], np.bincount(np.clip((p * 10).astype(int), 0, 9), minlength=10))


def test_weighted_intervals_move_with_the_weights():
    y, p, w = _scores()
    heavy = np.where((p >= 0.5) == y, 5.0, 1.0)  # the right decisions weigh 5 times more: a higher accuracy
    lo, hi = bootstrap_intervals(y, p, threshold=0.5, sample_weight=heavy)["accuracy"]
    acc_w = classification_metrics(y, p, threshold=0.5, sample_weight=heavy)["accuracy"]
    acc = classification_metrics(y, p, threshold=0.5)["accuracy"]
    assert lo < acc_w < hi and not lo < acc < hi


def test_weighted_group_rates_equal_fairlearn_and_repeated_rows():
    from fairlearn.metrics import MetricFrame, false_positive_rate, selection_rate, true_positive_rate

    y, p, w = _scores(4000, seed=2)
    groups = np.random.default_rng(3).choice(["a", "b", "c"], size=len(y), p=[0.5, 0.3, 0.2])
    res = group_fairness(y, p, groups, threshold=0.5, n_bootstrap=0, sample_weight=w)
    d = (p >= 0.5).astype(int)
    frame = MetricFrame(
        metrics={"selection_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate},
        y_true=y, y_pred=d, sensitive_features=groups,
        sample_params={k: {"sample_weight": w} for k in ("selection_rate", "tpr", "fpr")},
    )  # fmt: skip
    table = res.table.set_index("group")
    for m in ("selection_rate", "tpr", "fpr"):
        np.testing.assert_allclose(table[m].to_numpy(), frame.by_group[m].to_numpy(), atol=1e-12, err_msg=m)
    # group sizes stay row counts; the weight column holds each group's weight
    np.testing.assert_array_equal(table["count"].to_numpy(), pd.Series(groups).value_counts().sort_index())
    np.testing.assert_allclose(table["weight"].to_numpy(), pd.Series(w).groupby(groups).sum().to_numpy())
    # whole-number weights: every rate, ECE and ROC AUC as on the rows repeated that many times
    k = w.astype(int)
    rep = group_fairness(np.repeat(y, k), np.repeat(p, k), np.repeat(groups, k), threshold=0.5, n_bootstrap=0)
    rep_table = rep.table.set_index("group")
    for m in ("base_rate", "selection_rate", "tpr", "fpr", "precision", "ece", "roc_auc"):
        np.testing.assert_allclose(table[m], rep_table[m], atol=1e-12, err_msg=m)
    measures = res.measures.set_index("measure")["value"]
    np.testing.assert_allclose(measures, rep.measures.set_index("measure")["value"], atol=1e-12)


def test_weighted_fairness_intervals_cover_the_weighted_point():
    y, p, w = _scores(4000, seed=4)
    groups = np.random.default_rng(5).choice(["a", "b"], size=len(y))
    res = group_fairness(y, p, groups, threshold=0.5, n_bootstrap=200, random_state=0, sample_weight=w)
    m = res.measures.set_index("measure")
    for name in ("demographic_parity_difference", "disparate_impact_ratio"):
        assert m.loc[name, "ci_low"] <= m.loc[name, "value"] <= m.loc[name, "ci_high"], name
    assert {"selection_rate_low", "selection_rate_high"} <= set(res.table.columns)


def test_weighted_calibration_null_weighs_the_groups_ece():
    rng = np.random.default_rng(6)
    p = rng.uniform(size=600)
    _, codes = encode_groups(np.repeat(np.array(["a", "b"]), 300))
    ones = calibration_gap_null_p(p, codes, np.array([True, True]), 0, 0.05, seed=1)
    unit = calibration_gap_null_p(p, codes, np.array([True, True]), 0, 0.05, seed=1, sample_weight=np.ones(600))
    assert ones == unit
    # a few rows carrying nearly all the weight: the ECE is that of a handful of rows, so large gaps are common
    skewed = np.where(rng.uniform(size=600) < 0.03, 100.0, 0.01)
    heavy = calibration_gap_null_p(p, codes, np.array([True, True]), 0, 0.05, seed=1, sample_weight=skewed)
    assert heavy > ones


def test_weighted_scorers_equal_scikit_learn():
    y, p, w = _scores()
    for metric, ref in (
        ("roc_auc", lambda: skm.roc_auc_score(y, p, sample_weight=w)),
        ("accuracy", lambda: skm.accuracy_score(y, p >= 0.5, sample_weight=w)),
        ("log_loss", lambda: -skm.log_loss(y, p, sample_weight=w)),
        ("brier", lambda: -skm.brier_score_loss(y, p, sample_weight=w)),
        ("balanced_accuracy", lambda: skm.balanced_accuracy_score(y, p >= 0.5, sample_weight=w)),
    ):
        assert make_scorer(metric)(y, p, sample_weight=w) == pytest.approx(ref(), abs=1e-12), metric


def test_weighted_permutation_importance_agrees_with_scikit_learn():
    from sklearn.inspection import permutation_importance as sk_permutation_importance
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    n = 4000
    X = rng.normal(size=(n, 3))
    # x0 matters only in the rows that weigh; x1 only in those that hardly weigh
    heavy = rng.uniform(size=n) < 0.5
    logit = np.where(heavy, 3 * X[:, 0], 3 * X[:, 1])
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    w = np.where(heavy, 10.0, 0.1)
    Xf = np.column_stack([X, heavy])
    model = LogisticRegression().fit(np.column_stack([Xf, Xf[:, 0] * Xf[:, 3], Xf[:, 1] * Xf[:, 3]]), y)

    def predict(A):
        return model.predict_proba(np.column_stack([A, A[:, 0] * A[:, 3], A[:, 1] * A[:, 3]]))[:, 1]

    from sklearn.base import BaseEstimator, ClassifierMixin

    class Wrapped(ClassifierMixin, BaseEstimator):  # scikit-learn's permutation importance on the same function
        classes_ = np.array([0, 1])

        def fit(self, *a):
            return self

        def predict_proba(self, A):
            return np.column_stack([1 - predict(A), predict(A)])

    ours = permutation_importance(
        predict, Xf, y, feature_names=["x0", "x1", "x2", "heavy"], metric="roc_auc", n_repeats=30, random_state=0,
        sample_weight=w,
    )  # fmt: skip
    ref = sk_permutation_importance(
        Wrapped(), Xf, y, scoring="roc_auc", n_repeats=30, random_state=0, sample_weight=w
    ).importances_mean
    np.testing.assert_allclose(ours.importances_mean, ref, atol=0.01)
    assert ours.importances_mean[0] > 0.1 > ours.importances_mean[1]  # the weights decide which feature matters
    plain = permutation_importance(
        predict, Xf, y, feature_names=["x0", "x1", "x2", "heavy"], metric="roc_auc", n_repeats=30, random_state=0
    )
    assert plain.importances_mean[1] > 0.1


def test_weighted_partial_dependence_equals_scikit_learn():
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.inspection import partial_dependence as sk_partial_dependence

    rng = np.random.default_rng(8)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=30, random_state=0).fit(X, y)
    w = rng.uniform(0, 5, len(X))
    ref = sk_partial_dependence(
        model, X, [0], sample_weight=w, method="brute", response_method="predict_proba", grid_resolution=7,
        percentiles=(0.05, 0.95),
    )  # fmt: skip
    grid = ref["grid_values"][0]
    ours = partial_dependence(lambda A: model.predict_proba(A)[:, 1], X, 0, grid, sample_weight=w)
    np.testing.assert_allclose(ours.average, ref["average"][0], atol=1e-12)
    plain = partial_dependence(lambda A: model.predict_proba(A)[:, 1], X, 0, grid)
    assert not np.allclose(plain.average, ours.average, atol=1e-6)


def test_weighted_background_estimates_the_weighted_mean():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(5000, 2))
    w = np.where(X[:, 0] > 0, 9.0, 1.0)  # the positive half weighs 9 times more
    target = np.average(X[:, 0], weights=w)
    for method in ("sample", "kmeans"):
        B, bw = summarize_background(X, 200, method=method, random_state=0, sample_weight=w)
        assert bw.sum() == pytest.approx(1.0)
        assert float(B[:, 0] @ bw) == pytest.approx(target, abs=0.12), method
        B0, bw0 = summarize_background(X, 200, method=method, random_state=0)
        assert float(B0[:, 0] @ bw0) == pytest.approx(X[:, 0].mean(), abs=0.12)


def _weighted_folder(tmp_path, weights):
    frame = synthetic_frame().assign(wt=weights)
    frame.to_csv(tmp_path / "data.csv", index=False)
    return tmp_path


def test_a_weighted_audit_weights_its_numbers_and_never_feeds_the_weight_to_the_model(tmp_path):
    w = np.random.default_rng(10).integers(1, 9, 800).astype(float)
    folder = _weighted_folder(tmp_path, w)
    cfg = light_config()
    cfg["dataset"]["weight"] = "wt"
    assert main(["run", str(write_config(folder, cfg)), "-q"]) in (0, 1)
    report = json.loads((folder / "reports" / "small" / "latest" / "report.json").read_text())
    schema = json.loads((folder / "reports" / "small" / "latest" / "model" / "schema.json").read_text())
    assert "wt" not in [f["name"] for f in schema["features"]]
    assert any("dataset.weight 'wt' weights the performance metrics" in n for n in json.dumps(report).split('"'))
    from audit.config import load_config
    from audit.data import load_dataset

    ds = load_dataset(load_config(folder / "small.yaml"))
    assert "wt" not in ds.X_test.columns and ds.w_test is not None and len(ds.w_test) == len(ds.X_test)
    scores = pd.read_parquet(folder / "reports" / "small" / "latest" / "scores.parquet")
    p = scores.sort_values("row")["score"].to_numpy()
    test = report["modules"]["performance"]["data"]["test"]
    expected = classification_metrics(ds.y_test, p, threshold=0.5, sample_weight=ds.w_test)
    assert test["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-9)
    assert test["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-9)


def test_weights_of_one_give_the_unweighted_numbers(tmp_path):
    runs = []
    for name, weighted in (("plain", False), ("ones", True)):
        folder = tmp_path / name
        folder.mkdir()
        _weighted_folder(folder, np.ones(800))
        cfg = base_config()
        cfg["modules"]["partial_dependence"]["enabled"] = True
        cfg["local"]["enabled"] = True
        cfg["network"] = {"enabled": False}
        if weighted:
            cfg["dataset"]["weight"] = "wt"
        else:
            cfg["dataset"]["drop"] = ["wt"]
        assert main(["run", str(write_config(folder, cfg)), "-q"]) in (0, 1)
        runs.append(json.loads((folder / "reports" / "small" / "latest" / "report.json").read_text()))
    plain, ones = runs
    for section in ("performance", "fairness", "permutation_importance", "partial_dependence"):
        a, b = plain["modules"][section]["data"], ones["modules"][section]["data"]
        _close(a, b, section)


def _close(a, b, where: str) -> None:
    """Equal structures, numbers equal to 1e-9 (a weighted sum of ones is not always the same bits as a count)."""
    if isinstance(a, dict):
        shared = set(a) & set(b)
        assert shared, where
        for k in shared:
            _close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list) and a and not isinstance(a[0], str):
        assert len(a) == len(b), where
        for i, (x, z) in enumerate(zip(a, b, strict=True)):
            _close(x, z, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-9, nan_ok=True), where
    else:
        assert a == b, where


def test_the_paired_comparison_weighs_rows_as_the_sections_do():
    """The comparison with the previous run (a paired bootstrap over the same rows) uses the same weights: the
    weighted change of a measure lies in its weighted interval, and the unweighted interval misses it."""
    from audit.fairness import paired_measure_changes

    rng = np.random.default_rng(12)
    n = 6000
    y = rng.integers(0, 2, n)
    groups = np.where(rng.uniform(size=n) < 0.5, "a", "b")
    heavy = rng.uniform(size=n) < 0.2
    w = np.where(heavy, 20.0, 1.0)
    p_old = rng.uniform(size=n)
    p_new = np.where(heavy & (groups == "b"), np.minimum(p_old + 0.4, 1.0), p_old)  # only heavy rows of b move

    def dp(p, weights):
        res = group_fairness(y, p, groups, threshold=0.5, n_bootstrap=0, sample_weight=weights)
        return float(res.measures.set_index("measure").loc["demographic_parity_difference", "value"])

    change = dp(p_new, w) - dp(p_old, w)
    key = ("g", "demographic_parity_difference")
    kw = dict(min_group_size=30, n_replicates=200, seed=0)
    weighted = paired_measure_changes(y, (p_old, 0.5), (p_new, 0.5), {"g": groups}, sample_weight=w, **kw)[key]
    plain = paired_measure_changes(y, (p_old, 0.5), (p_new, 0.5), {"g": groups}, **kw)[key]
    assert weighted[0] <= change <= weighted[1]
    assert not plain[0] <= change <= plain[1]
