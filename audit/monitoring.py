"""Drift and data quality between the training rows and the rows under audit (issue 19).

Drift, per feature and for the score:

- **PSI** (Population Stability Index; called CSI for a feature): ``sum_i (a_i - e_i) * ln(a_i / e_i)`` over bins,
  ``e`` the reference (training) shares and ``a`` the current (audit) shares. Numeric bins are the reference's
  ``n_bins`` quantiles (edges where the quantiles repeat are merged), plus one bin for missing values; a categorical's
  bins are its levels (the missing level and the unknown slot included). A share of 0 is replaced by ``EPS`` before
  the logarithm (the usual 1e-4), so an empty bin adds a large but finite amount. Bands (configurable): < 0.1 stable,
  0.1-0.25 moderate, > 0.25 significant.
- **A test** per feature: two-sample Kolmogorov-Smirnov on a numeric's non-missing values (:func:`scipy.stats.ks_2samp`,
  exact or asymptotic as scipy chooses), Pearson's chi-square on a categorical's 2 x levels table of counts
  (:func:`scipy.stats.chi2_contingency` without Yates' correction, levels absent from both dropped); the p-values of
  all features are adjusted together (Holm by default, or Benjamini-Hochberg, Bonferroni, none).

A feature **drifted** when both hold: its PSI reaches the moderate band (the change is large enough to matter) and its
adjusted p-value is below ``alpha`` (it is not sampling noise). With thousands of rows the tests alone flag shifts too
small to matter, and with a few hundred PSI alone flags noise; the conjunction keeps the false-alarm rate at or below
``alpha`` per month while a shift of practical size still fires (tested on 12 simulated months with and without drift).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.metrics import adjust_pvalues, expected_calibration_error

EPS = 1e-4


# ----------------------------------------------------------------------------------------------------- PSI
def psi(reference_counts, current_counts, *, eps: float = EPS) -> float:
    """Population Stability Index of two histograms over the same bins.

    Examples
    --------
    >>> round(psi([50, 50], [40, 60]), 6)  # (0.4-0.5)ln(0.4/0.5) + (0.6-0.5)ln(0.6/0.5)
    0.040547
    >>> psi([10, 10], [10, 10])
    0.0
    """
    e = np.asarray(reference_counts, dtype=np.float64)
    a = np.asarray(current_counts, dtype=np.float64)
    e = np.maximum(e / e.sum(), eps)
    a = np.maximum(a / a.sum(), eps)
    return float(np.sum((a - e) * np.log(a / e)))


def quantile_edges(reference: np.ndarray, n_bins: int) -> np.ndarray:
    """Inner bin edges: the reference's ``n_bins`` quantiles (missing values ignored), repeats merged."""
    v = np.asarray(reference, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return np.zeros(0)
    return np.unique(np.quantile(v, np.linspace(0, 1, n_bins + 1)[1:-1]))


def numeric_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts in the bins ``(-inf, e0], (e0, e1], ..., (e_last, inf)`` and, last, the missing values."""
    v = np.asarray(values, dtype=np.float64)
    missing = ~np.isfinite(v)
    idx = np.searchsorted(edges, v[~missing], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return np.append(counts, missing.sum())


def level_counts(codes: np.ndarray, n_slots: int) -> np.ndarray:
    """Counts of each category code ``0 .. n_slots - 1`` (the unknown slot is the last)."""
    return np.bincount(np.asarray(codes, dtype=np.int64), minlength=n_slots)[:n_slots]


def band(value: float, moderate: float, significant: float) -> str:
    return "significant" if value > significant else "moderate" if value >= moderate else "stable"


# --------------------------------------------------------------------------------------------------- tests


@dataclass
class FeatureDrift:
    feature: str
    kind: str
    psi: float
    test: str
    statistic: float
    p_value: float
    p_adjusted: float = float("nan")
    band: str = "stable"
    drifted: bool = False
    reference_missing: float = 0.0
    current_missing: float = 0.0


def _categorical_drift(f, rc: np.ndarray, cc: np.ndarray) -> FeatureDrift:
    """PSI over the levels and Pearson's chi-square on the 2 x levels table (levels absent from both dropped)."""
    from scipy.stats import chi2_contingency

    table = np.vstack([rc, cc])
    table = table[:, table.sum(axis=0) > 0]
    stat, p = chi2_contingency(table, correction=False)[:2] if table.shape[1] >= 2 else (0.0, 1.0)
    miss = f.levels.index("missing") if "missing" in f.levels else None
    rm = float(rc[miss] / max(rc.sum(), 1)) if miss is not None else 0.0
    cm = float(cc[miss] / max(cc.sum(), 1)) if miss is not None else 0.0
    return FeatureDrift(f.name, "categorical", psi(rc, cc), "chi-square", float(stat), float(p),
                        reference_missing=rm, current_missing=cm)  # fmt: skip


def decide(out: list[FeatureDrift], *, moderate, significant, alpha, correction) -> list[FeatureDrift]:
    """Adjust the p-values together, band the PSIs, and mark the features that drifted (both conditions). The drift
    section decides the features and the model's score together, so the family's error rate is the adjustment's."""
    adjusted = adjust_pvalues([d.p_value for d in out], correction)
    for d, q in zip(out, adjusted, strict=True):
        d.p_adjusted = float(q)
        d.band = band(d.psi, moderate, significant)
        d.drifted = bool(d.psi >= moderate and np.isfinite(q) and q < alpha)
    return out


def feature_drift(
    reference: np.ndarray,
    current: np.ndarray,
    schema,
    *,
    n_bins: int = 10,
    moderate: float = 0.1,
    significant: float = 0.25,
    alpha: float = 0.05,
    correction: str = "holm",
    features: list[str] | None = None,
) -> list[FeatureDrift]:
    """PSI and a test for each feature of two code-space arrays (see the module docstring)."""
    from scipy.stats import ks_2samp

    out = []
    for j, f in enumerate(schema.features):
        if features is not None and f.name not in features:
            continue
        r, c = reference[:, j], current[:, j]
        if f.is_categorical:
            slots = len(f.levels) + 1
            out.append(_categorical_drift(f, level_counts(r, slots), level_counts(c, slots)))
        else:
            edges = quantile_edges(r, n_bins)
            rc, cc = numeric_counts(r, edges), numeric_counts(c, edges)
            rv, cv = r[np.isfinite(r)], c[np.isfinite(c)]
            if len(rv) and len(cv):
                res = ks_2samp(rv, cv)
                stat, p = float(res.statistic), float(res.pvalue)
            else:
                stat, p = float("nan"), float("nan")
            out.append(FeatureDrift(f.name, "numeric", psi(rc, cc), "Kolmogorov-Smirnov", stat, p,
                                    reference_missing=float(rc[-1] / max(rc.sum(), 1)),
                                    current_missing=float(cc[-1] / max(cc.sum(), 1))))  # fmt: skip
    return decide(out, moderate=moderate, significant=significant, alpha=alpha, correction=correction)


def score_psi(
    reference_scores: np.ndarray, current_scores: np.ndarray, *, n_bins: int = 10
) -> tuple[float, pd.DataFrame]:
    """PSI of the model's scores over the reference scores' quantile bins, and the per-bin table."""
    edges = quantile_edges(reference_scores, n_bins)
    rc = numeric_counts(reference_scores, edges)[:-1]
    cc = numeric_counts(current_scores, edges)[:-1]
    low = np.concatenate([[0.0], edges])
    high = np.concatenate([edges, [1.0]])
    table = pd.DataFrame(
        {"score_from": low, "score_to": high, "reference_share": rc / rc.sum(), "current_share": cc / cc.sum()}
    )
    return psi(rc, cc), table


def score_shift_test(reference_scores: np.ndarray, current_scores: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test of the model's scores (:func:`scipy.stats.ks_2samp`): the statistic and
    its p-value. A PSI alone grows as the audit rows get fewer (60 rows over 10 bins give a PSI above 0.1 in most
    samples with no shift at all), so the score's drift fails only where this test also rejects, as each feature's
    does.

    >>> score_shift_test(np.linspace(0, 1, 1000), np.linspace(0, 1, 100))[1] > 0.99
    True
    """
    from scipy.stats import ks_2samp

    a, b = np.asarray(reference_scores, dtype=float), np.asarray(current_scores, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return 0.0, 1.0
    res = ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue)


# ---------------------------------------------------------------------------------------------- data quality
def column_quality(
    X: pd.DataFrame, codes: np.ndarray, schema, *, train_codes: np.ndarray | None = None
) -> pd.DataFrame:
    """Per feature: share missing, share of the most frequent value, and (with ``train_codes``) the share of rows
    outside the training range (numerics) or at a level never seen in training (categoricals)."""
    rows = []
    n = max(len(codes), 1)
    for j, f in enumerate(schema.features):
        col = codes[:, j]
        if f.is_categorical:
            slots = len(f.levels) + 1
            counts = level_counts(col, slots)
            miss = f.levels.index("missing") if "missing" in f.levels else None
            missing = counts[miss] / n if miss is not None else 0.0
            top = counts.max() / n
            unseen = counts[-1] / n  # the unknown slot: a level the model never saw
            outside = float("nan")
        else:
            finite = np.isfinite(col)
            missing = 1.0 - finite.mean() if len(col) else 0.0
            v = col[finite]
            top = pd.Series(v).value_counts().iloc[0] / n if len(v) else 1.0
            unseen = float("nan")
            outside = float("nan")
            if train_codes is not None:
                t = train_codes[:, j]
                t = t[np.isfinite(t)]
                if len(t):
                    outside = float(((v < t.min()) | (v > t.max())).sum() / n)
        rows.append(
            {
                "feature": f.name,
                "kind": f.kind,
                "missing": float(missing),
                "top_value_share": float(top),
                "unseen_level": float(unseen),
                "outside_train_range": outside,
            }
        )
    return pd.DataFrame(rows)


def duplicate_share(X: pd.DataFrame) -> float:
    """Share of rows that repeat an earlier row exactly (all feature columns)."""
    return float(X.duplicated().mean()) if len(X) else 0.0


# ------------------------------------------------------------------------------- label-free performance (CBPE)
@dataclass
class PerformanceEstimate:
    """Confidence-based performance estimation (CBPE, as NannyML's): what the model's performance is expected to be
    on rows without labels, from its calibrated scores.

    Each row's label is taken to be positive with the calibrated probability ``q`` of its score (the calibration
    fitted on a labelled reference). Labels are drawn that way
    ``n_simulations`` times; each draw gives a ROC AUC (of the raw scores), an accuracy (at the threshold) and a positive
    rate. The calibration map is Platt scaling of the logit (:class:`PlattCalibrator`), fitted on the reference. The estimate is their mean, its interval their percentiles: the range the realised figure falls in if the
    model is as calibrated on these rows as on the reference. It cannot see a change in P(label | features): under such
    a change (concept shift) the estimate is wrong and only labels show it.
    """

    rows: int
    roc_auc: float
    roc_auc_low: float
    roc_auc_high: float
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    positive_rate: float
    positive_rate_low: float
    positive_rate_high: float
    predicted_positive_rate: float
    reference_ece_raw: float
    reference_ece_calibrated: float
    n_simulations: int
    confidence: float
    check_intervals: dict  # metric -> [low, high] at check_confidence: what a realised figure is checked against
    check_confidence: float


class PlattCalibrator:
    """``q = sigmoid(a * logit(p) + b)`` fitted by maximum likelihood on labelled scores (Platt scaling on the logit).

    Smooth and monotone: unlike isotonic regression, whose flat steps give every row of a step the same probability
    and so make simulated labels ignore the score order within a step (measured: the estimated ROC AUC then falls
    about one standard deviation below the realised one, and the interval covers it in only 80% of resamples), it
    keeps the order the model's scores have. A calibrated model gets ``a = 1, b = 0`` back.
    """

    def __init__(self) -> None:
        self.a, self.b = 1.0, 0.0

    @staticmethod
    def _logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    def fit(self, p: np.ndarray, y: np.ndarray) -> PlattCalibrator:
        """Maximum likelihood by Newton's method on the two parameters (tested against scikit-learn's unpenalised
        logistic regression); it is refitted on every bootstrap resample of :func:`cbpe`, so it has to be quick."""
        x = self._logit(p)
        y = np.asarray(y, dtype=np.float64)
        X = np.column_stack([x, np.ones_like(x)])
        w = np.array([1.0, 0.0])
        for _ in range(50):
            q = 1.0 / (1.0 + np.exp(-(X @ w)))
            grad = X.T @ (y - q)
            hess = (X * (q * (1 - q))[:, None]).T @ X + 1e-12 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            w = w + step
            if np.abs(step).max() < 1e-10:
                break
        self.a, self.b = float(w[0]), float(w[1])
        return self

    def predict(self, p: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.a * self._logit(p) + self.b)))


def fit_calibrator(y_reference: np.ndarray, p_reference: np.ndarray) -> PlattCalibrator:
    """The calibration map fitted on the labelled reference (see :class:`PlattCalibrator`)."""
    return PlattCalibrator().fit(p_reference, y_reference)


def cbpe(
    scores: np.ndarray,
    y_reference: np.ndarray,
    p_reference: np.ndarray,
    *,
    threshold: float = 0.5,
    n_simulations: int = 400,
    confidence: float = 0.95,
    random_state: int | None = 0,
    chunk: int = 10,
    check_confidence: float = 0.99,
) -> PerformanceEstimate:
    """Estimate ROC AUC, accuracy and the positive rate of unlabelled rows with ``scores`` (see
    :class:`PerformanceEstimate`), calibrating on the labelled reference ``(y_reference, p_reference)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> p = rng.beta(2, 3, 4000); y = (rng.uniform(size=4000) < p).astype(int)
    >>> est = cbpe(p[2000:], y[:2000], p[:2000], random_state=0)
    >>> bool(est.roc_auc_low < 0.72 < est.roc_auc_high)  # the realised AUC of such rows is about 0.72
    True
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y_ref = np.asarray(y_reference, dtype=np.float64)
    p_ref = np.asarray(p_reference, dtype=np.float64)
    calibrator = fit_calibrator(y_ref, p_ref)
    rng = np.random.default_rng(random_state)
    ranks = rankdata(s)  # average ranks: ties count half, as in the Mann-Whitney statistic
    pred = s >= threshold
    n = len(s)
    aucs, accs, rates = [], [], []
    for start in range(0, n_simulations, chunk):
        b = min(chunk, n_simulations - start)
        # the calibration map is itself estimated: each chunk of draws uses a map fitted on a bootstrap resample of
        # the reference, so the interval carries that uncertainty too (without it, a 5,000-row reference whose
        # fitted slope came out 0.92 instead of 1 put the interval around a ROC AUC 0.015 too low)
        boot = rng.integers(0, len(y_ref), len(y_ref))
        q = fit_calibrator(y_ref[boot], p_ref[boot]).predict(s)
        Y = rng.uniform(size=(n, b)) < q[:, None]
        n1 = Y.sum(axis=0).astype(np.float64)
        n0 = n - n1
        with np.errstate(invalid="ignore", divide="ignore"):
            aucs.append((ranks @ Y - n1 * (n1 + 1) / 2) / (n1 * n0))
        accs.append((Y == pred[:, None]).mean(axis=0))
        rates.append(n1 / n)
    auc, acc, rate = (np.concatenate(v) for v in (aucs, accs, rates))
    auc = auc[np.isfinite(auc)]
    a = (1 - confidence) / 2

    def band(v):
        return float(v.mean()), float(np.quantile(v, a)), float(np.quantile(v, 1 - a))

    c = (1 - check_confidence) / 2
    checks = {
        k: [float(np.quantile(v, c)), float(np.quantile(v, 1 - c))] for k, v in (("roc_auc", auc), ("accuracy", acc))
    }
    return PerformanceEstimate(
        n, *band(auc), *band(acc), *band(rate), float(pred.mean()),
        expected_calibration_error(y_ref, p_ref)[0],
        expected_calibration_error(y_ref, calibrator.predict(p_ref))[0],
        n_simulations, confidence, checks, check_confidence,
    )  # fmt: skip


# ------------------------------------------------------------------------------------- populations, chunk by chunk
@dataclass
class Reference:
    """What the training rows contribute to every comparison: per numeric feature its PSI edges and its sorted
    distinct values with the reference's ECDF at each; per categorical its number of code slots."""

    schema: object
    n_bins: int
    edges: dict[int, np.ndarray]
    values: dict[int, np.ndarray]
    ecdf: dict[int, np.ndarray]
    counts: dict[int, np.ndarray]  # the reference's own PSI bin / level counts
    n: dict[int, int]  # non-missing reference values per numeric

    @classmethod
    def build(cls, codes: np.ndarray, schema, n_bins: int = 10) -> Reference:
        edges, values, ecdf, counts, n = {}, {}, {}, {}, {}
        for j, f in enumerate(schema.features):
            col = codes[:, j]
            if f.is_categorical:
                counts[j] = level_counts(col, len(f.levels) + 1)
                continue
            edges[j] = quantile_edges(col, n_bins)
            counts[j] = numeric_counts(col, edges[j])
            v = np.sort(col[np.isfinite(col)])
            values[j] = np.unique(v)
            n[j] = len(v)
            ecdf[j] = np.searchsorted(v, values[j], side="right") / max(len(v), 1)
        return cls(schema, n_bins, edges, values, ecdf, counts, n)


def profile(codes: np.ndarray, ref: Reference) -> dict[int, dict[str, np.ndarray]]:
    """Counts of one block of current rows against ``ref``: they add up over blocks (partitions) to those of all
    rows. Numeric: PSI bin counts, and for each reference value u the rows ``< u`` (``left``) and ``<= u``
    (``right``), which give the exact two-sample KS statistic; categorical: level counts."""
    out = {}
    for j, f in enumerate(ref.schema.features):
        col = codes[:, j]
        if f.is_categorical:
            out[j] = {"counts": level_counts(col, len(f.levels) + 1)}
            continue
        v = col[np.isfinite(col)]
        u = ref.values[j]
        k = len(u)
        # searchsorted(u, v, "right") = i: u_{i-1} <= v < u_i, so v < u_k exactly when i <= k;
        # searchsorted(u, v, "left") = i: u_{i-1} < v <= u_i, so v <= u_k exactly when i <= k.
        # u holds distinct values, so "right" is "left" plus one where v equals u there: one binary search, not two
        left = np.searchsorted(u, v, side="left")
        right = left + (u.take(left, mode="clip") == v) if k else left
        below = np.cumsum(np.bincount(right, minlength=k + 1))[:k]
        at_or_below = np.cumsum(np.bincount(left, minlength=k + 1))[:k]
        out[j] = {"counts": numeric_counts(col, ref.edges[j]), "left": below, "right": at_or_below}
    return out


def add_profiles(a: dict | None, b: dict) -> dict:
    if a is None:
        return {j: {k: v.copy() for k, v in d.items()} for j, d in b.items()}
    for j, d in b.items():
        for k, v in d.items():
            a[j][k] += v
    return a


def ks_from_counts(ref_ecdf: np.ndarray, left: np.ndarray, right: np.ndarray, n_ref: int, n_cur: int):
    """The exact two-sample KS statistic from the reference ECDF at its distinct values and the current rows'
    counts below / at-or-below each; the p-value as scipy's ``ks_2samp(method="asymp")`` computes it."""
    from scipy.stats import distributions

    if n_cur == 0 or n_ref == 0:
        return float("nan"), float("nan")
    before = np.concatenate([[0.0], ref_ecdf[:-1]])
    d = max(np.abs(ref_ecdf - right / n_cur).max(), np.abs(before - left / n_cur).max())
    en = n_ref * n_cur / (n_ref + n_cur)
    return float(d), float(np.clip(distributions.kstwo.sf(d, np.round(en)), 0, 1))


def drift_from_profile(
    ref: Reference, cur: dict, *, moderate=0.1, significant=0.25, alpha=0.05, correction="holm", features=None
) -> list[FeatureDrift]:
    """:func:`feature_drift` from counts (a population scanned partition by partition): the same PSI and chi-square
    to rounding, the exact KS statistic, KS p-values from the asymptotic distribution."""

    out = []
    for j, f in enumerate(ref.schema.features):
        if features is not None and f.name not in features:
            continue
        rc, cc = ref.counts[j], cur[j]["counts"]
        if f.is_categorical:
            out.append(_categorical_drift(f, rc, cc))
        else:
            n_cur = int(cc[:-1].sum())
            stat, p = ks_from_counts(ref.ecdf[j], cur[j]["left"], cur[j]["right"], ref.n[j], n_cur)
            out.append(FeatureDrift(f.name, "numeric", psi(rc, cc), "Kolmogorov-Smirnov (asymptotic)", stat, p,
                                    reference_missing=float(rc[-1] / max(rc.sum(), 1)),
                                    current_missing=float(cc[-1] / max(cc.sum(), 1))))  # fmt: skip
    return decide(out, moderate=moderate, significant=significant, alpha=alpha, correction=correction)


def quality_from_profile(ref: Reference, cur: dict, rows: int) -> pd.DataFrame:
    """:func:`column_quality` from counts: missing share, the most frequent level's share (numerics: the most
    frequent *training* value's share), unseen levels, values outside the training range."""
    out = []
    n = max(rows, 1)
    for j, f in enumerate(ref.schema.features):
        cc = cur[j]["counts"]
        if f.is_categorical:
            miss = f.levels.index("missing") if "missing" in f.levels else None
            out.append({"feature": f.name, "kind": f.kind, "missing": float(cc[miss] / n) if miss is not None else 0.0,
                        "top_value_share": float(cc.max() / n), "unseen_level": float(cc[-1] / n),
                        "outside_train_range": float("nan")})  # fmt: skip
        else:
            left, right = cur[j]["left"], cur[j]["right"]
            finite = int(cc[:-1].sum())
            at = right - left  # rows equal to each training value
            outside = (left[0] + finite - right[-1]) / n if len(left) else float("nan")
            out.append({"feature": f.name, "kind": f.kind, "missing": float(cc[-1] / n),
                        "top_value_share": float(at.max() / n) if len(at) else 0.0, "unseen_level": float("nan"),
                        "outside_train_range": float(outside)})  # fmt: skip
    return pd.DataFrame(out)
