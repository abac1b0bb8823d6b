"""Contrastive explanations (CEM, Dhurandhar et al. 2018) in the raw feature space, by exhaustive batched search.

For a row ``x`` with decision ``d(x) = f(x) >= threshold``, against a reference row ``r`` (training medians and most
frequent levels, as the attribution baseline) standing for "absent":

- **pertinent positive (PP)**: the smallest set ``S`` of ``x``'s feature values that *alone* keeps the decision: the
  row with ``S`` at ``x``'s values and every other feature at ``r``'s gets ``d(x)``. Exact: every subset is scored (one
  batch of ``2^F`` rows per row; ``F <= exact_max_features``), the smallest kept, ties broken by the larger margin
  from the threshold. Above ``exact_max_features`` features: greedy, adding the feature that moves the score most
  toward the decision. An empty PP means the reference row already gets this decision.
- **pertinent negative (PN)**: the smallest change that *flips* the decision: at most ``max_changes`` features moved to
  candidate values (a numeric to its training quantiles within the support, a categorical to its other levels with
  enough training rows, never "missing", a tied group to a combination that occurs in training), every candidate respecting the counterfactual constraints (immutable
  features, ranges, monotone directions, allowed transitions). All combinations are scored; the fewest changes win,
  then the smallest distance (numerics in units of their training MAD, a categorical change 1).

The PN distance is also each row's **minimal adversarial distance** under those constraints: a decision that flips
under a change below a tolerance is fragile. Tested against an independent brute force on a 4-feature model.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from audit.explain._common import supported_levels


@dataclass
class Contrastive:
    pp: list[tuple[int, ...]]  # per row: features of the pertinent positive
    pp_prediction: np.ndarray
    pn: list[dict[int, float] | None]  # per row: feature -> new code-space value (None: no flip within max_changes)
    pn_prediction: np.ndarray
    pn_distance: np.ndarray  # inf where none was found
    predictions: np.ndarray
    rows_evaluated: int


@dataclass
class Unit:
    """A feature, or a tied group of features, that changes as one."""

    cols: tuple[int, ...]
    values: np.ndarray  # (k, len(cols)) candidate values
    scale: np.ndarray  # per column: distance unit (MAD) for numerics, 0 for categoricals (a change costs 1)


def candidate_units(training: np.ndarray, schema, constraints=None, *, n_grid: int = 10, max_combos: int = 50):
    """The units a PN may change and their candidate values (before per-row constraints)."""
    names = schema.feature_names
    immutable = set(getattr(constraints, "immutable", ()) or ())
    tied = [tuple(names.index(f) for f in g) for g in (getattr(constraints, "tied", ()) or ())]
    in_group = {j for g in tied for j in g}
    units = []

    def scale_of(j):
        if schema.features[j].is_categorical:
            return 0.0
        t = training[:, j][np.isfinite(training[:, j])]
        mad = float(np.median(np.abs(t - np.median(t)))) if len(t) else 1.0
        return mad if mad > 0 else (float(np.std(t)) or 1.0)

    for g in tied:
        if any(names[j] in immutable for j in g):
            continue
        combos, counts = np.unique(training[:, list(g)], axis=0, return_counts=True)
        combos = combos[np.argsort(-counts, kind="stable")[:max_combos]]
        units.append(Unit(g, combos, np.array([scale_of(j) for j in g])))
    for j, f in enumerate(schema.features):
        if j in in_group or f.name in immutable:
            continue
        if f.is_categorical:
            vals = supported_levels(training[:, j], f, getattr(constraints, "min_level_count", 1)).astype(np.float64)
        else:
            t = training[:, j][np.isfinite(training[:, j])]
            sq = getattr(constraints, "support_quantile", 0.0)
            grid = np.linspace(sq, 1 - sq, n_grid)
            vals = np.unique(np.quantile(t, grid, method="nearest")) if len(t) else np.zeros(0)
            lo, hi = (getattr(constraints, "ranges", {}) or {}).get(f.name, (None, None))
            if lo is not None:
                vals = vals[vals >= lo]
            if hi is not None:
                vals = vals[vals <= hi]
        units.append(Unit((j,), vals[:, None], np.array([scale_of(j)])))
    return units


def _allowed(unit: Unit, x: np.ndarray, schema, constraints) -> np.ndarray:
    """The unit's candidate values this row may move to (different from its own, within monotone directions and
    allowed transitions)."""
    vals = unit.values
    keep = ~np.all(vals == x[list(unit.cols)], axis=1)
    mono = getattr(constraints, "monotone", {}) or {}
    trans = getattr(constraints, "transitions", {}) or {}
    for k, j in enumerate(unit.cols):
        f = schema.features[j]
        if f.name in mono:
            keep &= vals[:, k] >= x[j] if mono[f.name] == "increase" else vals[:, k] <= x[j]
        if f.is_categorical and f.name in trans:
            cur = f.levels[int(x[j])] if int(x[j]) < len(f.levels) else None
            ok = {f.levels.index(v) for v in trans[f.name].get(cur, []) if v in f.levels}
            keep &= np.isin(vals[:, k], list(ok))
    return vals[keep]


def contrastive(
    predict,
    X: np.ndarray,
    reference: np.ndarray,
    training: np.ndarray,
    schema,
    *,
    constraints=None,
    threshold: float = 0.5,
    max_changes: int = 2,
    n_grid: int = 10,
    exact_max_features: int = 14,
    batch_rows: int = 1 << 18,
) -> Contrastive:
    """Pertinent positives and negatives of each row of ``X`` (code space); see the module docstring."""
    X = np.atleast_2d(np.asarray(X, dtype=np.float64))
    n, F = X.shape
    p = np.asarray(predict(X), dtype=np.float64)
    d = p >= threshold
    evaluated = n
    # ---- pertinent positives: every subset kept at x, the rest at the reference
    pp, pp_pred = [], np.empty(n)
    if F <= exact_max_features:
        masks = ((np.arange(2**F)[:, None] >> np.arange(F)[None, :]) & 1).astype(bool)  # (2^F, F)
        size = masks.sum(axis=1)
        for i in range(n):
            rows = np.where(masks, X[i], reference)
            s = np.asarray(predict(rows), dtype=np.float64)
            evaluated += len(rows)
            keeps = (s >= threshold) == d[i]
            margin = np.where(d[i], s - threshold, threshold - s)
            best = np.lexsort((-margin, size, ~keeps))[0]  # kept first, then fewest features, then widest margin
            pp.append(tuple(int(j) for j in np.flatnonzero(masks[best])))
            pp_pred[i] = s[best]
    else:
        for i in range(n):
            chosen: list[int] = []
            row = reference.copy()
            s_row = float(predict(row[None, :])[0])
            while ((s_row >= threshold) != d[i]) and len(chosen) < F:
                rest = [j for j in range(F) if j not in chosen]
                trial = np.repeat(row[None, :], len(rest), axis=0)
                trial[np.arange(len(rest)), rest] = X[i, rest]
                s = np.asarray(predict(trial), dtype=np.float64)
                evaluated += len(rest) + 1
                k = int(np.argmax(s if d[i] else -s))
                chosen.append(rest[k])
                row = trial[k]
                s_row = float(s[k])
            pp.append(tuple(sorted(chosen)))
            pp_pred[i] = s_row
    # ---- pertinent negatives: fewest changes (up to max_changes), then smallest distance, that flip the decision
    units = candidate_units(training, schema, constraints, n_grid=n_grid)
    pn: list[dict[int, float] | None] = []
    pn_pred = np.full(n, np.nan)
    pn_dist = np.full(n, np.inf)
    for i in range(n):
        x = X[i]
        options = [(u, _allowed(u, x, schema, constraints)) for u in units]
        options = [(u, v) for u, v in options if len(v)]
        found = None
        for k in range(1, max_changes + 1):
            blocks, dists, changes = [], [], []
            for combo in itertools.combinations(range(len(options)), k):
                grids = [options[c][1] for c in combo]
                idx = np.stack(np.meshgrid(*[np.arange(len(g)) for g in grids], indexing="ij"), -1).reshape(-1, k)
                rows = np.repeat(x[None, :], len(idx), axis=0)
                dist = np.zeros(len(idx))
                for a, c in enumerate(combo):
                    u, vals = options[c]
                    new = vals[idx[:, a]]
                    rows[:, list(u.cols)] = new
                    old = x[list(u.cols)]
                    num = u.scale > 0  # numerics: |change| in MADs; a changed categorical costs 1
                    dist += (np.abs(new[:, num] - old[num]) / u.scale[num]).sum(axis=1)
                    dist += (new[:, ~num] != old[~num]).any(axis=1)
                blocks.append(rows)
                dists.append(dist)
                changes += [(combo, j) for j in range(len(idx))]
            if not blocks:
                break
            rows = np.concatenate(blocks)
            dist = np.concatenate(dists)
            s = np.concatenate([np.asarray(predict(rows[a : a + batch_rows]), dtype=np.float64)
                                for a in range(0, len(rows), batch_rows)])  # fmt: skip
            evaluated += len(rows)
            flip = (s >= threshold) != d[i]
            if flip.any():
                best = int(np.flatnonzero(flip)[np.argmin(dist[flip])])
                found = (rows[best], s[best], dist[best])
                break
        if found is None:
            pn.append(None)
            continue
        new_row, s_best, dist_best = found
        pn.append({int(j): float(new_row[j]) for j in np.flatnonzero(new_row != x)})
        pn_pred[i] = s_best
        pn_dist[i] = dist_best
    return Contrastive(pp, pp_pred, pn, pn_pred, pn_dist, p, evaluated)
