"""Interventional SHAP values in the raw feature space, evaluated in large batches.

A categorical feature is one column of the code space, so masking it replaces the whole category at once and its
attribution is already one value per raw feature; nothing has to be summed back from one-hot columns.

Two estimators of the same quantity, the Shapley values of the game
``v(S) = E_b[f(x_S, b_{not S})]`` over a (weighted) background set:

- ``"exact"``: every one of the ``2**M`` coalitions, weighted by ``|S|! (M - |S| - 1)! / M!``. Exact for any model,
  affordable for up to ~12 features.
- ``"permutation"``: the estimator of shap's ``PermutationExplainer``: walk antithetic pairs of random feature
  orders (an order and its reverse) and average the marginal contributions. Exact for models whose interactions are
  at most pairwise; additive by construction (the contributions along an order telescope to ``f(x) - v(empty)``).

Either way, all coalitions of all instances are stacked into one array and scored by the model in large batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from audit.explain._common import PredictFn, as_generator


@dataclass(frozen=True)
class ShapleyValues:
    """Result of :func:`shapley_values`.

    Attributes
    ----------
    values : ndarray of shape (n_instances, n_features)
        Attribution of each raw feature, in the model's output units (probability).
    base_value : float
        ``v(empty)``: the (weighted) mean prediction over the background.
    predictions : ndarray of shape (n_instances,)
        ``f(x)`` for each instance, scored separately.
    feature_names : list of str
    method : str
        ``"exact"`` or ``"permutation"``.
    n_background : int
    n_permutations : int
        Orders walked per instance (0 for exact).
    rows_evaluated : int
        Model evaluations, all instances together.
    """

    values: np.ndarray
    base_value: float
    predictions: np.ndarray
    feature_names: list[str]
    method: str
    n_background: int
    n_permutations: int
    rows_evaluated: int

    @property
    def additivity_error(self) -> np.ndarray:
        """``|base + sum(phi) - f(x)|`` per instance."""
        return np.abs(self.base_value + self.values.sum(axis=1) - self.predictions)


def summarize_background(
    X: np.ndarray,
    size: int,
    *,
    method: str = "sample",
    categorical_mask: np.ndarray | None = None,
    random_state: int | np.random.Generator | None = None,
    return_index: bool = False,
    sample_weight: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A background set of at most ``size`` real rows, with weights summing to 1 (and, with ``return_index``, the
    rows' positions in ``X``).

    ``"sample"``: a seeded sample without replacement, equal weights. ``"kmeans"``: k-means on standardised numerics
    and one-hot categoricals, then for each cluster the real row nearest its centre (a medoid, so category codes stay
    valid), weighted by the cluster's share of rows. With ``sample_weight`` (``dataset.weight``) a sampled row's
    weight is its own and a cluster's the sum of its rows' (the rows chosen are the same): the background's weighted
    average estimates the weighted average over ``X``.

    Examples
    --------
    >>> B, w = summarize_background(np.arange(20.0).reshape(10, 2), 4, random_state=0)
    >>> B.shape, float(w.sum())
    ((4, 2), 1.0)
    """
    X = np.asarray(X, dtype=np.float64)
    rng = as_generator(random_state)
    sw = None if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)

    def normalised(idx: np.ndarray) -> np.ndarray:
        if sw is None or not sw[idx].sum() > 0:
            return np.full(len(idx), 1.0 / len(idx))
        return sw[idx] / sw[idx].sum()

    if size >= len(X):
        idx = np.arange(len(X))
        out = X.copy(), normalised(idx)
        return (*out, idx) if return_index else out
    if method == "sample":
        idx = np.sort(rng.choice(len(X), size=size, replace=False))
        out = X[idx], normalised(idx)
        return (*out, idx) if return_index else out
    if method != "kmeans":
        raise ValueError(f"background method must be 'sample' or 'kmeans', got {method!r}")
    from sklearn.cluster import KMeans

    cat = np.zeros(X.shape[1], dtype=bool) if categorical_mask is None else np.asarray(categorical_mask, dtype=bool)
    parts = []
    for j in range(X.shape[1]):
        col = X[:, j]
        if cat[j]:
            levels = np.unique(col)
            parts.append((col[:, None] == levels[None, :]).astype(np.float64))
        else:  # standardised; a missing value sits at the mean, with an indicator column so it clusters apart
            miss = np.isnan(col)
            mu, sd = (np.nanmean(col), np.nanstd(col)) if (~miss).any() else (0.0, 1.0)
            z = (np.where(miss, mu, col) - mu) / (sd if sd > 0 else 1.0)
            parts.append(np.column_stack([z, miss.astype(np.float64)]) if miss.any() else z[:, None])
    E = np.hstack(parts)
    km = KMeans(n_clusters=size, n_init=1, random_state=int(rng.integers(2**31 - 1))).fit(E)
    d = ((E[:, None, :] - km.cluster_centers_[None, :, :]) ** 2).sum(axis=2) if len(E) * size < 5e6 else None
    if d is None:  # large inputs: nearest row per centre, centre by centre
        medoids = np.array([int(np.argmin(((E - c) ** 2).sum(axis=1))) for c in km.cluster_centers_])
    else:
        medoids = d.argmin(axis=0)
    weights = np.bincount(km.labels_, weights=sw, minlength=size).astype(np.float64)
    out = X[medoids], weights / weights.sum()
    return (*out, np.asarray(medoids)) if return_index else out


def _coalition_values(
    predict: PredictFn,
    X: np.ndarray,
    background: np.ndarray,
    weights: np.ndarray,
    masks: np.ndarray,
    batch_rows: int,
) -> np.ndarray:
    """``v(S)`` for every instance and every mask: array (n_instances, n_masks)."""
    n, m = X.shape
    b = len(background)
    per_instance = len(masks) * b
    chunk = max(1, batch_rows // max(per_instance, 1))
    out = np.empty((n, len(masks)))
    for s in range(0, n, chunk):
        xs = X[s : s + chunk]
        rows = np.where(masks[None, :, None, :], xs[:, None, None, :], background[None, None, :, :])
        p = predict(rows.reshape(-1, m)).reshape(len(xs), len(masks), b)
        out[s : s + chunk] = p @ weights
    return out


def shapley_values(
    predict: PredictFn,
    X: np.ndarray,
    background: np.ndarray,
    *,
    feature_names: list[str],
    background_weights: np.ndarray | None = None,
    method: str = "auto",
    n_permutations: int = 10,
    exact_max_features: int = 10,
    batch_rows: int = 1 << 20,
    random_state: int | np.random.Generator | None = None,
) -> ShapleyValues:
    """Interventional Shapley values of ``predict`` at each row of ``X``.

    Parameters
    ----------
    predict : callable
        ``predict(A) -> scores`` on code-space arrays.
    X : ndarray of shape (n_instances, n_features)
        Rows to explain.
    background : ndarray of shape (n_background, n_features)
        Reference rows that "absent" features are drawn from (see :func:`summarize_background`).
    feature_names : list of str
    background_weights : ndarray, optional
        Weights of the background rows (normalised here); equal by default.
    method : {"auto", "exact", "permutation"}
        ``"auto"`` is exact for at most ``exact_max_features`` features, permutation otherwise.
    n_permutations : int, default 10
        Antithetic pairs of feature orders (each pair is an order and its reverse) for ``"permutation"``.
    exact_max_features : int, default 10
    batch_rows : int
        Rows stacked per model call (bounds memory: ``batch_rows * n_features * 8`` bytes).
    random_state : int, Generator or None
        Draws the feature orders.

    Returns
    -------
    ShapleyValues

    Examples
    --------
    >>> f = lambda A: A[:, 0] * A[:, 1] + A[:, 2]
    >>> sv = shapley_values(f, np.array([[1.0, 1.0, 1.0]]), np.zeros((1, 3)), feature_names=["a", "b", "c"])
    >>> sv.values.round(6).tolist(), sv.method
    ([[0.5, 0.5, 1.0]], 'exact')
    """
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    background = np.atleast_2d(np.asarray(background, dtype=np.float64))
    n, m = X.shape
    if background.shape[1] != m:
        raise ValueError(f"background has {background.shape[1]} columns, X has {m}")
    if len(feature_names) != m:
        raise ValueError(f"{len(feature_names)} feature names for {m} columns")
    w = (
        np.full(len(background), 1.0 / len(background))
        if background_weights is None
        else np.asarray(background_weights, dtype=np.float64)
    )
    if len(w) != len(background) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("background_weights must be non-negative, one per background row, not all zero")
    w = w / w.sum()
    if method == "auto":
        method = "exact" if m <= exact_max_features else "permutation"
    if method not in ("exact", "permutation"):
        raise ValueError(f"method must be 'auto', 'exact' or 'permutation', got {method!r}")
    if method == "permutation" and n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")

    f_x = predict(X)
    base = float(predict(background) @ w)
    rows = n + len(background)

    if method == "exact":
        phi, evaluated = _exact(predict, X, background, w, base, f_x, batch_rows)
        return ShapleyValues(phi, base, f_x, list(feature_names), "exact", len(background), 0, rows + evaluated)

    phi, evaluated, n_orders = _permutation(predict, X, background, w, base, f_x, batch_rows, n_permutations,
                                            as_generator(random_state))  # fmt: skip
    rows += evaluated
    return ShapleyValues(phi, base, f_x, list(feature_names), "permutation", len(background), n_orders, rows)


def _exact(predict, X, background, w, base: float, f_x, batch_rows: int) -> tuple[np.ndarray, int]:
    """Exact Shapley values over every coalition, and the rows the model scored for them."""
    n, m = X.shape
    codes = np.arange(1, 2**m - 1)  # every coalition but the empty and the full one
    masks = ((codes[:, None] >> np.arange(m)[None, :]) & 1).astype(bool)
    v_mid = _coalition_values(predict, X, background, w, masks, batch_rows)
    v = np.empty((n, 2**m))
    v[:, 0], v[:, -1], v[:, 1:-1] = base, f_x, v_mid
    size = masks.sum(axis=1)
    sizes = np.concatenate([[0], size, [m]])
    weight_of = np.array([math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)])
    phi = np.zeros((n, m))
    allc = np.arange(2**m)
    for i in range(m):
        without = allc[(allc >> i) & 1 == 0]
        phi[:, i] = (v[:, without | (1 << i)] - v[:, without]) @ weight_of[sizes[without]]
    return phi, n * len(masks) * len(background)


def _permutation(predict, X, background, w, base: float, f_x, batch_rows: int, n_permutations: int, rng):
    """Shapley values from antithetic pairs of feature orders (each coalition scored once), the rows the model
    scored for them and the number of orders."""
    n, m = X.shape
    orders = []
    for _ in range(n_permutations):
        o = rng.permutation(m)
        orders += [o, o[::-1]]
    orders = np.array(orders)  # (n_orders, m)
    # prefix masks: prefix k of order o holds its first k features; k = 1..m-1 are the interior coalitions
    prefix = np.zeros((len(orders), m + 1, m), dtype=bool)
    for k in range(1, m + 1):
        prefix[:, k, :] = prefix[:, k - 1, :]
        prefix[np.arange(len(orders)), k, orders[:, k - 1]] = True
    interior = prefix[:, 1:m, :].reshape(-1, m)
    unique, inverse = np.unique(interior, axis=0, return_inverse=True)  # repeated coalitions are scored once
    v_mid = _coalition_values(predict, X, background, w, unique, batch_rows)
    v = np.empty((n, len(orders), m + 1))
    v[:, :, 0], v[:, :, m] = base, f_x[:, None]
    v[:, :, 1:m] = v_mid[:, inverse.reshape(-1)].reshape(n, len(orders), m - 1)
    gains = np.diff(v, axis=2)  # (n, n_orders, m): contribution of the k-th feature of each order
    phi = np.zeros((n, m))
    for o, order in enumerate(orders):
        phi[:, order] += gains[:, o, :]
    phi /= len(orders)
    return phi, n * len(unique) * len(background), len(orders)


def shapley_values_shap(
    predict: PredictFn,
    X: np.ndarray,
    background: np.ndarray,
    *,
    feature_names: list[str],
    method: str = "auto",
    n_permutations: int = 10,
    exact_max_features: int = 10,
    random_state: int | None = None,
) -> ShapleyValues:
    """The same quantity from the shap library itself (``ExactExplainer`` or ``PermutationExplainer`` over an
    ``Independent`` masker), for audits that must cite the reference implementation. Slower: shap evaluates one
    instance at a time. Equal background weights only.
    """
    import shap

    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    background = np.atleast_2d(np.asarray(background, dtype=np.float64))
    m = X.shape[1]
    rows = [0]

    def f(A):
        rows[0] += len(A)
        return predict(np.asarray(A, dtype=np.float64))

    if method == "auto":
        method = "exact" if m <= exact_max_features else "permutation"
    masker = shap.maskers.Independent(background, max_samples=len(background))
    if method == "exact":
        out = shap.ExactExplainer(f, masker)(X, silent=True)
        n_orders = 0
    else:
        explainer = shap.PermutationExplainer(f, masker, seed=random_state)
        out = explainer(X, max_evals=n_permutations * (2 * m + 1), silent=True)
        n_orders = 2 * n_permutations
    base = float(np.asarray(out.base_values).reshape(-1)[0])
    return ShapleyValues(
        np.asarray(out.values, dtype=np.float64), base, f(X), list(feature_names), f"{method} (shap library)",
        len(background), n_orders, rows[0],
    )  # fmt: skip


def reason_codes(
    values: np.ndarray, *, feature_names: list[str], k: int = 4, direction: str = "negative"
) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` features that push the score down most (``direction="negative"``) or up most.

    Only features with a contribution of the asked sign are listed, so a row can get fewer than ``k``.

    Examples
    --------
    >>> reason_codes(np.array([[0.2, -0.3, -0.1]]), feature_names=["a", "b", "c"], k=2)
    [[('b', -0.3), ('c', -0.1)]]
    """
    sign = -1.0 if direction == "negative" else 1.0
    out = []
    for row in np.asarray(values):
        order = np.argsort(-sign * row, kind="stable")[:k]
        out.append([(feature_names[j], float(row[j])) for j in order if sign * row[j] > 0])
    return out
