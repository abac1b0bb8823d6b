"""Partial dependence and ICE (one- and two-way) over a code-space predict function.

Each feature's whole perturbed batch (rows x grid points) is built as one array and scored in one call, and every
ICE point is also a PD point, so the model is evaluated exactly ``n_rows * n_grid`` times per feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.explain._common import PredictFn


def quantile_grid(values: np.ndarray, grid_resolution: int, *, include_extremes: bool = True) -> np.ndarray:
    """Unique quantiles of ``values`` at ``grid_resolution`` evenly spaced levels, plus the observed min and max.

    Examples
    --------
    >>> quantile_grid(np.arange(101.0), 5)
    array([  0.,  25.,  50.,  75., 100.])
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return np.array([np.nan])
    g = np.quantile(v, np.linspace(0, 1, grid_resolution))
    if include_extremes:
        g = np.concatenate([[v.min()], g, [v.max()]])
    return np.unique(g)


@dataclass(frozen=True)
class PartialDependence:
    """One-way partial dependence with its ICE curves.

    Attributes
    ----------
    feature : str
    grid : ndarray of shape (n_grid,)
        Grid values in code space (level codes for a categorical).
    average : ndarray of shape (n_grid,)
        The partial dependence: mean of ``individual`` over rows.
    individual : ndarray of shape (n_rows, n_grid)
        ICE curves.
    """

    feature: str
    grid: np.ndarray
    average: np.ndarray
    individual: np.ndarray

    def centered(self) -> np.ndarray:
        """c-ICE: each curve minus its value at the first grid point."""
        return self.individual - self.individual[:, :1]

    def heterogeneity(self) -> dict[str, float]:
        """How much the average hides.

        ``ice_spread``: mean over the grid of the std across rows of the mean-centred ICE curves;
        ``pd_range``: max - min of the PD; ``opposite_share``: share of rows whose ICE moves (first to last grid
        point, by more than 1e-3) against the direction of the PD.
        """
        c = self.individual - self.individual.mean(axis=1, keepdims=True)
        spread = float(c.std(axis=0).mean())
        rng = float(self.average.max() - self.average.min())
        total = self.individual[:, -1] - self.individual[:, 0]
        direction = np.sign(self.average[-1] - self.average[0])
        moving = np.abs(total) > 1e-3
        opposite = float(np.mean((np.sign(total) == -direction) & moving)) if direction != 0 else 0.0
        return {"ice_spread": spread, "pd_range": rng, "opposite_share": opposite}


def partial_dependence(
    predict: PredictFn,
    X: np.ndarray,
    j: int,
    grid: np.ndarray,
    *,
    feature: str = "",
    sample_weight: np.ndarray | None = None,
) -> PartialDependence:
    """PD and ICE of column ``j`` over ``grid``: for every grid value, set column ``j`` of every row to it.

    Parameters
    ----------
    predict : callable
        ``predict(X) -> scores``.
    X : ndarray of shape (n_rows, n_features)
    j : int
        Column index.
    grid : ndarray of shape (n_grid,)
    feature : str
        Name carried in the result.
    sample_weight : ndarray of shape (n_rows,), optional
        Row weights of the average (as ``sklearn.inspection.partial_dependence``'s, tested); ICE curves are per row.

    Examples
    --------
    >>> X = np.array([[0.0, 1.0], [2.0, 3.0]])
    >>> pd_ = partial_dependence(lambda A: A[:, 0] * A[:, 1], X, 0, np.array([1.0, 2.0]))
    >>> pd_.average
    array([2., 4.])
    """
    X = np.asarray(X, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    n, g = len(X), len(grid)
    batch = np.repeat(X[None, :, :], g, axis=0)  # (g, n, p)
    batch[:, :, j] = grid[:, None]
    out = np.asarray(predict(batch.reshape(g * n, -1)), dtype=np.float64).reshape(g, n)
    average = out.mean(axis=1) if sample_weight is None else out @ (sample_weight / np.sum(sample_weight))
    return PartialDependence(feature, grid, average, out.T.copy())


@dataclass(frozen=True)
class PartialDependence2D:
    """Two-way partial dependence: ``average[a, b]`` at ``(grid_1[a], grid_2[b])``."""

    features: tuple[str, str]
    grid_1: np.ndarray
    grid_2: np.ndarray
    average: np.ndarray


def partial_dependence_2d(
    predict: PredictFn,
    X: np.ndarray,
    j: int,
    k: int,
    grid_1: np.ndarray,
    grid_2: np.ndarray,
    *,
    features: tuple[str, str] = ("", ""),
    sample_weight: np.ndarray | None = None,
) -> PartialDependence2D:
    """Two-way PD of columns ``j`` and ``k`` on the product grid, in one batch of ``n * len(grid_1) * len(grid_2)``
    (a weighted average over rows with ``sample_weight``)."""
    X = np.asarray(X, dtype=np.float64)
    g1, g2 = np.asarray(grid_1, dtype=np.float64), np.asarray(grid_2, dtype=np.float64)
    n = len(X)
    a, b = np.meshgrid(g1, g2, indexing="ij")
    cells = a.size
    batch = np.repeat(X[None, :, :], cells, axis=0)
    batch[:, :, j] = a.reshape(-1)[:, None]
    batch[:, :, k] = b.reshape(-1)[:, None]
    out = np.asarray(predict(batch.reshape(cells * n, -1)), dtype=np.float64).reshape(cells, n)
    out = out.mean(axis=1) if sample_weight is None else out @ (sample_weight / np.sum(sample_weight))
    return PartialDependence2D(features, g1, g2, out.reshape(len(g1), len(g2)))
