"""Accumulated local effects (Apley & Zhu, 2020): numeric, categorical and second-order (2-D), with bootstrap bands.

Numeric features use quantile bins; each row is moved to the two edges of its bin and the prediction differences
are averaged per bin and accumulated. Bootstrap bands resample rows and reuse those differences, so they cost no
extra model evaluations.

Categorical features have no natural order; levels are ordered by how similar the rows of each level are on the
other features (the approach of the ALEPlot / iml packages): for every pair of levels, the Kolmogorov-Smirnov
distance of each numeric feature's conditional distribution plus the total-variation distance of each categorical
feature's conditional frequencies, summed over features; the levels are then sorted along the first axis of a
classical multidimensional scaling of that distance matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from audit.explain._common import PredictFn, as_generator


@dataclass(frozen=True)
class ALE:
    """First-order ALE of one feature.

    Attributes
    ----------
    feature : str
    kind : {"numeric", "categorical"}
    grid : ndarray of shape (n_points,)
        Numeric: bin edges. Categorical: level codes in the chosen order.
    values : ndarray of shape (n_points,)
        Centred ALE at each grid point (mean effect over the data is 0).
    counts : ndarray
        Numeric: rows per bin, shape (n_points - 1,). Categorical: rows per level, shape (n_points,).
    lower, upper : ndarray or None
        95% bootstrap band (percentiles), same shape as ``values``.
    min_rows : int
        Bins or levels with fewer rows are "low support".
    rows_evaluated : int
    """

    feature: str
    kind: str
    grid: np.ndarray
    values: np.ndarray
    counts: np.ndarray
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    min_rows: int = 0
    rows_evaluated: int = 0

    @property
    def low_support(self) -> np.ndarray:
        return self.counts < self.min_rows


def _numeric_edges(x: np.ndarray, n_bins: int) -> np.ndarray:
    return np.unique(np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1)))


def _bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin k (1-based) holds (edges[k-1], edges[k]]; the minimum falls in bin 1."""
    return np.clip(np.searchsorted(edges, x, side="left"), 1, len(edges) - 1)


def _accumulate_center(delta_mean: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Edge values from per-bin mean differences, centred so the count-weighted mean effect is 0."""
    f = np.concatenate([[0.0], np.cumsum(delta_mean)])
    mid = (f[:-1] + f[1:]) / 2
    return f - (counts * mid).sum() / counts.sum()


def ale_numeric(
    predict: PredictFn,
    X: np.ndarray,
    j: int,
    *,
    n_bins: int = 20,
    min_rows: int = 10,
    n_bootstrap: int = 0,
    random_state: int | np.random.Generator | None = None,
    feature: str = "",
) -> ALE:
    """First-order ALE of numeric column ``j``.

    Examples
    --------
    >>> X = np.random.default_rng(0).uniform(size=(500, 2))
    >>> a = ale_numeric(lambda A: 2 * A[:, 0] + A[:, 1], X, 0, n_bins=5)
    >>> bool(np.allclose(np.diff(a.values) / np.diff(a.grid), 2.0))
    True
    """
    X = np.asarray(X, dtype=np.float64)
    ok = ~np.isnan(X[:, j])
    X = X[ok]
    x = X[:, j]
    edges = _numeric_edges(x, n_bins)
    if len(edges) < 2:
        return ALE(feature, "numeric", edges, np.zeros(len(edges)), np.array([len(x)]), min_rows=min_rows)
    k = _bin_index(x, edges)
    n = len(X)
    both = np.concatenate([X, X])
    both[:n, j] = edges[k - 1]
    both[n:, j] = edges[k]
    p = np.asarray(predict(both), dtype=np.float64)
    delta = p[n:] - p[:n]
    nb = len(edges) - 1
    counts = np.bincount(k - 1, minlength=nb).astype(float)
    sums = np.bincount(k - 1, weights=delta, minlength=nb)
    means = np.divide(sums, counts, out=np.zeros(nb), where=counts > 0)
    values = _accumulate_center(means, np.maximum(counts, 0))
    lower = upper = None
    if n_bootstrap > 0:
        rng = as_generator(random_state)
        curves = np.empty((n_bootstrap, len(values)))
        for b in range(n_bootstrap):
            w = np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
            c = np.bincount(k - 1, weights=w, minlength=nb)
            s = np.bincount(k - 1, weights=w * delta, minlength=nb)
            m = np.where(c > 0, s / np.where(c > 0, c, 1), means)
            curves[b] = _accumulate_center(m, np.maximum(c, 1e-12))
        lower, upper = np.percentile(curves, [2.5, 97.5], axis=0)
    return ALE(feature, "numeric", edges, values, counts.astype(int), lower, upper, min_rows, 2 * n)


def category_order(X: np.ndarray, j: int, levels: np.ndarray, categorical: np.ndarray) -> np.ndarray:
    """Order the ``levels`` of categorical column ``j`` by similarity on the other features (see module doc).

    Returns the levels sorted along the first MDS axis.
    """
    X = np.asarray(X, dtype=np.float64)
    x = X[:, j]
    L = len(levels)
    if L <= 2:
        return np.asarray(levels)
    dist = np.zeros((L, L))
    masks = [x == lv for lv in levels]
    for c in range(X.shape[1]):
        if c == j:
            continue
        v = X[:, c]
        if categorical[c]:
            cats, inv = np.unique(v, return_inverse=True)
            freq = np.zeros((L, len(cats)))
            for a, m in enumerate(masks):
                freq[a] = np.bincount(inv[m], minlength=len(cats)) / max(m.sum(), 1)
            dist += 0.5 * np.abs(freq[:, None, :] - freq[None, :, :]).sum(axis=2)
        else:
            finite = ~np.isnan(v)
            grid = np.unique(np.quantile(v[finite], np.linspace(0, 1, 50))) if finite.any() else np.array([0.0])
            ecdf = np.zeros((L, len(grid)))
            for a, m in enumerate(masks):
                s = np.sort(v[m & finite])
                ecdf[a] = np.searchsorted(s, grid, side="right") / max(len(s), 1)
            dist += np.abs(ecdf[:, None, :] - ecdf[None, :, :]).max(axis=2)
    # classical MDS, first axis
    d2 = dist**2
    J = np.eye(L) - 1.0 / L
    B = -0.5 * J @ d2 @ J
    w, V = np.linalg.eigh(B)
    axis = V[:, -1] * np.sqrt(max(w[-1], 0.0))
    if axis[np.argmax(np.abs(axis))] < 0:  # fix the eigenvector's sign so the order is deterministic
        axis = -axis
    return np.asarray(levels)[np.argsort(axis, kind="stable")]


def ale_categorical(
    predict: PredictFn,
    X: np.ndarray,
    j: int,
    *,
    categorical: np.ndarray,
    min_rows: int = 10,
    n_bootstrap: int = 0,
    random_state: int | np.random.Generator | None = None,
    order: np.ndarray | None = None,
    feature: str = "",
) -> ALE:
    """First-order ALE of categorical column ``j`` over the levels present in ``X``.

    The effect of moving from level ``k`` to ``k+1`` (in the chosen order) is averaged over the rows of both levels:
    rows at ``k`` are moved up, rows at ``k+1`` moved down.
    """
    X = np.asarray(X, dtype=np.float64)
    x = X[:, j]
    present = np.unique(x)
    levels = order if order is not None else category_order(X, j, present, categorical)
    L = len(levels)
    pos = np.full(int(max(present.max(), levels.max())) + 1, -1)
    pos[levels.astype(int)] = np.arange(L)
    r = pos[x.astype(int)]
    counts = np.bincount(r, minlength=L).astype(float)
    if L < 2:
        return ALE(feature, "categorical", levels, np.zeros(L), counts.astype(int), min_rows=min_rows)
    up = np.flatnonzero(r < L - 1)
    down = np.flatnonzero(r > 0)
    batch = np.concatenate([X[up], X[up], X[down], X[down]])
    nu, nd = len(up), len(down)
    batch[:nu, j] = levels[r[up]]
    batch[nu : 2 * nu, j] = levels[r[up] + 1]
    batch[2 * nu : 2 * nu + nd, j] = levels[r[down] - 1]
    batch[2 * nu + nd :, j] = levels[r[down]]
    p = np.asarray(predict(batch), dtype=np.float64)
    d_up = p[nu : 2 * nu] - p[:nu]  # step r -> r+1, owned by boundary r
    d_down = p[2 * nu + nd :] - p[2 * nu : 2 * nu + nd]  # step r-1 -> r, owned by boundary r-1
    idx = np.concatenate([r[up], r[down] - 1])
    d = np.concatenate([d_up, d_down])
    rows = np.concatenate([up, down])

    def curve(w_rows: np.ndarray) -> np.ndarray:
        w = w_rows[rows]
        s = np.bincount(idx, weights=w * d, minlength=L - 1)
        c = np.bincount(idx, weights=w, minlength=L - 1)
        steps = np.divide(s, c, out=np.zeros(L - 1), where=c > 0)
        f = np.concatenate([[0.0], np.cumsum(steps)])
        lc = np.bincount(r, weights=w_rows, minlength=L)
        return f - (lc * f).sum() / max(lc.sum(), 1e-12)

    n = len(X)
    values = curve(np.ones(n))
    lower = upper = None
    if n_bootstrap > 0:
        rng = as_generator(random_state)
        curves = np.stack(
            [curve(np.bincount(rng.integers(0, n, n), minlength=n).astype(float)) for _ in range(n_bootstrap)]
        )
        lower, upper = np.percentile(curves, [2.5, 97.5], axis=0)
    return ALE(feature, "categorical", levels, values, counts.astype(int), lower, upper, min_rows, len(batch))


@dataclass(frozen=True)
class ALE2D:
    """Second-order ALE (pure interaction, main effects removed) on the grid ``edges_1 x edges_2``."""

    features: tuple[str, str]
    edges_1: np.ndarray
    edges_2: np.ndarray
    values: np.ndarray  # (len(edges_1), len(edges_2))
    counts: np.ndarray  # (len(edges_1) - 1, len(edges_2) - 1)
    rows_evaluated: int = 0
    meta: dict = field(default_factory=dict)


def ale_2d(
    predict: PredictFn, X: np.ndarray, j: int, k: int, *, n_bins: int = 10, features: tuple[str, str] = ("", "")
) -> ALE2D:
    """Second-order ALE of numeric columns ``j`` and ``k`` (Apley & Zhu, eq. 13; ALEPlot's estimator).

    Each row is moved to the four corners of its cell; the second differences are averaged per cell (empty cells
    take the nearest non-empty cell's value), accumulated over both axes, then the accumulated function's own
    first-order effects and its mean are removed, leaving the pure interaction.
    """
    X = np.asarray(X, dtype=np.float64)
    X = X[~np.isnan(X[:, j]) & ~np.isnan(X[:, k])]
    e1, e2 = _numeric_edges(X[:, j], n_bins), _numeric_edges(X[:, k], n_bins)
    K1, K2 = len(e1) - 1, len(e2) - 1
    if K1 < 1 or K2 < 1:
        return ALE2D(features, e1, e2, np.zeros((len(e1), len(e2))), np.zeros((max(K1, 0), max(K2, 0))))
    a, b = _bin_index(X[:, j], e1), _bin_index(X[:, k], e2)
    n = len(X)
    batch = np.concatenate([X, X, X, X])
    for q, (ea, eb) in enumerate(((a, b), (a - 1, b), (a, b - 1), (a - 1, b - 1))):
        batch[q * n : (q + 1) * n, j] = e1[ea]
        batch[q * n : (q + 1) * n, k] = e2[eb]
    p = np.asarray(predict(batch), dtype=np.float64).reshape(4, n)
    delta = p[0] - p[1] - p[2] + p[3]
    cell = (a - 1) * K2 + (b - 1)
    N = np.bincount(cell, minlength=K1 * K2).reshape(K1, K2).astype(float)
    S = np.bincount(cell, weights=delta, minlength=K1 * K2).reshape(K1, K2)
    M = np.divide(S, N, out=np.zeros_like(S), where=N > 0)
    if (N == 0).any():
        filled = np.argwhere(N > 0)
        for u, v in np.argwhere(N == 0):
            near = filled[np.argmin(((filled - [u, v]) ** 2).sum(axis=1))]
            M[u, v] = M[near[0], near[1]]
    F = np.zeros((K1 + 1, K2 + 1))
    F[1:, 1:] = np.cumsum(np.cumsum(M, axis=0), axis=1)
    # remove the first-order effect of F along each axis (count-weighted over the other axis)
    d1 = ((F[1:, 1:] - F[:-1, 1:]) + (F[1:, :-1] - F[:-1, :-1])) / 2
    w1 = N.sum(axis=1)
    m1 = np.divide((N * d1).sum(axis=1), w1, out=np.zeros(K1), where=w1 > 0)
    d2 = ((F[1:, 1:] - F[1:, :-1]) + (F[:-1, 1:] - F[:-1, :-1])) / 2
    w2 = N.sum(axis=0)
    m2 = np.divide((N * d2).sum(axis=0), w2, out=np.zeros(K2), where=w2 > 0)
    F = F - np.concatenate([[0.0], np.cumsum(m1)])[:, None] - np.concatenate([[0.0], np.cumsum(m2)])[None, :]
    corners = (F[:-1, :-1] + F[1:, :-1] + F[:-1, 1:] + F[1:, 1:]) / 4
    F = F - (N * corners).sum() / N.sum()
    return ALE2D(features, e1, e2, F, N.astype(int), 4 * n)
