"""Group fairness metrics with bootstrap confidence intervals, verdicts, and proxy screening.

Every group metric used here is a ratio of per-group sums of a few per-row statistics (label, decision, true and
false positives, and per-probability-bin sums of labels and scores for calibration). So one matrix ``Z`` of shape
(n_rows, n_groups * n_stats) holds everything, the point estimate is ``ones @ Z``, and a bootstrap resample is a
row-count vector ``w`` with ``w @ Z``: all resamples together are a single matrix product, with no re-prediction
and no per-resample pandas work. The numbers equal fairlearn's ``MetricFrame`` (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency
from sklearn.metrics import roc_auc_score

from audit.explain._common import as_generator

MEASURES = {
    # name: (kind, description); kind "max": value must stay <= threshold, "min": value must stay >= threshold
    "demographic_parity_difference": ("max", "largest gap in selection rate between groups"),
    "disparate_impact_ratio": ("min", "lowest selection rate / highest selection rate (four-fifths rule at 0.8)"),
    "equalized_odds_difference": ("max", "larger of the TPR gap and the FPR gap between groups"),
    "equal_opportunity_difference": ("max", "largest gap in true positive rate between groups"),
    "calibration_gap": ("max", "largest gap in expected calibration error between groups"),
}
_N, _P, _S, _TP, _FP = range(5)


def group_labels(values: pd.Series, *, edges: list[float] | None = None, quantiles: int = 4) -> np.ndarray:
    """String group labels; numeric values are binned by ``edges`` or by ``quantiles``.

    Examples
    --------
    >>> list(group_labels(pd.Series([18, 30, 70]), edges=[25, 65]))
    ['< 25', '25–65', '>= 65']
    """
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        v = values.to_numpy(dtype=float, na_value=np.nan)
        if edges is None:
            finite = v[~np.isnan(v)]
            edges = list(np.unique(np.quantile(finite, np.linspace(0, 1, quantiles + 1))[1:-1]))
        e = list(edges)
        names = [f"< {e[0]:g}"] + [f"{a:g}–{b:g}" for a, b in zip(e[:-1], e[1:], strict=True)] + [f">= {e[-1]:g}"]
        idx = np.searchsorted(np.asarray(e), v, side="right")
        out = np.array(names, dtype=object)[idx]
        out[np.isnan(v)] = "missing"
        return out
    return np.array(["missing" if pd.isna(x) else str(x) for x in values], dtype=object)


def _stats_matrix(y: np.ndarray, p: np.ndarray, codes: np.ndarray, n_groups: int, threshold: float, n_bins: int):
    d = (p >= threshold).astype(float)
    yf = y.astype(float)
    b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    onehot_b = np.zeros((len(y), n_bins))
    onehot_b[np.arange(len(y)), b] = 1.0
    stats = np.column_stack(
        [np.ones(len(y)), yf, d, yf * d, (1 - yf) * d, onehot_b * yf[:, None], onehot_b * p[:, None]]
    )
    k = stats.shape[1]
    Z = np.zeros((len(y), n_groups * k))
    for g in range(n_groups):
        m = codes == g
        Z[m, g * k : (g + 1) * k] = stats[m]
    return Z, k


def _rates(sums: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Per-group rates from summed statistics, shape (..., n_groups)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n, pos, sel, tp, fp = (sums[..., i] for i in range(5))
        neg = n - pos
        tn = neg - fp
        ysum, psum = sums[..., 5 : 5 + n_bins], sums[..., 5 + n_bins : 5 + 2 * n_bins]
        return {
            "count": n,
            "base_rate": pos / n,
            "selection_rate": sel / n,
            "accuracy": (tp + tn) / n,
            "tpr": tp / pos,
            "fpr": fp / neg,
            "fnr": (pos - tp) / pos,
            "precision": tp / sel,
            "ece": np.abs(ysum - psum).sum(axis=-1) / n,
        }


def _measures(r: dict[str, np.ndarray], eligible: np.ndarray) -> dict[str, np.ndarray]:
    def spread(a):
        a = a[..., eligible]
        return np.nanmax(a, axis=-1) - np.nanmin(a, axis=-1)

    with np.errstate(invalid="ignore", divide="ignore"), _quiet_nan():
        sel = r["selection_rate"][..., eligible]
        tpr_gap, fpr_gap = spread(r["tpr"]), spread(r["fpr"])
        return {
            "demographic_parity_difference": spread(r["selection_rate"]),
            "disparate_impact_ratio": np.nanmin(sel, axis=-1) / np.nanmax(sel, axis=-1),
            "equalized_odds_difference": np.fmax(tpr_gap, fpr_gap),
            "equal_opportunity_difference": tpr_gap,
            "calibration_gap": spread(r["ece"]),
        }


class _quiet_nan:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


@dataclass(frozen=True)
class GroupFairness:
    """Fairness of one grouping (a sensitive feature, binned, or an intersection).

    Attributes
    ----------
    name : str
        The grouping, e.g. "sex" or "sex x race".
    table : DataFrame
        One row per group: count, eligible, base rate, selection rate, accuracy, TPR, FPR, FNR, precision, ROC AUC,
        ECE, and for selection rate, TPR and FPR the bootstrap interval (``*_low``, ``*_high``).
    measures : DataFrame
        One row per headline measure: value, ci_low, ci_high, over eligible groups only.
    insufficient : list of str
        Groups below the minimum size: reported, never used in a measure.
    """

    name: str
    table: pd.DataFrame
    measures: pd.DataFrame
    insufficient: list[str]
    n_bootstrap: int


def group_fairness(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    *,
    name: str = "",
    threshold: float = 0.5,
    min_group_size: int = 30,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    n_bins: int = 10,
    random_state: int | np.random.Generator | None = None,
) -> GroupFairness:
    """Group metrics and headline fairness measures with percentile-bootstrap intervals.

    Parameters
    ----------
    y : ndarray of shape (n,)
        0/1 labels.
    p : ndarray of shape (n,)
        Positive-class probabilities; decisions are ``p >= threshold``.
    groups : ndarray of shape (n,)
        Group label per row.
    min_group_size : int
        Groups with fewer rows are reported as insufficient and left out of every measure.
    n_bootstrap : int
        Resamples of rows (0: no intervals).
    random_state : int, Generator or None

    Returns
    -------
    GroupFairness
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    levels, codes = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    G = len(levels)
    Z, k = _stats_matrix(y, p, codes, G, threshold, n_bins)
    point = _rates(Z.sum(axis=0).reshape(G, k), n_bins)
    eligible = point["count"] >= min_group_size
    table = pd.DataFrame({"group": levels, **{m: v for m, v in point.items()}})
    table["count"] = table["count"].astype(int)
    table.insert(2, "eligible", eligible)
    table["roc_auc"] = [
        roc_auc_score(y[codes == g], p[codes == g]) if 0 < y[codes == g].sum() < (codes == g).sum() else np.nan
        for g in range(G)
    ]
    measures = {m: [float(v), np.nan, np.nan] for m, v in _measures(point, eligible).items()}
    if eligible.sum() < 2:
        measures = {m: [np.nan, np.nan, np.nan] for m in measures}
    elif n_bootstrap > 0:
        rng = as_generator(random_state)
        n = len(y)
        block = max(1, min(n_bootstrap, 4_000_000 // max(n, 1)))
        boot_rates: list[dict[str, np.ndarray]] = []
        done = 0
        while done < n_bootstrap:
            b = min(block, n_bootstrap - done)
            W = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(b)]).astype(float)
            boot_rates.append(_rates((W @ Z).reshape(b, G, k), n_bins))
            done += b
        rates = {key: np.concatenate([r[key] for r in boot_rates]) for key in boot_rates[0]}
        alpha = (1 - confidence) / 2
        with _quiet_nan():
            for m, values in _measures(rates, eligible).items():
                lo, hi = np.nanquantile(values, [alpha, 1 - alpha])
                measures[m][1:] = [float(lo), float(hi)]
            for key in ("selection_rate", "tpr", "fpr"):
                lo, hi = np.nanquantile(rates[key], [alpha, 1 - alpha], axis=0)
                table[f"{key}_low"], table[f"{key}_high"] = lo, hi
    mframe = pd.DataFrame(
        [(m, *v, MEASURES[m][0], MEASURES[m][1]) for m, v in measures.items()],
        columns=["measure", "value", "ci_low", "ci_high", "kind", "definition"],
    )
    return GroupFairness(name, table, mframe, [str(g) for g in levels[~eligible]], n_bootstrap)


def verdict(value: float, low: float, high: float, threshold: float, kind: str) -> str:
    """ "pass", "fail" or "inconclusive" (the interval straddles the threshold).

    ``kind="max"``: the measure must not exceed ``threshold``; ``kind="min"``: it must not fall below it. Without an
    interval (NaN bounds) the point value decides.

    Examples
    --------
    >>> verdict(0.05, 0.02, 0.08, 0.1, "max"), verdict(0.12, 0.11, 0.14, 0.1, "max"), verdict(0.09, 0.05, 0.13, 0.1, "max")
    ('pass', 'fail', 'inconclusive')
    """
    if np.isnan(value):
        return "inconclusive"
    if np.isnan(low) or np.isnan(high):
        low = high = value
    if kind == "max":
        return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"
    return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramér's V between two categorical arrays (0: independent, 1: one determines the other).

    Examples
    --------
    >>> round(cramers_v(np.array(list("aabb") * 10), np.array(list("xxyy") * 10)), 6)
    1.0
    """
    table = pd.crosstab(pd.Series(a, dtype=str), pd.Series(b, dtype=str)).to_numpy()
    if min(table.shape) < 2:
        return 0.0
    chi2 = chi2_contingency(table, correction=False)[0]
    return float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))
