"""Shared pieces of the explainers: the predict-function type, seeds, scorers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from audit.schema import MISSING_LEVEL

# A black-box predictor over the code space: (n_rows, n_features) float array -> (n_rows,) scores.
PredictFn = Callable[[np.ndarray], np.ndarray]


def as_generator(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """Normalise ``random_state`` once (int seed, Generator, or None for fresh entropy)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)


def support_range(present: np.ndarray, support_quantile: float) -> tuple[float, float]:
    """The values a changed numeric may take: the training quantiles ``[q, 1 - q]`` of its non-missing values (the
    minimum and maximum at 0); an empty range when it has none.

    >>> support_range(np.r_[np.zeros(98), 5.0, 99999.0], 0.01)
    (0.0, 5.0)
    """
    if not present.size:
        return float("inf"), float("-inf")
    if support_quantile <= 0:
        return float(present.min()), float(present.max())
    lo, hi = np.quantile(present, [support_quantile, 1 - support_quantile], method="inverted_cdf")
    return float(lo), float(hi)


def supported_levels(col: np.ndarray, f, min_count: int) -> np.ndarray:
    """The codes of a categorical's levels a counterfactual may move to: seen in at least ``min_count`` training
    rows, and never "missing" ("stop reporting your occupation" is no recourse)."""
    codes, counts = np.unique(col[col < len(f.levels)], return_counts=True)
    vals = codes[counts >= max(min_count, 1)]
    if MISSING_LEVEL in f.levels:
        vals = vals[vals != f.levels.index(MISSING_LEVEL)]
    return vals
