"""Counterfactual search: the nearest changes that flip a model's decision, under constraints, for many rows at once.

Works in the code space (one column per raw feature, a categorical as its level code) and scores every candidate of
every instance in large batched model calls; nothing loops over rows in Python.

Search, per instance (all instances advance together):

1. **Beam search**: from the instance, try every allowed single-feature move (numerics on a quantile grid of the
   training values, categoricals on every allowed level); an instance stops at the first depth where a move flips
   its decision (the sparsest), else the ``beam_width`` moves with the best gain in log-odds (per unit of cost, and
   outright, in two passes) are extended by one more feature, up to ``max_changes`` features.
2. **Random**: ``n_random`` candidates changing 1..``max_changes`` random features to random allowed values (the
   search DiCE's "random" method does), which finds other, often sparser, solutions.
3. **Refine** the ``n_refine`` cheapest valid candidates: drop every change that is not needed, then move each
   changed numeric back towards the instance by bisection while the decision stays flipped.
4. **Plausibility**: drop candidates farther from their nearest training row than ``plausibility_quantile`` of the
   training rows' own nearest-neighbour distances.

Objective: validity first (only candidates re-scored as flipped are kept), then ``cost + sparsity_weight *
n_changed``, where ``cost`` (proximity) is the L1 distance with each numeric scaled by its median absolute deviation
on the training rows (its standard deviation where the MAD is 0), plus 1 per changed categorical, and ``n_changed``
(sparsity) counts the changed features; ties go to the sparser candidate.

Constraints (:class:`Constraints`): immutable features, allowed ranges, monotone directions, allowed category
transitions, integer features (detected from the training values unless given), tied features (``dataset.tied``:
features that encode the same thing move together, to values that occur together in training, or not at all), and
the training support (numerics within the training quantiles ``[support_quantile, 1 - support_quantile]``, the
minimum and maximum at 0; categoricals on levels with at least ``min_level_count`` training rows, never changed to
the ``missing`` level). :func:`constraint_violations` checks a result against them independently of the search.

Missing numerics: a missing value is never proposed, but a counterfactual may fill one in (at cost 1, like a changed
category); two missing values are equal, so an unchanged missing value is not a change. Every distance, scale,
quantile and plausibility threshold ignores missing values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from audit.explain._common import PredictFn, as_generator, support_range, supported_levels
from audit.metrics import quiet_nan
from audit.schema import Schema


@dataclass(frozen=True)
class Constraints:
    """What a counterfactual may change.

    Parameters
    ----------
    immutable : tuple of str
        Features that never change.
    ranges : dict
        ``{numeric feature: (low, high)}`` (either may be None): allowed values of a changed numeric.
    monotone : dict
        ``{feature: "increase" | "decrease"}`` (numerics).
    transitions : dict
        ``{categorical: {from_level: [to_level, ...]}}``: the levels a categorical may change to, per current level.
        A level that is not listed may not change.
    integer : tuple of str, optional
        Numerics that stay integer; by default the numerics whose training values are all integers.
    tied : tuple of tuple of str
        Groups of features that encode the same thing (education and education-num): a group changes together, to
        a combination that occurs in training, or not at all.
    support_quantile : float, default 0.0
        A changed numeric stays within the training quantiles ``[q, 1 - q]`` (0: the training minimum and maximum).
        A top-coded value (capital-gain 99999) is an edge of the data, not a recourse.
    min_level_count : int, default 1
        A categorical changes only to a level with at least this many training rows (1: any level seen in
        training); a level of 9 rows (occupation Armed-Forces) is no plausible change.
    """

    immutable: tuple[str, ...] = ()
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    monotone: dict[str, Literal["increase", "decrease"]] = field(default_factory=dict)
    transitions: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    integer: tuple[str, ...] | None = None
    tied: tuple[tuple[str, ...], ...] = ()
    support_quantile: float = 0.0
    min_level_count: int = 1

    def validate(self, schema: Schema) -> None:
        """Raise ValueError naming any unknown feature or level, or a constraint on the wrong kind of feature."""
        names = schema.feature_names
        for key, feats in (
            ("immutable", self.immutable),
            ("ranges", self.ranges),
            ("monotone", self.monotone),
            ("transitions", self.transitions),
            ("integer", self.integer or ()),
            ("tied", [f for group in self.tied for f in group]),
        ):
            unknown = [f for f in feats if f not in names]
            if unknown:
                raise ValueError(f"{key}: unknown feature(s) {unknown}; features are {names}")
        for key, feats in (("ranges", self.ranges), ("monotone", self.monotone), ("integer", self.integer or ())):
            cats = [f for f in feats if schema.feature(f).is_categorical]
            if cats:
                raise ValueError(f"{key}: {cats} are categorical; {key} applies to numeric features")
        for f, d in self.monotone.items():
            if d not in ("increase", "decrease"):
                raise ValueError(f"monotone.{f}: {d!r} must be 'increase' or 'decrease'")
        for f, (lo, hi) in self.ranges.items():
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"ranges.{f}: low {lo} is above high {hi}")
        for f, table in self.transitions.items():
            feat = schema.feature(f)
            if not feat.is_categorical:
                raise ValueError(f"transitions: {f} is numeric; use ranges or monotone for numerics")
            for a, targets in table.items():
                bad = [lv for lv in [a, *targets] if lv not in feat.levels]
                if bad:
                    raise ValueError(f"transitions.{f}: unknown level(s) {bad}; levels are {list(feat.levels)}")


@dataclass(frozen=True)
class Counterfactuals:
    """Result of :func:`counterfactuals`.

    Attributes
    ----------
    instances : ndarray of shape (n, n_features)
    original_prediction : ndarray of shape (n,)
    counterfactuals : ndarray of shape (n, k, n_features)
        NaN rows where fewer than ``k`` were found.
    prediction : ndarray of shape (n, k)
        The model's score of each counterfactual (NaN where none).
    cost : ndarray of shape (n, k)
        Proximity: scaled L1 distance (numerics / scale, 1 per changed categorical).
    n_changed : ndarray of shape (n, k)
    neighbour_distance : ndarray of shape (n, k)
        Distance to the nearest training row (same metric as ``cost``).
    scale : ndarray of shape (n_features,)
        Per numeric feature, the scale of ``cost`` (MAD, or standard deviation where the MAD is 0).
    feature_names : list of str
    categorical_mask : ndarray of bool
    threshold : float
    plausibility_threshold : float
        Neighbour distance above which a candidate was rejected (inf when plausibility is off).
    rows_evaluated : int
    diagnostics : dict
        Per instance, ``flipped``: distinct candidates that flipped the decision before the plausibility check, and
        ``plausible``: those left after it (what explains an instance without a counterfactual).
    """

    instances: np.ndarray
    original_prediction: np.ndarray
    counterfactuals: np.ndarray
    prediction: np.ndarray
    cost: np.ndarray
    n_changed: np.ndarray
    neighbour_distance: np.ndarray
    scale: np.ndarray
    feature_names: list[str]
    categorical_mask: np.ndarray
    threshold: float
    plausibility_threshold: float
    rows_evaluated: int
    diagnostics: dict = field(default_factory=dict)

    @property
    def found(self) -> np.ndarray:
        """(n,) bool: at least one counterfactual found."""
        return ~np.isnan(self.cost[:, 0])

    def changes(self, i: int, r: int = 0) -> list[tuple[str, float, float]]:
        """``(feature, from, to)`` in code space for counterfactual ``r`` of instance ``i`` (empty when none)."""
        x, c = self.instances[i], self.counterfactuals[i, r]
        if np.isnan(self.cost[i, r]):
            return []
        return [(self.feature_names[j], float(x[j]), float(c[j])) for j in np.flatnonzero(changed(x, c))]


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a != b`` element-wise, where two missing values are equal (an unchanged missing value is no change).

    Examples
    --------
    >>> changed(np.array([1.0, np.nan, np.nan]), np.array([2.0, np.nan, 3.0])).tolist()
    [True, False, True]
    """
    return (a != b) & ~(np.isnan(a) & np.isnan(b))


def mad_scale(training: np.ndarray, categorical_mask: np.ndarray) -> np.ndarray:
    """Median absolute deviation per numeric column (standard deviation where it is 0, then 1); 1 for categoricals.
    Missing values are left out; a column with no values gets 1."""
    t = np.asarray(training, dtype=np.float64)
    with np.errstate(all="ignore"), quiet_nan():
        med = np.nanmedian(t, axis=0)
        mad = np.nanmedian(np.abs(t - med), axis=0)
        sd = np.nanstd(t, axis=0)
    scale = np.where(mad > 0, mad, np.where(sd > 0, sd, 1.0))
    scale[~np.isfinite(scale)] = 1.0
    scale[np.asarray(categorical_mask, dtype=bool)] = 1.0
    return scale


def _numeric_gap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| where both are present, 0 where both are missing, 1 where one is (filling in a value costs 1)."""
    na, nb = np.isnan(a), np.isnan(b)
    return np.where(na | nb, (na != nb).astype(float), np.abs(np.where(na | nb, 0.0, a - b)))


def distance(a: np.ndarray, b: np.ndarray, scale: np.ndarray, categorical_mask: np.ndarray) -> np.ndarray:
    """Mixed L1 distance, broadcast over leading axes: sum |a - b| / scale over numerics + count of changed
    categoricals. A missing numeric against a value costs 1; two missing values cost 0."""
    cat = np.asarray(categorical_mask, dtype=bool)
    num = _numeric_gap(a[..., ~cat], b[..., ~cat])
    nan_pair = np.isnan(a[..., ~cat]) | np.isnan(b[..., ~cat])
    num = np.where(nan_pair, num, num / scale[~cat])
    return num.sum(axis=-1) + changed(a[..., cat], b[..., cat]).sum(axis=-1)


def _integer_features(training: np.ndarray, categorical_mask: np.ndarray) -> np.ndarray:
    t = np.asarray(training)
    present = ~np.isnan(t)
    whole = np.where(present, t == np.round(np.where(present, t, 0.0)), True)
    return ~np.asarray(categorical_mask, dtype=bool) & np.all(whole, axis=0) & present.any(axis=0)


def _first_per_group(group: np.ndarray, *keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows tagged with ``group``, the index of the row with the smallest ``keys`` (lexicographic) per group."""
    order = np.lexsort((*keys[::-1], group))
    g = group[order]
    first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    return g[first], order[first]


class _Space:
    """Candidate values and per-instance allowed moves, built once from the training rows and the constraints."""

    def __init__(self, X, training, schema: Schema, constraints: Constraints, grid_size: int):
        self.m = X.shape[1]
        self.cat = schema.categorical_mask
        names = schema.feature_names
        integer = (
            np.array([n in constraints.integer for n in names])
            if constraints.integer is not None
            else _integer_features(training, self.cat)
        )
        followers = {g for group in constraints.tied for g in group} - {
            next((g for g in group if schema.feature(g).is_categorical), group[0]) for group in constraints.tied
        }
        self.integer = integer
        self.values: list[np.ndarray] = []
        self.allowed: list[np.ndarray] = []  # (n, V_j) per feature
        self.lo = np.full(self.m, -np.inf)
        self.hi = np.full(self.m, np.inf)
        for j, f in enumerate(schema.features):
            col = training[:, j]
            x = X[:, j]
            if f.is_categorical:
                vals = supported_levels(col, f, constraints.min_level_count)
                ok = vals[None, :] != x[:, None]
                if f.name in constraints.transitions:
                    table = constraints.transitions[f.name]
                    lv = {name: i for i, name in enumerate(f.levels)}
                    allow = np.zeros((len(f.levels) + 1, len(vals)), dtype=bool)
                    for a, targets in table.items():
                        allow[lv[a]] = np.isin(vals, [lv[t] for t in targets])
                    ok &= allow[x.astype(np.int64)]
            else:
                present = col[~np.isnan(col)]
                sq = constraints.support_quantile
                q = np.quantile(present, np.linspace(sq, 1 - sq, grid_size)) if present.size else np.empty(0)
                vals = np.unique(np.round(q) if integer[j] else q)
                lo, hi = support_range(present, sq)
                rlo, rhi = constraints.ranges.get(f.name, (None, None))
                lo = lo if rlo is None else max(lo, rlo)
                hi = hi if rhi is None else min(hi, rhi)
                self.lo[j], self.hi[j] = lo, hi
                vals = vals[(vals >= lo) & (vals <= hi)]
                ok = vals[None, :] != x[:, None]
                direction = constraints.monotone.get(f.name)
                if direction == "increase":
                    ok &= vals[None, :] > x[:, None]
                elif direction == "decrease":
                    ok &= vals[None, :] < x[:, None]
            if f.name in constraints.immutable or f.name in followers:
                ok &= False
            self.values.append(vals.astype(np.float64))
            self.allowed.append(ok)
        self.eligible = np.column_stack([a.any(axis=1) for a in self.allowed])  # (n, m)
        self.X = X
        self.direction = [constraints.monotone.get(f.name) for f in schema.features]
        self.transition_ok = []  # per categorical: (levels+1, levels+1) allowed moves (all True without a table)
        for f in schema.features:
            if f.is_categorical and f.name in constraints.transitions:
                lv = {name: i for i, name in enumerate(f.levels)}
                allow = np.zeros((len(f.levels) + 1, len(f.levels) + 1), dtype=bool)
                for a, targets in constraints.transitions[f.name].items():
                    allow[lv[a], [lv[t] for t in targets]] = True
                self.transition_ok.append(allow)
            else:
                self.transition_ok.append(None)
        self.immutable = np.array([f.name in constraints.immutable for f in schema.features])
        self.follower = np.array([f.name in followers for f in schema.features])
        # tied groups: a leader (the first categorical member, else the first) moves, followers take the value that
        # occurs with the leader's value in training (the most frequent one)
        self.ties = []
        for group in constraints.tied:
            idx = [names.index(g) for g in group]
            leader = next((j for j in idx if self.cat[j]), idx[0])
            others = [j for j in idx if j != leader]
            lead_vals, maps = _tie_maps(training, leader, others)
            self.ties.append((leader, others, lead_vals, maps))

    def project(self, C: np.ndarray, inst: np.ndarray) -> np.ndarray:
        """Apply the ties to candidates ``C`` (rows of instances ``inst``), in place; returns which rows still respect
        the followers' own constraints (immutable, range, monotone, integer, transitions)."""
        ok = np.ones(len(C), dtype=bool)
        for leader, others, lead_vals, maps in self.ties:
            moved = changed(C[:, leader], self.X[inst, leader])
            pos = np.clip(np.searchsorted(lead_vals, C[:, leader]), 0, len(lead_vals) - 1)
            below = np.clip(pos - 1, 0, len(lead_vals) - 1)  # nearest observed leader value
            nearer = np.abs(lead_vals[below] - C[:, leader]) < np.abs(lead_vals[pos] - C[:, leader])
            pos = np.where(nearer, below, pos)
            for k, j in enumerate(others):
                x = self.X[inst, j]
                v = np.where(moved, maps[k][pos], x)
                C[:, j] = v
                ch = moved & changed(v, x)
                bad = ch & (self.immutable[j] | np.isnan(v))
                if self.cat[j]:
                    if self.transition_ok[j] is not None:
                        xi = np.where(np.isnan(x), len(self.transition_ok[j]) - 1, x).astype(np.int64)
                        vi = np.where(np.isnan(v), 0, v).astype(np.int64)
                        bad |= ch & ~self.transition_ok[j][xi, np.clip(vi, 0, len(self.transition_ok[j]) - 1)]
                else:
                    with np.errstate(invalid="ignore"):
                        bad |= ch & ((v < self.lo[j]) | (v > self.hi[j]))
                        if self.direction[j] == "increase":
                            bad |= ch & (v < x)
                        elif self.direction[j] == "decrease":
                            bad |= ch & (v > x)
                ok &= ~bad
        return ok

    def permits(self, j: int, inst: np.ndarray, v: np.ndarray) -> np.ndarray:  # noqa: D401
        """Whether instance ``inst`` may take value ``v`` for feature ``j`` (arrays of the same length)."""
        x = self.X[inst, j]
        if self.cat[j]:
            vals = self.values[j]
            pos = np.clip(np.searchsorted(vals, v), 0, len(vals) - 1)
            return (vals[pos] == v) & self.allowed[j][inst, pos]
        with np.errstate(invalid="ignore"):
            ok = self.eligible[inst, j] & changed(v, x) & (v >= self.lo[j]) & (v <= self.hi[j])
        if self.integer[j]:
            ok &= v == np.round(v)  # a missing v is already refused by the range
        if self.direction[j] == "increase":
            ok &= v > x
        elif self.direction[j] == "decrease":
            ok &= v < x
        return ok


def _tie_maps(training: np.ndarray, leader: int, others: list[int]) -> tuple[np.ndarray, list[np.ndarray]]:
    """For each observed value of the leader, the most frequent value of each follower among training rows with it."""
    col = training[:, leader]
    keep = ~np.isnan(col)
    lead_vals, inverse = np.unique(col[keep], return_inverse=True)
    maps = []
    for j in others:
        f = training[keep, j]
        out = np.full(len(lead_vals), np.nan)
        for g in range(len(lead_vals)):
            vals, counts = np.unique(f[(inverse == g) & ~np.isnan(f)], return_counts=True)
            if len(vals):
                out[g] = vals[np.argmax(counts)]
        maps.append(out)
    return lead_vals, maps


def counterfactuals(
    predict: PredictFn,
    X: np.ndarray,
    training: np.ndarray,
    *,
    schema: Schema,
    constraints: Constraints | None = None,
    threshold: float = 0.5,
    k: int = 1,
    max_changes: int = 5,
    grid_size: int = 50,
    n_random: int = 300,
    n_refine: int = 10,
    beam_width: int = 5,
    sparsity_weight: float = 3.0,
    plausibility_quantile: float | None = 0.99,
    plausibility_sample: int = 2000,
    random_state: int | np.random.Generator | None = None,
    escalate: int = 2,
) -> Counterfactuals:
    """Up to ``k`` counterfactuals per row of ``X`` that flip the decision ``predict(x) >= threshold``.

    Parameters
    ----------
    predict : callable
        ``predict(A) -> scores`` on code-space arrays.
    X : ndarray of shape (n, n_features)
        Instances, in code space.
    training : ndarray of shape (n_rows, n_features)
        Training rows in code space: value grids, scales, support and plausibility.
    schema : Schema
        Feature kinds and levels.
    constraints : Constraints, optional
    threshold : float, default 0.5
    k : int, default 1
        Counterfactuals per instance; beyond the first, each changes a different set of features where possible.
    max_changes : int, default 5
        Most features changed at once.
    grid_size : int, default 50
        Quantiles of the training values tried for each numeric.
    n_random : int, default 300
        Random candidates per instance.
    n_refine : int, default 10
        Valid candidates per instance that are refined.
    beam_width : int, default 5
        States kept per instance at each depth of the search.
    sparsity_weight : float, default 3.0
        Added to the cost per changed feature: the objective is ``cost + sparsity_weight * n_changed``. 0 ranks by
        proximity alone (sparsity only breaks ties); the default 3 prefers one change of up to three scale units to
        two small ones, since a person acting on the explanation acts on each changed feature separately. On W6 of
        the benchmark it gives mean sparsity 2.36 at numeric proximity 0.39 (weight 1: 2.42 at 0.35; weight 0: 2.44 at 0.37).
    plausibility_quantile : float or None, default 0.99
        Reject candidates whose nearest-training-row distance exceeds this quantile of the training rows' own
        nearest-neighbour distances; None turns the check off.
    plausibility_sample : int, default 2000
        Training rows used for the plausibility check.
    random_state : int, Generator or None
    escalate : int, default 2
        For instances left without a counterfactual, search again (up to this many times) with twice the beam, four
        times the random candidates and two more changes allowed.

    Returns
    -------
    Counterfactuals
    """
    first = _search(
        predict, X, training, schema=schema, constraints=constraints, threshold=threshold, k=k,
        max_changes=max_changes, grid_size=grid_size, n_random=n_random, n_refine=n_refine, beam_width=beam_width,
        sparsity_weight=sparsity_weight, plausibility_quantile=plausibility_quantile,
        plausibility_sample=plausibility_sample, random_state=random_state,
    )  # fmt: skip
    missing = np.flatnonzero(~first.found)
    if len(missing) == 0 or escalate == 0:
        return first
    # try harder where nothing was found: wider beam, more random candidates, more changes allowed
    rng = as_generator(random_state)
    more = counterfactuals(
        predict, first.instances[missing], training, schema=schema, constraints=constraints, threshold=threshold,
        k=k, max_changes=min(max_changes + 2, len(schema.features)), grid_size=grid_size, n_random=4 * n_random,
        n_refine=n_refine, beam_width=2 * beam_width, sparsity_weight=sparsity_weight,
        plausibility_quantile=plausibility_quantile, plausibility_sample=plausibility_sample,
        random_state=int(rng.integers(2**31 - 1)), escalate=escalate - 1,
    )  # fmt: skip
    arrays = {}
    for name in ("counterfactuals", "prediction", "cost", "n_changed", "neighbour_distance"):
        a = getattr(first, name).copy()
        a[missing] = getattr(more, name)
        arrays[name] = a
    diagnostics = {}
    for key, v in first.diagnostics.items():
        v = v.copy()
        v[missing] += more.diagnostics[key]
        diagnostics[key] = v
    return Counterfactuals(
        first.instances, first.original_prediction, arrays["counterfactuals"], arrays["prediction"], arrays["cost"],
        arrays["n_changed"], arrays["neighbour_distance"], first.scale, first.feature_names, first.categorical_mask,
        threshold, first.plausibility_threshold, first.rows_evaluated + more.rows_evaluated, diagnostics,
    )  # fmt: skip


def _search(
    predict: PredictFn,
    X: np.ndarray,
    training: np.ndarray,
    *,
    schema: Schema,
    constraints: Constraints | None = None,
    threshold: float = 0.5,
    k: int = 1,
    max_changes: int = 5,
    grid_size: int = 50,
    n_random: int = 300,
    n_refine: int = 10,
    sparsity_weight: float = 3.0,
    plausibility_quantile: float | None = 0.99,
    plausibility_sample: int = 2000,
    random_state: int | np.random.Generator | None = None,
    beam_width: int = 5,
) -> Counterfactuals:
    """The search behind :func:`counterfactuals` (one pass, fixed effort): candidates from a beam search and from
    random moves, the plausible ones refined (needless changes dropped, numerics moved back), the best chosen."""
    constraints = constraints or Constraints()
    constraints.validate(schema)
    if k < 1 or max_changes < 1:
        raise ValueError(f"k and max_changes must be >= 1, got k={k}, max_changes={max_changes}")
    rng = as_generator(random_state)
    s = _Search(predict, X, training, schema, constraints, threshold, grid_size, sparsity_weight)
    pool_c, pool_i = [], []  # candidate rows and their instance index
    for by_ratio in (True, False):
        s.beam(by_ratio, max_changes, beam_width, pool_c, pool_i)
    if n_random > 0:
        s.random_moves(rng, n_random, max_changes, pool_c, pool_i)
    if not pool_c or sum(len(c) for c in pool_c) == 0:
        return s.result(*s.empty(k), np.inf)
    C, owner = np.vstack(pool_c), np.concatenate(pool_i)
    C, owner, plaus_thr, ref = s.plausible(C, owner, plausibility_quantile, plausibility_sample)
    C, owner = s.best(C, owner, n_refine)
    unrefined = C.copy()
    s.drop_needless(C, owner, max_changes)
    s.move_back(C, owner)
    C, owner, p, nd = s.final(C, owner, unrefined, plaus_thr, ref, plausibility_quantile is not None)
    return s.result(*s.choose(C, owner, p, nd, k), plaus_thr)


class _Search:
    """The state of one :func:`_search`: the instances, the training rows, the search space and what each candidate
    costs and scores; its methods are the search's steps, in the order :func:`_search` calls them."""

    def __init__(self, predict, X, training, schema: Schema, constraints: Constraints, threshold: float, grid_size,
                 sparsity_weight: float) -> None:  # fmt: skip
        self.predict, self.schema, self.threshold, self.sparsity_weight = predict, schema, threshold, sparsity_weight
        self.X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        self.training = np.asarray(training, dtype=np.float64)
        self.n, self.m = self.X.shape
        self.cat = schema.categorical_mask
        self.scale = mad_scale(self.training, self.cat)
        if not np.all(np.isfinite(self.scale)):
            raise RuntimeError(
                f"counterfactual search: non-finite feature scales {self.scale.tolist()} (a bug, not your data)"
            )
        self.space = _Space(self.X, self.training, schema, constraints, grid_size)
        self.rows = 0
        self.lead = ~self.space.follower  # a tied group counts once in the sparsity term
        self.diagnostics = {"flipped": np.zeros(self.n, dtype=np.int64), "plausible": np.zeros(self.n, dtype=np.int64)}
        self.p0 = self.score(self.X)
        self.target_pos = self.p0 < threshold  # want p >= threshold

    # ------------------------------------------------------------------------------------------- measures
    def objective(self, C: np.ndarray, X0: np.ndarray) -> np.ndarray:
        return distance(C, X0, self.scale, self.cat) + self.sparsity_weight * (changed(C, X0) & self.lead).sum(axis=-1)

    def tied(self, C: np.ndarray, inst: np.ndarray) -> np.ndarray:
        """Apply the ties in place; rows whose followers break a constraint are marked False."""
        return self.space.project(C, inst) if self.space.ties else np.ones(len(C), dtype=bool)

    def score(self, A: np.ndarray) -> np.ndarray:
        self.rows += len(A)
        return self.predict(A) if len(A) else np.empty(0)

    def valid(self, p: np.ndarray, inst: np.ndarray) -> np.ndarray:
        return np.where(self.target_pos[inst], p >= self.threshold, p < self.threshold)

    def margin(self, p: np.ndarray, inst: np.ndarray) -> np.ndarray:
        lg = np.log(np.clip(p, 1e-12, 1 - 1e-12)) - np.log1p(-np.clip(p, 1e-12, 1 - 1e-12))
        return np.where(self.target_pos[inst], lg, -lg)

    # -------------------------------------------------------------------------------------- candidates
    def beam(self, by_ratio: bool, max_changes: int, beam_width: int, pool_c: list, pool_i: list) -> None:
        """1. Beam search over single-feature moves, depth by depth, so the first depth at which an instance flips
        gives its sparsest counterfactuals; ranked by gain in log-odds per unit of cost (``by_ratio``) or by gain
        outright (which reaches instances far from the boundary; refinement then pulls their moves back)."""
        X, space = self.X, self.space
        cur = X.copy()  # one row per beam state
        state_of = np.arange(self.n)  # the instance each state belongs to
        cur_margin = self.margin(self.p0, state_of)
        for _ in range(max_changes):
            if len(cur) == 0:
                break
            moved = changed(cur, X[state_of])
            cand, src = [], []
            for j in range(self.m):
                ii, vv = np.nonzero(space.allowed[j][state_of] & ~moved[:, j][:, None])
                if len(ii) == 0:
                    continue
                c = cur[ii].copy()
                c[:, j] = space.values[j][vv]
                cand.append(c)
                src.append(ii)
            if not cand:
                break
            C, parent = np.vstack(cand), np.concatenate(src)
            owner = state_of[parent]
            fits = self.tied(C, owner)
            C, parent, owner = C[fits], parent[fits], owner[fits]
            if len(C) == 0:
                break
            p = self.score(C)
            ok = self.valid(p, owner)
            if ok.any():
                pool_c.append(C[ok])
                pool_i.append(owner[ok])
            gain = self.margin(p, owner) - cur_margin[parent]
            if by_ratio:
                added = self.objective(C, X[owner]) - self.objective(cur[parent], X[owner])
                gain = gain / np.maximum(added, 1e-9)
            keep = ~np.isin(owner, owner[ok]) & (gain > 0)  # an instance that flipped stops here
            if not keep.any():
                break
            rows_k = np.flatnonzero(keep)
            order = rows_k[np.lexsort((-gain[rows_k], owner[rows_k]))]
            rank = np.arange(len(order)) - np.searchsorted(owner[order], owner[order], side="left")
            order = order[rank < beam_width]
            cur, state_of, cur_margin = C[order], owner[order], self.margin(p[order], owner[order])

    def random_moves(self, rng, n_random: int, max_changes: int, pool_c: list, pool_i: list) -> None:
        """2. Random candidates: a random subset of features takes random allowed grid values (as DiCE's random
        search), or the values of a training row the model puts in the target class (realistic combinations)."""
        X, training, space, n, m = self.X, self.training, self.space, self.n, self.m
        elig = space.eligible
        n_feats = rng.integers(1, max_changes + 1, size=(n, n_random))
        keys = rng.random((n, n_random, m))
        keys[~np.broadcast_to(elig[:, None, :], keys.shape)] = np.inf
        rank = np.argsort(np.argsort(keys, axis=2), axis=2)
        pick = (rank < n_feats[:, :, None]) & np.isfinite(keys)
        C = np.broadcast_to(X[:, None, :], (n, n_random, m)).copy()
        donor_half = np.arange(n_random) >= n_random // 2
        donor_rows = rng.choice(len(training), size=min(len(training), 20000), replace=False)  # bounded cost
        p_train = self.score(training[donor_rows])
        pos_rows = donor_rows[p_train >= self.threshold]
        neg_rows = donor_rows[p_train < self.threshold]
        donors = np.empty((n, n_random), dtype=np.int64)
        for want_pos, pool_rows in ((True, pos_rows), (False, neg_rows)):
            sel = self.target_pos == want_pos
            src = pool_rows if len(pool_rows) else donor_rows
            donors[sel] = src[rng.integers(0, len(src), size=(int(sel.sum()), n_random))]
        owner = np.repeat(np.arange(n), n_random)
        for j in range(m):
            if not elig[:, j].any():
                continue
            r = rng.random((n, n_random, len(space.values[j]))) * space.allowed[j][:, None, :]
            grid_v = space.values[j][r.argmax(axis=2)]
            donor_v = training[donors, j]
            donor_ok = space.permits(j, owner, donor_v.reshape(-1)).reshape(n, n_random)
            v = np.where(donor_half[None, :], donor_v, grid_v)
            take = pick[:, :, j] & np.where(donor_half[None, :], donor_ok, True)
            C[:, :, j] = np.where(take, v, C[:, :, j])
        C = C.reshape(-1, m)
        fits = self.tied(C, owner)
        C, owner = C[fits], owner[fits]
        p = self.score(C)
        ok = self.valid(p, owner)
        pool_c.append(C[ok])
        pool_i.append(owner[ok])

    # ------------------------------------------------------------------------------- plausible and best
    def plausible(self, C, owner, quantile: float | None, sample: int):
        """The distinct candidates near enough the training rows (their nearest row within the ``quantile`` of
        training rows' own nearest distances, on a fixed sample: the same threshold for every call on the same
        data), so that the refined set is drawn from plausible ones only; returns them, the threshold and the
        sample."""
        training, n = self.training, self.n
        C = np.unique(np.column_stack([owner, C]), axis=0)
        owner, C = C[:, 0].astype(np.int64), C[:, 1:]
        self.diagnostics["flipped"] = np.bincount(owner, minlength=n)
        plaus_thr, ref = np.inf, None
        if quantile is not None:
            ref_rows = np.random.default_rng(0).choice(len(training), size=min(sample, len(training)), replace=False)
            ref = training[np.sort(ref_rows)]
            self_d = _nearest_distance(ref, ref, self.scale, self.cat, exclude_self=True)
            plaus_thr = float(np.quantile(self_d, quantile)) + 1e-9
            if not np.isfinite(plaus_thr):  # it would reject every candidate and report "none found": never quietly
                raise RuntimeError(
                    f"counterfactual search: the plausibility threshold is {plaus_thr} (a bug, not your data); "
                    "set local.counterfactuals.plausibility_quantile: null to run without it meanwhile"
                )
            ok = _nearest_distance(C, ref, self.scale, self.cat) <= plaus_thr
            owner, C = owner[ok], C[ok]
        self.diagnostics["plausible"] = np.bincount(owner, minlength=n)
        return C, owner, plaus_thr, ref

    def best(self, C, owner, n_refine: int):
        """The ``n_refine`` best distinct candidates per instance."""
        cost = self.objective(C, self.X[owner])
        order = np.lexsort((cost, owner))
        owner, C, cost = owner[order], C[order], cost[order]
        rank_in = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
        keep = rank_in < n_refine
        return C[keep].copy(), owner[keep]

    # ---------------------------------------------------------------------------------------- refinement
    def drop_needless(self, C, owner, max_changes: int) -> None:
        """3a. Drop changes that are not needed (largest saving first), in place; a tied group through its leader."""
        X = self.X
        for _ in range(max_changes):
            ii, jj = np.nonzero(changed(C, X[owner]) & self.lead)
            if len(ii) == 0:
                break
            R = C[ii].copy()
            R[np.arange(len(ii)), jj] = X[owner[ii], jj]
            fits = self.tied(R, owner[ii])
            ok = self.valid(self.score(R), owner[ii]) & fits
            if not ok.any():
                break
            saving = self.objective(C[ii], X[owner[ii]]) - self.objective(R, X[owner[ii]])
            rows_ok = np.flatnonzero(ok)
            cands, best = _first_per_group(ii[rows_ok], -saving[rows_ok])
            C[cands] = R[rows_ok[best]]

    def move_back(self, C, owner) -> None:
        """3b. Move changed numerics back towards the instance while the decision stays flipped (bisection), in
        place."""
        X, space = self.X, self.space
        for j in np.flatnonzero(~self.cat & self.lead):
            # a filled-in missing value has no "towards the instance"
            sel = np.flatnonzero(changed(C[:, j], X[owner, j]) & ~np.isnan(X[owner, j]))
            if len(sel) == 0:
                continue
            x0, x1 = X[owner[sel], j], C[sel, j].copy()
            lo_t, hi_t = np.zeros(len(sel)), np.ones(len(sel))

            def at(t, x0=x0, x1=x1, j=j):
                v = x0 + t * (x1 - x0)
                lo, hi = space.lo[j], space.hi[j]
                if space.integer[j]:
                    v = x0 + np.sign(x1 - x0) * np.ceil(np.abs(v - x0) - 1e-9)
                    lo, hi = np.ceil(lo), np.floor(hi)
                # the row itself may lie outside the training support or the allowed range; its counterfactual not
                return np.clip(v, lo, hi)

            for _ in range(12):
                mid = (lo_t + hi_t) / 2
                R = C[sel].copy()
                R[:, j] = at(mid)
                fits = self.tied(R, owner[sel])
                ok = self.valid(self.score(R), owner[sel]) & fits
                hi_t = np.where(ok, mid, hi_t)
                lo_t = np.where(ok, lo_t, mid)
            C[sel, j] = at(hi_t)
            self.tied(C, owner)  # followers of a bisected leader (their constraints held at every accepted step)

    def final(self, C, owner, unrefined, plaus_thr: float, ref, check_plausible: bool):
        """A refined candidate that left the training support's neighbourhood falls back to its unrefined
        (plausible) self; then re-scored: only candidates that flip the decision are kept."""
        nd = np.zeros(len(C))
        if check_plausible and len(C):
            nd = _nearest_distance(C, ref, self.scale, self.cat)
            back = nd > plaus_thr
            C[back] = unrefined[back]
            nd[back] = _nearest_distance(C[back], ref, self.scale, self.cat) if back.any() else nd[back]
        p = self.score(C)
        ok = self.valid(p, owner)
        return C[ok], owner[ok], p[ok], nd[ok]

    # -------------------------------------------------------------------------------------------- choose
    def empty(self, k: int):
        n, m = self.n, self.m
        return (np.full((n, k, m), np.nan), *(np.full((n, k), np.nan) for _ in range(4)))

    def choose(self, C, owner, p, nd, k: int):
        """4. Per instance the cheapest candidates first, then (for ``k > 1``) candidates changing other feature
        sets; returns the output arrays (counterfactuals, prediction, cost, changes, neighbour distance)."""
        X, n = self.X, self.n
        out_cf, out_p, out_cost, out_nc, out_nd = self.empty(k)
        cost = distance(C, X[owner], self.scale, self.cat)
        nchg = changed(C, X[owner]).sum(axis=1)
        nlead = (changed(C, X[owner]) & self.lead).sum(axis=1)
        order = np.lexsort((nlead, cost + self.sparsity_weight * nlead, owner))
        C, owner, p, cost, nchg, nd = C[order], owner[order], p[order], cost[order], nchg[order], nd[order]
        starts = np.searchsorted(owner, np.arange(n + 1))
        for i in range(n):
            for slot, r in enumerate(self._distinct(C, starts[i], starts[i + 1], i, k)):
                out_cf[i, slot], out_p[i, slot], out_cost[i, slot] = C[r], p[r], cost[r]
                out_nc[i, slot], out_nd[i, slot] = nchg[r], nd[r]
        return out_cf, out_p, out_cost, out_nc, out_nd

    def _distinct(self, C, a: int, b: int, i: int, k: int) -> list[int]:
        """Up to ``k`` of the rows ``a:b`` (candidates of instance ``i``, best first): first those changing a new set
        of features, then any other distinct ones."""
        chosen: list[int] = []
        sets: list[frozenset] = []
        for pass_ in (0, 1):
            for r in range(a, b):
                if len(chosen) == k:
                    break
                s = frozenset(np.flatnonzero(changed(C[r], self.X[i])))
                if (
                    r in chosen
                    or (pass_ == 0 and s in sets)
                    or any(np.array_equal(C[r], C[c], equal_nan=True) for c in chosen)
                ):
                    continue
                chosen.append(r)
                sets.append(s)
        return chosen

    def result(self, out_cf, out_p, out_cost, out_nc, out_nd, plaus_thr: float) -> Counterfactuals:
        return Counterfactuals(
            self.X, self.p0, out_cf, out_p, out_cost, out_nc, out_nd, self.scale, self.schema.feature_names,
            self.cat, self.threshold, plaus_thr, self.rows, self.diagnostics,
        )  # fmt: skip


def _nearest_distance(A, ref, scale, cat, *, exclude_self: bool = False, chunk: int = 512) -> np.ndarray:
    """Distance (see :func:`distance`) from each row of ``A`` to its nearest row of ``ref``.

    Numerics column by column, categoricals as ``n_categoricals - onehot(a) . onehot(b)`` (one matrix product).
    """
    num = np.flatnonzero(~cat)
    cats = np.flatnonzero(cat)
    levels = [np.unique(np.concatenate([A[:, j], ref[:, j]])) for j in cats]

    def onehot(M):
        if not len(cats):
            return np.zeros((len(M), 0), dtype=np.float32)
        return np.hstack([(M[:, j][:, None] == lv[None, :]) for j, lv in zip(cats, levels, strict=True)]).astype(
            np.float32
        )

    ref_oh = onehot(ref)
    ref_num = (ref[:, num] / scale[num]).astype(np.float32)
    ref_nan = np.isnan(ref_num)
    out = np.empty(len(A))
    for s in range(0, len(A), chunk):
        a = A[s : s + chunk]
        d = len(cats) - onehot(a) @ ref_oh.T
        a_num = (a[:, num] / scale[num]).astype(np.float32)
        a_nan = np.isnan(a_num)
        for c in range(len(num)):
            gap = np.abs(a_num[:, c, None] - ref_num[None, :, c])
            if a_nan[:, c].any() or ref_nan[:, c].any():  # one missing: 1; both missing: 0 (see distance)
                gap = np.where(np.isnan(gap), (a_nan[:, c, None] != ref_nan[None, :, c]).astype(np.float32), gap)
            d += gap
        if exclude_self:
            d[np.arange(d.shape[0]), np.arange(s, s + d.shape[0])] = np.inf
        out[s : s + chunk] = d.min(axis=1)
    return out


def counterfactual_metrics(result: Counterfactuals) -> dict[str, float]:
    """Summary figures over the instances (first counterfactual each, diversity over all ``k``).

    ``validity``: share of instances with a counterfactual; ``proximity_numeric``: mean over numerics of
    ``|change| / scale``; ``categorical_changed``: share of categoricals changed; ``sparsity``: mean number of features
    changed; ``cost``: mean scaled L1 distance; ``diversity``: mean pairwise distance between an instance's
    counterfactuals (NaN for ``k = 1``).
    """
    found = result.found
    cf = result.counterfactuals[found, 0]
    x = result.instances[found]
    cat = result.categorical_mask
    out = {"n_instances": int(len(found)), "validity": float(found.mean()) if len(found) else float("nan")}
    if found.any():
        gap = _numeric_gap(cf[:, ~cat], x[:, ~cat])
        nan_pair = np.isnan(cf[:, ~cat]) | np.isnan(x[:, ~cat])
        out["proximity_numeric"] = float(np.where(nan_pair, gap, gap / result.scale[~cat]).mean())
        out["categorical_changed"] = float(changed(cf[:, cat], x[:, cat]).mean()) if cat.any() else 0.0
        out["sparsity"] = float(changed(cf, x).sum(axis=1).mean())
        out["cost"] = float(np.nanmean(result.cost[:, 0]))
    k = result.counterfactuals.shape[1]
    if k > 1:
        pair = []
        for i in np.flatnonzero(found):
            c = result.counterfactuals[i][~np.isnan(result.cost[i])]
            for a in range(len(c)):
                for b in range(a + 1, len(c)):
                    pair.append(distance(c[a], c[b], result.scale, cat))
        out["diversity"] = float(np.mean(pair)) if pair else float("nan")
    return out


def constraint_violations(
    result: Counterfactuals, training: np.ndarray, *, schema: Schema, constraints: Constraints
) -> dict[str, int]:
    """Count, over every returned counterfactual, the violations of each constraint (independent of the search).

    ``tied``: a counterfactual that changes a tied group to a combination of values no training row has.
    """
    training = np.asarray(training, dtype=np.float64)
    counts = dict.fromkeys(["immutable", "range", "monotone", "transition", "integer", "support", "tied"], 0)
    integer = (
        set(constraints.integer)
        if constraints.integer is not None
        else {schema.feature_names[j] for j in np.flatnonzero(_integer_features(training, schema.categorical_mask))}
    )
    names = schema.feature_names
    groups = [[names.index(g) for g in group] for group in constraints.tied]
    seen_combos = [{tuple(row) for row in np.round(training[:, g], 9).tolist()} for g in groups]
    bounds = [support_range(training[:, j][~np.isnan(training[:, j])], constraints.support_quantile)
              for j in range(training.shape[1])]  # fmt: skip
    for i in range(len(result.instances)):
        for r in range(result.counterfactuals.shape[1]):
            if np.isnan(result.cost[i, r]):
                continue
            c = result.counterfactuals[i, r]
            x = result.instances[i]
            for g, combos in zip(groups, seen_combos, strict=True):
                if changed(c[g], x[g]).any() and tuple(np.round(c[g], 9).tolist()) not in combos:
                    counts["tied"] += 1
            for j, f in enumerate(schema.features):
                a, b = x[j], c[j]
                if not changed(np.array(a), np.array(b)):
                    continue
                counts["immutable"] += f.name in constraints.immutable
                if f.is_categorical:
                    counts["support"] += b not in supported_levels(training[:, j], f, constraints.min_level_count)
                    if f.name in constraints.transitions:
                        targets = constraints.transitions[f.name].get(f.levels[int(a)] if a < len(f.levels) else "", [])
                        counts["transition"] += f.levels[int(b)] not in targets
                    continue
                if np.isnan(b):  # a counterfactual never proposes a missing value
                    counts["support"] += 1
                    continue
                lo, hi = constraints.ranges.get(f.name, (None, None))
                counts["range"] += (lo is not None and b < lo) or (hi is not None and b > hi)
                counts["support"] += b < bounds[j][0] or b > bounds[j][1]
                d = constraints.monotone.get(f.name)
                counts["monotone"] += (d == "increase" and not b > a) or (d == "decrease" and not b < a)
                counts["integer"] += f.name in integer and b != round(b)
    return {key: int(v) for key, v in counts.items()}
