"""Explainers against ground truth and reference implementations (scikit-learn)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.inspection import partial_dependence as sk_partial_dependence
from sklearn.inspection import permutation_importance as sk_permutation_importance
from sklearn.linear_model import LinearRegression
from sklearn.metrics import roc_auc_score

from audit.explain.ale import ale_2d, ale_categorical, ale_numeric, category_order
from audit.explain.interaction import h_statistic
from audit.explain.partial_dependence import partial_dependence, partial_dependence_2d, quantile_grid
from audit.explain.permutation import permutation_importance
from audit.metrics import make_scorer, roc_auc_fast


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 3))
    X = (X - X.mean(0)) / X.std(0)
    coef = np.array([3.0, -1.5, 0.5])
    y = X @ coef
    return X, y, coef, LinearRegression().fit(X, y)


def test_permutation_importance_of_standardised_linear_model_is_2_coef_squared(linear):
    X, y, coef, model = linear
    res = permutation_importance(
        model.predict, X, y, feature_names=["a", "b", "c"], metric="neg_mean_squared_error", n_repeats=5, random_state=0
    )
    np.testing.assert_allclose(res.importances_mean, 2 * coef**2, rtol=0.03)


def test_permutation_importance_agrees_with_sklearn_within_intervals(linear):
    X, y, _, model = linear
    ours = permutation_importance(
        model.predict,
        X,
        y,
        feature_names=["a", "b", "c"],
        metric="neg_mean_squared_error",
        n_repeats=10,
        random_state=1,
    )
    ref = sk_permutation_importance(model, X, y, scoring="neg_mean_squared_error", n_repeats=10, random_state=1)
    lo, hi = ours.interval()
    sk_half = 2.3 * ref.importances_std / np.sqrt(10)
    # the two intervals overlap for every feature
    assert np.all(lo <= ref.importances_mean + sk_half) and np.all(ref.importances_mean - sk_half <= hi)
    np.testing.assert_allclose(ours.importances_mean, ref.importances_mean, rtol=0.02)


def test_permutation_importance_groups_dummy_features_and_determinism():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)

    def f(A):
        return 1 / (1 + np.exp(-(A[:, 0] + A[:, 1])))

    a = permutation_importance(
        f, X, y, feature_names=["x0", "x1", "noise"], groups={"pair": ["x0", "x1"]}, n_repeats=3, random_state=7
    )
    b = permutation_importance(
        f, X, y, feature_names=["x0", "x1", "noise"], groups={"pair": ["x0", "x1"]}, n_repeats=3, random_state=7
    )
    assert a.names == ["pair", "noise"]
    np.testing.assert_array_equal(a.importances, b.importances)
    assert a.importances_mean[0] > 0.3 and np.all(a.importances[1] == 0)  # unused feature: exactly zero
    assert a.rows_evaluated == 3000 * (1 + 2 * 3)


@pytest.mark.parametrize("share", [0.5, 0.1, 0.9])  # positives the smaller, the larger class, or neither
def test_fast_auc_equals_sklearn_with_ties(share):
    rng = np.random.default_rng(3)
    y = (rng.uniform(size=5000) < share).astype(int)
    p = np.round(rng.uniform(size=5000), 2)  # many ties
    assert roc_auc_fast(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_fast_auc_counts_the_same_pairs_from_either_class():
    """Issue 17: the pairs are counted by looking the smaller class up in the larger one; the counts, hence the
    value, are the same bits as looking every positive up in the negatives."""
    from audit.metrics import roc_auc_sorted

    rng = np.random.default_rng(5)
    for n_pos, n_neg in [(3000, 700), (700, 3000), (1, 50), (50, 1)]:
        pos = np.sort(np.round(rng.uniform(size=n_pos), 2).astype(np.float32))
        neg = np.sort(np.round(rng.uniform(size=n_neg) * 0.9, 2).astype(np.float32))
        below = np.searchsorted(neg, pos, side="left").sum()
        not_above = np.searchsorted(neg, pos, side="right").sum()
        assert roc_auc_sorted(pos, neg) == float((below + not_above) / 2 / (n_pos * n_neg))


def test_sklearn_scorer_names_work_through_the_wrapper():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.2, 0.9, 0.4, 0.6, 0.7])
    assert make_scorer("balanced_accuracy")(y, p) == pytest.approx(0.5 * (1 / 2 + 2 / 3))
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        make_scorer("nope")


@pytest.fixture(scope="module")
def classifier():
    rng = np.random.default_rng(0)
    n = 1500
    X = np.column_stack([rng.normal(size=n), rng.uniform(size=n), rng.integers(0, 4, n).astype(float)])
    y = ((X[:, 0] + X[:, 1] * (X[:, 2] - 1.5) + rng.normal(0, 0.5, n)) > 0).astype(int)
    model = GradientBoostingClassifier(n_estimators=30, random_state=0).fit(X, y)
    return X[:300], model


@pytest.mark.parametrize("j", [0, 1, 2])
def test_pd_equals_sklearn_brute_on_the_same_grid(classifier, j):
    X, model = classifier
    grid = np.unique(X[:, j]) if j == 2 else quantile_grid(X[:, j], 10)
    ours = partial_dependence(lambda A: model.predict_proba(A)[:, 1], X, j, grid)
    ref = sk_partial_dependence(
        model,
        X,
        [j],
        method="brute",
        kind="both",
        custom_values={j: grid},
        categorical_features=[2] if j == 2 else None,
    )
    np.testing.assert_allclose(ours.average, ref["average"][0], atol=1e-6)
    np.testing.assert_allclose(ours.individual, ref["individual"][0], atol=1e-6)


def test_pd_2d_equals_sklearn_brute(classifier):
    X, model = classifier
    ref = sk_partial_dependence(model, X, [(0, 1)], method="brute", grid_resolution=6)
    g0, g1 = ref["grid_values"]
    ours = partial_dependence_2d(lambda A: model.predict_proba(A)[:, 1], X, 0, 1, g0, g1)
    assert ours.average.shape == (6, 6)
    np.testing.assert_allclose(ours.average, ref["average"][0], atol=1e-6)


def test_pd_heterogeneity_detects_opposite_effects():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(-1, 1, 400), rng.choice([-1.0, 1.0], 400)])
    pd_ = partial_dependence(lambda A: A[:, 0] * A[:, 1], X, 0, np.linspace(-1, 1, 5))
    het = pd_.heterogeneity()
    assert het["pd_range"] < 0.2 and het["ice_spread"] > 0.4 and het["opposite_share"] > 0.4


def test_ale_of_linear_model_has_the_coefficient_as_slope():
    X = np.random.default_rng(0).normal(size=(2000, 3))
    a = ale_numeric(lambda A: 1.7 * A[:, 0] - 0.4 * A[:, 1] + 2 * A[:, 2] ** 2, X, 0, n_bins=15)
    np.testing.assert_allclose(np.diff(a.values) / np.diff(a.grid), 1.7, rtol=1e-9)
    assert abs(np.sum(a.counts * (a.values[:-1] + a.values[1:]) / 2)) < 1e-8  # centred


def test_ale_recovers_additive_components():
    rng = np.random.default_rng(1)
    X = rng.uniform(-2, 2, size=(5000, 2))

    def f(A):
        return np.sin(A[:, 0]) + A[:, 1] ** 3

    for j, g in ((0, np.sin), (1, lambda v: v**3)):
        a = ale_numeric(f, X, j, n_bins=40)
        truth = g(a.grid)
        k = np.searchsorted(a.grid, X[:, j], side="left").clip(1, len(a.grid) - 1)
        truth_c = truth - np.mean((truth[k - 1] + truth[k]) / 2)  # same centring as the estimator
        np.testing.assert_allclose(a.values, truth_c, atol=1e-9)


def test_ale_bootstrap_band_contains_estimate_and_is_seeded():
    X = np.random.default_rng(0).normal(size=(800, 2))

    def f(A):
        return A[:, 0] ** 2 + A[:, 1]

    a = ale_numeric(f, X, 0, n_bins=10, n_bootstrap=30, random_state=5, min_rows=50)
    b = ale_numeric(f, X, 0, n_bins=10, n_bootstrap=30, random_state=5, min_rows=100)
    assert np.all(a.lower <= a.values + 1e-12) and np.all(a.values <= a.upper + 1e-12)
    np.testing.assert_array_equal(a.lower, b.lower)
    assert a.low_support.sum() == 0 and b.low_support.all()  # 80 rows per bin
    assert a.rows_evaluated == 1600


def test_ale_categorical_recovers_level_effects():
    rng = np.random.default_rng(0)
    n = 3000
    X = np.column_stack([rng.integers(0, 4, n).astype(float), rng.normal(size=n)])
    effect = np.array([0.0, 2.0, -1.0, 0.5])

    def f(A):
        return effect[A[:, 0].astype(int)] + A[:, 1]

    a = ale_categorical(f, X, 0, categorical=np.array([True, False]))
    counts = np.bincount(X[:, 0].astype(int), minlength=4)
    truth = effect - (counts * effect).sum() / counts.sum()
    np.testing.assert_allclose(a.values, truth[a.grid.astype(int)], atol=1e-9)


def test_category_order_groups_similar_levels():
    rng = np.random.default_rng(0)
    n = 2000
    lv = rng.integers(0, 4, n)
    # levels 0 and 2 look alike on the other feature, as do 1 and 3
    other = np.where(np.isin(lv, [0, 2]), rng.normal(0, 1, n), rng.normal(5, 1, n))
    X = np.column_stack([lv.astype(float), other])
    order = list(category_order(X, 0, np.arange(4.0), np.array([True, False])))
    pos = {v: i for i, v in enumerate(order)}
    assert abs(pos[0] - pos[2]) == 1 and abs(pos[1] - pos[3]) == 1


def test_ale_2d_recovers_a_product_and_is_zero_for_additive():
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 1, size=(20000, 2))
    prod = ale_2d(lambda A: A[:, 0] * A[:, 1], X, 0, 1, n_bins=8)
    z1, z2 = np.meshgrid(prod.edges_1, prod.edges_2, indexing="ij")
    expected = (z1 - 0.5) * (z2 - 0.5)
    diff = prod.values - expected
    assert np.abs(diff - diff.mean()).max() < 0.02  # equal up to a constant
    add = ale_2d(lambda A: np.exp(A[:, 0]) + A[:, 1] ** 2, X, 0, 1, n_bins=8)
    assert np.abs(add.values).max() < 1e-10


def test_h_statistic_zero_for_additive_positive_for_product():
    X = np.random.default_rng(0).uniform(-1, 1, size=(500, 3))
    add = h_statistic(lambda A: A[:, 0] + A[:, 1] ** 2 + np.sin(A[:, 2]), X, [0, 1, 2], sample_size=50, random_state=0)
    assert np.nanmax(add.h) < 1e-6
    prod = h_statistic(lambda A: A[:, 0] * A[:, 1] + A[:, 2], X, [0, 1, 2], sample_size=50, random_state=0)
    assert prod.h[0, 1] > 0.9 and prod.h[0, 2] < 1e-6
    again = h_statistic(lambda A: A[:, 0] * A[:, 1] + A[:, 2], X, [0, 1, 2], sample_size=50, random_state=0)
    np.testing.assert_array_equal(prod.h, again.h)
    assert prod.rows_evaluated == 50 * 50 * 6


def test_explainers_on_the_net_match_the_dataframe_path(tiny_model):
    """The code-space fast path and the DataFrame predict path give the same PD."""
    _, ds, predictor, _ = tiny_model
    X = ds.schema.to_codes(ds.X_test.head(50))
    j = ds.schema.feature_names.index("colour")
    fast = partial_dependence(predictor.predict_codes, X, j, np.array([0.0, 1.0, 2.0]))
    slow = partial_dependence(
        lambda A: predictor.predict_proba(ds.schema.from_codes(A)), X, j, np.array([0.0, 1.0, 2.0])
    )
    np.testing.assert_array_equal(fast.individual, slow.individual)
    assert isinstance(ds.schema.from_codes(X), pd.DataFrame)


def test_permutation_importance_in_row_chunks_gives_the_same_numbers():
    """Large data is evaluated one repeat at a time in row chunks (bounded memory); the result must not change."""
    from audit.explain.permutation import permutation_importance

    rng = np.random.default_rng(3)
    X = rng.normal(size=(1000, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] * X[:, 2] + rng.normal(size=1000) > 0).astype(int)
    calls = []

    def f(A):
        calls.append(len(A))
        return 1 / (1 + np.exp(-(A[:, 0] + 0.5 * A[:, 1] * A[:, 2])))

    kw = dict(feature_names=list("abcd"), groups={"bc": ["b", "c"]}, n_repeats=3, random_state=0)
    whole = permutation_importance(f, X, y, **kw)
    calls.clear()
    chunked = permutation_importance(f, X, y, chunk_rows=128, **kw)
    np.testing.assert_array_equal(whole.importances, chunked.importances)
    assert max(calls) <= 1000 and max(calls[1:]) <= 128 and chunked.rows_evaluated == whole.rows_evaluated
