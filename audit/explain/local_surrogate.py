"""LIME for tabular data, batched across instances: the estimator of ``lime.lime_tabular.LimeTabularExplainer``.

The same sampling, kernel and weighted ridge as lime's tabular explainer with its defaults
(``discretize_continuous=True``, quartile discretizer, ``feature_selection="highest_weights"``), but every instance's
neighbourhood is drawn in one vectorised step, scored by the model in one batched call on code-space rows (a
categorical is one column holding its level code, so it is perturbed as a categorical), and all local ridge
regressions are solved together from their normal equations. ``tests/test_local.py`` checks the weights and fidelity
against lime's own output.

For each instance ``x`` and each feature, a neighbour draws a bin (a quartile for numerics, a level for categoricals)
from the training frequencies; the interpretable representation is 1 where the neighbour's bin equals ``x``'s,
numerics get a value drawn from a normal truncated to the bin. Neighbours are weighted by
``sqrt(exp(-d**2 / width**2))`` with ``d`` the Euclidean distance in that binary space and, by default,
``width = 0.75 * sqrt(n_features)``. The surrogate's fidelity is its weighted R^2 on the neighbourhood, as lime
reports it (``explanation.score``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from audit.explain._common import PredictFn, as_generator


@dataclass(frozen=True)
class LimeExplanations:
    """Result of :func:`lime_explanations`.

    Attributes
    ----------
    weights : ndarray of shape (n_instances, n_features)
        Surrogate coefficient per raw feature (0 where the feature was not selected).
    selected : ndarray of bool, shape (n_instances, n_features)
    intercept : ndarray of shape (n_instances,)
    score : ndarray of shape (n_instances,)
        Weighted R^2 of the surrogate on its neighbourhood (fidelity).
    local_prediction : ndarray of shape (n_instances,)
        The surrogate's prediction at the instance.
    prediction : ndarray of shape (n_instances,)
        The model's prediction at the instance.
    conditions : list of list of str
        Per instance and feature, the interpretable condition the weight belongs to (``"age <= 28.00"``).
    feature_names : list of str
    num_samples : int
    kernel_width : float
    rows_evaluated : int
    """

    weights: np.ndarray
    selected: np.ndarray
    intercept: np.ndarray
    score: np.ndarray
    local_prediction: np.ndarray
    prediction: np.ndarray
    conditions: list[list[str]]
    feature_names: list[str]
    num_samples: int
    kernel_width: float
    rows_evaluated: int

    def top_features(self, k: int) -> list[list[int]]:
        """Per instance, the indices of the ``k`` selected features with the largest ``|weight|``."""
        order = np.argsort(-np.abs(self.weights), axis=1, kind="stable")
        return [[int(j) for j in row[:k] if self.selected[i, j]] for i, row in enumerate(order)]


def _truncated_normal(rng: np.random.Generator, mean, sd, lo, hi, *, index=None) -> np.ndarray:
    """Draws from N(mean, sd) truncated to [lo, hi], by inverting the CDF (in the lower tail, for accuracy).

    With ``index``, the parameters are given per bin and ``index`` holds each draw's bin: the CDF at the bounds is
    then computed once per bin instead of once per draw (the same values, hence the same draws)."""
    a, b = (lo - mean) / sd, (hi - mean) / sd
    flip = a > 0
    a2, b2 = np.where(flip, -b, a), np.where(flip, -a, b)
    pa, pb = ndtr(a2), ndtr(b2)
    if index is not None:
        mean, sd, lo, hi, pa, pb, flip = (v[index] for v in (mean, sd, lo, hi, pa, pb, flip))
    z = ndtri(pa + rng.random(np.shape(mean)) * (pb - pa))
    z = np.where(flip, -z, z)
    return np.clip(np.where(np.isfinite(z), mean + sd * z, lo), lo, hi)


class _Stats:
    """Training statistics lime's explainer keeps: quartile bins and per-bin moments, category frequencies."""

    def __init__(self, training: np.ndarray, categorical_mask: np.ndarray, feature_names: list[str], level_names):
        self.n_features = training.shape[1]
        self.categorical = np.asarray(categorical_mask, dtype=bool)
        self.names = feature_names
        self.level_names = level_names
        self.values, self.freqs, self.edges, self.moments = [], [], [], []
        for j in range(self.n_features):
            col = training[:, j]
            if self.categorical[j]:
                vals, counts = np.unique(col, return_counts=True)
                self.edges.append(None)
                self.moments.append(None)
            else:  # quartile bins of the present values, and one more bin for missing values (drawn as missing)
                present = col[~np.isnan(col)]
                qts = np.unique(np.percentile(present, [25, 50, 75])) if present.size else np.zeros(1)
                nb = len(qts) + 1
                bins = np.where(np.isnan(col), nb, np.searchsorted(qts, np.nan_to_num(col)))
                vals, counts = np.unique(bins, return_counts=True)
                mean = np.array([col[bins == k].mean() if np.any(bins == k) else 0.0 for k in range(nb)] + [np.nan])
                sd = np.array([col[bins == k].std() if np.any(bins == k) else 0.0 for k in range(nb)] + [1.0]) + 1e-11
                lo = np.concatenate([[present.min() if present.size else 0.0], qts, [np.nan]])
                hi = np.concatenate([qts, [present.max() if present.size else 0.0], [np.nan]])
                self.edges.append(qts)
                self.moments.append((mean, sd, lo, hi))
            self.values.append(vals.astype(np.float64))
            self.freqs.append(counts / counts.sum())

    def bin_of(self, j: int, x: np.ndarray) -> np.ndarray:
        if self.categorical[j]:
            return x
        e = self.edges[j]
        return np.where(np.isnan(x), len(e) + 1, np.searchsorted(e, np.nan_to_num(x))).astype(np.float64)

    def condition(self, j: int, value: float) -> str:
        name = self.names[j]
        if self.categorical[j]:
            levels = self.level_names[j] if self.level_names is not None else None
            code = int(value)
            label = levels[code] if levels is not None and code < len(levels) else f"{value:g}"
            return f"{name} = {label}"
        q = self.edges[j]
        if np.isnan(value):
            return f"{name} is missing"
        k = int(np.searchsorted(q, value))
        if k == 0:
            return f"{name} <= {q[0]:.2f}"
        if k == len(q):
            return f"{name} > {q[-1]:.2f}"
        return f"{q[k - 1]:.2f} < {name} <= {q[k]:.2f}"


def _weighted_ridge(Z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float):
    """Ridge with intercept and sample weights for a batch of problems; as scikit-learn's ``Ridge(alpha).fit``.

    Z: (n, s, k), y and w: (n, s). Returns coef (n, k), intercept (n,), weighted R^2 (n,).
    """
    sw = w.sum(axis=1, keepdims=True)
    z_off = (w[:, None, :] @ Z)[:, 0, :] / sw  # batched matrix products (BLAS), not einsum
    y_off = (w * y).sum(axis=1, keepdims=True) / sw
    Zc = Z - z_off[:, None, :]
    yc = y - y_off
    Zw = Zc * w[:, :, None]
    A = Zw.transpose(0, 2, 1) @ Zc + alpha * np.eye(Z.shape[2])[None]
    rhs = (Zw.transpose(0, 2, 1) @ yc[:, :, None])[:, :, 0]
    coef = np.linalg.solve(A, rhs[:, :, None])[:, :, 0]
    intercept = y_off[:, 0] - (z_off * coef).sum(axis=1)
    resid = yc - (Zc @ coef[:, :, None])[:, :, 0]
    ss_res = (w * resid**2).sum(axis=1)
    ss_tot = (w * yc**2).sum(axis=1)
    r2 = np.where(ss_tot > 0, 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), 0.0)
    return coef, intercept, r2


def _neighbourhoods(xs: np.ndarray, stats: _Stats, active: np.ndarray, s: int, rng):
    """``s`` neighbours of each row of ``xs`` (the row itself first): their interpretable form ``Z`` (1 where a
    feature is in the row's own bin or level) and the rows the model scores ``inv`` (a numeric drawn from a
    truncated normal within its drawn bin, a missing value as missing; features not in ``active`` keep the row's
    value)."""
    nb, m = len(xs), len(active)
    Z = np.empty((nb, s, m))
    inv = np.repeat(xs[:, None, :], s, axis=1)  # features not perturbed keep the instance's value
    for a, j in enumerate(active):
        bins = stats.values[j][rng.choice(len(stats.values[j]), size=(nb, s), p=stats.freqs[j])]
        own = stats.bin_of(j, xs[:, j])
        Z[:, :, a] = bins == own[:, None]
        if stats.categorical[j]:
            inv[:, :, j] = bins
        else:
            b = bins.astype(np.int64)
            # per bin; the last bin (missing values, drawn as missing) gets harmless placeholder moments
            moments = [np.append(v[:-1], k) for v, k in zip(stats.moments[j], (0.0, 1.0, -1.0, 1.0), strict=True)]
            drawn = _truncated_normal(rng, *moments, index=b)
            inv[:, :, j] = np.where(b == len(stats.edges[j]) + 1, np.nan, drawn)
    Z[:, 0, :] = 1.0
    inv[:, 0, :] = xs
    return Z, inv


def lime_explanations(
    predict: PredictFn,
    X: np.ndarray,
    training: np.ndarray,
    *,
    feature_names: list[str],
    categorical_mask: np.ndarray,
    level_names: list[list[str] | None] | None = None,
    num_samples: int = 5000,
    num_features: int | None = None,
    kernel_width: float | None = None,
    batch_instances: int = 64,
    random_state: int | np.random.Generator | None = None,
    perturbed: list[int] | None = None,
) -> LimeExplanations:
    """LIME surrogates for every row of ``X`` (see the module docstring for the estimator).

    Parameters
    ----------
    predict : callable
        ``predict(A) -> scores`` on code-space arrays.
    X : ndarray of shape (n_instances, n_features)
        Rows to explain, in code space.
    training : ndarray of shape (n_rows, n_features)
        Training rows (code space) for bins and frequencies.
    feature_names : list of str
    categorical_mask : ndarray of bool
        Which columns hold category codes.
    level_names : list, optional
        Per feature, its level names (categoricals) or None; used for the conditions' text.
    num_samples : int, default 5000
        Neighbourhood size per instance (the instance itself included, as in lime).
    num_features : int, optional
        Keep the features with the largest weights in a first ridge fit (lime's ``"highest_weights"``); all by
        default.
    kernel_width : float, optional
        Default ``0.75 * sqrt(n_features)``.
    batch_instances : int
        Instances whose neighbourhoods are built and scored together (memory is also capped at about 16 million
        values).
    random_state : int, Generator or None
    perturbed : list of int, optional
        Features the neighbourhood varies (default all); the others keep the instance's value and get weight 0.
        Wide data uses it: the surrogate's cost grows with the square of the features it fits.

    Returns
    -------
    LimeExplanations
    """
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    training = np.asarray(training, dtype=np.float64)
    n, m_all = X.shape
    active = np.arange(m_all) if perturbed is None else np.asarray(sorted(perturbed), dtype=np.int64)
    m = len(active)
    if num_samples < 2:
        raise ValueError(f"num_samples must be >= 2, got {num_samples}")
    k = m if num_features is None else min(int(num_features), m)
    if k < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    width = float(kernel_width) if kernel_width is not None else 0.75 * np.sqrt(m)
    if width <= 0:
        raise ValueError(f"kernel_width must be > 0, got {kernel_width}")
    rng = as_generator(random_state)
    stats = _Stats(training, categorical_mask, list(feature_names), level_names)
    s = num_samples
    batch_instances = max(1, min(batch_instances, (1 << 24) // (s * m)))  # neighbourhoods in memory: ~16M values

    weights = np.zeros((n, m_all))
    selected = np.zeros((n, m_all), dtype=bool)
    intercept, score, local_pred, pred = (np.empty(n) for _ in range(4))
    rows = 0
    for start in range(0, n, batch_instances):
        xs = X[start : start + batch_instances]
        nb = len(xs)
        Z, inv = _neighbourhoods(xs, stats, active, s, rng)
        y = predict(inv.reshape(-1, m_all)).reshape(nb, s)
        rows += nb * s
        d = np.sqrt(m - Z.sum(axis=2))  # Euclidean distance to the all-ones row of the instance
        kw = np.sqrt(np.exp(-(d**2) / width**2))
        if k < m:
            coef0, _, _ = _weighted_ridge(Z, y, kw, 0.01)
            keep = np.sort(np.argsort(-np.abs(coef0), axis=1, kind="stable")[:, :k], axis=1)
            Zk = np.take_along_axis(Z, keep[:, None, :], axis=2)
        else:
            keep = np.tile(np.arange(m), (nb, 1))
            Zk = Z
        coef, icpt, r2 = _weighted_ridge(Zk, y, kw, 1.0)
        sl = slice(start, start + nb)
        np.put_along_axis(weights[sl], active[keep], coef, axis=1)
        np.put_along_axis(selected[sl], active[keep], True, axis=1)
        intercept[sl], score[sl] = icpt, r2
        local_pred[sl] = icpt + coef.sum(axis=1)  # the instance is the all-ones row
        pred[sl] = y[:, 0]
    conditions = [[stats.condition(j, X[i, j]) for j in range(m_all)] for i in range(n)]
    return LimeExplanations(
        weights, selected, intercept, score, local_pred, pred, conditions, list(feature_names), s, width, rows
    )


def lime_explanations_lime(
    predict: PredictFn,
    X: np.ndarray,
    training: np.ndarray,
    *,
    feature_names: list[str],
    categorical_mask: np.ndarray,
    level_names: list[list[str] | None] | None = None,
    num_samples: int = 5000,
    num_features: int | None = None,
    kernel_width: float | None = None,
    random_state: int | None = None,
) -> LimeExplanations:
    """The same explanations from the lime library itself (``LimeTabularExplainer``, one instance at a time), for
    audits that must cite the reference implementation. Note lime's own choice: with ``num_features <= 6`` it selects
    features by forward selection, where :func:`lime_explanations` keeps the highest weights.
    """
    from lime.lime_tabular import LimeTabularExplainer

    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    training = np.asarray(training, dtype=np.float64)
    n, m = X.shape
    cat = np.asarray(categorical_mask, dtype=bool)
    k = m if num_features is None else min(int(num_features), m)
    rows = [0]

    def proba(A):
        rows[0] += len(A)
        p = predict(np.asarray(A, dtype=np.float64))
        return np.column_stack([1 - p, p])

    explainer = LimeTabularExplainer(
        training,
        feature_names=list(feature_names),
        categorical_features=list(np.flatnonzero(cat)),
        kernel_width=kernel_width,
        random_state=random_state,
    )
    weights, selected = np.zeros((n, m)), np.zeros((n, m), dtype=bool)
    intercept, score, local_pred = (np.empty(n) for _ in range(3))
    for i in range(n):
        e = explainer.explain_instance(X[i], proba, num_features=k, num_samples=num_samples)
        for j, w in e.as_map()[1]:
            weights[i, j], selected[i, j] = w, True
        intercept[i], score[i], local_pred[i] = e.intercept[1], e.score, np.asarray(e.local_pred).reshape(-1)[0]
    stats = _Stats(training, cat, list(feature_names), level_names)
    conditions = [[stats.condition(j, X[i, j]) for j in range(m)] for i in range(n)]
    width = float(kernel_width) if kernel_width is not None else 0.75 * np.sqrt(m)
    return LimeExplanations(
        weights, selected, intercept, score, local_pred, proba(X)[:, 1], conditions, list(feature_names),
        num_samples, width, rows[0],
    )  # fmt: skip


def top_k_jaccard(a: list[list[int]], b: list[list[int]]) -> np.ndarray:
    """Per row, ``|A & B| / |A | B|`` of two lists of top-feature index lists (1 where both are empty).

    Examples
    --------
    >>> top_k_jaccard([[0, 1, 2]], [[1, 2, 3]]).tolist()
    [0.5]
    """
    out = []
    for u, v in zip(a, b, strict=True):
        su, sv = set(u), set(v)
        out.append(len(su & sv) / len(su | sv) if su | sv else 1.0)
    return np.array(out)
