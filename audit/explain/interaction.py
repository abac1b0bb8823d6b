"""Friedman's H-statistic of pairwise interaction (Friedman & Popescu, 2008).

For features j and k, with partial dependences centred to mean 0 and evaluated at the sampled rows' own values:

    H^2_jk = sum_i [PD_jk(x_ij, x_ik) - PD_j(x_ij) - PD_k(x_ik)]^2 / sum_i PD_jk(x_ij, x_ik)^2

We report H = sqrt(H^2): 0 for no interaction, 1 when the pair's joint effect is pure interaction. Cost is bounded
by the sample size m: each one-way PD needs m^2 model evaluations, each pair another m^2, all batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from audit.explain._common import PredictFn, as_generator


@dataclass(frozen=True)
class HStatistic:
    """H for every pair of ``features`` (symmetric matrix; NaN on the diagonal); ``rows``: the sampled rows of X."""

    features: list[str]
    h: np.ndarray
    sample_size: int
    rows_evaluated: int
    rows: np.ndarray | None = None

    def pairs(self) -> list[tuple[str, str, float]]:
        """Pairs sorted by H, strongest first."""
        out = [
            (self.features[a], self.features[b], float(self.h[a, b]))
            for a, b in combinations(range(len(self.features)), 2)
        ]
        return sorted(out, key=lambda t: -t[2])


def _pd_at_data(predict: PredictFn, S: np.ndarray, cols: list[int]) -> np.ndarray:
    """Centred PD of ``cols`` evaluated at each sampled row's own values of ``cols``: shape (m,)."""
    m = len(S)
    batch = np.repeat(S[None, :, :], m, axis=0)  # batch[i] = all rows with cols set to row i's values
    for c in cols:
        batch[:, :, c] = S[:, c][:, None]
    pd_ = np.asarray(predict(batch.reshape(m * m, -1)), dtype=np.float64).reshape(m, m).mean(axis=1)
    return pd_ - pd_.mean()


def h_statistic(
    predict: PredictFn,
    X: np.ndarray,
    features: list[int],
    *,
    feature_names: list[str] | None = None,
    sample_size: int = 150,
    random_state: int | np.random.Generator | None = None,
) -> HStatistic:
    """Pairwise H-statistic among ``features`` (column indices), on a seeded sample of ``sample_size`` rows.

    Examples
    --------
    >>> X = np.random.default_rng(0).uniform(-1, 1, size=(300, 3))
    >>> h = h_statistic(lambda A: A[:, 0] * A[:, 1] + A[:, 2], X, [0, 1, 2], sample_size=60, random_state=0)
    >>> bool(h.h[0, 1] > 0.9 and h.h[0, 2] < 1e-6)
    True
    """
    X = np.asarray(X, dtype=np.float64)
    rng = as_generator(random_state)
    sample = np.sort(rng.choice(len(X), size=min(sample_size, len(X)), replace=False))
    S = X[sample]
    m = len(S)
    one = {f: _pd_at_data(predict, S, [f]) for f in features}
    F = len(features)
    h = np.full((F, F), np.nan)
    for a, b in combinations(range(F), 2):
        joint = _pd_at_data(predict, S, [features[a], features[b]])
        denom = float((joint**2).sum())
        num = float(((joint - one[features[a]] - one[features[b]]) ** 2).sum())
        h[a, b] = h[b, a] = np.sqrt(num / denom) if denom > 1e-24 else 0.0
    names = feature_names or [str(f) for f in features]
    rows = m * m * (F + F * (F - 1) // 2)
    return HStatistic(list(names), h, m, rows, sample)
