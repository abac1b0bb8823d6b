"""Permutation importance in the raw feature space, with feature groups and 95% intervals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from audit.explain._common import PredictFn, as_generator
from audit.metrics import make_scorer, poisson_weights, weighted_auc


@dataclass(frozen=True)
class PermutationImportance:
    """Result of :func:`permutation_importance`.

    Attributes
    ----------
    names : list of str
        One entry per permuted unit: a feature, or a group of features permuted together.
    members : list of list of str
        The features in each unit.
    importances : ndarray of shape (n_units, n_repeats)
        Score drop (baseline - permuted) per repeat; greater means more important.
    baseline_score : float
    metric : str
    n_rows : int
        Rows scored per repeat.
    rows_evaluated : int
        Model evaluations, all repeats and units together.
    sampling_interval : tuple of ndarray, optional
        95% interval of each unit's mean importance over Poisson bootstrap resamples of the rows (ROC AUC only):
        how much the importance would move with other data of the same kind, which the repeats alone do not show.
    """

    names: list[str]
    members: list[list[str]]
    importances: np.ndarray
    baseline_score: float
    metric: str
    n_rows: int
    rows_evaluated: int
    sampling_interval: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def importances_mean(self) -> np.ndarray:
        return self.importances.mean(axis=1)

    @property
    def importances_std(self) -> np.ndarray:
        return self.importances.std(axis=1)

    def interval(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Student-t interval for the mean importance over repeats (permutation noise, not data sampling)."""
        r = self.importances.shape[1]
        if r < 2:
            m = self.importances_mean
            return m, m
        half = stats.t.ppf(0.5 + level / 2, r - 1) * self.importances.std(axis=1, ddof=1) / np.sqrt(r)
        return self.importances_mean - half, self.importances_mean + half

    def to_frame(self) -> pd.DataFrame:
        """Ranked table: feature, mean, std, 95% interval over repeats, the sampling interval when computed, rank."""
        lo, hi = self.interval()
        df = pd.DataFrame(
            {
                "feature": self.names,
                "importance": self.importances_mean,
                "std": self.importances_std,
                "ci_low": lo,
                "ci_high": hi,
                "members": [", ".join(m) for m in self.members],
            }
        )
        if self.sampling_interval is not None:
            df.insert(5, "data_low", self.sampling_interval[0])
            df.insert(6, "data_high", self.sampling_interval[1])
        df = df.sort_values("importance", ascending=False, kind="stable").reset_index(drop=True)
        df.insert(0, "rank", np.arange(1, len(df) + 1))
        return df


def permutation_units(feature_names: list[str], groups: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """The permuted units in feature order: each feature alone, or its group (once, at its first member).

    Examples
    --------
    >>> permutation_units(["a", "b", "c"], {"bc": ["c", "b"]})
    [('a', ['a']), ('bc', ['c', 'b'])]
    """
    for g, members in groups.items():
        unknown = [m for m in members if m not in feature_names]
        if unknown:
            raise ValueError(f"group {g!r} names unknown feature(s) {unknown}")
    grouped = {m for members in groups.values() for m in members}
    units: list[tuple[str, list[str]]] = []
    seen_groups: set[str] = set()
    for name in feature_names:
        if name in grouped:
            g = next(g for g, members in groups.items() if name in members)
            if g not in seen_groups:
                seen_groups.add(g)
                units.append((g, list(groups[g])))
        else:
            units.append((name, [name]))
    return units


def _permuted_scores(predict: PredictFn, X: np.ndarray, cols: list[int], perms: np.ndarray, stacked, chunk_rows: int):
    """The scores of ``X`` with columns ``cols`` permuted by each row of ``perms``, one score vector per repeat: all
    repeats in one call on ``stacked`` (``X`` tiled, restored after), or with ``stacked`` None one repeat at a time
    in row chunks, so memory is bounded by ``chunk_rows``."""
    n, n_repeats = len(X), len(perms)
    if stacked is not None:
        for c in cols:
            stacked[:, c] = X[perms, c].reshape(-1)
        p = predict(stacked)
        for c in cols:
            stacked[:, c] = np.tile(X[:, c], n_repeats)
        for r in range(n_repeats):
            yield p[r * n : (r + 1) * n]
        return
    p = np.empty(n)
    for r in range(n_repeats):
        for s in range(0, n, chunk_rows):
            block = X[s : s + chunk_rows].copy()
            for c in cols:
                block[:, c] = X[perms[r, s : s + chunk_rows], c]
            p[s : s + len(block)] = predict(block)
        yield p


def _sample_rows(X, y, w, max_rows: int | None, rng):
    """``X`` (float64), ``y`` and the weights ``w`` as arrays: a seeded sample of ``max_rows`` rows in their order, or
    all of them without a cap."""
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    w = None if w is None else np.asarray(w, dtype=np.float64)
    if max_rows is None or max_rows >= len(X):
        return X, y, w
    idx = np.sort(rng.choice(len(X), size=max_rows, replace=False))
    return X[idx], y[idx], None if w is None else w[idx]


def permutation_importance(
    predict: PredictFn,
    X: np.ndarray,
    y: np.ndarray,
    *,
    feature_names: list[str],
    groups: dict[str, list[str]] | None = None,
    metric: str = "roc_auc",
    n_repeats: int = 5,
    max_rows: int | None = None,
    threshold: float = 0.5,
    chunk_rows: int = 1 << 20,
    random_state: int | np.random.Generator | None = None,
    n_bootstrap: int = 0,
    sample_weight: np.ndarray | None = None,
) -> PermutationImportance:
    """Score drop when each feature (or group of features) is shuffled.

    All repeats of one unit are evaluated in one call of ``predict`` on a stacked array, so the model sees large
    batches and no DataFrame is rebuilt.

    Parameters
    ----------
    predict : callable
        ``predict(X) -> scores`` on arrays shaped like ``X``.
    X : ndarray of shape (n_rows, n_features)
        Rows in code space (one column per raw feature).
    y : ndarray of shape (n_rows,)
        True labels (0/1), or targets for regression metrics.
    feature_names : list of str
        Column names of ``X``.
    groups : dict, optional
        ``{name: [feature, ...]}``: features shuffled together (with one row permutation) and reported as one unit.
    metric : str, default "roc_auc"
        See :func:`audit.explain._common.make_scorer`.
    n_repeats : int, default 5
    max_rows : int, optional
        Score on a seeded sample of this many rows.
    threshold : float, default 0.5
        For threshold metrics (accuracy, f1).
    chunk_rows : int, default 2**20
        Rows per model call. When ``n_rows * n_repeats`` exceeds it, repeats are evaluated one at a time in row
        chunks, so peak memory is about ``chunk_rows * n_features * 8`` bytes plus the predictions, whatever the data
        size; the numbers are the same either way.
    random_state : int, Generator or None
    n_bootstrap : int, default 0
        With ``metric="roc_auc"``: Poisson bootstrap resamples of the rows for :attr:`PermutationImportance.
        sampling_interval` (the permuted scores are reused, nothing is re-evaluated).
    sample_weight : ndarray of shape (n_rows,), optional
        Row weights of the score (as ``sklearn.inspection.permutation_importance``'s: the shuffles stay uniform over
        rows; tested against it); a bootstrap replicate's row weight is its Poisson count times the row's weight.

    Returns
    -------
    PermutationImportance

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(2000, 2))
    >>> res = permutation_importance(lambda A: 3 * A[:, 0], X, 3 * X[:, 0], feature_names=["a", "b"],
    ...                              metric="neg_mean_squared_error", random_state=0)
    >>> bool(res.importances_mean[0] > 15 and res.importances_mean[1] == 0)
    True
    """
    if n_repeats < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    rng = as_generator(random_state)
    X, y, w = _sample_rows(X, y, sample_weight, max_rows, rng)
    n = len(X)
    score = make_scorer(metric, threshold=threshold)
    col = {name: j for j, name in enumerate(feature_names)}
    units = permutation_units(feature_names, groups or {})

    p_base = predict(X)
    baseline = score(y, p_base, sample_weight=w)
    rows = n
    imp = np.empty((len(units), n_repeats))
    boot = np.zeros((len(units), n_bootstrap)) if n_bootstrap > 0 and metric == "roc_auc" else None
    if boot is not None:
        W = poisson_weights(n, n_bootstrap, rng.integers(2**63 - 1), w)
        auc_base = weighted_auc(y, p_base, W)
    stack_all = n * n_repeats <= chunk_rows  # small data: all repeats in one array and one call
    stacked = np.tile(X, (n_repeats, 1)) if stack_all else None  # reused: columns shuffled, then restored
    for u, (_, members) in enumerate(units):
        cols = [col[m] for m in members]
        perms = np.stack([rng.permutation(n) for _ in range(n_repeats)])  # (n_repeats, n), shared by the group
        for r, p in enumerate(_permuted_scores(predict, X, cols, perms, stacked, chunk_rows)):
            imp[u, r] = baseline - score(y, p, sample_weight=w)
            if boot is not None:
                boot[u] += (auc_base - weighted_auc(y, p, W)) / n_repeats
        rows += n * n_repeats
    interval = None
    if boot is not None:
        interval = (np.quantile(boot, 0.025, axis=1), np.quantile(boot, 0.975, axis=1))
    return PermutationImportance(
        [u[0] for u in units], [u[1] for u in units], imp, float(baseline), metric, n, rows, interval
    )
