"""Data nobody tuned for: the defects of issue 14, each reproduced on a small file with the quirk (tests/messy).

Every test here failed on the code before the fix (checked against commit a0e4c0a) and passes after it.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from audit.cli import main
from audit.config import config_from_dict, load_config
from audit.data import load_dataset
from audit.errors import ConfigError, DataError
from tests.conftest import ROOT, base_config, synthetic_frame, write_config
from tests.messy import generate


def _messy(tmp_path, kind="clean", **dataset):
    path = generate.write(kind, tmp_path)
    cfg = generate.config(path.name, **dataset)
    return cfg, write_config(tmp_path, cfg, f"{kind}.yaml")


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory):
    """One full audit of the messy file: missing numerics, integer codes, 200 levels, favourable = negative label."""
    from audit.pipeline import run_audit

    folder = tmp_path_factory.mktemp("messy")
    _, path = _messy(folder, index_col=None)
    run = run_audit(load_config(path), quiet=True)
    return run


# --------------------------------------------------------------------------------------- 1. missing numerics
def test_missing_numerics_still_give_counterfactuals(messy_run):
    """Before: one NaN in a numeric training column made the plausibility threshold NaN: 0% found, exit 0."""
    rep = json.loads((messy_run.run_dir / "report.json").read_text())
    assert all(m["status"] in ("ok", "skipped") for m in rep["modules"].values()), rep["audit"]["modules_failed"]
    cf = rep["modules"]["counterfactuals"]["summary"]
    assert cf["validity"] >= 0.9 and cf["rescored_flip_rate"] == 1.0 and cf["constraint_violations"] == 0


def test_counterfactual_search_with_missing_values_respects_constraints():
    from audit.explain.counterfactual import Constraints, constraint_violations, counterfactuals
    from audit.schema import Feature, Schema

    rng = np.random.default_rng(0)
    n = 600
    train = np.column_stack([rng.normal(size=n), rng.normal(size=n), rng.integers(0, 3, n).astype(float)])
    train[rng.uniform(size=n) < 0.1, 0] = np.nan  # missing values in a numeric column
    schema = Schema(
        (Feature("a", "numeric"), Feature("b", "numeric"), Feature("c", "categorical", ("x", "y", "z"))), "t", "1", "0"
    )

    def f(A):
        return 1 / (1 + np.exp(-(np.nan_to_num(A[:, 0]) + A[:, 1] + (A[:, 2] == 2))))

    X = train[:40]
    X = X[f(X) < 0.5]
    cons = Constraints(immutable=("c",), monotone={"b": "increase"})
    res = counterfactuals(f, X, train, schema=schema, constraints=cons, random_state=0)
    assert np.isfinite(res.plausibility_threshold) and res.found.mean() >= 0.9
    flipped = f(res.counterfactuals[res.found, 0]) >= 0.5
    assert flipped.all()
    assert set(constraint_violations(res, train, schema=schema, constraints=cons).values()) == {0}
    # an unchanged missing value is not a change
    missing_rows = np.flatnonzero(np.isnan(X[:, 0]) & res.found)
    for i in missing_rows:
        assert "a" not in [name for name, _, _ in res.changes(i)] or not np.isnan(res.counterfactuals[i, 0, 0])


def test_lime_and_kmeans_background_handle_missing_numerics():
    from audit.explain.local_surrogate import lime_explanations
    from audit.explain.shapley import summarize_background

    rng = np.random.default_rng(1)
    train = rng.normal(size=(500, 3))
    train[rng.uniform(size=500) < 0.2, 1] = np.nan
    res = lime_explanations(
        lambda A: 1 / (1 + np.exp(-np.nan_to_num(A[:, 0]) - np.isnan(A[:, 1]))),
        train[:5],
        train,
        feature_names=["a", "b", "c"],
        categorical_mask=np.array([False, False, False]),
        num_samples=400,
        random_state=0,
    )
    assert np.isfinite(res.weights).all() and np.isfinite(res.score).all()
    assert any("b is missing" in c for row in res.conditions for c in row)
    B, w = summarize_background(train, 10, method="kmeans", categorical_mask=np.zeros(3, bool), random_state=0)
    assert B.shape == (10, 3) and w.sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------------- 2. integer-coded categories
def test_integer_coded_sensitive_features_are_grouped_by_level(tmp_path):
    """Before: EDUCATION 1-6 became '< 1', '1–2', '>= 2'; SEX 1/2 became '1–2', '>= 2'."""
    from audit.fairness import groupings

    cfg_dict, path = _messy(tmp_path)
    cfg = load_config(path)
    ds = load_dataset(cfg)
    groups = groupings(ds.X_test, cfg, list(ds.schema.sensitive))
    assert set(groups["SEX"]) == {"male", "female"}  # value labels name the groups
    assert set(groups["EDUCATION"]) <= {"1", "2", "3", "4", "5", "6", "missing"}  # levels, never '1.0' or bins
    assert set(groups["AGE"]) <= {"< 30", "30–50", ">= 50", "missing"}
    # undeclared and unlabelled: a 1/2 code is still grouped by value (few distinct values), not binned
    frame = pd.DataFrame({"S": [1, 2, 2, 1, 2]})
    raw = config_from_dict(
        {
            "dataset": {"train": {"path": "x"}, "target": "y", "positive_label": 1},
            "fairness": {"sensitive_features": ["S"]},
        }
    )
    assert list(groupings(frame, raw, ["S"])["S"]) == ["1", "2", "2", "1", "2"]


# ----------------------------------------------------------------------------------- 3. proxies, many levels
def test_many_level_feature_is_not_a_false_proxy(messy_run):
    """Before: a 200-level categorical scored Cramér's V 0.34-0.44 against an unrelated sensitive feature."""
    rep = json.loads((messy_run.run_dir / "report.json").read_text())
    rows = pd.DataFrame(rep["modules"]["fairness"]["tables"]["proxies"]["rows"])
    branch = rows[rows["feature"] == "BRANCH"]
    assert (branch["cramers_v_uncorrected"] > 0.3).any()  # the plain V is inflated by the 200 levels
    assert (branch["cramers_v"] < 0.15).all() and not branch["flagged"].any()
    assert not any("BRANCH is a likely proxy" in f["title"] for f in rep["findings"])


def test_bias_corrected_association_against_a_shuffled_sensitive_feature():
    from audit.fairness import association, cramers_v

    rng = np.random.default_rng(0)
    n = 3000
    branch = rng.integers(0, 220, n)
    sex = rng.permutation(np.repeat([0, 1], n // 2))
    assert cramers_v(branch, sex) > 0.2
    a = association(branch, sex, random_state=0)
    assert a.v < 0.15 and a.p_value > 0.01  # corrected V near 0, and no better than the shuffles
    proxy = np.where(rng.uniform(size=n) < 0.8, sex, 1 - sex)  # a real proxy: 80% agreement
    b = association(proxy, sex, random_state=0)
    assert b.v > 0.5 and b.p_value <= 0.01


# ------------------------------------------------------------------------------------ 4. label spelling
def test_split_does_not_depend_on_how_labels_are_spelled(tmp_path):
    frame = synthetic_frame(1000, seed=3)
    frame.assign(y=np.where(frame.y == "yes", 1, 2)).to_csv(tmp_path / "coded.csv", index=False)
    a = base_config("coded.csv")
    a["dataset"]["positive_label"] = 1
    b = copy.deepcopy(a)
    b["dataset"]["label_map"] = {1: "good", 2: "bad"}
    b["dataset"]["positive_label"] = "good"
    da = load_dataset(config_from_dict(a, base_dir=tmp_path))
    db = load_dataset(config_from_dict(b, base_dir=tmp_path))
    pd.testing.assert_frame_equal(da.X_test, db.X_test)
    np.testing.assert_array_equal(da.y_test, db.y_test)


# ------------------------------------------------------------------------------------ 6. LIME top_k
def test_lime_stability_is_not_assessable_when_top_k_covers_every_feature(workdir):
    from audit.pipeline import run_audit

    cfg = base_config()
    cfg["local"]["lime"]["top_k"] = 10  # the synthetic data has 4 features
    run = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    rep = json.loads((run.run_dir / "report.json").read_text())
    lime = rep["modules"]["lime"]
    assert lime["summary"]["mean_stability"] is None and lime["summary"]["mean_shap_agreement"] is None
    titles = [f["title"] for f in rep["findings"] if f["module"] == "lime"]
    assert any("not assessable" in t for t in titles)
    assert not any(t.startswith("LIME stability: mean") for t in titles)


# --------------------------------------------------------------------------- 7. intervals contain estimates
def test_bias_corrected_interval_contains_a_biased_point_estimate():
    from audit.fairness import bias_corrected_interval

    rng = np.random.default_rng(0)
    replicates = 0.12 + 0.02 * rng.standard_normal(200)  # every replicate above the point estimate
    lo, hi = bias_corrected_interval(0.075, replicates, 0.95)
    assert lo <= 0.075 <= hi
    assert np.quantile(replicates, 0.025) > 0.075  # the plain percentile interval would miss it


@pytest.mark.parametrize("name", ["adult", "german_credit", "bank_marketing"])
def test_fairness_intervals_contain_their_estimates_on_shipped_data(name):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    from audit.fairness import group_fairness_many, groupings

    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    ds = load_dataset(cfg)
    schema = ds.schema
    cat = schema.categorical_mask

    def encode(frame, fit=None):
        codes = schema.to_codes(frame)
        num = np.nan_to_num(codes[:, ~cat])
        if fit is None:
            fit = (StandardScaler().fit(num), OneHotEncoder(handle_unknown="ignore").fit(codes[:, cat]))
        return np.hstack([fit[0].transform(num), fit[1].transform(codes[:, cat]).toarray()]), fit

    Xtr, fit = encode(ds.X_train)
    Xte, _ = encode(ds.X_test, fit)
    p = LogisticRegression(max_iter=300).fit(Xtr, ds.y_train).predict_proba(Xte)[:, 1]
    groups = groupings(ds.X_test, cfg, list(schema.sensitive))
    fc = cfg.fairness
    res = group_fairness_many(ds.y_test, p, groups, min_group_size=fc.min_group_size, n_bootstrap=200, random_state=0)
    checked = 0
    for r in res:
        m = r.measures.dropna(subset=["value", "ci_low", "ci_high"])
        assert ((m["ci_low"] <= m["value"] + 1e-12) & (m["value"] <= m["ci_high"] + 1e-12)).all(), (r.name, m)
        checked += len(m)
    assert checked >= 10


# ------------------------------------------------------------------------------ 8. numbers with stray text
def test_numeric_column_with_stray_text_is_refused_with_values_and_rows(tmp_path):
    _, path = _messy(tmp_path, "mixed_numeric")
    with pytest.raises(DataError) as exc:
        load_dataset(load_config(path))
    msg = str(exc.value)
    assert "column 'INCOME'" in msg and "'unknown' (data row" in msg and "dataset.csv.na_values" in msg


def test_declared_numeric_column_reads_stray_text_as_missing(tmp_path):
    _, path = _messy(tmp_path, "mixed_numeric", features={"categorical": ["SEX", "EDUCATION"], "numeric": ["INCOME"]})
    ds = load_dataset(load_config(path))
    assert ds.schema.feature("INCOME").kind == "numeric"
    assert any("INCOME" in n and "read as missing" in n for n in ds.notes)


# ----------------------------------------------------------------------------------------- headers
@pytest.mark.parametrize(
    ("kind", "fix"),
    [
        ("two_headers", "set dataset.train.skiprows: 1 to use the second row as the header"),
        ("duplicates", "duplicate column name(s) ['PAY']"),
        ("index_column", "set dataset.index_col: 'Unnamed: 0'"),
    ],
)
def test_header_quirks_name_the_exact_fix(tmp_path, capsys, kind, fix):
    _, path = _messy(tmp_path, kind)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert fix in err and err.count("\n") == 1


def test_the_fixes_that_the_messages_name_work(tmp_path):
    _, path = _messy(tmp_path, "two_headers", train={"path": "two_headers.csv", "skiprows": 1})
    assert len(load_dataset(load_config(path)).X_train) == 1400
    _, path = _messy(tmp_path, "index_column", index_col="Unnamed: 0")
    ds = load_dataset(load_config(path))
    assert "Unnamed: 0" not in ds.schema.feature_names and ds.ids_test is not None


# ------------------------------------------------------------------------------------------ config features
def test_columns_filter_and_value_labels(tmp_path):
    _, path = _messy(
        tmp_path,
        columns=["LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "PAY", "AGE"],
        filter="AGE >= 25 and `SEX` in [1, 2] and notna(AGE)",
    )
    cfg = load_config(path)
    ds = load_dataset(cfg)
    assert ds.schema.feature_names == ["LIMIT_BAL", "SEX", "EDUCATION", "MARRIAGE", "AGE", "PAY"]  # file order
    assert (ds.X_train["AGE"] >= 25).all() and (ds.X_test["AGE"] >= 25).all()
    assert set(ds.schema.feature("SEX").levels) == {"male", "female"}
    # the saved model understands raw codes too: 2 and "female" are the same level
    codes = ds.schema.to_codes(pd.DataFrame({**{c: [1.0, 1.0] for c in ds.schema.feature_names}, "SEX": [2, "female"]}))
    assert codes[0, 1] == codes[1, 1] == ds.schema.feature("SEX").levels.index("female")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("__import__('os').system('touch x')", r"function '__import__.*' is not allowed"),
        ("AGE.__class__", "is not allowed in a filter"),
        ("AGE >= ", "not a valid expression"),
        ("[x for x in AGE]", "is not allowed in a filter"),
    ],
)
def test_filter_expressions_are_never_evaluated_as_python(tmp_path, expr, message):
    cfg = generate.config("clean.csv", filter=expr)
    with pytest.raises(ConfigError, match="dataset.filter"):
        config_from_dict(cfg, base_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        config_from_dict(cfg, base_dir=tmp_path)
    assert not (tmp_path / "x").exists()


def test_filter_type_mismatch_is_explained(tmp_path):
    _, path = _messy(tmp_path, filter="AGE > 'thirty'")
    with pytest.raises(DataError, match="the column holds numbers; compare it with a number"):
        load_dataset(load_config(path))


def test_favourable_outcome_drives_selection_declines_and_reason_codes(messy_run):
    from fairlearn.metrics import MetricFrame, selection_rate

    rep = json.loads((messy_run.run_dir / "report.json").read_text())
    scores = pd.read_parquet(messy_run.run_dir / "scores.parquet")
    assert rep["provenance"]["dataset"]["favourable_label"] == "0"
    # favourable = predicted no default: selection rate is the share scored below the threshold
    assert (scores["favourable"] == (scores["score"] < 0.5)).all()
    mf = MetricFrame(
        metrics=selection_rate,
        y_true=1 - scores["label"],
        y_pred=scores["favourable"],
        sensitive_features=scores["group:SEX"],
    )
    table = pd.DataFrame(rep["modules"]["fairness"]["data"]["SEX"]["groups"]).set_index("group")
    for g, v in mf.by_group.items():
        assert table.loc[g, "selection_rate"] == pytest.approx(v, abs=1e-12)
    # declined rows are those predicted to default; their reason codes push the score up
    rc = rep["modules"]["shap"]["tables"]["reason_codes"]["rows"]
    assert rc and all(r["probability"] >= 0.5 for r in rc)
    assert all("(+" in r["reason 1"] for r in rc)


def test_integer_keys_in_transitions_and_value_labels(tmp_path):
    cfg = generate.config("clean.csv")
    cfg["local"]["counterfactuals"]["transitions"] = {"EDUCATION": {3: [2, 1], 2: [1]}}
    parsed = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg)), base_dir=tmp_path)
    assert parsed.local.counterfactuals.transitions["EDUCATION"] == {"3": ["2", "1"], "2": ["1"]}
    assert parsed.dataset.value_labels["SEX"] == {"1": "male", "2": "female"}
    generate.write("clean", tmp_path)
    ds = load_dataset(parsed)
    from audit.modules._shared import check_local_config

    check_local_config(parsed, ds)  # the integer keys name real levels


def test_tied_features_move_together_and_are_permuted_together(tmp_path):
    from audit.pipeline import run_audit

    frame = synthetic_frame(900, seed=2)
    ranks = {"red": 1, "green": 2, "blue": 3}
    frame["colour_code"] = frame["colour"].map(ranks)
    frame.to_csv(tmp_path / "data.csv", index=False)
    cfg = base_config()
    cfg["dataset"]["tied"] = [["colour", "colour_code"]]
    cfg["local"]["counterfactuals"]["n_random"] = 60
    run = run_audit(load_config(write_config(tmp_path, cfg)), quiet=True)
    rep = json.loads((run.run_dir / "report.json").read_text())
    names = [r["feature"] for r in rep["modules"]["permutation_importance"]["tables"]["importance"]["rows"]]
    assert "colour + colour_code" in names and "colour" not in names
    assert rep["modules"]["counterfactuals"]["data"]["violations"]["tied"] == 0
    moved = 0
    for slots in rep["modules"]["counterfactuals"]["data"]["counterfactuals"]:
        for cf in slots:
            if cf["found"] and ("colour" in cf["changes"] or "colour_code" in cf["changes"]):
                assert {"colour", "colour_code"} <= set(cf["changes"])  # never one without the other
                assert ranks[cf["row"]["colour"]] == cf["row"]["colour_code"]
                moved += 1
    assert rep["provenance"]["dataset"]["tied"] == [["colour", "colour_code"]]
    assert moved >= 1
