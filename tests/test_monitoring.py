"""Issue 19: drift (PSI / CSI, KS and chi-square with a multiple-testing correction) and data quality."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from audit.cli import main
from audit.metrics import adjust_pvalues
from audit.monitoring import feature_drift, numeric_counts, psi, quantile_edges, score_psi
from audit.schema import Feature, Schema
from tests.conftest import base_config, light_config, synthetic_frame, with_html, write_config

SCHEMA = Schema(
    (
        Feature("age", "numeric"),
        Feature("income", "numeric"),
        Feature("region", "categorical", ("north", "south", "east", "missing")),
        Feature("product", "categorical", ("a", "b")),
    ),
    "y",
    "1",
    "0",
)


def _rows(n, rng, *, age_shift=0.0, east=0.2):
    """Code-space rows of SCHEMA; ``age_shift`` in standard deviations, ``east`` the share of region east."""
    age = rng.normal(40 + 12 * age_shift, 12, n)
    income = rng.lognormal(10, 0.5, n)
    income[rng.uniform(size=n) < 0.03] = np.nan
    rest = (1 - east - 0.02) / 2
    region = rng.choice(4, size=n, p=[rest, rest, east, 0.02])
    product = rng.choice(2, size=n, p=[0.6, 0.4])
    return np.column_stack([age, income, region, product]).astype(float)


def _psi_by_hand(ref, cur, bins):
    """PSI the long way: pandas' interval bins from the reference's quantiles, shares, 1e-4 floor."""
    edges = np.unique(np.quantile(ref[~np.isnan(ref)], np.linspace(0, 1, bins + 1)[1:-1]))
    cut = [-np.inf, *edges, np.inf]
    e = pd.cut(pd.Series(ref), cut).value_counts(sort=False).to_numpy().astype(float)
    a = pd.cut(pd.Series(cur), cut).value_counts(sort=False).to_numpy().astype(float)
    e = np.append(e, np.isnan(ref).sum())
    a = np.append(a, np.isnan(cur).sum())
    e, a = np.maximum(e / e.sum(), 1e-4), np.maximum(a / a.sum(), 1e-4)
    total = 0.0
    for ei, ai in zip(e, a, strict=True):
        total += (ai - ei) * np.log(ai / ei)
    return total


def test_psi_csi_and_tests_match_hand_computation_and_scipy():
    rng = np.random.default_rng(0)
    ref, cur = _rows(5000, rng), _rows(3000, rng, age_shift=0.3, east=0.35)
    drifts = {d.feature: d for d in feature_drift(ref, cur, SCHEMA, n_bins=10, correction="none")}
    for j, name in enumerate(["age", "income"]):
        assert abs(drifts[name].psi - _psi_by_hand(ref[:, j], cur[:, j], 10)) <= 1e-9
        r, c = ref[:, j][~np.isnan(ref[:, j])], cur[:, j][~np.isnan(cur[:, j])]
        ks = stats.ks_2samp(r, c)
        assert abs(drifts[name].statistic - ks.statistic) <= 1e-12 and abs(drifts[name].p_value - ks.pvalue) <= 1e-12
    # categorical: PSI over levels by hand, chi-square from the contingency table of the raw labels
    for j, name in ((2, "region"), (3, "product")):
        e = np.array([(ref[:, j] == k).mean() for k in range(4)])
        a = np.array([(cur[:, j] == k).mean() for k in range(4)])
        keep = (e > 0) | (a > 0)
        e, a = np.maximum(e[keep], 1e-4), np.maximum(a[keep], 1e-4)
        assert abs(drifts[name].psi - float(np.sum((a - e) * np.log(a / e)))) <= 1e-9
        table = pd.crosstab(np.r_[np.zeros(len(ref)), np.ones(len(cur))], np.r_[ref[:, j], cur[:, j]])
        chi2, p, _, _ = stats.chi2_contingency(table.to_numpy(), correction=False)
        assert abs(drifts[name].statistic - chi2) <= 1e-9 and abs(drifts[name].p_value - p) <= 1e-12
    assert drifts["age"].drifted is False  # correction "none" still needs PSI >= 0.1: age's 0.3 sd is ~0.09
    assert drifts["region"].band in ("moderate", "significant")


def test_psi_fixtures():
    assert abs(psi([50, 50], [40, 60]) - (-0.1 * np.log(0.8) + 0.1 * np.log(1.2))) <= 1e-15
    assert abs(psi([10, 0], [5, 5]) - ((0.5 - 1) * np.log(0.5 / 1) + (0.5 - 1e-4) * np.log(0.5 / 1e-4))) <= 1e-12
    edges = quantile_edges(np.arange(1, 11, dtype=float), 5)
    np.testing.assert_allclose(edges, [2.8, 4.6, 6.4, 8.2])
    np.testing.assert_array_equal(numeric_counts(np.array([1.0, 2.8, 2.9, 9.0, np.nan]), edges), [2, 1, 0, 0, 1, 1])
    p, table = score_psi(np.linspace(0, 1, 1000), np.linspace(0, 1, 500))
    assert p < 1e-3 and len(table) == 10


def test_multiple_testing_corrections():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # Holm by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    np.testing.assert_allclose(adjust_pvalues(p, "holm")[:4], [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(adjust_pvalues(p, "bonferroni")[:4], [0.04, 0.16, 0.12, 0.02])
    # Benjamini-Hochberg by hand: p_(i) * m / i, then the running min from the top
    np.testing.assert_allclose(adjust_pvalues(p, "bh")[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(adjust_pvalues(p, "holm")[4])


@pytest.mark.parametrize("drift_from", [7, None], ids=["drift-from-month-7", "no-drift"])
def test_twelve_months_drift_fires_from_the_injected_month_and_never_without(drift_from):
    """A training sample, then 12 monthly samples; from ``drift_from`` on, age moves by 0.6 sd and region east grows
    from 20% to 40%. The drift finding must fire exactly from that month (and never, with no drift)."""
    rng = np.random.default_rng(2026)
    ref = _rows(8000, rng)
    fired = []
    for month in range(1, 13):
        drifting = drift_from is not None and month >= drift_from
        cur = _rows(2000, rng, age_shift=0.6 if drifting else 0.0, east=0.4 if drifting else 0.2)
        drifted = {d.feature for d in feature_drift(ref, cur, SCHEMA) if d.drifted}
        fired.append(drifted)
        if drifting:
            assert drifted == {"age", "region"}, (month, drifted)
        else:
            assert drifted == set(), (month, drifted)


def test_drift_and_data_quality_in_an_audit(workdir):
    """A test file whose x1 moved and whose colour has a new level and missing values: both sections say so."""
    frame = synthetic_frame(seed=1)
    frame["x1"] = frame["x1"] + 1.0
    frame.loc[:40, "colour"] = "purple"
    frame.loc[41:140, "x2"] = np.nan
    frame.to_csv(workdir / "test.csv", index=False)
    cfg = light_config()
    cfg["dataset"]["test"] = {"path": "test.csv"}
    cfg["local"]["enabled"] = False
    cfg["network"] = {"enabled": False}
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    rep = json.loads((workdir / "reports" / "small" / "latest" / "report.json").read_text())
    drift = [f for f in rep["findings"] if f["module"] == "drift" and f["status"] == "fail"]
    assert {f["subject"] for f in drift} >= {"x1", "score"}
    dq = {f["measure"]: f for f in rep["findings"] if f["module"] == "data_quality"}
    assert dq["unseen_levels"]["status"] == "fail" and dq["unseen_levels"]["subject"] == "colour"
    assert abs(dq["unseen_levels"]["value"] - 41 / 800) <= 1e-12
    assert dq["missing_increase"]["subject"] == "x2" and dq["missing_increase"]["status"] == "fail"
    assert rep["modules"]["drift"]["summary"]["drifted_features"] >= 1


def test_no_drift_between_a_random_split(workdir):
    cfg = light_config()
    cfg["local"]["enabled"] = False
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    rep = json.loads((workdir / "reports" / "small" / "latest" / "report.json").read_text())
    assert rep["modules"]["drift"]["summary"]["drifted_features"] == 0
    assert any(f["title"].startswith("No feature drifted") and f["status"] == "pass" for f in rep["findings"])


# -------------------------------------------------------------------------------------------------------- history
def _quick(workdir, **report):
    cfg = light_config()
    cfg["report"].update(report)
    return write_config(workdir, cfg)


def test_history_page_and_command(workdir, capsys, tmp_path):
    import re
    import subprocess

    from tests.test_report import _chromium

    path = _quick(workdir)
    for _ in range(3):
        assert main(["run", str(path), "-q"]) in (0, 1)
    index = workdir / "reports" / "small" / "index.html"
    page = index.read_text()
    assert page.count('<tr class="run') == 3 and "ROC AUC" in page and "score PSI" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # offline, self-contained
    capsys.readouterr()
    assert main(["history", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[0].startswith("run") and all(re.match(r"\d{8}T", line) for line in out[1:])
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium is not installed and could not be installed")
    dom = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'p'}", "--dump-dom",
         index.as_uri()], capture_output=True, text=True, timeout=180,
    ).stdout  # fmt: skip
    assert len(re.findall(r'<tr class="run', dom)) == 3
    charts = re.findall(r'<svg class="trend"', dom)
    assert len(charts) >= 3 and len(re.findall(r"<polyline", dom)) == len(charts)


def test_keep_last_prunes_but_never_latest_nor_its_baseline(workdir):
    from audit.history import run_folders

    out = workdir / "reports" / "small"
    path = _quick(workdir)
    assert main(["run", str(path), "-q"]) in (0, 1)
    first = run_folders(out)[0].name
    for _ in range(2):
        assert main(["run", str(path), "-q"]) in (0, 1)
    # the fourth run compares itself with the first, and keeps only 2 runs
    path = _quick(workdir, keep_last=2)
    assert main(["run", str(path), "-q", "--baseline", str(out / first)]) in (0, 1)
    left = [p.name for p in run_folders(out)]
    assert len(left) == 3 and left[0] == first  # the baseline survived; the second run went
    assert (out / "latest").resolve().name == left[-1]
    assert (out / "index.html").read_text().count('<tr class="run') == 3


def test_history_cache_gives_the_rows_of_the_reports(workdir):
    import json

    from audit.history import CACHE, CACHE_VERSION, collect, run_folders, summarize_run

    out = workdir / "reports" / "small"
    path = _quick(workdir)
    for _ in range(2):
        assert main(["run", str(path), "-q"]) in (0, 1)
    runs = run_folders(out)
    direct = [summarize_run(json.loads((f / "report.json").read_text())) for f in runs]
    cache = json.loads((out / CACHE).read_text())
    assert sorted(cache["runs"]) == [f.name for f in runs]
    assert collect(out) == direct  # rows from the cache equal the reports' own
    # a report.json changed after it was cached (size or mtime): read again, not taken from the cache
    report = json.loads((runs[0] / "report.json").read_text())
    report["audit"]["verdict"] = "edited"
    (runs[0] / "report.json").write_text(json.dumps(report))
    assert collect(out)[0]["verdict"] == "edited"
    # an unreadable cache is ignored and rewritten
    (out / CACHE).write_text("{not json")
    assert [r["run_id"] for r in collect(out)] == [r["run_id"] for r in direct]
    assert json.loads((out / CACHE).read_text())["version"] == CACHE_VERSION


# ------------------------------------------------------------------------------------------------------------ CBPE
def _calibrated(n, rng, shift=0.0):
    """Scores and labels; the labels follow the scores (calibrated) unless ``shift`` moves their log-odds."""
    p = rng.beta(2.0, 3.0, n)
    logit = np.log(p / (1 - p)) + shift
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    return p, y


def test_cbpe_interval_covers_the_realised_roc_auc_when_calibrated():
    from sklearn.metrics import accuracy_score, roc_auc_score

    from audit.monitoring import cbpe

    rng = np.random.default_rng(19)
    p_ref, y_ref = _calibrated(16_000, rng)  # the labelled reference: as large as Adult's test split
    covered = acc_covered = 0
    for seed in range(50):
        r = np.random.default_rng(seed)
        p, y = _calibrated(2000, r)
        est = cbpe(p, y_ref, p_ref, random_state=10_000 + seed, n_simulations=300)
        covered += est.roc_auc_low <= roc_auc_score(y, p) <= est.roc_auc_high
        acc_covered += est.accuracy_low <= accuracy_score(y, p >= 0.5) <= est.accuracy_high
    assert covered >= 45 and acc_covered >= 45, (covered, acc_covered)


def test_platt_fit_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    from audit.monitoring import PlattCalibrator

    p, y = _calibrated(3000, np.random.default_rng(3), shift=0.7)
    ours = PlattCalibrator().fit(p, y)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(PlattCalibrator._logit(p)[:, None], y)
    assert abs(ours.a - ref.coef_[0, 0]) <= 1e-6 and abs(ours.b - ref.intercept_[0]) <= 1e-6


def test_cbpe_misses_under_a_calibration_shift():
    """Labels whose log-odds moved by 1.5 (concept shift): the realised accuracy leaves the estimate's interval in
    (nearly) every resample, so with labels the audit can say the estimate is unreliable."""
    from sklearn.metrics import accuracy_score

    from audit.monitoring import cbpe

    rng = np.random.default_rng(7)
    p_ref, y_ref = _calibrated(5000, rng)
    missed = 0
    for seed in range(20):
        p, y = _calibrated(2000, np.random.default_rng(100 + seed), shift=1.5)
        est = cbpe(p, y_ref, p_ref, random_state=10_000 + seed, n_simulations=200)
        missed += not (est.accuracy_low <= accuracy_score(y, p >= 0.5) <= est.accuracy_high)
    assert missed >= 18


def _population(workdir, *, labels: bool, shift: float = 0.0, html: bool = False):
    frame = synthetic_frame(n=3000, seed=5)
    if shift:  # the outcome moves away from the features: a calibration (concept) shift
        rng = np.random.default_rng(6)
        logit = 2.0 * frame["x1"] + shift
        frame["y"] = np.where(rng.uniform(size=len(frame)) < 1 / (1 + np.exp(-logit)), "yes", "no")
    if not labels:
        frame = frame.drop(columns="y")
    frame.to_parquet(workdir / "pop.parquet", row_group_size=1000)
    cfg = with_html(base_config()) if html else base_config()
    cfg["dataset"]["population"] = {"path": "pop.parquet"}
    cfg["local"] = {"enabled": False}
    cfg["network"] = {"enabled": False}
    cfg["modules"].update(ale={"enabled": False}, interactions={"enabled": False})
    return write_config(workdir, cfg)


def test_a_population_without_labels_is_audited_with_an_estimate(workdir):
    assert main(["run", str(_population(workdir, labels=False, html=True)), "-q"]) in (0, 1)
    rep = json.loads((workdir / "reports" / "small" / "latest" / "report.json").read_text())
    na = [f for f in rep["findings"] if f["status"] == "not_assessable" and "no labels" in f["title"]]
    assert {f["module"] for f in na} == {"performance", "fairness", "permutation_importance"}
    est = rep["modules"]["performance"]["data"]["estimate"]
    assert est["rows"] == 3000 and est["roc_auc_low"] < est["roc_auc"] < est["roc_auc_high"]
    assert "population_roc_auc" not in rep["modules"]["performance"]["summary"]
    assert rep["provenance"]["compute"]["population"]["labels"] is False
    assert rep["modules"]["partial_dependence"]["status"] == "ok"  # needs no labels: on every population row
    page = (workdir / "reports" / "small" / "latest" / "report.html").read_text()
    assert "Label-free performance estimate" in page and "An estimate, not a measurement" in page


@pytest.mark.parametrize("shift", [0.0, 2.5], ids=["calibrated", "calibration-shift"])
def test_with_labels_the_estimate_is_checked(workdir, shift):
    assert main(["run", str(_population(workdir, labels=True, shift=shift)), "-q"]) in (0, 1)
    rep = json.loads((workdir / "reports" / "small" / "latest" / "report.json").read_text())
    check = next(f for f in rep["findings"] if f.get("measure") == "estimate_check")
    if shift:
        assert check["status"] == "fail" and check["title"].startswith("Label-free estimate unreliable")
    else:
        assert check["status"] == "pass", check["title"]


def test_population_drift_from_partition_counts_equals_the_in_memory_computation():
    """Counted partition by partition (bounded memory, any backend), drift gives the in-memory PSI and chi-square
    and the exact KS statistic; KS p-values are scipy's asymptotic ones."""
    from audit.monitoring import Reference, add_profiles, drift_from_profile, profile, quality_from_profile

    rng = np.random.default_rng(1)
    ref, cur = _rows(5000, rng), _rows(20_000, rng, age_shift=0.1, east=0.25)
    ref[:300, 0], cur[:3000, 0] = np.round(ref[:300, 0]), np.round(cur[:3000, 0])  # ties across the two samples
    reference = Reference.build(ref, SCHEMA)
    counts = None
    for part in np.array_split(cur, 7):
        counts = add_profiles(counts, profile(part, reference))
    got = drift_from_profile(reference, counts)
    want = feature_drift(ref, cur, SCHEMA)
    for g, w in zip(got, want, strict=True):
        assert abs(g.psi - w.psi) <= 1e-12 and abs(g.statistic - w.statistic) <= 1e-12, g.feature
        if g.kind == "numeric":
            r, c = ref[:, 0 if g.feature == "age" else 1], cur[:, 0 if g.feature == "age" else 1]
            p = stats.ks_2samp(r[np.isfinite(r)], c[np.isfinite(c)], method="asymp").pvalue
            assert abs(g.p_value - p) <= 1e-12
        else:
            assert abs(g.p_value - w.p_value) <= 1e-12
    q = quality_from_profile(reference, counts, len(cur))
    age = cur[:, 0]
    outside = ((age < np.nanmin(ref[:, 0])) | (age > np.nanmax(ref[:, 0]))).mean()
    assert abs(q.loc[q.feature == "age", "outside_train_range"].item() - outside) <= 1e-12
    assert abs(q.loc[q.feature == "income", "missing"].item() - np.isnan(cur[:, 1]).mean()) <= 1e-12
    assert abs(q.loc[q.feature == "region", "missing"].item() - (cur[:, 2] == 3).mean()) <= 1e-12


def test_profile_counts_rows_below_and_at_or_below_each_reference_value():
    """profile counts, for each distinct reference value u, the rows < u and <= u with one binary search; the counts
    equal two plain searches, with ties, values beyond both ends of the reference and missing values."""
    from audit.monitoring import Reference, profile

    rng = np.random.default_rng(2)
    ref, cur = _rows(3000, rng), _rows(9000, rng, age_shift=0.3)
    ref[:, 0], cur[:, 0] = np.round(ref[:, 0], 1), np.round(cur[:, 0] * 1.5, 1)  # ties, and rows past both ends
    reference = Reference.build(ref, SCHEMA)
    got = profile(cur, reference)
    for j, f in enumerate(SCHEMA.features):
        if f.is_categorical:
            continue
        u, v = reference.values[j], cur[np.isfinite(cur[:, j]), j]
        assert v.min() < u.min() or v.max() > u.max() or j != 0
        np.testing.assert_array_equal(got[j]["left"], [(v < x).sum() for x in u])
        np.testing.assert_array_equal(got[j]["right"], [(v <= x).sum() for x in u])


def test_drift_runs_on_the_population(workdir):
    assert main(["run", str(_population(workdir, labels=False)), "-q"]) in (0, 1)
    rep = json.loads((workdir / "reports" / "small" / "latest" / "report.json").read_text())
    tables = rep["modules"]["drift"]["tables"]
    assert "population (3,000 rows)" in tables["features"]["title"]
    assert "population (3,000 rows)" in rep["modules"]["data_quality"]["tables"]["columns"]["title"]


# ------------------------------------------------------------------------------------- issue 20: weak segments
def _slice_data(n, rng, *, planted=True):
    X = rng.integers(0, 3, (n, 4)).astype(float)
    X[:, 3] = rng.normal(size=n)  # a numeric feature too
    schema = Schema(
        (*(Feature(f"f{j}", "categorical", ("a", "b", "c")) for j in range(3)), Feature("x", "numeric")), "y", "1", "0"
    )
    weak = (X[:, 0] == 1) & (X[:, 1] == 2)
    e = (rng.uniform(size=n) < np.where(weak & planted, 0.45, 0.1)).astype(float)
    return X, e, schema, weak


def test_weak_segments_score_like_sliceline():
    from sliceline.slicefinder import Slicefinder

    from audit.explain.slices import weak_segments

    rng = np.random.default_rng(0)
    X, e, schema, _ = _slice_data(4000, rng)
    X = X[:, :3]
    schema = Schema(schema.features[:3], "y", "1", "0")
    ours = weak_segments(X, e, schema, min_support=40).table.sort_values("score", ascending=False, kind="stable")
    sf = Slicefinder(alpha=0.95, k=8, max_l=2, min_sup=40, verbose=False).fit(X.astype(int), e)
    theirs = sf.top_slices_statistics_  # sliceline keeps the slices with a positive score
    k = len(theirs)
    assert k >= 5 and (ours["score"].iloc[k:] <= 0).all()
    np.testing.assert_allclose(ours["score"].head(k), [s["slice_score"] for s in theirs], rtol=1e-9)
    np.testing.assert_array_equal(ours["rows"].head(k), [int(s["slice_size"]) for s in theirs])
    np.testing.assert_allclose(ours["error"].head(k), [s["slice_average_error"] for s in theirs], rtol=1e-9)


def test_a_planted_weak_slice_is_found_with_its_support_and_effect():
    from audit.explain.slices import weak_segments

    rng = np.random.default_rng(1)
    X, e, schema, weak = _slice_data(8000, rng)
    res = weak_segments(X, e, schema, min_support=50, min_effect=0.02)
    assert list(res.weak["slice"]) == ["f0 = b and f1 = c"]
    row = res.weak.iloc[0]
    assert row["rows"] == weak.sum() and abs(row["error"] - e[weak].mean()) <= 1e-12
    assert row["error_low"] <= 0.45 <= row["error_high"]  # the planted rate is inside its interval
    assert abs(row["effect"] - (e[weak].mean() - e.mean())) <= 1e-12


def test_uniform_errors_give_no_weak_slice_at_the_false_alarm_level():
    """Errors that do not depend on the features: in 100 seeded data sets a weak segment is reported in at most 10
    (Holm at 5% over every slice of up to 2 conditions: the family-wise false-alarm rate; measured 6% in 200)."""
    from audit.explain.slices import weak_segments

    alarms = 0
    for seed in range(100):
        X, e, schema, _ = _slice_data(8000, np.random.default_rng(1000 + seed), planted=False)
        alarms += not weak_segments(X, e, schema, min_support=50, max_level=2, min_effect=0.02).weak.empty
    assert alarms <= 10, alarms


def _calibrated_hard_slice(n, rng, *, planted: bool):
    """A calibrated model whose scores sit near 0.5 in the slice f0 = b (a hard slice: errors ~0.45, predicted so by
    its scores) and near 0.05 or 0.95 elsewhere; with ``planted``, labels in f0 = b & f1 = c are flipped more often
    than the scores say (the model is wrong there, not merely unsure)."""
    X, _, schema, weak = _slice_data(n, rng, planted=False)
    hard = X[:, 0] == 1
    p = np.where(hard, rng.uniform(0.4, 0.6, n), np.where(rng.uniform(size=n) < 0.5, 0.05, 0.95))
    truth = np.where(planted & weak, np.clip(p + np.where(p >= 0.5, -0.3, 0.3), 0, 1), p)
    y = (rng.uniform(size=n) < truth).astype(float)
    return X, y, p, schema, weak


def test_weak_segments_against_expected_error_do_not_flag_a_hard_slice():
    """Issue 23, point 5: a slice whose errors are as high as its own scores predict is hard, not weak. Against all
    rows it is flagged (SliceLine's question); against the expected error it is not, while a slice where the model
    errs 30 points more than its scores admit is still found."""
    from audit.explain.slices import weak_segments
    from audit.modules.robustness import expected_errors, row_errors

    rng = np.random.default_rng(3)
    X, y, p, schema, weak = _calibrated_hard_slice(8000, rng, planted=False)
    observed, expected = row_errors(y, p, "error", 0.5), expected_errors(p, "error", 0.5)
    overall = weak_segments(X, observed, schema, min_support=50, min_effect=0.02)
    assert "f0 = b" in set(overall.weak["slice"])  # the prevalence artefact
    adjusted = observed - expected + expected.mean()
    assert weak_segments(X, adjusted, schema, min_support=50, min_effect=0.02).weak.empty
    X, y, p, schema, weak = _calibrated_hard_slice(8000, rng, planted=True)
    observed, expected = row_errors(y, p, "error", 0.5), expected_errors(p, "error", 0.5)
    res = weak_segments(X, observed - expected + expected.mean(), schema, min_support=50, min_effect=0.02,
                        parts={"observed": observed, "expected": expected})  # fmt: skip
    assert list(res.weak["slice"]) == ["f0 = b and f1 = c"], res.weak
    row = res.weak.iloc[0]
    assert abs(row["observed"] - observed[weak].mean()) < 1e-12 and abs(row["expected"] - expected[weak].mean()) < 1e-12


def test_noise_stability_counts_flips_per_group(workdir):
    from audit.modules.robustness import perturb

    rng = np.random.default_rng(0)
    X, _, schema, _ = _slice_data(2000, rng)

    class Cfg:
        numeric_scale, categorical_swap = 0.1, 0.0

    noisy = perturb(X, X, schema, Cfg, rng)
    mad = np.median(np.abs(X[:, 3] - np.median(X[:, 3])))
    assert np.abs(noisy[:, 3] - X[:, 3]).max() <= 0.1 * mad + 1e-12 and (noisy[:, :3] == X[:, :3]).all()
    Cfg.categorical_swap = 1.0  # every categorical moves, always to another level
    assert (perturb(X, X, schema, Cfg, rng)[:, :3] != X[:, :3]).all()
    cfg = light_config(keep=("stability", "weak_segments"))
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    rep = json.loads((workdir / "reports" / "small" / "latest" / "report.json").read_text())
    flips = rep["modules"]["stability"]["tables"]["flips"]["rows"]
    assert flips[0]["group"] == "all audit rows" and {r["grouping"] for r in flips[1:]} == {"group"}
    assert 0 <= flips[0]["flip_rate"] <= 1 and rep["modules"]["weak_segments"]["status"] == "ok"


# --------------------------------------------------------------------------------------- issue 20: faithfulness
def test_deletion_and_insertion_curves_have_their_closed_form_on_a_linear_model():
    from audit.explain.faithfulness import deletion_insertion

    rng = np.random.default_rng(0)
    w = np.array([2.0, -1.0, 0.5, 0.0, 3.0])
    X, B = rng.normal(size=(30, 5)), rng.normal(size=(40, 5))

    def f(A):
        return A @ w + 0.3

    phi = w * (X - B.mean(axis=0))  # exact Shapley values of a linear model against this background
    c = deletion_insertion(f, X, phi, B)
    for i in range(len(X)):
        s = 1.0 if phi[i].sum() >= 0 else -1.0
        order = np.argsort(-(s * phi[i]), kind="stable")
        total = phi[i].sum()
        cum = np.concatenate([[0.0], np.cumsum(phi[i][order])])
        np.testing.assert_allclose(c.deletion[i], s * (total - cum), atol=1e-10)
        np.testing.assert_allclose(c.insertion[i], s * cum, atol=1e-10)
    random = deletion_insertion(f, X, rng.normal(size=X.shape), B)
    assert c.deletion_auc.mean() < random.deletion_auc.mean() and c.insertion_auc.mean() > random.insertion_auc.mean()


def test_the_randomisation_check_fails_a_constant_method_and_passes_gradients(tiny_model):
    from audit.explain.faithfulness import randomisation_similarity, randomised_copy
    from audit.explain.neural import integrated_gradients, reference_row
    from audit.model.adapter import NetPredictor

    cfg, ds, pred, res = tiny_model
    X = ds.schema.to_codes(ds.X_test)[:40]
    train = ds.schema.to_codes(ds.X_train)
    base = reference_row(train, ds.schema.categorical_mask)
    other = NetPredictor(randomised_copy(pred.net, seed=1), pred.preprocessing, pred.schema)

    def constant_method(model, rows):  # ignores the model: |x - training mean|
        return np.abs(rows - np.nanmean(train, axis=0))

    sim_const = randomisation_similarity(constant_method(pred, X), constant_method(other, X))
    assert np.median(sim_const) == 1.0  # the check must fail it
    ig = integrated_gradients(pred, X, base, steps=16).attributions
    ig_rand = integrated_gradients(other, X, base, steps=16).attributions
    assert np.median(randomisation_similarity(ig, ig_rand)) < 0.9
    assert not np.allclose(pred.predict_codes(X), other.predict_codes(X))


def test_a_method_no_better_than_random_is_a_finding(workdir):
    """Reversed SHAP values order the features worst-first: the deletion check must flag that, and the audit's own
    SHAP must pass it."""
    from audit.explain.faithfulness import deletion_insertion, paired_interval

    rng = np.random.default_rng(3)
    w = np.array([1.5, -2.0, 0.7, 0.0, 1.0])
    X, B = rng.normal(size=(60, 5)), rng.normal(size=(30, 5))

    def f(A):
        return 1 / (1 + np.exp(-(A @ w)))

    phi = w * (X - B.mean(axis=0))
    rand = np.mean([deletion_insertion(f, X, rng.normal(size=X.shape), B).deletion_auc for _ in range(5)], axis=0)
    good = paired_interval(deletion_insertion(f, X, phi, B).deletion_auc, rand)
    bad = paired_interval(deletion_insertion(f, X, -phi, B).deletion_auc, rand)
    assert good[2] < 0 < bad[1]  # good: significantly below random; reversed: significantly above
    cfg = base_config()
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    rep = json.loads((workdir / "reports" / "small" / "latest" / "report.json").read_text())
    faith = rep["modules"]["faithfulness"]
    assert faith["status"] == "ok" and set(faith["summary"]["methods"]) == {"SHAP", "LIME", "IG", "LRP"}
    shap = next(f for f in rep["findings"] if f.get("id") == "faithfulness.deletion.SHAP")
    assert shap["status"] == "pass"
    assert {r["method"] for r in faith["tables"]["randomisation"]["rows"]} == {"IG", "SHAP", "LRP"}


# ----------------------------------------------------------------------------------------- issue 20: LRP and IG
def test_lrp_matches_captum_and_conserves_the_logit(tiny_model):
    import torch
    from captum.attr import LRP
    from torch import nn

    from audit.explain._network import double_net, embedded
    from audit.explain.lrp import lrp, lrp_embedded

    cfg, ds, pred, res = tiny_model
    X = ds.schema.to_codes(ds.X_test)[:40]
    net = double_net(pred)
    z = embedded(net, pred, X)
    ours, _ = lrp_embedded(net, z, epsilon=1e-9)
    seq = nn.Sequential(*net.body, net.head).double().eval()
    theirs = LRP(seq).attribute(z.clone().requires_grad_(True), target=0).detach().numpy()  # captum: epsilon 1e-9
    np.testing.assert_allclose(ours, theirs, atol=1e-10)
    # alpha-beta conserves the logit exactly (biases spread over the inputs); epsilon does when biases are zero
    for a, b in ((1.0, 0.0), (2.0, 1.0)):
        r = lrp(pred, X, rule="alpha-beta", alpha=a, beta=b)
        assert np.abs(r.embedded.sum(axis=1) - r.logits).max() <= 1e-9
        np.testing.assert_allclose(r.attributions.sum(axis=1), r.logits, atol=1e-9)  # per feature sums too
    for m in net.modules():
        if isinstance(m, nn.Linear):
            m.bias.data.zero_()
    R, logits = lrp_embedded(net, z, epsilon=1e-12)
    assert np.abs(R.sum(axis=1) - logits).max() <= 1e-9
    with pytest.raises(ValueError, match="alpha - beta must be 1"):
        lrp(pred, X, rule="alpha-beta", alpha=2.0, beta=0.5)
    assert torch.is_tensor(z)


def test_lrp_and_ig_closed_forms_on_a_linear_net(tiny_model):
    """A net without hidden layers is linear in its embedded input: epsilon-LRP of the logit is w_i z_i, and IG of its
    probability has a closed form too."""
    import torch

    from audit.explain.lrp import lrp
    from audit.model.adapter import NetPredictor
    from audit.model.network import build_net

    cfg, ds, pred, res = tiny_model
    arch = {**res.architecture, "hidden": []}
    torch.manual_seed(0)
    net = build_net(pred.preprocessing, arch)
    with torch.no_grad():
        net.head.bias.zero_()
    lin = NetPredictor(net, pred.preprocessing, pred.schema)
    X = ds.schema.to_codes(ds.X_test)[:30]
    x_num, x_cat = lin.tensors(X)
    with torch.no_grad():
        z = net.embed(x_num, x_cat).double().numpy()
    w = net.head.weight.detach().double().numpy()[0]
    r = lrp(lin, X, epsilon=1e-12)
    np.testing.assert_allclose(r.embedded, z * w, atol=1e-9)
    # IG of sigmoid(w . z) along the straight path from z0: w_i (z_i - z0_i) (s(w.z) - s(w.z0)) / (w . (z - z0))
    from audit.explain._network import columns_per_feature
    from audit.explain.neural import integrated_gradients, reference_row

    base = reference_row(ds.schema.to_codes(ds.X_train), ds.schema.categorical_mask)
    b_num, b_cat = lin.tensors(base[None, :])
    with torch.no_grad():
        z0 = net.embed(b_num, b_cat).double().numpy()[0]
    t, t0 = z @ w, z0 @ w
    sig = 1 / (1 + np.exp(-t)), 1 / (1 + np.exp(-t0))
    with np.errstate(invalid="ignore", divide="ignore"):
        closed = w * (z - z0) * ((sig[0] - sig[1]) / (t - t0))[:, None]
    closed = np.column_stack([closed[:, c].sum(axis=1) for c in columns_per_feature(lin)])
    ok = np.abs(t - t0) > 1e-6
    ig = integrated_gradients(lin, X, base, steps=64).attributions
    np.testing.assert_allclose(ig[ok], closed[ok], atol=1e-6)


def test_integrated_gradients_match_captum(tiny_model):
    import torch
    from captum.attr import IntegratedGradients

    from audit.explain._network import double_net, embedded
    from audit.explain.neural import integrated_gradients, reference_row

    cfg, ds, pred, res = tiny_model
    X = ds.schema.to_codes(ds.X_test)[:20]
    base = reference_row(ds.schema.to_codes(ds.X_train), ds.schema.categorical_mask)
    ours = integrated_gradients(pred, X, base, steps=32)
    net = double_net(pred)
    z, z0 = embedded(net, pred, X), embedded(net, pred, base[None, :])

    def f(e):
        return torch.sigmoid(net.forward_embedded(e))

    from audit.explain._network import columns_per_feature

    diffs = []
    for steps in (500, 4000):  # captum's Riemann sums converge to ours (exact on each linear piece)
        theirs = IntegratedGradients(f).attribute(
            z, baselines=z0.expand_as(z), n_steps=steps, method="riemann_trapezoid"
        )
        per = np.column_stack([theirs.detach().numpy()[:, c].sum(axis=1) for c in columns_per_feature(pred)])
        diffs.append(np.abs(ours.attributions - per).max())
    assert diffs[1] < diffs[0] / 4 and diffs[1] <= 5e-5, diffs  # first order: 2.1e-4 at 500 steps, 2.7e-5 at 4000
    assert ours.completeness_error.max() <= 1e-6


# ----------------------------------------------------------------------------------------------- issue 20: CEM
@pytest.mark.parametrize("intercept", [1.0, 3.5])  # 3.5: some negatives need two changes, some positives two values
def test_cem_matches_a_brute_force_search_on_four_features(intercept):
    """Pertinent positives and negatives of a 4-feature model (2 numerics, 2 categoricals), one feature immutable and
    one monotone, against a plain brute force written here independently."""
    import itertools

    from audit.explain.contrastive import candidate_units, contrastive
    from audit.explain.counterfactual import Constraints

    schema = Schema(
        (Feature("a", "numeric"), Feature("b", "numeric"), Feature("c", "categorical", ("x", "y", "z")),
         Feature("g", "categorical", ("p", "q"))), "y", "1", "0",
    )  # fmt: skip
    rng = np.random.default_rng(4)
    train = np.column_stack(
        [rng.normal(size=500), rng.uniform(0, 10, 500), rng.integers(0, 3, 500), rng.integers(0, 2, 500)]
    )

    def f(A):
        return 1 / (1 + np.exp(-(1.5 * A[:, 0] - 0.4 * A[:, 1] + np.array([0.0, 1.2, -0.8])[A[:, 2].astype(int)]
                                 + 0.9 * A[:, 3] + intercept)))  # fmt: skip

    cons = Constraints(immutable=("g",), monotone={"b": "decrease"})
    X = train[:25]
    ref = np.array([np.median(train[:, 0]), np.median(train[:, 1]), 0.0, 0.0])
    res = contrastive(f, X, ref, train, schema, constraints=cons, max_changes=2)
    units = candidate_units(train, schema, cons)
    cand = {u.cols[0]: u.values[:, 0] for u in units}
    scale = {u.cols[0]: u.scale[0] for u in units}
    for i, x in enumerate(X):
        d = f(x[None])[0] >= 0.5
        # PP: smallest subset kept at x (others at ref) with the same decision, then the widest margin
        best = None
        for k in range(5):
            for S in itertools.combinations(range(4), k):
                row = ref.copy()
                row[list(S)] = x[list(S)]
                s = f(row[None])[0]
                if (s >= 0.5) == d and (best is None or abs(s - 0.5) > best[1]):
                    best = (S, abs(s - 0.5))
            if best is not None:
                break
        assert res.pp[i] == best[0], (i, res.pp[i], best)

        # PN: fewest changes, then the smallest distance, among values allowed for this row
        def allowed(j, x=x):
            v = cand.get(j, np.zeros(0))
            v = v[v != x[j]]
            return v[v <= x[j]] if j == 1 else v

        flips = []
        for k in (1, 2):
            for S in itertools.combinations(range(4), k):
                for vals in itertools.product(*[allowed(j) for j in S]):
                    row = x.copy()
                    row[list(S)] = vals
                    if (f(row[None])[0] >= 0.5) != d:
                        dist = sum(
                            abs(v - x[j]) / scale[j] if scale[j] > 0 else 1.0 for j, v in zip(S, vals, strict=True)
                        )
                        flips.append((k, dist))
            if flips:
                break
        if not flips:
            assert res.pn[i] is None
        else:
            assert res.pn[i] is not None and 3 not in res.pn[i]  # the immutable feature never changes
            assert len(res.pn[i]) == min(flips)[0] and abs(res.pn_distance[i] - min(flips)[1]) <= 1e-12, i
            if 1 in res.pn[i]:
                assert res.pn[i][1] <= x[1]  # monotone: b only decreases
