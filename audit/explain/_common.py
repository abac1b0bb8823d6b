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


def roc_auc_fast(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as P(score of a positive > score of a negative), ties counted 1/2; equals sklearn's ``roc_auc_score``.

    Sorts the negatives' scores once and counts with ``searchsorted``, which is faster than ranking all scores.

    Examples
    --------
    >>> roc_auc_fast(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    y = np.asarray(y).astype(bool)
    p = np.asarray(p)
    pos, neg = np.sort(p[y]), np.sort(p[~y])  # sorted queries make searchsorted cache-friendly
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    below = np.searchsorted(neg, pos, side="left").sum()
    not_above = np.searchsorted(neg, pos, side="right").sum()
    return float((below + not_above) / 2 / (len(pos) * len(neg)))


def weighted_auc(y: np.ndarray, p: np.ndarray, W: np.ndarray) -> np.ndarray:
    """ROC AUC for each column of row weights ``W`` of shape (n, B), a weight counting a row that many times.

    One sort of the scores, then per group of tied scores the positive and negative weights: AUC =
    sum over groups of positives x (negatives below + half the tied negatives) / (positives x negatives).
    Equals ``sklearn.metrics.roc_auc_score(y, p, sample_weight=w)`` for every column (tested).

    Examples
    --------
    >>> weighted_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), np.ones((4, 1))).tolist()
    [0.75]
    """
    order = np.argsort(p, kind="stable")
    ps, ys, Ws = np.asarray(p)[order], np.asarray(y, dtype=float)[order], W[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    pos = np.add.reduceat(Ws * ys[:, None], starts, axis=0)
    neg = np.add.reduceat(Ws * (1 - ys)[:, None], starts, axis=0)
    below = np.cumsum(neg, axis=0) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=0) / (pos.sum(axis=0) * neg.sum(axis=0))


def make_scorer(metric: str, *, threshold: float = 0.5) -> Callable[[np.ndarray, np.ndarray], float]:
    """A greater-is-better score ``f(y_true, p)`` for a metric name.

    Built in: ``roc_auc``, ``average_precision``, ``accuracy``, ``f1``, ``log_loss``, ``brier`` (losses are negated),
    ``neg_mean_squared_error``, ``r2``. Any other scikit-learn scorer name is applied through a thin estimator
    wrapper around the predictions.
    """
    from sklearn import metrics as m

    def clip(p):
        return np.clip(p, 1e-15, 1 - 1e-15)

    builtin = {
        "roc_auc": roc_auc_fast,
        "average_precision": m.average_precision_score,
        "accuracy": lambda y, p: float(np.mean((p >= threshold) == y)),
        "f1": lambda y, p: m.f1_score(y, (p >= threshold).astype(int), zero_division=0),
        "log_loss": lambda y, p: -m.log_loss(y, clip(p), labels=[0, 1]),
        "neg_log_loss": lambda y, p: -m.log_loss(y, clip(p), labels=[0, 1]),
        "brier": lambda y, p: -m.brier_score_loss(y, p),
        "neg_brier_score": lambda y, p: -m.brier_score_loss(y, p),
        "neg_mean_squared_error": lambda y, p: -float(np.mean((y - p) ** 2)),
        "r2": m.r2_score,
    }
    if metric in builtin:
        return builtin[metric]
    try:
        scorer = m.get_scorer(metric)
    except ValueError:
        raise ValueError(
            f"unknown metric {metric!r}; use one of {sorted(builtin)} or a scikit-learn scorer name"
        ) from None
    est = _PrecomputedClassifier(threshold)
    return lambda y, p: float(scorer(est, np.asarray(p).reshape(-1, 1), y))


class _PrecomputedClassifier:
    """Lets a scikit-learn scorer read predictions that were already computed (passed as X)."""

    _estimator_type = "classifier"

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.classes_ = np.array([0, 1])

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier", target_tags=TargetTags(required=True), classifier_tags=ClassifierTags()
        )

    def fit(self, X, y=None):  # pragma: no cover - never fitted
        return self

    def predict_proba(self, X):
        p = np.asarray(X)[:, 0]
        return np.column_stack([1 - p, p])

    def decision_function(self, X):
        return np.asarray(X)[:, 0]

    def predict(self, X):
        return (np.asarray(X)[:, 0] >= self.threshold).astype(int)
