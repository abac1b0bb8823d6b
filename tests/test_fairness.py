"""Fairness numbers against fairlearn's MetricFrame and hand-computed masks; verdicts; small groups."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import accuracy_score, precision_score, recall_score

from audit.config import load_config
from audit.data import load_dataset
from audit.fairness import cramers_v, group_fairness, group_labels, verdict
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def known():
    """Two attributes with known, different rates, plus a tiny group 'C' that must not drive anything."""
    rng = np.random.default_rng(0)
    n = 6000
    sex = rng.choice(["F", "M"], n)
    race = rng.choice(["A", "B"], n)
    sex[:12] = "C"  # a group far below the minimum size
    y = (rng.uniform(size=n) < np.where(sex == "M", 0.4, 0.2)).astype(int)
    p = np.clip(0.5 * y + rng.uniform(0, 0.6, n) + np.where(race == "B", 0.1, 0.0), 0, 1)
    p[:12] = 0.99  # the tiny group is always selected
    return y, p, sex, race


def test_group_table_equals_fairlearn_metricframe(known):
    y, p, sex, race = known
    inter = np.char.add(np.char.add(sex.astype(str), " & "), race.astype(str))
    for groups in (sex, race, inter):
        res = group_fairness(y, p, groups, n_bootstrap=0, min_group_size=30)
        d = (p >= 0.5).astype(int)
        mf = MetricFrame(
            metrics={
                "accuracy": accuracy_score,
                "selection_rate": selection_rate,
                "tpr": true_positive_rate,
                "fpr": false_positive_rate,
                "precision": precision_score,
            },
            y_true=y,
            y_pred=d,
            sensitive_features=pd.Series(groups, name="g"),
        )
        t = res.table.set_index("group")
        for metric in ("accuracy", "selection_rate", "tpr", "fpr", "precision"):
            np.testing.assert_allclose(t[metric].to_numpy(), mf.by_group[metric].to_numpy(dtype=float), atol=1e-12)


def test_group_metrics_by_hand_from_masks(known):
    y, p, sex, _ = known
    res = group_fairness(y, p, sex, n_bootstrap=0, min_group_size=30, threshold=0.6)
    d = p >= 0.6
    for g in ("F", "M"):
        m = sex == g
        row = res.table.set_index("group").loc[g]
        assert row["count"] == m.sum()
        assert row["base_rate"] == pytest.approx(y[m].mean())
        assert row["selection_rate"] == pytest.approx(d[m].mean())
        assert row["tpr"] == pytest.approx(recall_score(y[m], d[m]))
        assert row["fnr"] == pytest.approx(1 - recall_score(y[m], d[m]))
        assert row["fpr"] == pytest.approx(d[m][y[m] == 0].mean())
        bins = np.clip((p[m] * 10).astype(int), 0, 9)
        ece = sum(abs(y[m][bins == b].sum() - p[m][bins == b].sum()) for b in range(10)) / m.sum()
        assert row["ece"] == pytest.approx(ece)


@pytest.mark.parametrize("favourable_positive", [True, False])
def test_point_sums_from_cells_equal_the_per_statistic_sums_bit_for_bit(favourable_positive):
    """Issue 17: the point estimates' per-group sums come from two bincounts over (group, label, decision, score bin)
    cells; they are the same bits as summing every per-row statistic of ``_row_stats`` on its own, including scores
    on a bin edge or the threshold, 0 and 1, and groups without rows."""
    from audit.fairness import _cell_sums, _row_cells, _row_stats

    def per_statistic(stats, codes, n_groups):  # the reference: one bincount per column of per-row statistics
        return np.stack([np.bincount(codes, weights=stats[:, j], minlength=n_groups) for j in range(stats.shape[1])], 1)

    rng = np.random.default_rng(7)
    n = 50_000
    y = rng.integers(0, 2, n)
    p = rng.random(n)
    p[:300] = rng.choice([0.0, 0.1, 0.3, 0.5, 0.7, 1.0], 300)  # bin edges, the threshold, the ends
    codes = rng.integers(0, 6, n)  # group 6 has no rows
    want = per_statistic(_row_stats(y, p, 0.5, 10, favourable_positive=favourable_positive), codes, 7)
    got = _cell_sums(_row_cells(y, p, 0.5, 10, favourable_positive=favourable_positive), codes, 7, 10)
    np.testing.assert_array_equal(got, want)
    assert want[:, 5 + 10 :].sum() > 0 and not want[6].any()


@pytest.mark.parametrize(
    "values",
    [
        ["b", "a", ">= 65", "< 25", "25–65", "a", "missing", "b & x"],  # labels: the fast path
        ["1", 1, 1.0, True, None, float("nan"), "a", 1],  # mixed objects: grouped by their text
        [3, 1, 2, 3],
    ],
)
def test_encode_groups_equals_grouping_by_text(values):
    from audit.fairness import encode_groups, group_sort_key

    groups = np.array(values * 50, dtype=object) if not isinstance(values[0], int) else np.array(values * 50)
    levels, codes = encode_groups(groups)
    text = [str(v) for v in groups]
    want = sorted(dict.fromkeys(text), key=group_sort_key)  # equal keys (1 and 1.0): first seen first
    assert levels.tolist() == want
    assert [want[c] for c in codes] == text


def test_group_aucs_from_one_sort_equal_each_groups_own():
    from audit.fairness import _auc, _group_aucs

    rng = np.random.default_rng(2)
    n = 20_000
    y = rng.integers(0, 2, n)
    p = np.round(rng.random(n), 3)  # ties
    codes = rng.integers(0, 5, n)
    codes[codes == 3] = 2  # group 3: no rows
    y[codes == 4] = 1  # group 4: one class only
    order = np.argsort(p)  # ties in any order
    got = _group_aucs(y[order].astype(bool), p[order], codes[order], 6)
    want = [_auc(y[codes == g], p[codes == g]) for g in range(6)]
    np.testing.assert_array_equal(got, want)
    assert np.isnan(got[3]) and np.isnan(got[4]) and np.isnan(got[5]) and 0.4 < got[0] < 0.6


def test_small_group_is_reported_but_never_drives_a_measure(known):
    y, p, sex, _ = known
    res = group_fairness(y, p, sex, n_bootstrap=0, min_group_size=30)
    assert res.insufficient == ["C"]
    assert not res.table.set_index("group").loc["C", "eligible"]
    big = sex != "C"
    expected_dp = demographic_parity_difference(y[big], (p[big] >= 0.5).astype(int), sensitive_features=sex[big])
    expected_eo = equalized_odds_difference(y[big], (p[big] >= 0.5).astype(int), sensitive_features=sex[big])
    m = res.measures.set_index("measure")["value"]
    assert m["demographic_parity_difference"] == pytest.approx(expected_dp)
    assert m["equalized_odds_difference"] == pytest.approx(expected_eo)
    sel = res.table.set_index("group")["selection_rate"]
    assert m["disparate_impact_ratio"] == pytest.approx(sel[["F", "M"]].min() / sel[["F", "M"]].max())


def test_bootstrap_intervals_are_seeded_and_cover_the_estimate(known):
    y, p, sex, _ = known
    a = group_fairness(y, p, sex, n_bootstrap=100, random_state=3, threshold=0.6)
    b = group_fairness(y, p, sex, n_bootstrap=100, random_state=3, threshold=0.6)
    pd.testing.assert_frame_equal(a.measures, b.measures)
    m = a.measures
    assert (m["ci_low"] <= m["value"] + 1e-12).all() and (m["value"] <= m["ci_high"] + 1e-12).all()
    assert (m["ci_high"] - m["ci_low"] > 0).all()


def test_fewer_than_two_eligible_groups_gives_no_measure():
    y = np.array([0, 1] * 20)
    res = group_fairness(y, np.full(40, 0.7), np.array(["A"] * 38 + ["B"] * 2), min_group_size=10)
    assert res.measures["value"].isna().all()


def _events_case(with_b: bool = True):
    """A: 300 rows, 120 with the favourable outcome; B: 300 rows, 100; C: 200 rows, only 3."""
    rng = np.random.default_rng(5)
    sizes = {"A": (300, 120), "B": (300, 100), "C": (200, 3)} if with_b else {"A": (300, 120), "C": (200, 3)}
    y = np.concatenate([np.r_[np.ones(k), np.zeros(n - k)] for n, k in sizes.values()]).astype(int)
    g = np.concatenate([[name] * n for name, (n, _) in sizes.items()])
    p = np.clip(0.35 * y + rng.uniform(0.1, 0.6, size=len(y)), 0, 1)
    return y, p, g


def test_rates_on_the_label_are_compared_only_over_groups_with_enough_events():
    """Support before verdicts (issue 23): C has 200 rows (enough for selection rates) but 3 positives, so its true
    positive rate (0, 1/3, 2/3 or 1) stays out of equal opportunity and equalized odds, and says so."""
    y, p, g = _events_case()
    res = group_fairness(y, p, g, n_bootstrap=50, random_state=0, min_group_size=30, min_events=10)
    m = res.measures.set_index("measure")
    ab = g != "C"
    d = (p >= 0.5).astype(int)
    assert m.loc["equal_opportunity_difference", "value"] == pytest.approx(
        equal_opportunity_by_hand(y[ab], d[ab], g[ab])
    )
    expected_eo = equalized_odds_difference(y[ab], d[ab], sensitive_features=g[ab])
    assert m.loc["equalized_odds_difference", "value"] == pytest.approx(expected_eo)
    assert m.loc["equal_opportunity_difference", "left_out"] == ["'C' (3 rows with the favourable true outcome)"]
    # rates not conditioned on the favourable label still use C (200 rows, 197 unfavourable)
    expected_dp = demographic_parity_difference(y, d, sensitive_features=g)
    assert m.loc["demographic_parity_difference", "value"] == pytest.approx(expected_dp)
    assert m.loc["demographic_parity_difference", "left_out"] is None
    # min_events 1 keeps C: the measure then differs (the check can fail)
    loose = group_fairness(y, p, g, n_bootstrap=0, min_events=1).measures.set_index("measure")
    assert loose.loc["equal_opportunity_difference", "value"] != m.loc["equal_opportunity_difference", "value"]
    # with one group left, not assessable, with the counts
    y, p, g = _events_case(with_b=False)
    m = group_fairness(y, p, g, n_bootstrap=0, min_events=10).measures.set_index("measure")
    assert np.isnan(m.loc["equal_opportunity_difference", "value"])
    why = m.loc["equal_opportunity_difference", "not_assessable"]
    assert "fairness.min_events 10" in why and "'C' (3 rows with the favourable true outcome)" in why, why
    assert np.isnan(m.loc["equalized_odds_difference", "value"])  # needs both gaps
    assert not np.isnan(m.loc["disparate_impact_ratio", "value"])


def test_one_comparison_convention_the_reference_group_with_the_widest_pair_beside():
    """Issue 23, point 4: differences are taken against the reference group (the largest, or the configured one),
    the finding names that pair, and the widest pair is shown beside it; the four-fifths rule stays against the
    most-selected group, as the EEOC guideline defines it."""
    sizes = {"A": (1000, 0.50), "B": (400, 0.35), "C": (300, 0.60)}
    g = np.concatenate([[k] * n for k, (n, _) in sizes.items()])
    p = np.concatenate([np.where(np.arange(n) < round(n * r), 0.9, 0.1) for n, r in sizes.values()])
    y = (np.arange(len(g)) % 2).astype(int)
    m = group_fairness(y, p, g, n_bootstrap=0).measures.set_index("measure")
    dp = m.loc["demographic_parity_difference"]
    assert dp["reference"] == "A" and dp["value"] == pytest.approx(0.15)  # B is 0.15 below A; C 0.10 above
    assert (dp["disadvantaged"], dp["advantaged"]) == ("B", "A") and dp["widest_pair"] == "B vs C"
    assert dp["widest_value"] == pytest.approx(0.25)
    di = m.loc["disparate_impact_ratio"]
    assert di["value"] == pytest.approx(0.35 / 0.60) and (di["disadvantaged"], di["advantaged"]) == ("B", "C")
    configured = group_fairness(y, p, g, n_bootstrap=0, reference="C").measures.set_index("measure")
    assert configured.loc["demographic_parity_difference", "value"] == pytest.approx(0.25)
    assert configured.loc["demographic_parity_difference", "widest_pair"] is None  # the same pair
    # a configured reference below min_group_size falls back to the largest group
    small = group_fairness(y, p, g, n_bootstrap=0, reference="C", min_group_size=350).measures
    assert small["reference"].iloc[0] == "A"


def equal_opportunity_by_hand(y, d, g):
    tpr = [d[(g == k) & (y == 1)].mean() for k in np.unique(g)]
    return max(tpr) - min(tpr)


def test_no_verdict_rests_on_a_zero_width_interval():
    from collections import namedtuple

    from audit.modules.fairness import _zero_width

    M = namedtuple("M", "ci_low ci_high")
    assert _zero_width(M(0.0, 0.0), 200) and not _zero_width(M(0.0, 0.1), 200)
    assert not _zero_width(M(np.nan, np.nan), 200) and not _zero_width(M(0.2, 0.2), 0)


@pytest.mark.parametrize(
    ("value", "low", "high", "threshold", "kind", "expected"),
    [
        (0.05, 0.03, 0.07, 0.10, "max", "pass"),
        (0.15, 0.12, 0.18, 0.10, "max", "fail"),
        (0.09, 0.06, 0.13, 0.10, "max", "inconclusive"),
        (0.90, 0.85, 0.95, 0.80, "min", "pass"),
        (0.60, 0.50, 0.70, 0.80, "min", "fail"),
        (0.82, 0.75, 0.88, 0.80, "min", "inconclusive"),
        (0.05, np.nan, np.nan, 0.10, "max", "pass"),
        (np.nan, np.nan, np.nan, 0.10, "max", "inconclusive"),
    ],
)
def test_verdicts(value, low, high, threshold, kind, expected):
    assert verdict(value, low, high, threshold, kind) == expected


def test_age_binning_and_cramers_v():
    labels = group_labels(pd.Series([17, 25, 44.5, 65, 90, np.nan]), edges=[25, 45, 65])
    assert list(labels) == ["< 25", "25–45", "25–45", ">= 65", ">= 65", "missing"]
    rng = np.random.default_rng(0)
    a = rng.choice(list("xyz"), 5000)
    assert cramers_v(a, rng.choice(list("uv"), 5000)) < 0.05
    assert cramers_v(a, a) == pytest.approx(1.0)


def test_german_credit_sex_is_derived_from_personal_status():
    ds = load_dataset(load_config(ROOT / "configs" / "german_credit.yaml"))
    both = pd.concat([ds.X_train, ds.X_test])
    assert both["sex"].value_counts().to_dict() == {"male": 690, "female": 310}
    assert "sex" in ds.schema.sensitive and "sex" not in ds.schema.feature_names
