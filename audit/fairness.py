"""Group fairness metrics with bootstrap confidence intervals, verdicts, and proxy screening.

Every group metric used here is a ratio of per-group sums of a few per-row statistics (label, decision, true and
false positives, and per-probability-bin sums of labels and scores for calibration). The point estimate sums them
per group; a bootstrap replicate weights each row by a Poisson(1) count and sums ``weights @ stats`` per group, so
all replicates of a block of rows are one matrix product, with no re-prediction and no per-resample pandas work.
Rows are processed in fixed blocks with weights seeded by the block's index, so memory is bounded whatever the data
size, and the intervals do not depend on chunking or on the compute backend. The point numbers equal fairlearn's
``MetricFrame`` (tested).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import chi2_contingency

from audit.config import AuditConfig
from audit.explain._common import as_generator
from audit.metrics import percentile_interval, quiet_nan, roc_auc_fast, roc_auc_sorted, weighted_auc

MEASURES = {
    # name: (kind, description); kind "max": value must stay <= threshold, "min": value must stay >= threshold
    "demographic_parity_difference": ("max", "largest gap in selection rate from the reference group"),
    "disparate_impact_ratio": ("min", "lowest selection rate / highest selection rate (four-fifths rule at 0.8)"),
    "equalized_odds_difference": ("max", "larger of the TPR gap and the FPR gap from the reference group"),
    "equal_opportunity_difference": ("max", "largest gap in true positive rate from the reference group"),
    "calibration_gap": ("max", "largest gap in expected calibration error from the reference group"),
}
RULES = {
    "demographic_parity_difference": "demographic parity",
    "disparate_impact_ratio": "four-fifths rule (US EEOC Uniform Guidelines)",
    "equalized_odds_difference": "equalized odds (Hardt et al. 2016)",
    "equal_opportunity_difference": "equal opportunity (Hardt et al. 2016)",
    "calibration_gap": "calibration within groups",
}
# the per-group rate behind each measure, and whether its lowest value is the disadvantaged group
_DRIVER = {
    "demographic_parity_difference": ("selection_rate", True),
    "disparate_impact_ratio": ("selection_rate", True),
    "equal_opportunity_difference": ("tpr", True),
    "calibration_gap": ("ece", False),
}
_N, _P, _S, _TP, _FP = range(5)


MAX_VALUE_GROUPS = 10  # a numeric sensitive column with at most this many distinct values is grouped by value


def group_labels(
    values: pd.Series, *, edges: list[float] | None = None, quantiles: int = 4, categorical: bool = False
) -> np.ndarray:
    """String group labels of a sensitive column.

    A categorical column (or one declared so with ``categorical``) is grouped by its levels, as is a numeric column
    with at most :data:`MAX_VALUE_GROUPS` distinct values and no ``edges`` (a 1/2 code, a 0/1 flag); other numeric
    columns are binned by ``edges`` or by ``quantiles``.

    Examples
    --------
    >>> list(group_labels(pd.Series([18, 30, 70]), edges=[25, 65]))
    ['< 25', '25–65', '>= 65']
    >>> list(group_labels(pd.Series([1, 2, 2, 1]), categorical=True))
    ['1', '2', '2', '1']
    """
    from audit.schema import category_strings

    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and not categorical:
        v = values.to_numpy(dtype=float, na_value=np.nan)
        finite = v[~np.isnan(v)]
        if edges is None and len(np.unique(finite)) <= MAX_VALUE_GROUPS:
            return category_strings(values)
        if edges is None:
            edges = list(np.unique(np.quantile(finite, np.linspace(0, 1, quantiles + 1))[1:-1]))
        e = list(edges)
        names = [f"< {e[0]:g}"] + [f"{a:g}–{b:g}" for a, b in zip(e[:-1], e[1:], strict=True)] + [f">= {e[-1]:g}"]
        idx = np.searchsorted(np.asarray(e), v, side="right")
        out = np.array(names, dtype=object)[idx]
        out[np.isnan(v)] = "missing"
        return out
    return category_strings(values)


_BOUND = re.compile(r"^(<|>=)\s*(-?[\d.eE+-]+)$|^(-?[\d.eE+-]+)\s*[–-]\s*(-?[\d.eE+-]+)$|^(-?[\d.eE+-]+)$")


def group_sort_key(label: str) -> tuple:
    """Order of group labels for people: numeric bins by their lower edge (``< 25``, ``25–45``, ``45–65``,
    ``>= 65``), numeric codes by value, text alphabetically, ``missing`` last; intersections part by part.

    Examples
    --------
    >>> sorted([">= 65", "25–45", "< 25", "missing", "45–65"], key=group_sort_key)
    ['< 25', '25–45', '45–65', '>= 65', 'missing']
    """
    out = []
    for part in str(label).split(" & "):
        m = _BOUND.match(part.strip())
        if part == "missing":
            out.append((2, 0.0, ""))
        elif m and m.group(1) == "<":
            out.append((0, -np.inf, ""))
        elif m and m.group(1) == ">=":
            out.append((0, float(m.group(2)), "~"))
        elif m and m.group(3) is not None:
            out.append((0, float(m.group(3)), ""))
        elif m and m.group(5) is not None:
            out.append((0, float(m.group(5)), ""))
        else:
            out.append((1, 0.0, part))
    return tuple(out)


def encode_groups(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct labels in :func:`group_sort_key` order and each row's index into them, by hashing
    (``pandas.factorize``) instead of sorting every row.

    Examples
    --------
    >>> levels, codes = encode_groups(np.array(["b", "a", "b"], dtype=object))
    >>> levels.tolist(), codes.tolist()
    (['a', 'b'], [1, 0, 1])
    """
    groups = np.asarray(groups)
    if groups.dtype == object and pd.api.types.infer_dtype(groups, skipna=False) == "string":
        codes, uniques = pd.factorize(groups, sort=False)  # Python strings (group labels): hashed as they are
    else:  # anything else is grouped by its text: 1 and 1.0 apart, None as "None" (never a missing code)
        text = groups.astype(str) if groups.dtype.kind in "iub" else np.array([str(v) for v in groups], dtype=object)
        codes, uniques = pd.factorize(text, sort=False)
    levels = np.asarray(uniques, dtype=str)
    order = np.array(sorted(range(len(levels)), key=lambda i: group_sort_key(levels[i])), dtype=np.int64)
    rank = np.empty(len(levels), dtype=np.int64)
    rank[order] = np.arange(len(levels))
    return levels[order], rank[codes]


def _row_stats(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    n_bins: int,
    *,
    quantize: bool = False,
    favourable_positive: bool = True,
) -> np.ndarray:
    """Per-row statistics whose per-group sums give every rate: (n, 5 + 2 * n_bins).

    With ``quantize`` the score mass used for calibration is rounded to a multiple of 2**-24 (decisions and bins
    still use the exact score), which makes weighted sums exact (see :func:`_bootstrap_task`). Without
    ``favourable_positive`` the favourable outcome is the negative class: the "selected" decision is ``p < threshold``,
    the label and the calibrated probability are those of the negative class.
    """
    if favourable_positive:
        d = (p >= threshold).astype(float)
        yf = y.astype(float)
    else:
        d = (p < threshold).astype(float)
        yf = 1.0 - y.astype(float)
        p = 1.0 - p
    b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    onehot_b = np.zeros((len(y), n_bins))
    onehot_b[np.arange(len(y)), b] = 1.0
    return np.column_stack(
        [
            np.ones(len(y)),
            yf,
            d,
            yf * d,
            (1 - yf) * d,
            onehot_b * yf[:, None],
            onehot_b * (np.round(p / _SCORE_QUANTUM) * _SCORE_QUANTUM if quantize else p)[:, None],
        ]
    )


def _row_cells(
    y: np.ndarray, p: np.ndarray, threshold: float, n_bins: int, *, favourable_positive: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What :func:`_row_stats` holds per row, compactly: the cell (label, decision, score bin) as one integer in
    ``[0, 4 * n_bins)``, the score bin, and the calibration score mass (see :func:`_cell_sums`)."""
    if favourable_positive:
        d = p >= threshold
        yf = np.asarray(y).astype(bool)
    else:
        d = p < threshold
        yf = ~np.asarray(y).astype(bool)
        p = 1.0 - p
    b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    return (yf * 2 + d) * n_bins + b, b, p


def _cell_sums(
    cells: tuple, codes: np.ndarray, n_groups: int, n_bins: int, weight: np.ndarray | None = None
) -> np.ndarray:
    """The per-group column sums of :func:`_row_stats` (n_groups, 5 + 2 * n_bins) from :func:`_row_cells`, the same
    bits as one ``np.bincount`` per statistic (tested), with two ``np.bincount`` calls.

    The 0/1 statistics are counts of cells (whole numbers, exact); a bin's score mass is ``np.bincount`` of the
    scores over (group, bin), which adds a group's scores in the bin in row order, as the per-column sum does (its
    zeros for rows in other bins leave a sum of non-negative scores unchanged). With ``weight`` each row counts its
    weight: the sums of :func:`_row_stats` times the weights.
    """
    cell, b, mass = cells
    codes = codes.astype(np.int64)
    count = np.bincount(codes * (4 * n_bins) + cell, weights=weight, minlength=n_groups * 4 * n_bins)
    count = count.reshape(n_groups, 2, 2, n_bins).astype(np.float64)  # (group, label, decision, bin)
    out = np.empty((n_groups, 5 + 2 * n_bins))
    out[:, _N] = count.sum(axis=(1, 2, 3))
    out[:, _P] = count[:, 1].sum(axis=(1, 2))
    out[:, _S] = count[:, :, 1].sum(axis=(1, 2))
    out[:, _TP] = count[:, 1, 1].sum(axis=1)
    out[:, _FP] = count[:, 0, 1].sum(axis=1)
    out[:, 5 : 5 + n_bins] = count[:, 1].sum(axis=1)
    mass = mass if weight is None else mass * weight
    out[:, 5 + n_bins :] = np.bincount(codes * n_bins + b, weights=mass, minlength=n_groups * n_bins).reshape(
        n_groups, n_bins
    )
    return out


_SCORE_QUANTUM = 2.0**-24
BOOTSTRAP_BLOCK = 1 << 15  # rows per block of bootstrap weights; a block's weights depend on its index only
_POISSON1_CDF = np.cumsum([np.exp(-1.0) / float(np.prod(np.arange(1, k + 1))) for k in range(16)]).astype(np.float32)
_POISSON1_STEPS = _POISSON1_CDF[_POISSON1_CDF < 1]  # float32 uniforms are < 1: the steps at 1.0 are never reached


def _poisson1_table() -> tuple[np.ndarray, np.ndarray]:
    """The CDF steps as thresholds on the generator's 32-bit outputs, and a table of counts by their top 16 bits.

    A float32 uniform is ``(r >> 8) * 2**-24`` of a 32-bit output ``r``, so ``u >= c`` exactly when
    ``r >= ceil(c * 2**24) << 8``. The table gives the count of thresholds at or below every ``r`` with those top 16
    bits, or 255 where a threshold falls inside that range (8 of 65,536 entries), which is then counted exactly.
    """
    thresholds = (np.ceil(_POISSON1_STEPS.astype(np.float64) * 2**24).astype(np.uint64) << np.uint64(8)).astype(
        np.uint32
    )
    lows = np.arange(1 << 16, dtype=np.uint64) << np.uint64(16)
    table = (thresholds[None, :] <= lows[:, None]).sum(axis=1).astype(np.uint8)
    table[thresholds[(thresholds & 0xFFFF) != 0] >> 16] = 255
    return thresholds, table


_POISSON1_THRESHOLDS, _POISSON1_TABLE = _poisson1_table()


def poisson_counts(seed: int, block: int, n_replicates: int, rows: int) -> np.ndarray:
    """Poisson(1) bootstrap counts of one block of rows, shape (rows, n_replicates), uint8.

    Drawn by inverse CDF from float32 uniforms of a generator seeded with ``(seed, block)``, so the counts of a row
    depend only on the seed and the row's position, never on how rows are chunked or partitioned. (Poisson(1) to
    float32 resolution: the CDF rounds to 1 from k = 10 on, so counts above 10, probability 1e-8, are not drawn.)

    The uniforms are not formed: the count is looked up from the top bits of the generator's 32-bit outputs (the
    ones ``Generator.random(dtype=float32)`` would turn into uniforms, in the same order; see
    :func:`_poisson1_table`), the same counts as comparing the uniforms with every CDF step (tested) in a third of
    the time.
    """
    n = rows * n_replicates
    bits = np.random.default_rng([seed, block]).bit_generator
    if sys.byteorder != "little":  # the 32-bit outputs below are the halves of 64-bit ones, low half first
        u = np.random.Generator(bits).random((rows, n_replicates), dtype=np.float32)
        w = np.zeros(u.shape, dtype=np.uint8)
        for c in _POISSON1_STEPS:  # the count of CDF steps at or below u
            w += u >= c
        return w
    w = np.empty(n, dtype=np.uint8)
    piece = 1 << 18  # outputs drawn a megabyte at a time (the stream continues): no fresh large array per block
    for s in range(0, n, piece):
        m = min(piece, n - s)
        r = bits.random_raw((m + 1) // 2).view(np.uint32)[:m]
        part = w[s : s + m]
        np.take(_POISSON1_TABLE, r.view(np.uint16)[1::2], out=part)  # by the top 16 bits
        edge = np.flatnonzero(part == 255)
        if len(edge):
            part[edge] = (r[edge, None] >= _POISSON1_THRESHOLDS).sum(axis=1)
    return w.reshape(rows, n_replicates)


def poisson_weights(seed: int, block: int, n_replicates: int, rows: int) -> np.ndarray:
    """:func:`poisson_counts` as float64 weights."""
    return poisson_counts(seed, block, n_replicates, rows).astype(np.float64)


def _joint_radix(sizes: list[int]) -> list[int] | None:
    """Place values that make one key of every grouping's code (mixed radix); None when the key could overflow."""
    radix, place = [], 1
    for g in reversed(sizes):
        radix.append(place)
        place *= max(int(g), 1)
    return radix[::-1] if place < 2**62 else None


def _bootstrap_task(
    item,
    *,
    seed: int,
    n_replicates: int,
    threshold: float,
    n_bins: int,
    sizes: list[int],
    favourable_positive: bool = True,
):
    """Bootstrap sums of a run of whole blocks, for every grouping: list of (n_replicates, n_groups, k).

    Every product and sum here is exact in float64: the weights are small integers, the statistics are 0/1 or
    (calibration) scores rounded to multiples of 2**-24, so sums stay exact up to 2**29 in weighted score mass
    (some 500 million rows). (Row weights from ``dataset.weight``, the fifth item, multiply the statistics: the sums
    are then ordinary float sums, reproducible for the same rows in the same tasks.) Exact sums do not depend on the
    order of addition, so the result is the same bit for
    bit whatever BLAS does with threads and memory alignment, and however rows are split into tasks. (Rounding the
    scores moves a calibration interval by less than 1e-7.)

    That is also why several groupings share one pass: the rows of a block are sorted once into the cells of all
    groupings together (sex x ethnicity x age band: 40 cells), each cell's sums are one matrix product, and a group's
    sums are the sum of its cells' sums, the same numbers as summing the group's rows directly (tested). With one
    grouping, or more cells than :func:`max` (256, 4 x the groups) in a block, each grouping is summed on its own.
    """
    start, y, p, codes, row_weight = item
    out = [np.zeros((n_replicates, g, 5 + 2 * n_bins)) for g in sizes]
    radix = _joint_radix(sizes) if len(sizes) > 1 else None
    # the weights as float64, gathered into one buffer for the task: a fresh 50 MB array per block costs more in
    # page faults than the copy itself
    wide = np.empty((min(BOOTSTRAP_BLOCK, len(y)), n_replicates))
    for s in range(0, len(y), BOOTSTRAP_BLOCK):
        e = min(s + BOOTSTRAP_BLOCK, len(y))
        counts = poisson_counts(seed, (start + s) // BOOTSTRAP_BLOCK, n_replicates, e - s)
        stats = _row_stats(y[s:e], p[s:e], threshold, n_bins, quantize=True, favourable_positive=favourable_positive)
        if row_weight is not None:
            stats *= row_weight[s:e, None]
        block_codes = [c[s:e] for c in codes]
        if radix is not None:  # one sort into the cells every grouping is made of (sex x ethnicity x age band ...)
            key = np.zeros(e - s, dtype=np.int64)
            for c, r in zip(block_codes, radix, strict=True):
                key += c.astype(np.int64) * r
            order = np.argsort(key, kind="stable")
            sorted_key = key[order]
            firsts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
            if len(firsts) <= max(256, 4 * sum(sizes)):
                bounds = np.r_[firsts, e - s]
                Wo, So = _gather(counts, order, wide), stats[order]  # one row gather for all groupings
                cells = [Wo[lo:hi].T @ So[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
                for acc, c in zip(out, block_codes, strict=True):
                    for g, cell in zip(c[order[firsts]], cells, strict=True):
                        acc[:, g, :] += cell
                continue
        for acc, c in zip(out, block_codes, strict=True):  # one grouping, or too many cells: group by group
            order = np.argsort(c, kind="stable")
            bounds = np.searchsorted(c[order], np.arange(acc.shape[1] + 1))
            Wo, So = _gather(counts, order, wide), stats[order]  # row gathers: contiguous copies
            for g in range(acc.shape[1]):
                lo, hi = bounds[g], bounds[g + 1]
                if hi > lo:
                    acc[:, g, :] += Wo[lo:hi].T @ So[lo:hi]
    return out


def _gather(counts: np.ndarray, order: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    """``counts[order]`` as float64, written into the first rows of ``buffer``."""
    out = buffer[: len(order)]
    np.copyto(out, np.take(counts, order, axis=0))
    return out


def bootstrap_sums(
    y: np.ndarray,
    p: np.ndarray,
    codes: list[np.ndarray],
    sizes: list[int],
    *,
    threshold: float,
    n_bins: int,
    n_replicates: int,
    seed: int,
    rows_per_task: int = 8 * BOOTSTRAP_BLOCK,
    backend=None,
    favourable_positive: bool = True,
    sample_weight: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Poisson-bootstrap per-group sums for several groupings of the same rows, in bounded memory (with
    ``sample_weight``, a row's replicate weight is its Poisson count times its weight).

    Every replicate weights each row by an independent Poisson(1) count (the streaming form of the bootstrap), so
    rows are processed in blocks of :data:`BOOTSTRAP_BLOCK` and memory is about ``n_replicates * block * 16`` bytes
    whatever the number of rows. All groupings share one set of weights (one resample of the population). Runs of
    blocks are tasks for ``backend`` (see :mod:`audit.compute`), summed in order: the result does not depend on the
    backend.

    Returns
    -------
    list of ndarray of shape (n_replicates, n_groups, k), one per grouping.
    """
    from audit.compute import Backend

    backend = backend or Backend()
    step = max(BOOTSTRAP_BLOCK, rows_per_task // BOOTSTRAP_BLOCK * BOOTSTRAP_BLOCK)
    w = sample_weight
    items = (
        (s, y[s : s + step], p[s : s + step], [c[s : s + step] for c in codes], None if w is None else w[s : s + step])
        for s in range(0, len(y), step)
    )
    total = None
    for part in backend.map(
        _bootstrap_task,
        items,
        seed=seed,
        n_replicates=n_replicates,
        threshold=threshold,
        n_bins=n_bins,
        sizes=sizes,
        favourable_positive=favourable_positive,
    ):
        total = part if total is None else [a + b for a, b in zip(total, part, strict=True)]
    return total


def _rates(sums: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """Per-group rates from summed statistics, shape (..., n_groups)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n, pos, sel, tp, fp = (sums[..., i] for i in range(5))
        neg = n - pos
        tn = neg - fp
        ysum, psum = sums[..., 5 : 5 + n_bins], sums[..., 5 + n_bins : 5 + 2 * n_bins]
        return {
            "count": n,
            "base_rate": pos / n,
            "selection_rate": sel / n,
            "accuracy": (tp + tn) / n,
            "tpr": tp / pos,
            "fpr": fp / neg,
            "fnr": (pos - tp) / pos,
            "precision": tp / sel,
            "ece": np.abs(ysum - psum).sum(axis=-1) / n,
        }


def _measures(
    r: dict[str, np.ndarray],
    eligible: np.ndarray,
    support: dict[str, np.ndarray],
    ref: int | None = None,
) -> dict[str, np.ndarray]:
    """The headline measures over the groups each may use: ``eligible`` (enough rows) for selection rates and
    calibration, ``support[key]`` (enough events too, see :func:`_support`) for ``tpr`` and ``fpr``. A measure with
    fewer than two such groups is NaN; equalized odds needs both of its gaps.

    With ``ref`` (a group's index), the differences are each group's largest distance from that reference group
    (NaN when the reference itself cannot be used); without, the widest pair of groups. The disparate impact ratio
    is always the lowest selection rate over the highest: the four-fifths rule compares with the most-selected group.
    """

    def spread(a, mask):
        if mask.sum() < 2 or (ref is not None and not mask[ref]):
            return np.full(a.shape[:-1], np.nan)
        if ref is not None:
            return np.nanmax(np.abs(a[..., mask] - a[..., ref : ref + 1]), axis=-1)
        a = a[..., mask]
        return np.nanmax(a, axis=-1) - np.nanmin(a, axis=-1)

    with np.errstate(invalid="ignore", divide="ignore"), quiet_nan():
        sel = r["selection_rate"][..., eligible]
        tpr_gap = spread(r["tpr"], support["tpr"])
        fpr_gap = spread(r["fpr"], support["fpr"])
        eo = np.maximum(tpr_gap, fpr_gap)  # both gaps, or none
        return {
            "demographic_parity_difference": spread(r["selection_rate"], eligible),
            "disparate_impact_ratio": np.nanmin(sel, axis=-1) / np.nanmax(sel, axis=-1) if eligible.sum() else
            np.full(sel.shape[:-1], np.nan),
            "equalized_odds_difference": eo,
            "equal_opportunity_difference": tpr_gap,
            "calibration_gap": spread(r["ece"], eligible),
        }  # fmt: skip


def reference_index(levels: np.ndarray, counts: np.ndarray, eligible: np.ndarray, configured: str | None) -> int | None:
    """The reference group of a grouping: the configured one (``fairness.reference_groups``) when it has enough
    rows, else the largest group with enough rows; None when no group has.

    >>> reference_index(np.array(["A", "B", "C"]), np.array([50, 400, 300]), np.array([True] * 3), None)
    1
    """
    if configured is not None:
        hit = np.flatnonzero(levels.astype(str) == str(configured))
        if len(hit) and eligible[hit[0]]:
            return int(hit[0])
    if not eligible.any():
        return None
    return int(np.argmax(np.where(eligible, counts, -1)))


_EVENTS = {"tpr": ("pos", "rows with the favourable true outcome"), "fpr": ("neg", "rows with the unfavourable "
           "true outcome")}  # fmt: skip


def _support(count: np.ndarray, pos: np.ndarray, eligible: np.ndarray, min_events: int) -> dict[str, np.ndarray]:
    """Per rate conditioned on the label, the groups with enough rows *and* events to estimate it: ``tpr`` needs
    ``min_events`` rows with the favourable true outcome in a group, ``fpr`` as many with the unfavourable one. A
    true positive rate from 3 such rows (0, 1/3, 2/3 or 1) is no evidence of anything, and its bootstrap interval
    collapses to a point.

    >>> m = _support(np.array([100, 66]), np.array([40, 3]), np.array([True, True]), 10)
    >>> m["tpr"].tolist(), m["fpr"].tolist()
    ([True, False], [True, True])
    """
    neg = count - pos
    return {"tpr": eligible & (pos >= min_events), "fpr": eligible & (neg >= min_events)}


@dataclass(frozen=True)
class GroupFairness:
    """Fairness of one grouping (a sensitive feature, binned, or an intersection).

    Attributes
    ----------
    name : str
        The grouping, e.g. "sex" or "sex x race".
    table : DataFrame
        One row per group: count, eligible, base rate, selection rate, accuracy, TPR, FPR, FNR, precision, ROC AUC,
        ECE, and for selection rate, TPR and FPR the bootstrap interval (``*_low``, ``*_high``).
    measures : DataFrame
        One row per headline measure: value, ci_low, ci_high, over eligible groups only; the rate behind it, the
        disadvantaged and advantaged groups with their rates, and ``not_assessable`` (why, when it cannot be).
    insufficient : list of str
        Groups below the minimum size: reported, never used in a measure.
    """

    name: str
    table: pd.DataFrame
    measures: pd.DataFrame
    insufficient: list[str]
    n_bootstrap: int
    overall: dict = None  # every rate over all rows (fairlearn's ``overall``)


def group_fairness(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    *,
    name: str = "",
    threshold: float = 0.5,
    min_group_size: int = 30,
    min_events: int = 10,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    n_bins: int = 10,
    random_state: int | np.random.Generator | None = None,
    backend=None,
    favourable_positive: bool = True,
    reference: str | None = None,
    sample_weight: np.ndarray | None = None,
) -> GroupFairness:
    """Group metrics and headline fairness measures with percentile-bootstrap intervals.

    Parameters
    ----------
    y : ndarray of shape (n,)
        0/1 labels.
    p : ndarray of shape (n,)
        Positive-class probabilities; decisions are ``p >= threshold``.
    groups : ndarray of shape (n,)
        Group label per row.
    min_group_size : int
        Groups with fewer rows are reported as insufficient and left out of every measure.
    min_events : int
        A rate conditioned on the label (TPR, FPR) is compared only over groups with at least this many rows of that
        label (see :func:`_support`); the measure is not assessable when fewer than two groups have them.
    n_bootstrap : int
        Poisson-bootstrap replicates (0: no intervals); see :func:`bootstrap_sums`.
    random_state : int, Generator or None
    backend : audit.compute.Backend, optional
        Where the bootstrap blocks run (default: this process).
    favourable_positive : bool, default True
        False when the favourable outcome is the negative class (a model of default): selection means
        ``p < threshold``, and base rate, TPR and FPR refer to the favourable class.
    reference : str, optional
        The group each measure compares with (default: the largest group with enough rows).
    sample_weight : ndarray of shape (n,), optional
        Row weights (``dataset.weight``): every rate, ROC AUC and interval is weighted; the group sizes, the events
        behind the support rules and ``count`` stay row counts, and the table gains each group's ``weight``.

    Returns
    -------
    GroupFairness
    """
    return group_fairness_many(
        y,
        p,
        {name: groups},
        threshold=threshold,
        min_group_size=min_group_size,
        min_events=min_events,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        n_bins=n_bins,
        random_state=random_state,
        backend=backend,
        favourable_positive=favourable_positive,
        references={name: reference} if reference is not None else None,
        sample_weight=sample_weight,
    )[0]


def group_fairness_many(
    y: np.ndarray,
    p: np.ndarray,
    groupings: dict[str, np.ndarray],
    *,
    threshold: float = 0.5,
    min_group_size: int = 30,
    min_events: int = 10,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    n_bins: int = 10,
    random_state: int | np.random.Generator | None = None,
    backend=None,
    favourable_positive: bool = True,
    references: dict[str, str] | None = None,
    sample_weight: np.ndarray | None = None,
) -> list[GroupFairness]:
    """:func:`group_fairness` for several groupings of the same rows, with one shared bootstrap resample.

    Beyond the inputs and the per-row group codes, memory is bounded by the block size whatever the number of rows:
    point estimates are per-group sums accumulated block by block (``np.bincount``), intervals come from
    :func:`bootstrap_sums`.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    coded = [(name, *encode_groups(np.asarray(groups))) for name, groups in groupings.items()]
    w = None if sample_weight is None else np.asarray(sample_weight, dtype=float)
    point_sums, weighted_sums = _point_sums(y, p, coded, threshold, n_bins, favourable_positive, w)
    boot = None
    if n_bootstrap > 0:
        boot = bootstrap_sums(
            y,
            p,
            [c for _, _, c in coded],
            [len(lv) for _, lv, _ in coded],
            threshold=threshold,
            n_bins=n_bins,
            n_replicates=n_bootstrap,
            seed=int(as_generator(random_state).integers(2**63 - 1)),
            backend=backend,
            favourable_positive=favourable_positive,
            sample_weight=w,
        )
    out = []
    overall_auc = _auc(y, p, w)  # the same rows in every grouping
    by_score = np.argsort(p)  # one sort of the scores serves every group's ROC AUC (the order of ties is immaterial)
    y_sorted, p_sorted = y[by_score].astype(bool), p[by_score]
    for i, (name, levels, codes) in enumerate(coded):
        G = len(levels)
        point = _rates(weighted_sums[i], n_bins)
        point["count"] = point_sums[i][:, _N]  # group sizes are row counts, weighted or not
        eligible = point["count"] >= min_group_size
        table = pd.DataFrame({"group": levels, **{m: v for m, v in point.items()}})
        table["count"] = table["count"].astype(int)
        table.insert(2, "eligible", eligible)
        if w is not None:
            table.insert(2, "weight", weighted_sums[i][:, _N])
        table["roc_auc"] = (
            _group_aucs(y_sorted, p_sorted, codes[by_score], G)
            if w is None
            else [_auc(y[m], p[m], w[m]) for m in (codes == g for g in range(G))]
        )
        pos = point_sums[i][:, _P]
        support = _support(point["count"], pos, eligible, min_events)
        ref = reference_index(levels, point["count"], eligible, (references or {}).get(name))
        measures = {m: [float(v), np.nan, np.nan] for m, v in _measures(point, eligible, support, ref).items()}
        widest = _measures(point, eligible, support)  # the widest pair of groups, shown beside when it differs
        if eligible.sum() < 2:
            measures = {m: [np.nan, np.nan, np.nan] for m in measures}
        elif boot is not None:
            rates = _rates(boot[i], n_bins)
            alpha = (1 - confidence) / 2
            with quiet_nan():
                for m, values in _measures(rates, eligible, support, ref).items():
                    measures[m][1:] = bias_corrected_interval(measures[m][0], values, confidence)
                    both = [np.nan, np.nan]
                    if m == "disparate_impact_ratio" and np.isfinite(measures[m][0]):
                        both = simultaneous_ratio_interval(point, rates, eligible, confidence)
                    elif ref is not None and m in _PAIR_KEYS and np.isfinite(measures[m][0]):
                        both = simultaneous_gap_interval(point, rates, m, eligible, support, ref, confidence)
                    if np.isfinite(both).all():  # else (a rate of 0 in a ratio, too few replicates) the plain one
                        measures[m][1:] = both
                for key in ("selection_rate", "tpr", "fpr"):
                    lo, hi = np.nanquantile(rates[key], [alpha, 1 - alpha], axis=0)
                    table[f"{key}_low"], table[f"{key}_high"] = lo, hi
        who = _who(point, eligible, levels, min_group_size, support, pos, min_events, ref)
        mframe = pd.DataFrame(
            [(m, *v, MEASURES[m][0], MEASURES[m][1], *who[m], float(widest[m])) for m, v in measures.items()],
            columns=["measure", "value", "ci_low", "ci_high", "kind", "definition", "rate", "disadvantaged",
                     "disadvantaged_value", "advantaged", "advantaged_value", "not_assessable", "left_out",
                     "widest_pair", "widest_value"],
        )  # fmt: skip
        mframe.insert(2, "reference", None if ref is None else str(levels[ref]))
        overall = {k: float(v[0]) for k, v in _rates(weighted_sums[i].sum(axis=0)[None, :], n_bins).items()}
        overall["count"] = float(len(y))
        overall["roc_auc"] = overall_auc
        out.append(GroupFairness(name, table, mframe, [str(g) for g in levels[~eligible]], n_bootstrap, overall))
    return out


def _point_sums(y, p, coded, threshold: float, n_bins: int, favourable_positive: bool, w):
    """Per grouping, the per-group sums of :func:`_row_stats` as row counts (group sizes, events) and weighted by
    ``w`` (the same list when ``w`` is None), block by block: memory bounded by the block."""
    k = 5 + 2 * n_bins
    point_sums = [np.zeros((len(levels), k)) for _, levels, _ in coded]
    weighted_sums = [np.zeros((len(levels), k)) for _, levels, _ in coded] if w is not None else point_sums
    step = BOOTSTRAP_BLOCK * 8
    for s in range(0, len(y), step):
        cells = _row_cells(y[s : s + step], p[s : s + step], threshold, n_bins, favourable_positive=favourable_positive)
        for i, (_, levels, codes) in enumerate(coded):
            point_sums[i] += _cell_sums(cells, codes[s : s + step], len(levels), n_bins)
            if w is not None:
                weighted_sums[i] += _cell_sums(cells, codes[s : s + step], len(levels), n_bins, w[s : s + step])
    return point_sums, weighted_sums


def _who(
    point: dict,
    eligible: np.ndarray,
    levels: np.ndarray,
    min_group_size: int,
    support: dict[str, np.ndarray],
    pos: np.ndarray,
    min_events: int,
    ref: int | None = None,
) -> dict[str, tuple]:
    """Per measure: the per-group rate behind it, the disadvantaged and advantaged groups with their rates (the pair
    the measure compares: a group and the reference group ``ref``, or the widest pair without one; for the
    disparate impact ratio, the least and the most selected), why it cannot be assessed (None when it can), the
    groups left out for too few events (None when none were), and the widest pair ("A vs B")."""
    counts = point["count"]
    events = {"pos": pos, "neg": counts - pos}
    out = {}
    small = [f"'{g}' ({int(c)} rows)" for g, c in zip(levels, counts, strict=True) if c < min_group_size]
    for m in MEASURES:
        if eligible.sum() < 2:
            why = f"only {int(eligible.sum())} group(s) have at least min_group_size {min_group_size} rows" + (
                f"; smaller: {', '.join(small[:4])}" if small else ""
            )
            out[m] = (None, None, np.nan, None, np.nan, why, None, None)
            continue
        keys = ("tpr", "fpr") if m == "equalized_odds_difference" else (_DRIVER[m][0],)
        left_out, short = [], None
        for key in keys:
            if key not in support:
                continue
            count_key, what = _EVENTS[key]
            lacking = eligible & ~support[key]
            left_out += [f"'{g}' ({int(n)} {what})" for g, n, x in
                         zip(levels, events[count_key], lacking, strict=True) if x]  # fmt: skip
            if support[key].sum() < 2 and short is None:
                short = (
                    f"only {int(support[key].sum())} group(s) have at least fairness.min_events {min_events} {what} "
                    f"(for {key}); fewer: {', '.join(left_out[:4])}"
                )
        use_ref = ref is not None and m != "disparate_impact_ratio"
        lacking_ref = [k for k in keys if use_ref and not support.get(k, eligible)[ref]]  # only tpr, fpr can lack
        if lacking_ref:
            what = _EVENTS[lacking_ref[0]][1]
            short = f"the reference group '{levels[ref]}' has too few {what} (fairness.min_events {min_events})"
        if short:
            out[m] = (None, None, np.nan, None, np.nan, short, None, None)
            continue
        if m == "equalized_odds_difference":  # the larger of the two gaps decides
            gaps = {k: _gap(np.where(support[k], point[k], np.nan), ref if use_ref else None) for k in ("tpr", "fpr")}
            key, low_is_bad = ("tpr" if gaps["tpr"] >= gaps["fpr"] else "fpr"), True
        else:
            key, low_is_bad = _DRIVER[m]
        v = np.where(support.get(key, eligible), point[key], np.nan)
        undefined = [str(g) for g, ok, x in zip(levels, support.get(key, eligible), v, strict=True)
                     if ok and not np.isfinite(x)]  # fmt: skip
        if not np.isfinite(v).any() or undefined:
            need = {"tpr": "the favourable true outcome", "fpr": "the unfavourable true outcome"}.get(key, "rows")
            why = f"{key} is undefined in group(s) {undefined[:4]} (no rows with {need})"
            out[m] = (key, None, np.nan, None, np.nan, why, None, None)
            continue
        lo, hi = int(np.nanargmin(v)), int(np.nanargmax(v))
        widest = f"{levels[lo if low_is_bad else hi]} vs {levels[hi if low_is_bad else lo]}"
        if use_ref:  # the group farthest from the reference, and which of the two fares worse
            g = int(np.nanargmax(np.abs(v - v[ref])))
            worse = (v[g] < v[ref]) if low_is_bad else (v[g] > v[ref])
            bad, good = (g, ref) if worse else (ref, g)
        else:
            bad, good = (lo, hi) if low_is_bad else (hi, lo)
        pair = f"{levels[bad]} vs {levels[good]}"
        out[m] = (key, str(levels[bad]), float(v[bad]), str(levels[good]), float(v[good]), None, left_out or None,
                  None if widest == pair else widest)  # fmt: skip
    return out


def _gap(v: np.ndarray, ref: int | None) -> float:
    """The largest distance from group ``ref``'s value, or (None) the widest spread; -1 when nothing is defined."""
    if not np.isfinite(v).any():
        return -1.0
    return float(np.nanmax(np.abs(v - v[ref]))) if ref is not None else float(np.nanmax(v) - np.nanmin(v))


def paired_measure_changes(
    y: np.ndarray,
    before: tuple[np.ndarray, float],
    after: tuple[np.ndarray, float],
    groupings: dict[str, np.ndarray],
    *,
    min_group_size: int,
    n_replicates: int,
    seed: int,
    favourable_positive: bool = True,
    min_events: int = 10,
    references: dict[str, str] | None = None,
    sample_weight: np.ndarray | None = None,
) -> dict[tuple[str, str], tuple[float, float]]:
    """The 95% interval of each headline measure's change between two runs that scored the same rows: ``before`` and
    ``after`` are (scores, threshold). A paired bootstrap: each replicate weights the same rows in both runs (the same
    ``seed``), so the noise of a difference is the noise of the difference, not of two separate samples. Keys are
    (grouping, measure); a change with fewer than 10 defined replicates is left out. With ``sample_weight`` the rates
    are weighted as :func:`group_fairness_many` weights them (group sizes and events stay row counts)."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for name, labels in groupings.items():
        levels, codes = encode_groups(labels)
        count = np.bincount(codes, minlength=len(levels))
        eligible = count >= min_group_size
        fav = np.asarray(y).astype(bool) if favourable_positive else ~np.asarray(y).astype(bool)
        support = _support(count, np.bincount(codes, weights=fav, minlength=len(levels)), eligible, min_events)
        ref = reference_index(levels, count, eligible, (references or {}).get(name))
        reps = []
        for p, thr in (before, after):
            sums = bootstrap_sums(
                y, p, [codes], [len(levels)], threshold=thr, n_bins=10, n_replicates=n_replicates, seed=seed,
                favourable_positive=favourable_positive, sample_weight=sample_weight,
            )[0]  # fmt: skip
            with np.errstate(all="ignore"):
                reps.append(_measures(_rates(sums, 10), eligible, support, ref))
        for m in reps[0]:
            lo, hi = percentile_interval(reps[1][m] - reps[0][m], 0.025)
            if np.isfinite(lo):
                out[(name, m)] = (lo, hi)
    return out


_PAIR_KEYS = {  # the per-group rates each difference from the reference group is the largest of
    "demographic_parity_difference": ("selection_rate",),
    "equalized_odds_difference": ("tpr", "fpr"),
    "equal_opportunity_difference": ("tpr",),
    "calibration_gap": ("ece",),
}


def simultaneous_gap_interval(
    point: dict[str, np.ndarray],
    boot: dict[str, np.ndarray],
    measure: str,
    eligible: np.ndarray,
    support: dict[str, np.ndarray],
    ref: int,
    confidence: float,
) -> list[float]:
    """The interval of a difference measure (the largest distance of any group's rate from the reference group's)
    that holds for every pair at once.

    The measure is a maximum over the K pairs it compares (K groups besides the reference, times two rates for
    equalized odds), and a maximum of noisy distances is biased upward: one percentile interval of it put the
    intersections of two independent, fair groupings above a 0.1 limit in a few percent of simulated audits
    (``bench/simulate.py``). Here each pair's difference gets its own interval, centred on its bias-corrected
    estimate (:func:`bias_corrected_interval`'s correction) with the bootstrap standard error and the normal quantile
    at the Bonferroni level ``(1 - confidence) / K``; the intervals of the distances follow, and the measure's
    interval runs from the largest lower bound to the largest upper bound. When every pair's interval holds (at
    least ``confidence`` of the time), the measure's does too, so a verdict that the whole interval is beyond a limit
    is a test at level ``(1 - confidence) / 2`` however many groups are compared.

    >>> pt = {"selection_rate": np.array([0.5, 0.3])}
    >>> bt = {"selection_rate": np.array([[0.5, 0.3], [0.52, 0.28], [0.48, 0.32]] * 10)}
    >>> ok = np.array([True, True])
    >>> [round(v, 3) for v in simultaneous_gap_interval(pt, bt, "demographic_parity_difference", ok, {}, 0, 0.95)]
    [0.135, 0.265]
    """
    from scipy.stats import norm

    lows, highs = [], []
    pairs = []
    for key in _PAIR_KEYS[measure]:
        mask = support.get(key, eligible)
        pairs += [(key, g) for g in np.flatnonzero(mask) if g != ref]
    if not pairs:
        return [float("nan"), float("nan")]
    z = float(norm.ppf(1 - (1 - confidence) / (2 * len(pairs))))
    for key, g in pairs:
        d = float(point[key][g] - point[key][ref])
        reps = boot[key][..., g] - boot[key][..., ref]
        reps = reps[np.isfinite(reps)]
        if len(reps) < 10 or not np.isfinite(d):
            return [float("nan"), float("nan")]
        centre, half = d - (reps.mean() - d), z * reps.std(ddof=1)
        lo, hi = centre - half, centre + half
        lows.append(0.0 if lo <= 0 <= hi else min(abs(lo), abs(hi)))
        highs.append(max(abs(lo), abs(hi)))
    return [float(np.clip(max(lows), 0.0, 1.0)), float(np.clip(max(highs), 0.0, 1.0))]


def calibration_gap_null_p(
    p: np.ndarray,
    codes: np.ndarray,
    eligible: np.ndarray,
    ref: int,
    observed: float,
    *,
    n_bins: int = 10,
    n_sim: int = 200,
    seed: int = 0,
    favourable_positive: bool = True,
    sample_weight: np.ndarray | None = None,
) -> float:
    """How often a perfectly calibrated model gives a calibration gap of at least ``observed`` on these rows (each
    group's ECE weighted by ``sample_weight`` when given, as the measure's was): labels
    drawn from the scores themselves (``y ~ Bernoulli(p)``), ``n_sim`` times, each group's expected calibration error
    and the largest distance from the reference group's recomputed (a parametric bootstrap under calibration).

    The ECE of a small group is mostly noise (93 rows of a perfectly calibrated model: median 0.076, 95th percentile
    0.112), and a bootstrap interval of a gap between such noise does not know it: simulated null audits failed the
    calibration gap in 4 of 30 with groups of 30 rows. A gap that calibration alone reaches this often is not
    evidence of a difference in calibration.

    >>> rng = np.random.default_rng(0); p = rng.uniform(size=400); codes = np.repeat([0, 1], 200)
    >>> calibration_gap_null_p(p, codes, np.array([True, True]), 0, 0.01) > 0.5
    True
    """
    p = np.asarray(p, dtype=np.float64)
    # the score bins and the favourable class's probability exactly as the measure's ECE has them
    _, b, q = _row_cells(np.zeros(len(p), dtype=bool), p, 0.5, n_bins, favourable_positive=favourable_positive)
    G = int(codes.max()) + 1 if len(codes) else 0
    cell = codes.astype(np.int64) * n_bins + b
    w = np.ones(len(p)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    psum = np.bincount(cell, weights=q * w, minlength=G * n_bins).reshape(G, n_bins)
    n = np.bincount(codes, weights=w, minlength=G).astype(np.float64)
    use = np.flatnonzero(eligible)
    use = use[use != ref]
    if not len(use):
        return float("nan")
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_sim):
        y = rng.uniform(size=len(q)) < q
        ysum = np.bincount(cell, weights=y * w, minlength=G * n_bins).reshape(G, n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            ece = np.abs(ysum - psum).sum(axis=1) / n
        hits += np.max(np.abs(ece[use] - ece[ref])) >= observed - 1e-12
    return float((hits + 1) / (n_sim + 1))


def simultaneous_ratio_interval(
    point: dict[str, np.ndarray], boot: dict[str, np.ndarray], eligible: np.ndarray, confidence: float
) -> list[float]:
    """The interval of the disparate impact ratio (the lowest selection rate over the highest) that holds for every
    pair of groups at once, as :func:`simultaneous_gap_interval` does for the differences: each of the K pairs' log
    ratio gets a bias-corrected interval with the bootstrap standard error at the Bonferroni level, each pair's
    ratio (the smaller rate over the larger) follows, and the measure's interval runs from the smallest lower bound
    to the smallest upper bound. Four fair groups of 50 rows give a ratio under 0.8 often enough that one percentile
    interval put it wholly below 0.8 in a simulated audit; this interval does not, beyond its level.

    >>> pt = {"selection_rate": np.array([0.5, 0.25])}
    >>> bt = {"selection_rate": np.array([[0.5, 0.25], [0.55, 0.25], [0.45, 0.25]] * 10)}
    >>> [round(v, 3) for v in simultaneous_ratio_interval(pt, bt, np.array([True, True]), 0.95)]
    [0.423, 0.587]
    """
    from scipy.stats import norm

    groups = np.flatnonzero(eligible)
    pairs = [(a, b) for i, a in enumerate(groups) for b in groups[i + 1 :]]
    if not pairs:
        return [float("nan"), float("nan")]
    z = float(norm.ppf(1 - (1 - confidence) / (2 * len(pairs))))
    sel, reps_all = point["selection_rate"], boot["selection_rate"]
    lows, highs = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for a, b in pairs:
            d = float(np.log(sel[a]) - np.log(sel[b]))
            reps = np.log(reps_all[..., a]) - np.log(reps_all[..., b])
            reps = reps[np.isfinite(reps)]
            if len(reps) < 10 or not np.isfinite(d):
                return [float("nan"), float("nan")]
            centre, half = d - (reps.mean() - d), z * reps.std(ddof=1)
            lo, hi = np.exp(centre - half), np.exp(centre + half)  # the ratio a / b
            if lo <= 1 <= hi:
                lows.append(min(lo, 1 / hi))
                highs.append(1.0)
            else:
                lows.append(min(lo, 1 / hi) if hi < 1 else 1 / hi)
                highs.append(hi if hi < 1 else 1 / lo)
    return [float(np.clip(min(lows), 0.0, 1.0)), float(np.clip(min(highs), 0.0, 1.0))]


def bias_corrected_interval(point: float, replicates: np.ndarray, confidence: float) -> list[float]:
    """Percentile bootstrap interval shifted by the bootstrap estimate of bias, ``mean(replicates) - point``.

    The headline measures are maxima and minima over groups (the largest gap, the lowest ratio), which resampling
    biases: noise widens every gap, so the replicates of a calibration gap can all lie above the point estimate and a
    plain percentile interval misses it (seen on real data: point 0.075, interval [0.082, 0.168]). Shifting the
    percentile interval by the estimated bias centres it on the point estimate's scale; it contains the estimate
    whenever the replicates' mean lies inside their own central interval. Clipped to [0, 1], the range of every
    measure. NaN bounds when fewer than 10 replicates are defined.

    Examples
    --------
    >>> [round(b, 4) for b in bias_corrected_interval(0.075, np.linspace(0.082, 0.168, 201), 0.95)]
    [0.0341, 0.1158]
    """
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if len(r) < 10 or not np.isfinite(point):
        return [float("nan"), float("nan")]
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(r, [alpha, 1 - alpha])
    bias = r.mean() - point
    return [float(np.clip(lo - bias, 0.0, 1.0)), float(np.clip(hi - bias, 0.0, 1.0))]


def _group_aucs(y_sorted: np.ndarray, p_sorted: np.ndarray, codes: np.ndarray, n_groups: int) -> list[float]:
    """Each group's ROC AUC (NaN without both classes) from rows sorted by score: a stable split by group keeps every
    group's scores sorted, so nothing is sorted again; the same values as :func:`_auc` on each group's rows."""
    split = np.argsort(codes.astype(np.min_scalar_type(max(n_groups - 1, 0))), kind="stable")
    bounds = np.searchsorted(codes[split], np.arange(n_groups + 1))
    out = []
    for g in range(n_groups):
        rows = split[bounds[g] : bounds[g + 1]]
        yg, pg = y_sorted[rows], p_sorted[rows]
        out.append(roc_auc_sorted(pg[yg], pg[~yg]))
    return out


def _auc(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """ROC AUC (weighted by ``w`` when given); NaN without both classes."""
    if not 0 < y.sum() < len(y):
        return np.nan
    return roc_auc_fast(y, p) if w is None else float(weighted_auc(y, p, w[:, None])[0])


def verdict(value: float, low: float, high: float, threshold: float, kind: str) -> str:
    """ "pass", "fail" or "inconclusive" (the interval straddles the threshold).

    ``kind="max"``: the measure must not exceed ``threshold``; ``kind="min"``: it must not fall below it. Without an
    interval (NaN bounds) the point value decides.

    Examples
    --------
    >>> verdict(0.05, 0.02, 0.08, 0.1, "max"), verdict(0.12, 0.11, 0.14, 0.1, "max"), verdict(0.09, 0.05, 0.13, 0.1, "max")
    ('pass', 'fail', 'inconclusive')
    """
    if np.isnan(value):
        return "inconclusive"
    if np.isnan(low) or np.isnan(high):
        low = high = value
    if kind == "max":
        return "pass" if high <= threshold else "fail" if low > threshold else "inconclusive"
    return "pass" if low >= threshold else "fail" if high < threshold else "inconclusive"


def cramers_v(a: np.ndarray, b: np.ndarray) -> float:
    """Cramér's V between two categorical arrays (0: independent, 1: one determines the other); biased upward for
    many levels and few rows, see :func:`association`.

    Examples
    --------
    >>> round(cramers_v(np.array(list("aabb") * 10), np.array(list("xxyy") * 10)), 6)
    1.0
    """
    table = pd.crosstab(pd.Series(a, dtype=str), pd.Series(b, dtype=str)).to_numpy()
    if min(table.shape) < 2:
        return 0.0
    chi2 = chi2_contingency(table, correction=False)[0]
    return float(np.sqrt(chi2 / (table.sum() * (min(table.shape) - 1))))


@dataclass(frozen=True)
class Association:
    """Association of two categorical arrays: ``v`` bias-corrected Cramér's V (Bergsma 2013), ``v_raw`` the plain
    one, ``p_value`` from a permutation null (the share of ``n_permutations`` shuffles of one array whose chi-square
    reaches the observed one, (1 + count) / (1 + n_permutations))."""

    v: float
    v_raw: float
    p_value: float
    n_permutations: int


def _chi2_from_codes(a: np.ndarray, b: np.ndarray, ka: int, kb: int) -> np.ndarray:
    """Pearson chi-square of the contingency table of codes ``a`` (n,) and ``b`` (..., n), one per leading index."""
    b2 = np.atleast_2d(b)
    reps = b2.shape[0]
    n = a.shape[0]
    cells = (np.arange(reps)[:, None] * (ka * kb) + a[None, :] * kb + b2).reshape(-1)
    obs = np.bincount(cells, minlength=reps * ka * kb).reshape(reps, ka, kb).astype(np.float64)
    rows = np.bincount(a, minlength=ka).astype(np.float64)
    cols = obs.sum(axis=1)  # (reps, kb): the same for every shuffle of b, kept general
    expected = rows[None, :, None] * cols[:, None, :] / n
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(expected > 0, obs**2 / expected, 0.0)
    return terms.sum(axis=(1, 2)) - n


STOP_HITS = 10  # permutation tests stop after this many shuffles reach the observed statistic


def association(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_permutations: int = 199,
    random_state: int | np.random.Generator | None = None,
    permutations: np.ndarray | None = None,
) -> Association:
    """Bias-corrected Cramér's V of two categorical arrays, and its permutation p-value.

    The plain V of a many-level feature against an unrelated sensitive feature is far from 0 (measured: a 220-level
    categorical against a shuffled sensitive feature, 0.34-0.44); the corrected V subtracts the chi-square expected
    under independence (Bergsma, 2013, J. Korean Stat. Soc. 42) and the permutation test says whether the
    association beats chance at all. ``permutations`` (shape (n_permutations, n), row permutations of ``b``) lets
    several features be tested against the same shuffles of one sensitive column.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> noise = association(rng.integers(0, 200, 2000), rng.integers(0, 2, 2000), random_state=0)
    >>> bool(noise.v < 0.1 < noise.v_raw and noise.p_value > 0.01)
    True
    >>> x = rng.integers(0, 2, 2000)
    >>> strong = association(x, x, random_state=0)
    >>> round(strong.v, 3), strong.p_value
    (1.0, 0.005)
    """
    la, ca = encode_groups(np.asarray(a))
    lb, cb = encode_groups(np.asarray(b))
    ka, kb, n = len(la), len(lb), len(ca)
    if min(ka, kb) < 2 or n < 2:
        return Association(0.0, 0.0, 1.0, 0)
    chi2 = float(_chi2_from_codes(ca, cb, ka, kb)[0])
    phi2 = max(chi2, 0.0) / n
    v_raw = float(np.sqrt(phi2 / (min(ka, kb) - 1)))
    phi2c = max(0.0, phi2 - (ka - 1) * (kb - 1) / (n - 1))
    kac, kbc = ka - (ka - 1) ** 2 / (n - 1), kb - (kb - 1) ** 2 / (n - 1)
    denom = min(kac - 1, kbc - 1)
    v = float(np.sqrt(phi2c / denom)) if denom > 0 else 0.0
    p = 1.0
    if permutations is None and n_permutations > 0:
        rng = as_generator(random_state)
        permutations = np.stack([rng.permutation(n) for _ in range(n_permutations)])
    if permutations is not None and len(permutations):
        # sequential Monte Carlo p-value (Besag & Clifford, 1991): stop once STOP_HITS shuffles reach the observed
        # statistic (p is then clearly large, estimated as hits / shuffles drawn); else (1 + hits) / (1 + shuffles)
        hits = drawn = 0
        step = min(max(1, (1 << 22) // n), 20)
        for s in range(0, len(permutations), step):
            shuffled = cb[permutations[s : s + step]]
            hits += int((_chi2_from_codes(ca, shuffled, ka, kb) >= chi2 - 1e-9 * max(chi2, 1.0)).sum())
            drawn += len(shuffled)
            if hits >= STOP_HITS:
                break
        n_permutations = drawn
        p = hits / drawn if hits >= STOP_HITS else (1 + hits) / (1 + drawn)
    return Association(min(v, 1.0), min(v_raw, 1.0), p, n_permutations)


def groupings(frame: pd.DataFrame, cfg: AuditConfig, sensitive: list[str]) -> dict[str, np.ndarray]:
    """Group labels per sensitive feature and per configured intersection.

    Value labels (``dataset.value_labels``) name the groups; a column declared categorical (or labelled, or derived)
    is grouped by its levels, never binned; numeric ones are binned by ``fairness.bins`` or quantiles (see
    :func:`audit.fairness.group_labels`).
    """
    from audit.schema import category_strings

    fc = cfg.fairness
    ds = cfg.dataset
    out = {}
    for s in sensitive:
        col = frame[s]
        categorical = s in ds.features.categorical or s in ds.value_labels or s in fc.derived
        if s in ds.value_labels:  # raw codes (a population) and labels (the loaded splits) give the same groups
            col = pd.Series(category_strings(col, labels=dict(ds.value_labels[s])), index=col.index, dtype=object)
        out[s] = group_labels(col, edges=fc.bins.get(s), quantiles=fc.quantiles, categorical=categorical)
    for combo in fc.intersections:
        levels, codes = encode_groups(out[combo[0]])
        for c in combo[1:]:  # combine integer codes, build each distinct label once
            lv_c, codes_c = encode_groups(out[c])
            pairs, codes = np.unique(codes * len(lv_c) + codes_c, return_inverse=True)
            levels = np.array([f"{levels[q // len(lv_c)]} & {lv_c[q % len(lv_c)]}" for q in pairs], dtype=object)
        out[" x ".join(combo)] = levels[codes.reshape(-1)]
    return out
