"""Weak segments: the slices of the data where the model errs significantly more than overall (SliceLine's
formulation, Sagadeeva and Boehm, SIGMOD 2021).

A *slice* is a conjunction of up to ``max_level`` predicates on different features, each predicate a numeric feature's
quantile bin (or missing) or a categorical's level. For every slice with at least ``min_support`` rows this computes,
from indicator matrices in a few matrix products (no loop over rows): its size, its error sum and mean, SliceLine's
score ``alpha * (mean_S / mean - 1) - (1 - alpha) * (n / |S| - 1)``, a one-sided test that its error exceeds the rest's
(two-proportion z-test for 0/1 errors, Welch's t-test otherwise), adjusted over every slice evaluated (Holm by default),
and a Wilson (or t) interval of its error. Level 2 is complete (every pair of supported predicates of different
features), so the correction covers every slice that could have been reported: on errors that do not depend on the
features, a weak segment is reported in 6% of 200 seeded data sets (Holm at 5%). Level 3 extends only the slices whose
error is above the overall error (at most ``max_extend`` of them); the slices it leaves out are not counted in the
correction, so at ``max_level: 3`` false alarms are more frequent than ``significance`` says (10% of 40 data sets).

Weak segments are the significant slices, ranked by size x effect (the excess errors ``|S| * (mean_S - mean)``); a
slice is left out when, without the rows of the slices reported before it, it has fewer than ``min_support`` rows or
errs no more than overall (so the parents, children and overlapping siblings of a weak slice are not reported for
that slice's errors). Tested against the ``sliceline`` package's top slices and scores, on a model with a planted weak
slice (found, with its support and effect) and on uniform errors (nothing found).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audit.metrics import adjust_pvalues, wilson_interval


@dataclass
class Predicate:
    feature: str
    text: str  # "age in (38, 47]", "workclass = Private", "capital-gain missing"
    key: str = ""  # the same, in names that do not move with the data: "age=q3-4", "workclass=Private"


@dataclass
class SliceResult:
    """Every evaluated slice (``table``) and the weak segments (``weak``), with the settings used."""

    table: pd.DataFrame
    weak: pd.DataFrame
    overall_error: float
    n_rows: int
    evaluated: int
    settings: dict = field(default_factory=dict)


def predicates(
    codes: np.ndarray, schema, *, n_bins: int = 5, max_levels: int = 30
) -> tuple[np.ndarray, list[Predicate]]:
    """The basic predicates as a boolean matrix (rows x predicates): numerics in ``n_bins`` quantile bins of these
    rows plus a missing bin; categoricals by level (the ``max_levels`` most frequent ones)."""
    cols, preds = [], []
    for j, f in enumerate(schema.features):
        v = codes[:, j]
        if f.is_categorical:
            counts = np.bincount(v.astype(np.int64), minlength=len(f.levels) + 1)
            names = [*f.levels, "(unseen)"]
            for k in np.argsort(-counts, kind="stable")[:max_levels]:
                if counts[k]:
                    cols.append(v == k)
                    preds.append(Predicate(f.name, f"{f.name} = {names[k]}", f"{f.name}={names[k]}"))
        else:
            finite = np.isfinite(v)
            edges = np.unique(np.quantile(v[finite], np.linspace(0, 1, n_bins + 1))) if finite.any() else np.zeros(0)
            n_finite = max(int(finite.sum()), 1)
            for lo, hi in zip(edges[:-1], edges[1:], strict=True):
                first = lo == edges[0]
                m = finite & (v >= lo if first else v > lo) & (v <= hi)
                if m.any():
                    cols.append(m)
                    # the quantile bins it spans, 1 to n_bins (edges merge on ties): stable where the edges are not
                    a = 1 if first else int(round(np.sum(v[finite] <= lo) / n_finite * n_bins)) + 1
                    b = int(round(np.sum(v[finite] <= hi) / n_finite * n_bins))
                    key = f"{f.name}=q{a}" if a >= b else f"{f.name}=q{a}-{b}"
                    preds.append(Predicate(f.name, f"{f.name} in {'[' if first else '('}{lo:.4g}, {hi:.4g}]", key))
            if (~finite).any():
                cols.append(~finite)
                preds.append(Predicate(f.name, f"{f.name} missing", f"{f.name}=missing"))
    # a predicate true for (almost) every row says nothing: "capital-gain in [0, 99999]" when 92% are 0
    keep = [k for k, c in enumerate(cols) if c.mean() < 0.99]
    cols, preds = [cols[k] for k in keep], [preds[k] for k in keep]
    return np.column_stack(cols) if cols else np.zeros((len(codes), 0), dtype=bool), preds


def weak_segments(
    codes: np.ndarray,
    errors: np.ndarray,
    schema,
    *,
    n_bins: int = 5,
    max_level: int = 2,
    min_support: int = 50,
    alpha: float = 0.95,
    significance: float = 0.05,
    correction: str = "holm",
    min_effect: float = 0.0,
    top_k: int = 10,
    max_extend: int = 400,
    parts: dict[str, np.ndarray] | None = None,
) -> SliceResult:
    """Weak segments of the rows ``codes`` with per-row ``errors`` (see the module docstring); ``parts``: more
    per-row values whose mean over each weak slice is added to ``weak`` as a column (e.g. observed and expected
    error, when ``errors`` is their difference)."""
    B, preds = predicates(codes, schema, n_bins=n_bins)
    e = np.asarray(errors, dtype=np.float64)
    n = len(B)
    mean = float(e.mean()) if n else float("nan")
    feat = np.array([p.feature for p in preds])
    members, size, total, total2 = _enumerate(B, feat, e, mean, min_support, max_level, max_extend)
    with np.errstate(invalid="ignore", divide="ignore"):
        avg = total / size
        score = alpha * (avg / mean - 1) - (1 - alpha) * (n / size - 1)
    p, low, high = _test(
        size, total, total2, n, float(e.sum()), float((e * e).sum()), binary=bool(np.isin(e, (0, 1)).all())
    )
    table = pd.DataFrame(
        {
            "slice": [" and ".join(preds[i].text for i in s) for s in members],
            "key": ["&".join(sorted(preds[i].key for i in s)) for s in members],
            "level": [len(s) for s in members],
            "rows": size.astype(int),
            "support": size / max(n, 1),
            "error": avg,
            "error_low": low,
            "error_high": high,
            "effect": avg - mean,
            "excess_errors": size * (avg - mean),
            "error_sum": total,
            "score": score,
            "p_value": p,
        }
    )
    table["p_adjusted"] = adjust_pvalues(table["p_value"].to_numpy(), correction)
    table["members"] = members
    table = table.sort_values(["excess_errors", "rows"], ascending=[False, False], kind="stable").reset_index(drop=True)
    weak_rows = _reported(table, B, e, mean, significance, min_effect, min_support, top_k)
    weak = pd.DataFrame(weak_rows, columns=table.columns)
    for name, values in (parts or {}).items():
        weak[name] = [float(np.asarray(values)[B[:, list(m)].all(axis=1)].mean()) for m in weak["members"]]
    weak = weak.drop(columns=["members", "error_sum"])
    settings = {"n_bins": n_bins, "max_level": max_level, "min_support": min_support, "alpha": alpha,
                "significance": significance, "correction": correction, "min_effect": min_effect}  # fmt: skip
    return SliceResult(table.drop(columns=["members", "error_sum"]), weak, mean, n, len(table), settings)


def _enumerate(B: np.ndarray, feat: np.ndarray, e: np.ndarray, mean: float, min_support: int, max_level: int,
               max_extend: int):  # fmt: skip
    """Every slice (conjunction of predicates of distinct features) with at least ``min_support`` rows: its members
    and its rows, error sum and squared-error sum. Level 2 is complete (every pair of supported predicates); level 3
    and beyond extend only the slices that err more than overall (a heuristic bound, as SliceLine's)."""
    Bf = B.astype(np.float32)
    members: list[tuple[int, ...]] = []
    sizes: list[np.ndarray] = []
    sums: list[np.ndarray] = []
    sq: list[np.ndarray] = []
    s1, e1, q1 = Bf.sum(axis=0).astype(np.float64), e @ B, (e * e) @ B
    keep = np.flatnonzero(s1 >= min_support)
    members += [(int(i),) for i in keep]
    sizes.append(s1[keep])
    sums.append(e1[keep])
    sq.append(q1[keep])
    frontier = [(int(i),) for i in keep]
    for _level in range(2, max_level + 1):
        if not frontier:
            break
        # rows in each frontier slice, as a (n x F) matrix; extended by every predicate of another feature
        F = np.column_stack([B[:, list(s)].all(axis=1) for s in frontier]).astype(np.float32)
        size = F.T @ Bf
        err = (F * e[:, None].astype(np.float32)).T @ Bf
        err2 = (F * (e * e)[:, None].astype(np.float32)).T @ Bf
        new, seen = [], set()
        for a, s in enumerate(frontier):
            used = set(feat[list(s)])
            for k in np.flatnonzero(size[a] >= min_support):
                if feat[k] in used:
                    continue
                key = tuple(sorted((*s, int(k))))  # each conjunction once
                if key in seen:
                    continue
                seen.add(key)
                new.append((key, float(size[a, k]), float(err[a, k]), float(err2[a, k])))
        if not new:
            break
        members += [k for k, *_ in new]
        sizes.append(np.array([v[1] for v in new]))
        sums.append(np.array([v[2] for v in new]))
        sq.append(np.array([v[3] for v in new]))
        above = sorted((v for v in new if v[2] / v[1] > mean), key=lambda v: -v[2] / v[1])[:max_extend]
        frontier = [v[0] for v in above]
    size = np.concatenate(sizes) if sizes else np.zeros(0)
    total = np.concatenate(sums) if sums else np.zeros(0)
    total2 = np.concatenate(sq) if sq else np.zeros(0)
    return members, size, total, total2


def _reported(table: pd.DataFrame, B, e, mean: float, significance: float, min_effect: float, min_support: int,
              top_k: int) -> list[dict]:  # fmt: skip
    """The weak slices reported, worst first: significant after adjustment and above the effect, each only if it
    still errs more than overall without the rows of the slices reported before it (so a parent, child or
    overlapping sibling of a weak slice is not reported for that slice's errors)."""
    weak_rows = []
    covered = np.zeros(len(B), dtype=bool)  # rows of the slices reported so far
    for row in table.itertuples(index=False):
        if not (row.p_adjusted < significance and row.effect > min_effect):
            continue
        rows = B[:, list(row.members)].all(axis=1)
        rest = rows & ~covered
        if rest.sum() < min_support or e[rest].mean() <= mean + min_effect:
            continue
        covered |= rows
        weak_rows.append(row._asdict())
        if len(weak_rows) >= top_k:
            break
    return weak_rows


def _test(size, total, total2, n, e_sum, e2_sum, *, binary: bool):
    """One-sided p-value that the slice's mean error exceeds the rest's, and a 95% interval of the slice's mean."""
    from scipy.stats import norm, t

    rest_n = n - size
    with np.errstate(invalid="ignore", divide="ignore"):
        m_s = total / size
        m_r = (e_sum - total) / rest_n
        if binary:
            pooled = e_sum / n
            se = np.sqrt(pooled * (1 - pooled) * (1 / size + 1 / rest_n))
            p = norm.sf((m_s - m_r) / se)
            low, high = wilson_interval(m_s, size, z=norm.ppf(0.975))
            return np.nan_to_num(p, nan=1.0), low, high
        v_s = (total2 - size * m_s**2) / (size - 1)
        v_r = ((e2_sum - total2) - rest_n * m_r**2) / (rest_n - 1)
        se = np.sqrt(v_s / size + v_r / rest_n)
        dof = se**4 / ((v_s / size) ** 2 / (size - 1) + (v_r / rest_n) ** 2 / (rest_n - 1))
        p = t.sf((m_s - m_r) / se, dof)
        half = t.ppf(0.975, size - 1) * np.sqrt(v_s / size)
        return np.nan_to_num(p, nan=1.0), m_s - half, m_s + half
