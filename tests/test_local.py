"""Local explanations against ground truth and the reference libraries: SHAP (exact Shapley values, shap's
explainers), LIME (lime's LimeTabularExplainer, linear models), counterfactuals (re-scored, every constraint)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from audit.explain.counterfactual import (
    Constraints,
    constraint_violations,
    counterfactual_metrics,
    counterfactuals,
)
from audit.explain.local_surrogate import _weighted_ridge, lime_explanations
from audit.explain.shapley import reason_codes, shapley_values, summarize_background
from audit.schema import Feature, Schema

# ----------------------------------------------------------------------------------------------- SHAP


def _brute_force_shapley(f, x, B, w):
    """Shapley values by their definition: average marginal contribution over all feature orders."""
    m = len(x)

    def v(S):
        rows = B.copy()
        rows[:, list(S)] = x[list(S)]
        return float(f(rows) @ w)

    phi = np.zeros(m)
    perms = list(itertools.permutations(range(m)))
    for order in perms:
        S: list[int] = []
        for j in order:
            before = v(S)
            S.append(j)
            phi[j] += v(S) - before
    return phi / len(perms)


def _three_way(A):
    return A[:, 0] * A[:, 1] * A[:, 2] + np.sin(A[:, 3]) * A[:, 0] + A[:, 4] ** 2


def _pairwise(A):
    return 2 * A[:, 0] * A[:, 1] - A[:, 2] * A[:, 3] + 0.5 * A[:, 4]


def test_exact_shapley_matches_the_definition_with_weighted_background():
    rng = np.random.default_rng(1)
    X, B = rng.normal(size=(3, 5)), rng.normal(size=(7, 5))
    w = rng.uniform(0.1, 1, size=7)
    sv = shapley_values(_three_way, X, B, feature_names=list("abcde"), background_weights=w, method="exact")
    for i in range(3):
        np.testing.assert_allclose(sv.values[i], _brute_force_shapley(_three_way, X[i], B, w / w.sum()), atol=1e-10)
    assert sv.additivity_error.max() < 1e-12


def test_exact_matches_shap_exact_explainer():
    shap = pytest.importorskip("shap")
    rng = np.random.default_rng(2)
    X, B = rng.normal(size=(4, 6)), rng.normal(size=(20, 6))
    f = lambda A: _three_way(A) + A[:, 5] * A[:, 2]  # noqa: E731
    ours = shapley_values(f, X, B, feature_names=list("abcdef"), method="exact")
    ref = shap.ExactExplainer(f, shap.maskers.Independent(B, max_samples=100))(X)
    np.testing.assert_allclose(ours.values, ref.values, atol=1e-6)
    np.testing.assert_allclose(ours.base_value, np.asarray(ref.base_values)[0], atol=1e-9)


def test_permutation_is_exact_for_pairwise_interactions_and_agrees_with_shap():
    shap = pytest.importorskip("shap")
    rng = np.random.default_rng(3)
    X, B = rng.normal(size=(4, 5)), rng.normal(size=(15, 5))
    exact = shapley_values(_pairwise, X, B, feature_names=list("abcde"), method="exact")
    perm = shapley_values(
        _pairwise, X, B, feature_names=list("abcde"), method="permutation", n_permutations=2, random_state=0
    )
    np.testing.assert_allclose(perm.values, exact.values, atol=1e-10)
    ref = shap.PermutationExplainer(_pairwise, shap.maskers.Independent(B, max_samples=100), seed=0)(X)
    np.testing.assert_allclose(perm.values, ref.values, atol=1e-6)


def test_permutation_estimate_converges_and_is_additive_with_higher_interactions():
    rng = np.random.default_rng(4)
    X, B = rng.normal(size=(3, 5)), rng.normal(size=(10, 5))
    exact = shapley_values(_three_way, X, B, feature_names=list("abcde"), method="exact")
    few = shapley_values(
        _three_way, X, B, feature_names=list("abcde"), method="permutation", n_permutations=2, random_state=0
    )
    many = shapley_values(
        _three_way, X, B, feature_names=list("abcde"), method="permutation", n_permutations=60, random_state=0
    )
    assert np.abs(many.values - exact.values).max() < np.abs(few.values - exact.values).max()
    assert np.abs(many.values - exact.values).max() < 0.05 * np.abs(exact.values).max()
    assert max(few.additivity_error.max(), many.additivity_error.max()) < 1e-12


def test_same_seed_same_values_other_seed_other_values():
    rng = np.random.default_rng(5)
    X, B = rng.normal(size=(3, 6)), rng.normal(size=(10, 6))
    kw = dict(feature_names=list("abcdef"), method="permutation", n_permutations=3)
    a = shapley_values(_three_way, X, B, random_state=7, **kw)
    b = shapley_values(_three_way, X, B, random_state=7, **kw)
    c = shapley_values(_three_way, X, B, random_state=8, **kw)
    assert np.array_equal(a.values, b.values)
    assert not np.array_equal(a.values, c.values)


def test_kmeans_background_keeps_real_rows_and_valid_codes():
    rng = np.random.default_rng(6)
    X = np.column_stack([rng.normal(size=500), rng.integers(0, 4, 500)]).astype(float)
    B, w = summarize_background(X, 12, method="kmeans", categorical_mask=np.array([False, True]), random_state=0)
    assert B.shape == (12, 2) and abs(w.sum() - 1) < 1e-12 and (w > 0).all()
    assert all((X == row).all(axis=1).any() for row in B)  # medoids: real rows, so real category codes


def test_reason_codes_list_only_adverse_features_in_order():
    codes = reason_codes(np.array([[0.1, -0.4, -0.05, 0.0], [0.2, 0.1, 0.3, 0.0]]), feature_names=list("abcd"), k=3)
    assert codes == [[("b", -0.4), ("c", -0.05)], []]


def test_shap_on_the_trained_net_is_additive_and_reproducible(tiny_model):
    _, ds, pred, _ = tiny_model
    codes = ds.schema.to_codes(ds.X_test)
    B, w = summarize_background(ds.schema.to_codes(ds.X_train), 40, random_state=0)
    kw = dict(feature_names=ds.schema.feature_names, background_weights=w, method="permutation", random_state=0)
    a = shapley_values(pred.predict_codes, codes[:25], B, **kw)
    b = shapley_values(pred.predict_codes, codes[:25], B, **kw)
    assert a.additivity_error.max() <= 1e-6
    assert np.array_equal(a.values, b.values)
    exact = shapley_values(
        pred.predict_codes, codes[:25], B, feature_names=ds.schema.feature_names, background_weights=w, method="exact"
    )
    # 4 features: the net's interactions are weak beyond pairs, so 10 antithetic orders land close to exact
    assert np.abs(a.values - exact.values).max() < 0.02


# ----------------------------------------------------------------------------------------------- LIME


def _lime_data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(size=n), rng.exponential(size=n), rng.integers(0, 4, n), rng.normal(size=n)])


def _model(A):
    z = 1.5 * A[:, 0] - A[:, 1] + (A[:, 2] == 2) - 0.5 * (A[:, 2] == 0) + 0.3 * A[:, 3] * A[:, 0]
    return 1 / (1 + np.exp(-z))


@pytest.mark.parametrize("width", [None, 0.8])
def test_batched_lime_matches_the_lime_library(width):
    lime_tabular = pytest.importorskip("lime.lime_tabular")
    T = _lime_data()
    X = T[:6]
    cat = np.array([False, False, True, False])
    ours = lime_explanations(
        _model,
        X,
        T,
        feature_names=list("abcd"),
        categorical_mask=cat,
        num_samples=40000,
        kernel_width=width,
        random_state=0,
    )
    explainer = lime_tabular.LimeTabularExplainer(
        T, feature_names=list("abcd"), categorical_features=[2], kernel_width=width, random_state=0
    )
    for i in range(len(X)):
        e = explainer.explain_instance(
            X[i], lambda A: np.column_stack([1 - _model(A), _model(A)]), num_features=4, num_samples=40000
        )
        ref = np.zeros(4)
        for j, wt in e.as_map()[1]:
            ref[j] = wt
        np.testing.assert_allclose(ours.weights[i], ref, atol=0.015)
        assert abs(ours.score[i] - e.score) < 0.03
        assert abs(ours.local_prediction[i] - e.local_pred[0]) < 0.02


def test_weighted_ridge_equals_scikit_learn():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    Z, y, w = rng.normal(size=(2, 200, 3)), rng.normal(size=(2, 200)), rng.uniform(size=(2, 200))
    coef, icpt, r2 = _weighted_ridge(Z, y, w, 1.0)
    for i in range(2):
        ref = Ridge(alpha=1.0).fit(Z[i], y[i], sample_weight=w[i])
        np.testing.assert_allclose(coef[i], ref.coef_, atol=1e-10)
        np.testing.assert_allclose(icpt[i], ref.intercept_, atol=1e-10)
        np.testing.assert_allclose(r2[i], ref.score(Z[i], y[i], sample_weight=w[i]), atol=1e-10)


def test_truncated_normal_per_bin_gives_the_draws_per_draw():
    """LIME's numeric draws: the truncation bounds' CDF computed once per bin and gathered gives the same bits as
    computing it for every draw (issue 17), including bins with a lower bound above the mean (the flipped tail)."""
    from audit.explain.local_surrogate import _truncated_normal

    mean, sd = np.array([0.0, 5.0, -2.0, 40.0]), np.array([1.0, 0.5, 3.0, 1e-11])
    lo, hi = np.array([-1.0, 6.0, -9.0, 40.0]), np.array([0.5, 9.0, -1.0, 40.0])
    index = np.random.default_rng(0).integers(0, 4, size=(7, 300))
    want = _truncated_normal(np.random.default_rng(3), mean[index], sd[index], lo[index], hi[index])
    got = _truncated_normal(np.random.default_rng(3), mean, sd, lo, hi, index=index)
    np.testing.assert_array_equal(got, want)
    assert ((want >= lo[index]) & (want <= hi[index])).all()


@pytest.mark.parametrize("corner", ["top", "bottom"])
def test_lime_recovers_signs_and_order_of_a_linear_model(corner):
    rng = np.random.default_rng(1)
    T = rng.normal(size=(4000, 4))
    coefs = np.array([3.0, -2.0, 1.0, -0.5])
    # an instance in the top (or bottom) quartile of every feature: being in its bin moves f by sign * coef
    x = np.full((1, 4), 1.5 if corner == "top" else -1.5)
    res = lime_explanations(
        lambda A: A @ coefs, x, T, feature_names=list("abcd"), categorical_mask=np.zeros(4, bool), random_state=0
    )
    sign = 1 if corner == "top" else -1
    assert np.array_equal(np.sign(res.weights[0]), sign * np.sign(coefs))
    assert list(np.argsort(-np.abs(res.weights[0]))) == [0, 1, 2, 3]
    assert res.score[0] > 0.5


def test_lime_feature_selection_and_seeding():
    T = _lime_data()
    cat = np.array([False, False, True, False])
    kw = dict(feature_names=list("abcd"), categorical_mask=cat, num_samples=2000, num_features=2)
    a = lime_explanations(_model, T[:5], T, random_state=3, **kw)
    b = lime_explanations(_model, T[:5], T, random_state=3, **kw)
    assert np.array_equal(a.weights, b.weights)
    assert (a.selected.sum(axis=1) == 2).all() and ((a.weights != 0) <= a.selected).all()
    assert a.rows_evaluated == 5 * 2000


# ----------------------------------------------------------------------------------------------- counterfactuals


def _cf_schema():
    return Schema(
        (
            Feature("income", "numeric"),
            Feature("age", "numeric"),
            Feature("debt", "numeric"),
            Feature("job", "categorical", ("none", "part", "full")),
            Feature("sex", "categorical", ("f", "m")),
        ),
        "y",
        "1",
        "0",
    )


def _cf_data(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            rng.integers(10, 100, n),
            rng.integers(18, 70, n),
            rng.uniform(0, 50, n).round(1),
            rng.integers(0, 3, n),
            rng.integers(0, 2, n),
        ]
    ).astype(float)


def _cf_model(A):
    z = (
        0.08 * (A[:, 0] - 60)
        + 0.03 * (A[:, 1] - 40)
        - 0.05 * A[:, 2]
        + np.select([A[:, 3] == 2, A[:, 3] == 1], [1.5, 0.5], 0)
        + 0.5 * A[:, 4]
    )
    return 1 / (1 + np.exp(-z))


def test_counterfactuals_flip_the_decision_and_respect_every_constraint():
    schema, T = _cf_schema(), _cf_data()
    p = _cf_model(T)
    X = T[p < 0.5][:40]
    cons = Constraints(
        immutable=("sex",),
        ranges={"income": (None, 90)},
        monotone={"age": "decrease", "debt": "increase"},  # against the model's pull, so they bind
        transitions={"job": {"none": ["part"], "part": ["full"]}},
    )
    res = counterfactuals(_cf_model, X, T, schema=schema, constraints=cons, k=2, random_state=0)
    assert res.found.mean() > 0.9
    for i in range(len(X)):
        for r in range(2):
            c = res.counterfactuals[i, r]
            if np.isnan(c).any():
                continue
            x = X[i]
            assert _cf_model(c[None])[0] >= 0.5  # re-scored independently
            assert c[4] == x[4]  # immutable
            assert c[0] == x[0] or c[0] <= 90  # range
            assert c[1] <= x[1] and c[2] >= x[2]  # monotone
            assert c[3] == x[3] or (x[3], c[3]) in {(0, 1), (1, 2)}  # transitions
            assert c[0] == round(c[0]) and c[1] == round(c[1])  # integer features stay integer
            assert T[:, 0].min() <= c[0] <= T[:, 0].max()  # training support
    assert sum(constraint_violations(res, T, schema=schema, constraints=cons).values()) == 0
    m = counterfactual_metrics(res)
    assert m["validity"] == res.found.mean() and not math.isnan(m["diversity"])


def test_counterfactual_finds_the_known_nearest_change():
    # one mutable integer feature, f = sigmoid(income - 60): the nearest flip of income 40 is income 60 exactly
    schema, T = _cf_schema(), _cf_data()

    def f(A):
        return 1 / (1 + np.exp(-(A[:, 0] - 60)))

    x = T[:1].copy()
    x[0, 0] = 40
    cons = Constraints(immutable=("age", "debt", "job", "sex"))
    res = counterfactuals(f, x, T, schema=schema, constraints=cons, plausibility_quantile=None, random_state=0)
    assert res.changes(0) == [("income", 40.0, 60.0)]


def test_infeasible_instances_are_reported_not_hidden():
    schema, T = _cf_schema(), _cf_data()
    X = T[_cf_model(T) < 0.5][:5]
    cons = Constraints(immutable=tuple(schema.feature_names))
    res = counterfactuals(_cf_model, X, T, schema=schema, constraints=cons, random_state=0)
    assert not res.found.any()
    assert counterfactual_metrics(res)["validity"] == 0.0


def test_positive_rows_get_counterfactuals_towards_the_negative_class():
    schema, T = _cf_schema(), _cf_data()
    X = T[_cf_model(T) >= 0.5][:10]
    res = counterfactuals(_cf_model, X, T, schema=schema, random_state=0)
    assert res.found.all() and (res.prediction[:, 0] < 0.5).all()


def test_constraints_name_bad_features_and_kinds():
    schema = _cf_schema()
    with pytest.raises(ValueError, match=r"immutable: unknown feature\(s\) \['salary'\]"):
        Constraints(immutable=("salary",)).validate(schema)
    with pytest.raises(ValueError, match="monotone: \\['job'\\] are categorical"):
        Constraints(monotone={"job": "increase"}).validate(schema)
    with pytest.raises(ValueError, match="unknown level"):
        Constraints(transitions={"job": {"none": ["ceo"]}}).validate(schema)


def test_counterfactuals_on_the_trained_net(tiny_model):
    _, ds, pred, _ = tiny_model
    schema = ds.schema
    codes, T = schema.to_codes(ds.X_test), schema.to_codes(ds.X_train)
    X = codes[pred.predict_codes(codes) < 0.5][:20]
    cons = Constraints(immutable=("colour",), monotone={"x2": "increase"})
    res = counterfactuals(pred.predict_codes, X, T, schema=schema, constraints=cons, random_state=0)
    ok = res.found
    assert ok.mean() >= 0.9
    rescored = pred.predict_proba(schema.from_codes(res.counterfactuals[ok, 0]))  # the DataFrame path
    assert (rescored >= 0.5).all()
    assert sum(constraint_violations(res, T, schema=schema, constraints=cons).values()) == 0


def test_instances_left_without_a_counterfactual_are_searched_again_harder():
    # flipping needs two changes at once (income >= 90 and debt <= 5); one pass allows only one change
    schema, T = _cf_schema(), _cf_data()

    def f(A):
        return 1 / (1 + np.exp(-(10.0 * ((A[:, 0] >= 90) & (A[:, 2] <= 5)) - 5)))

    x = T[:1].copy()
    x[0, 0], x[0, 2] = 40, 30
    kw = dict(schema=schema, max_changes=1, plausibility_quantile=None, random_state=0)
    assert not counterfactuals(f, x, T, escalate=0, **kw).found[0]
    res = counterfactuals(f, x, T, escalate=1, **kw)
    assert res.found[0] and f(res.counterfactuals[:, 0])[0] >= 0.5
    assert {c[0] for c in res.changes(0)} >= {"income", "debt"}


def test_counterfactual_of_a_row_outside_the_training_support_stays_inside_it():
    # valid iff income <= 120, the row has income 150 but training incomes stop at 99: the nearest allowed flip is 99
    schema, T = _cf_schema(), _cf_data()

    def f(A):
        return 1 / (1 + np.exp(-(120.5 - A[:, 0])))

    x = T[:1].copy()
    x[0, 0] = 150
    cons = Constraints(immutable=("age", "debt", "job", "sex"))
    res = counterfactuals(f, x, T, schema=schema, constraints=cons, plausibility_quantile=None, random_state=0)
    assert res.changes(0) == [("income", 150.0, T[:, 0].max())]
    assert constraint_violations(res, T, schema=schema, constraints=cons)["support"] == 0


def test_library_engines_give_the_same_values():
    """engine: shap / lime run the libraries themselves; they agree with ours where both are exact (SHAP) or to
    sampling noise (LIME)."""
    from audit.explain.local_surrogate import lime_explanations_lime
    from audit.explain.shapley import shapley_values_shap

    rng = np.random.default_rng(7)
    X, B = rng.normal(size=(3, 5)), rng.normal(size=(12, 5))
    for method in ("exact", "permutation"):
        ours = shapley_values(_pairwise, X, B, feature_names=list("abcde"), method=method, random_state=0)
        lib = shapley_values_shap(_pairwise, X, B, feature_names=list("abcde"), method=method, random_state=0)
        np.testing.assert_allclose(lib.values, ours.values, atol=1e-6)
        assert lib.rows_evaluated > 0 and "shap library" in lib.method
    T = _lime_data()
    cat = np.array([False, False, True, False])
    kw = dict(feature_names=list("abcd"), categorical_mask=cat, num_samples=40000, random_state=0)
    ours = lime_explanations(_model, T[:3], T, **kw)
    lib = lime_explanations_lime(_model, T[:3], T, **kw)
    np.testing.assert_allclose(lib.weights, ours.weights, atol=0.015)
    np.testing.assert_allclose(lib.score, ours.score, atol=0.03)
    assert lib.rows_evaluated == 3 * 40000 + 3


def test_local_modules_run_with_the_library_engines(workdir):
    from audit.config import load_config
    from audit.pipeline import run_audit
    from tests.conftest import base_config, write_config

    cfg = base_config()
    cfg["local"]["shap"] = {"engine": "shap"}
    cfg["local"]["lime"] = {"engine": "lime", "num_samples": 300, "stability_runs": 0}
    run = run_audit(load_config(write_config(workdir, cfg)), quiet=True, write=False)
    mods = {m.name: m for m in run.modules}
    assert mods["shap"].status == "ok" and mods["lime"].status == "ok"
    assert "shap library" in mods["shap"].result.summary["method"]
    assert mods["shap"].result.summary["max_additivity_error"] <= 1e-6


def test_shap_engine_refuses_a_weighted_background():
    from audit.config import config_from_dict
    from audit.errors import ConfigError
    from tests.conftest import base_config

    cfg = base_config()
    cfg["local"] = {"shap": {"engine": "shap"}, "background": {"method": "kmeans"}}
    with pytest.raises(ConfigError, match="background.method: sample"):
        config_from_dict(cfg)
