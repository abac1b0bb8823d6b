"""The preprocessing that feeds the tabular net, in NumPy only (reading a model's description imports no torch).

Preprocessing works in the schema's code space (see :mod:`audit.data`): numeric columns are optionally
``log1p``-transformed (heavy right tails), standardised with statistics from the training rows, and missing values
become 0 (the training mean); categorical codes index an embedding table whose last slot is "unknown".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from audit.schema import Schema


@dataclass(frozen=True)
class Preprocessing:
    """Numeric transform statistics, fitted on training rows only. Serialised as JSON."""

    numeric_idx: tuple[int, ...]
    categorical_idx: tuple[int, ...]
    log1p: tuple[bool, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    cardinalities: tuple[int, ...]  # levels + 1 (unknown slot)

    @classmethod
    def fit(cls, schema: Schema, codes: np.ndarray) -> Preprocessing:
        num = [j for j, f in enumerate(schema.features) if not f.is_categorical]
        cat = [j for j, f in enumerate(schema.features) if f.is_categorical]
        logs, means, stds = [], [], []
        for j in num:
            v = codes[:, j]
            v = v[~np.isnan(v)]
            skew = _skewness(v)
            use_log = bool(v.size and v.min() >= 0 and skew > 2.0)
            t = np.log1p(v) if use_log else v
            mu = float(t.mean()) if t.size else 0.0
            sd = float(t.std()) if t.size else 1.0
            logs.append(use_log)
            means.append(mu)
            stds.append(sd if sd > 1e-12 else 1.0)
        cards = [len(schema.features[j].levels) + 1 for j in cat]
        return cls(tuple(num), tuple(cat), tuple(logs), tuple(means), tuple(stds), tuple(cards))

    def transform(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Code-space array -> (standardised float32 numerics, int64 categorical codes).

        Missing numerics become 0 (the training mean); a categorical code outside the table (unseen, negative,
        NaN) becomes the "unknown" slot. Every value is transformed on its own, so transforming some rows or some
        columns gives the same values as transforming all and selecting them.
        """
        return self.transform_columns(_columns(codes, self.numeric_idx), _columns(codes, self.categorical_idx))

    def transform_columns(self, numeric: np.ndarray, categorical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`transform` of code-space values given as the numeric columns (n, len(numeric_idx)) and the
        categorical columns (n, len(categorical_idx)), in that order; neither input is changed, but a C-ordered
        int64 ``categorical`` whose codes are all in the tables is returned as it is, not copied."""
        # float32 throughout (the network's precision); the cast copies, so the in-place steps below are safe
        x = np.asarray(numeric, dtype=np.float64).astype(np.float32)
        logs = np.flatnonzero(self.log1p)
        if logs.size:
            x[:, logs] = np.log1p(np.maximum(x[:, logs], np.float32(0.0)))
        x -= np.asarray(self.mean, dtype=np.float32)
        x /= np.asarray(self.std, dtype=np.float32)
        x[~np.isfinite(x)] = 0.0
        cards = np.asarray(self.cardinalities, dtype=np.int64)
        c = np.asarray(categorical)
        if c.dtype != np.int64:  # code-space floats (NaN and fractions included) truncated as before
            with np.errstate(invalid="ignore"):
                c = np.asarray(c, dtype=np.float64).astype(np.int64)
        if c.size:
            bad = (c < 0) | (c >= cards)
            if bad.any():
                c = np.where(bad, cards - 1, c)
        return x, np.ascontiguousarray(c)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Preprocessing:
        return cls(**{k: tuple(v) for k, v in d.items()})


def _columns(codes: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    """``codes[:, idx]`` in row order: a view when ``idx`` is a run of adjacent columns, else ``np.take`` (a list
    index would copy the columns into a column-ordered array, which then costs a second copy to row order)."""
    if idx and idx == tuple(range(idx[0], idx[0] + len(idx))):
        return codes[:, idx[0] : idx[0] + len(idx)]
    return np.take(codes, list(idx), axis=1)


def _skewness(v: np.ndarray) -> float:
    if v.size < 3:
        return 0.0
    sd = v.std()
    return float(((v - v.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0
