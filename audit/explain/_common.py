"""Shared pieces of the explainers: the predict-function type, seeds, scorers."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# A black-box predictor over the code space: (n_rows, n_features) float array -> (n_rows,) scores.
PredictFn = Callable[[np.ndarray], np.ndarray]


def as_generator(random_state: int | np.random.Generator | None) -> np.random.Generator:
    """Normalise ``random_state`` once (int seed, Generator, or None for fresh entropy)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    return np.random.default_rng(random_state)
