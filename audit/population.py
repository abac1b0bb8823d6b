"""Audit a large population file in bounded memory, in this process or on a Dask cluster.

A population is a Parquet file (``dataset.population``) read as **partitions**: runs of consecutive row groups of
about ``compute.chunk_rows`` rows. The partition plan depends only on the file and ``chunk_rows``, and every
per-partition function here is deterministic given the partition (its randomness is seeded by the partition's
index), so the local and the Dask backend (:mod:`audit.compute`) compute the same partials and combine them in the
same order: their numbers are identical.

What stays in memory for the whole population is small and per row: the label (1 byte), the score (8 bytes) and
the raw sensitive columns (plus, while permutation importance runs, the scores of the features of one pass, capped
by ``max_bytes``). Feature columns are only ever held one partition at a time.

Per-partition work:

- :func:`score_population`: scores, labels and sensitive columns (performance and fairness are computed from them,
  exactly as on an in-memory split);
- :func:`permutation_importance_population`: per feature and repeat, the partition's scores with the feature
  permuted within the partition;
- :func:`partial_dependence_population`: per grid value, the partition's sum of scores;
- :func:`reason_codes_population`: for every row scored below the threshold, its top-k adverse features (Shapley
  values with a small background and few feature orders), written to Parquet as the partitions come back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.data import DataError, add_derived
from audit.files import verified_digest, write_parquet
from audit.metrics import class_rows, make_scorer, roc_auc_sorted, sorted_classes
from audit.schema import Schema, category_strings


@dataclass(frozen=True)
class Partition:
    """Consecutive row groups ``row_groups`` of the file: global rows ``start`` to ``start + rows``."""

    index: int
    row_groups: tuple[int, ...]
    start: int
    rows: int


@dataclass(frozen=True)
class Population:
    """A Parquet population and how to turn its rows into model input, labels and sensitive columns."""

    path: str
    sha256: str
    partitions: tuple[Partition, ...]
    rows: int
    schema: Schema
    label_map: tuple[tuple[str, str], ...]
    derived: tuple[tuple[str, str, str], ...]  # (name, source, regex)
    columns: tuple[str, ...]  # read from the file
    labelled: bool = True  # has the target and sensitive columns
    filter: str | None = None  # dataset.filter, applied to every partition as it is read
    kept: tuple[int, ...] | None = None  # rows per partition after the filter (known once scored)
    has_labels: bool = True  # False: the file has no target column (label-needing sections say "no labels")
    dictionary: tuple[str, ...] = ()  # text columns read as pandas categoricals (see read)

    def read(self, part: Partition, extra: tuple[str, ...] = ()) -> pd.DataFrame:
        """The partition's rows that pass ``dataset.filter`` (only the needed columns, plus ``extra``).

        Text columns that are only categorical features or the target (:attr:`dictionary`) come as pandas
        categoricals, decoded from the file's dictionary pages without building a string per row; their level codes
        and labels are the same as of the text (tested).
        """
        import pyarrow.parquet as pq

        cols = list(self.columns) + [c for c in extra if c not in self.columns]
        dictionary = [c for c in self.dictionary if c not in extra]
        pf = pq.ParquetFile(self.path, read_dictionary=dictionary or None)
        # one array per column (split_blocks), as Arrow decoded it: no copy into a two-dimensional block per dtype
        frame = pf.read_row_groups(list(part.row_groups), columns=cols).to_pandas(split_blocks=True)
        if self.filter:
            from audit.expr import parse_filter

            frame = frame[parse_filter(self.filter).mask(frame)].reset_index(drop=True)
        return frame

    @property
    def n_rows(self) -> int:
        """Rows audited: all rows, or those that pass the filter (once scored)."""
        return sum(self.kept) if self.kept is not None else self.rows

    def offsets(self) -> list[int]:
        """Each partition's first row among the audited rows (file order)."""
        sizes = self.kept if self.kept is not None else [p.rows for p in self.partitions]
        return [int(v) for v in np.concatenate([[0], np.cumsum(sizes)[:-1]])] if sizes else []

    def outcomes(self, frame: pd.DataFrame) -> tuple:
        """0/1 labels, the sensitive columns and the label problems (see :meth:`labels`) of a partition; ``(None,
        None, {})`` when unlabelled, labels None when the file has no target column."""
        if not self.labelled:
            return None, None, {}
        if self.derived:
            add_derived(frame, {n: _Derived(src, rx) for n, src, rx in self.derived})
        y, problems = self.labels(frame) if self.has_labels else (None, {})
        sens = frame[list(self.schema.sensitive)].reset_index(drop=True)
        return y, sens, problems

    def labels(self, frame: pd.DataFrame) -> tuple[np.ndarray, dict[str, int]]:
        """0/1 labels, and the problems found: missing labels and labels that are neither class (with examples)."""
        raw = frame[self.schema.target]
        codes, uniques = pd.factorize(raw)  # the label text is worked out once per distinct value (missing: -1)
        texts = self._label_texts(pd.Series(uniques)) + self._label_texts(pd.Series([None], dtype=object))
        missing = codes < 0
        positive, negative = self.schema.positive_label, self.schema.negative_label
        y = (np.asarray(texts, dtype=object) == positive).astype(np.int8)[codes]  # code -1: the missing value's text
        problems = {"missing": int(missing.sum())}
        if not negative.startswith("not "):  # two classes: anything else is an unknown label
            counts = np.bincount(codes[~missing], minlength=len(uniques))
            unknown: dict[str, int] = {}
            for text, count in zip(texts, counts, strict=False):  # first-seen order, as the rows have them
                if count and text not in (positive, negative):
                    unknown[text] = unknown.get(text, 0) + int(count)
            for text in list(unknown)[:3]:
                problems[f"unknown {text!r}"] = unknown[text]
        return y, problems

    def _label_texts(self, values: pd.Series) -> list[str]:
        """Each value's label text: as :func:`category_strings` writes it, stripped, then ``dataset.label_map``."""
        labels = pd.Series(category_strings(values), dtype=object).str.strip()
        if self.label_map:
            labels = labels.replace(dict(self.label_map))
        return labels.tolist()

    def unseen(self, categorical: np.ndarray) -> dict[str, int]:
        """Rows per categorical feature whose level the model never saw (scored through its unknown slot), from the
        level codes of the categorical features (schema order, as :meth:`Predictor.predict_frame` gives them)."""
        out = {}
        for k, f in enumerate(f for f in self.schema.features if f.is_categorical):
            n = int(np.count_nonzero(categorical[:, k] == len(f.levels)))
            if n:
                out[f.name] = n
        return out


@dataclass(frozen=True)
class _Derived:
    source: str
    regex: str


def _dictionary_columns(arrow_schema, schema: Schema, others: set, target: str | None) -> tuple[str, ...]:
    """Text columns that are nothing but categorical features or the labels: read as categoricals (the sensitive,
    derived and filter columns in ``others`` keep their text: groups and filters read it)."""
    import pyarrow as pa

    types = {f.name: f.type for f in arrow_schema}
    as_categories = [f.name for f in schema.features if f.is_categorical] + ([target] if target else [])
    return tuple(
        c
        for c in as_categories
        if c not in others and (pa.types.is_string(types[c]) or pa.types.is_large_string(types[c]))
    )


def _partitions(md, chunk: int) -> tuple[list[Partition], int]:
    """Consecutive row groups of at least ``chunk`` rows a partition (the last may be smaller); and the row count."""
    parts: list[Partition] = []
    groups: list[int] = []
    start = rows = 0
    for rg in range(md.num_row_groups):
        groups.append(rg)
        rows += md.row_group(rg).num_rows
        if rows >= chunk or rg == md.num_row_groups - 1:
            parts.append(Partition(len(parts), tuple(groups), start, rows))
            start += rows
            groups, rows = [], 0
    return parts, start


def open_population(
    cfg: AuditConfig,
    schema: Schema,
    *,
    path: str | Path | None = None,
    key: str = "dataset.population",
    labelled: bool = True,
) -> Population:
    """Check a population file (exists, checksum, columns) and plan its partitions.

    Parameters
    ----------
    cfg : AuditConfig
    schema : Schema
        The model's features.
    path : path-like, optional
        Another Parquet file than ``dataset.population`` (e.g. the input of ``reason-codes``); not checksummed.
    key : str
        How error messages name the file.
    labelled : bool
        Whether the target and sensitive columns are needed (an audit) or only the features (reason codes).

    Raises
    ------
    DataError
        With the key, the problem and the fix.
    """
    import pyarrow.parquet as pq

    spec = cfg.dataset.population
    if path is None:
        if spec is None:
            raise ValueError("the config has no dataset.population")
        path = cfg.resolve(spec.path, key=f"{key}.path")
        digest = verified_digest(path, spec.sha256, path_key=f"{key}.path", sha_key=f"{key}.sha256")
    else:
        path = Path(path)
        digest = verified_digest(path, None, path_key=key, sha_key=key, from_config=False)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{key}: '{path}' is not a readable Parquet file ({exc.__class__.__name__})") from None
    have = set(pf.schema_arrow.names)
    import pyarrow as pa

    nested = [f.name for f in pf.schema_arrow if pa.types.is_nested(f.type)]
    if nested:
        raise DataError(
            f"{key}: column(s) {nested[:5]} of '{path}' hold lists or structures, not single values; flatten them"
        )
    derived = cfg.fairness.derived if labelled else {}
    need = list(schema.feature_names)
    row_filter = cfg.dataset.filter if labelled else None
    if row_filter:
        from audit.expr import parse_filter

        filter_columns = list(parse_filter(row_filter).columns)
    else:
        filter_columns = []
    has_labels = cfg.dataset.target in have
    if labelled:
        if has_labels:  # a population without the target is audited without labels (see ScoredPopulation.y)
            need.append(cfg.dataset.target)
        need += [s for s in schema.sensitive if s not in derived and s not in need]
        need += [d.source for d in derived.values() if d.source not in need]
        need += [c for c in filter_columns if c not in need]
    missing = [c for c in need if c not in have]
    if missing:
        what = (
            f"the model's features, the target '{cfg.dataset.target}' and the sensitive columns"
            if labelled
            else "the model's feature columns"
        )
        raise DataError(f"{key}: '{path}' lacks column(s) {missing}; it needs {what}")
    others = {*schema.sensitive, *(d.source for d in derived.values()), *filter_columns}
    target = cfg.dataset.target if labelled and has_labels else None
    dictionary = _dictionary_columns(pf.schema_arrow, schema, others, target)
    parts, start = _partitions(pf.metadata, cfg.compute.chunk_rows)
    if start == 0:
        raise DataError(f"{key}: '{path}' has no rows")
    if cfg.dataset.max_rows is not None and start > cfg.dataset.max_rows:
        raise DataError(
            f"{key}: '{path}' has {start} rows, more than dataset.max_rows={cfg.dataset.max_rows}; "
            "sample the file or raise the cap"
        )
    return Population(
        str(path),
        digest,
        tuple(parts),
        start,
        schema,
        tuple(cfg.dataset.label_map.items()),
        tuple((n, d.source, d.regex) for n, d in derived.items()),
        tuple(need),
        labelled,
        row_filter,
        has_labels=has_labels or not labelled,
        dictionary=dictionary,
    )


# ---------------------------------------------------------------------------------------------------- scoring
@dataclass
class ScoredPopulation:
    """Labels, scores and sensitive columns of every row of a population, in file order."""

    y: np.ndarray | None  # None: the population has no labels
    proba: np.ndarray
    sensitive: pd.DataFrame
    rows: int
    partitions: int
    seconds: float
    unseen: dict[str, int]  # rows with a level never seen in training, per categorical feature
    kept: tuple[int, ...] = ()  # rows per partition (after dataset.filter)
    present: dict[str, int] | None = None  # rows with a value, per feature

    def empty_features(self) -> list[str]:
        """The features no row of the population has a value for."""
        return [name for name, n in (self.present or {}).items() if n == 0]


def _score_partition(part: Partition, *, population: Population, predictor) -> tuple:
    frame = population.read(part)
    present = {name: int(frame[name].notna().sum()) for name in population.schema.feature_names}
    proba, categorical = predictor.predict_frame(frame)
    y, sens, problems = population.outcomes(frame)
    return y, np.asarray(proba, dtype=np.float64), sens, problems, population.unseen(categorical), present


def score_population(
    population: Population, predictor, backend, *, unseen_categories: str = "unknown", progress=None
) -> ScoredPopulation:
    """Score every row, one partition at a time (see :mod:`audit.compute` for ``backend``).

    Raises
    ------
    DataError
        When labels are missing or are neither class, or (``unseen_categories="error"``) a categorical level was
        never seen in training. With ``"unknown"``, such rows are scored through the model's unknown slot and
        counted in ``ScoredPopulation.unseen``.
    """
    t0 = time.perf_counter()
    shared = backend.share(predictor)
    ys, ps, ss = [], [], []
    problems: dict[str, int] = {}
    unseen: dict[str, int] = {}
    present = dict.fromkeys(population.schema.feature_names, 0)
    results = backend.map(_score_partition, population.partitions, population=population, predictor=shared)
    if progress is not None:
        results = progress.bar(results, total=len(population.partitions), unit="partition")
    for y, p, s, bad, new, seen in results:
        for k, v in seen.items():
            present[k] += v
        ys.append(y)
        ps.append(p)
        ss.append(s)
        for k, v in bad.items():
            problems[k] = problems.get(k, 0) + v
        for k, v in new.items():
            unseen[k] = unseen.get(k, 0) + v
    problems = {k: v for k, v in problems.items() if v}
    if problems:
        what = ", ".join(f"{v} {k}" for k, v in problems.items())
        raise DataError(
            f"dataset.population: column '{population.schema.target}' has {what} label(s); the classes are "
            f"{population.schema.positive_label!r} and {population.schema.negative_label!r}: drop those rows, or map the "
            "labels with dataset.label_map"
        )
    if unseen and unseen_categories == "error":
        raise DataError(
            f"dataset.population: level(s) never seen in training in {unseen} (rows per column); set "
            "dataset.unseen_categories: unknown to score them through the model's unknown slot"
        )
    proba = np.concatenate(ps)
    y = np.concatenate(ys) if population.has_labels else None
    if len(proba) == 0:
        raise DataError(f"dataset.filter: {population.filter!r} keeps none of the population's {population.rows} rows")
    sens = pd.concat(ss, ignore_index=True)
    return ScoredPopulation(
        y, proba, sens, len(proba), len(population.partitions), round(time.perf_counter() - t0, 3), unseen,
        tuple(len(v) for v in ps), present,
    )  # fmt: skip


@dataclass
class PopulationRun:
    """A population as the audit modules see it: the file's plan and its scored rows."""

    population: Population
    scored: ScoredPopulation

    def provenance(self) -> dict:
        p = self.population
        return {
            "path": p.path,
            "sha256": p.sha256,
            "rows": p.rows,
            "partitions": len(p.partitions),
            "scoring_s": self.scored.seconds,
            "unseen_levels": self.scored.unseen,
            "labels": self.population.has_labels,
        }


# ---------------------------------------------------------------------------------------- permutation importance
REUSE_BELOW = 0.85
"""Permutation importance reuses the scores of unchanged rows when at most this share of rows moved; above it, the
whole block is scored (the same bits: scores are row-wise), as gathering the moved rows (about 35 ns a row here)
costs more than scoring the few unchanged ones (about 250 ns a row on one thread)."""

SKIP_COMPARE_ABOVE = 0.95
"""When one permutation of a unit moved more than this share of a partition's rows, the unit's other permutations
in that partition score every row without looking for unchanged ones first (they would find too few to reuse)."""


def _permute_partition(
    item: tuple[Partition, np.ndarray | None],
    *,
    population: Population,
    predictor,
    units: list[tuple[int, list[int]]],
    n_repeats: int,
    seed: int,
) -> tuple[np.ndarray, int]:
    """The partition's scores with each unit permuted, (units, repeats, rows), and the rows the model scored.

    ``item``: the partition and, for a predictor whose scores are row-wise (:attr:`Predictor.row_wise`), its rows'
    unpermuted scores: a row that a permutation leaves as it was (it drew its own value, or an equal one) keeps that
    score instead of being scored again, the same bits. A row-wise predictor also scores the permuted rows chunk by
    chunk of its batch size, each chunk copied and changed in cache (see :func:`_score_changed`).
    """
    part, base = item
    codes = population.schema.to_codes(population.read(part))
    n = len(codes)
    inputs = predictor.inputs(codes)  # the model's own inputs: rows transformed once, not once per repeat
    if base is not None and (len(base) != n or not _scores_match(predictor, inputs, base)):
        base = None  # not this predictor's scores of these rows: score every row
    row_wise = getattr(predictor, "row_wise", False)
    step = predictor.block_rows if row_wise else max(n, 1)
    buffers = [np.empty((min(step, n), *x.shape[1:]), dtype=x.dtype) for x in inputs]
    out = np.empty((len(units), n_repeats, n), dtype=np.float32)  # widened if a score is not a float32 value
    evaluated = 0
    for k, (u, columns) in enumerate(units):
        rng = np.random.default_rng([seed, u, part.index])
        where = [predictor.input_column(j) for j in columns]
        originals = [np.ascontiguousarray(inputs[a][:, c]) for a, c in where]  # compact copies of the unit's columns
        compare = base is not None
        for r in range(n_repeats):
            perm = rng.permutation(n)
            if not compare:  # the permuted values are gathered chunk by chunk, in cache
                scores = _score_changed(predictor, inputs, where, originals, buffers, rows=perm)
                evaluated += n
            else:
                permuted = [original[perm] for original in originals]
                moved = _moved_rows(permuted, originals)
                if len(moved) > REUSE_BELOW * n:  # gathering the moved rows would cost more than it saves
                    scores = _score_changed(predictor, inputs, where, permuted, buffers)
                    evaluated += n
                    # nearly every row moved (a column of mostly distinct values): the unit's other permutations
                    # will move as many, so they score every row without comparing first (the same bits)
                    compare = len(moved) <= SKIP_COMPARE_ABOVE * n
                else:
                    scores = base.copy()
                    if len(moved):
                        rows = [x[moved] for x in inputs]
                        for (a, c), values in zip(where, permuted, strict=True):
                            rows[a][:, c] = values[moved]
                        scores[moved] = predictor.predict_inputs(rows)
                    evaluated += len(moved)
            narrow = scores.astype(np.float32)  # the built-in net's scores are float32 values: half the memory
            if out.dtype == np.float32 and not np.array_equal(narrow, scores):
                wide = np.empty(out.shape)  # the scores so far, widened
                wide[:k], wide[k, :r] = out[:k], out[k, :r]
                out = wide
            out[k, r] = narrow if out.dtype == np.float32 else scores
    return out, evaluated


def _score_changed(
    predictor,
    inputs: list[np.ndarray],
    where: list,
    values: list[np.ndarray],
    buffers: list,
    *,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Scores of ``inputs`` with the columns ``where`` set to ``values`` (or to ``values[rows]``: ``rows`` a
    permutation, gathered chunk by chunk), chunk by chunk of ``len(buffers[0])`` rows: each chunk is copied into
    ``buffers`` and changed there, so the rows are read once and the column is written in cache (the inputs
    themselves are never changed). Chunks of the predictor's batch size make the same model calls as scoring the
    changed rows whole."""
    n = len(inputs[0])
    step = len(buffers[0])
    out = np.empty(n)
    for i in range(0, n, step):
        m = min(step, n - i)
        chunk = [b[:m] for b in buffers]
        for b, x in zip(chunk, inputs, strict=True):
            np.copyto(b, x[i : i + m])
        for (a, c), v in zip(where, values, strict=True):
            chunk[a][:, c] = v[i : i + m] if rows is None else v[rows[i : i + m]]
        out[i : i + m] = predictor.predict_inputs(chunk)
    return out


def _moved_rows(permuted: list[np.ndarray], originals: list[np.ndarray]) -> np.ndarray:
    """Rows whose permuted values differ from the originals in any bit (two NaNs alike are not moved; -0.0 and 0.0
    are); each array holds a column, or an embedding's columns, of one feature of the unit."""
    moved = np.zeros(len(originals[0]), dtype=bool)
    for x, y in zip(permuted, originals, strict=True):
        if x.dtype.kind == "f":
            x, y = x.view(f"u{x.itemsize}"), y.view(f"u{y.itemsize}")
        differ = x != y
        moved |= differ.any(axis=1) if differ.ndim > 1 else differ
    return np.flatnonzero(moved)


def _scores_match(predictor, inputs: list[np.ndarray], base: np.ndarray, rows: int = 256) -> bool:
    """Whether ``base`` holds the predictor's own scores of these rows (a check on the first ``rows``)."""
    head = [x[:rows] for x in inputs]
    return bool(np.array_equal(predictor.predict_inputs(head), base[:rows]))


def _gathered(results, offsets: list[int], n_units: int, n_repeats: int, n: int) -> tuple[np.ndarray, int]:
    """The permuted scores of every partition (``results`` in file order) in one (units, repeats, rows) array,
    filled partition by partition (no second copy; float32 widened to float64 if a partition needs it), and the
    rows the model scored."""
    p = None
    evaluated = 0
    for start, (scores, scored) in zip(offsets, results, strict=True):
        if p is None or (scores.dtype == np.float64 and p.dtype != np.float64):
            wide = np.empty((n_units, n_repeats, n), dtype=scores.dtype)
            if p is not None:
                wide[:, :, :start] = p[:, :, :start]
            p = wide
        p[:, :, start : start + scores.shape[-1]] = scores
        evaluated += scored
    return p, evaluated


def _on_threads(fn, jobs: list, n_threads: int) -> list:
    """``[fn(job) for job in jobs]``, on up to ``n_threads`` threads of this process."""
    threads = min(n_threads, len(jobs))
    if threads <= 1:
        return [fn(job) for job in jobs]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, jobs))


def permutation_importance_population(
    population: Population,
    predictor,
    backend,
    *,
    y: np.ndarray,
    proba: np.ndarray,
    groups: dict[str, list[str]] | None = None,
    metric: str = "roc_auc",
    n_repeats: int = 5,
    threshold: float = 0.5,
    random_state: int = 0,
    max_bytes: int = 1 << 29,
):
    """Permutation importance over the whole population, with permutations within partitions.

    Shuffling a feature within each partition (instead of across the file) keeps every task local to its
    partition; for a file whose rows are not ordered by the feature it measures the same thing. Scores come back
    per partition and are joined in file order, so the metric (any of :func:`audit.explain._common.make_scorer`)
    is computed exactly on all rows. Units are evaluated in passes over the file, as many per pass as fit in
    ``max_bytes`` of scores (``n_repeats * rows * 4`` bytes a unit: float32 when that is lossless, as for the
    built-in net, else 8).

    With a predictor whose scores are row-wise (:attr:`audit.model.adapter.Predictor.row_wise`, the built-in net), a
    row that a permutation leaves unchanged (it drew its own value or an equal one: a share of ``sum(p_level**2)``
    of the rows for a categorical feature) keeps its score from ``proba`` instead of being scored again; the numbers
    are the same bits (tested), ``rows_evaluated`` counts the rows the model did score.

    Parameters
    ----------
    y, proba : ndarray
        Labels and unpermuted scores of all rows (from :func:`score_population` with this predictor; checked on the
        first rows of each partition before any score is reused).
    random_state : int
        Seeds each partition's permutations with ``(random_state, unit, partition index)``.

    Returns
    -------
    audit.explain.permutation.PermutationImportance
    """
    from audit.explain.permutation import PermutationImportance, permutation_units

    names = population.schema.feature_names
    units = permutation_units(names, groups or {})
    score = make_scorer(metric, threshold=threshold)
    baseline = float(score(y, proba))
    shared = backend.share(predictor)
    imp = np.empty((len(units), n_repeats))
    n = population.n_rows
    offsets = population.offsets()
    per_pass = max(1, int(max_bytes // (4 * n_repeats * max(n, 1))))
    rank = metric == "roc_auc"
    split = class_rows(y) if rank else None  # the same labels for every unit and repeat: their classes found once
    sizes = np.diff([*offsets, n])
    bases = [
        proba[o : o + k] if getattr(predictor, "row_wise", False) else None for o, k in zip(offsets, sizes, strict=True)
    ]
    evaluated = 0
    for first in range(0, len(units), per_pass):
        batch = [(u, [names.index(m) for m in units[u][1]]) for u in range(first, min(first + per_pass, len(units)))]
        jobs = backend.map(
            _permute_partition, zip(population.partitions, bases, strict=True), population=population,
            predictor=shared, units=batch, n_repeats=n_repeats, seed=int(random_state),
        )  # fmt: skip
        p, scored = _gathered(jobs, offsets, len(batch), n_repeats, n)
        evaluated += scored
        # A rank metric reads the float32 scores as they are (the same order and ties as in float64, so the same
        # value); the row sorts release the GIL, so the units' scores are computed on the local threads.
        jobs = [(k, u, r) for k, (u, _) in enumerate(batch) for r in range(n_repeats)]

        def drop(job, p=p):
            k, _, r = job
            if split is not None:  # ROC AUC, as roc_auc_fast computes it
                return baseline - roc_auc_sorted(*sorted_classes(p[k, r], split))
            return baseline - score(y, p[k, r] if rank else p[k, r].astype(np.float64))

        for (_, u, r), value in zip(jobs, _on_threads(drop, jobs, getattr(backend, "n_threads", 1)), strict=True):
            imp[u, r] = value
        del p
    return PermutationImportance([u[0] for u in units], [u[1] for u in units], imp, baseline, metric, n, n + evaluated)


# ----------------------------------------------------------------------------------------- partial dependence
def _pd_partition(
    part: Partition, *, population: Population, predictor, columns: list[int], grids: list[np.ndarray], chunk_rows: int
) -> list[np.ndarray]:
    """Per-grid-value sums of the partition's scores, for each column in ``columns`` set to each value of its grid.

    The rows are taken in steps of ``chunk_rows // len(grid)``; a step's rows repeated once per grid value (grid
    value by grid value) are scored, and each grid value's scores are added left to right. A row-wise predictor
    (:attr:`audit.model.adapter.Predictor.row_wise`) scores them block by block of its batch size, each block built
    in a small buffer just before the model reads it; any other predictor gets a step's rows in one call, as before.
    The scores and sums are the same bits either way.
    """
    codes = population.schema.to_codes(population.read(part))
    inputs = predictor.inputs(codes)  # the model's own inputs: rows transformed once, not once per grid value
    n = len(codes)
    row_wise = getattr(predictor, "row_wise", False)
    sums = []
    for j, grid in zip(columns, grids, strict=True):
        acc = np.zeros(len(grid))
        step = max(1, chunk_rows // len(grid))  # rows x grid points per model call stays within chunk_rows
        a, c = predictor.input_column(j)
        rows = np.zeros((len(grid), codes.shape[1]))  # every value is transformed on its own
        rows[:, j] = grid
        values = predictor.inputs(rows)[a][:, c]  # the grid in the model's input space
        total = len(grid) * min(step, n)
        block = predictor.block_rows if row_wise else total
        # buffers reused from block to block and step to step (no fresh array per step)
        buffers = [np.empty((min(block, total), *x.shape[1:]), dtype=x.dtype) for x in inputs]
        scores = np.empty(total)
        for s in range(0, n, step):
            m = min(step, n - s)
            for f0 in range(0, len(grid) * m, len(buffers[0])):
                # flat rows f0 .. f1 of (grid value g, row i) = g * m + i, built in the buffers
                f1 = min(f0 + len(buffers[0]), len(grid) * m)
                batch = [b[: f1 - f0] for b in buffers]
                for g in range(f0 // m, (f1 - 1) // m + 1):
                    lo, hi = max(f0, g * m), min(f1, (g + 1) * m)
                    for b, x in zip(batch, inputs, strict=True):
                        b[lo - f0 : hi - f0] = x[s + lo - g * m : s + hi - g * m]
                    batch[a][lo - f0 : hi - f0, c] = values[g]
                scores[f0:f1] = predictor.predict_inputs(batch)
            acc += _sequential_sum(scores[: len(grid) * m].reshape(len(grid), m))
        sums.append(acc)
    return sums


def _sequential_sum(a: np.ndarray) -> np.ndarray:
    """Row sums added strictly left to right.

    A precaution: ``ndarray.sum`` adds pairwise in SIMD blocks, and its order is not part of numpy's contract (it
    may depend on the build and the array's memory layout); an accumulate has one fixed order, so a partition's sums
    are the same bits in any process. (Not observed to differ here; the measured difference was the thread count,
    see :func:`audit.compute.single_threaded_torch`.)
    """
    return np.add.accumulate(a, axis=1)[:, -1] if a.shape[1] else np.zeros(len(a))


def partial_dependence_population(
    population: Population, predictor, backend, *, columns: list[int], grids: list[np.ndarray], chunk_rows: int
) -> list[np.ndarray]:
    """Partial dependence of each column in ``columns`` over its grid, averaged over every row of the population.

    Each partition returns per-grid-value sums of scores; they are added in partition order and divided by the row
    count. Model evaluations: ``rows * sum(len(grid))``.
    """
    shared = backend.share(predictor)
    total = None
    for sums in backend.map(
        _pd_partition,
        population.partitions,
        population=population,
        predictor=shared,
        columns=list(columns),
        grids=[np.asarray(g, dtype=np.float64) for g in grids],
        chunk_rows=chunk_rows,
    ):
        total = sums if total is None else [a + b for a, b in zip(total, sums, strict=True)]
    return [t / population.n_rows for t in total]


# ------------------------------------------------------------------------------------------------ reason codes
def _reason_partition(
    part: Partition,
    *,
    population: Population,
    predictor,
    background: np.ndarray,
    threshold: float,
    top_k: int,
    n_permutations: int,
    seed: int,
    id_column: str | None,
) -> pd.DataFrame:
    from audit.explain.shapley import shapley_values

    frame = population.read(part, (id_column,) if id_column else ())
    ids = frame[id_column].to_numpy() if id_column else None
    codes = population.schema.to_codes(frame)
    p = np.asarray(predictor.predict_codes(codes), dtype=np.float64)
    declined = np.flatnonzero(population.schema.declined(p, threshold))
    names = population.schema.feature_names
    out = {"row": (part.start + declined).astype(np.int64)}
    if ids is not None:
        out[id_column] = ids[declined]
    out["score"] = p[declined]
    if len(declined):
        sv = shapley_values(
            predictor.predict_codes,
            codes[declined],
            background,
            feature_names=names,
            method="permutation",
            n_permutations=n_permutations,
            random_state=seed,  # the same feature orders in every partition
        ).values
    else:
        sv = np.zeros((0, len(names)))
    sign = population.schema.adverse_sign
    order = np.argsort(-sign * sv, axis=1, kind="stable")[:, :top_k]  # most adverse first
    raw = population.schema.from_codes(codes[declined]) if len(declined) else None
    for r in range(min(top_k, len(names))):
        j = order[:, r] if len(declined) else np.zeros(0, dtype=int)
        contrib = sv[np.arange(len(declined)), j]
        adverse = sign * contrib > ADVERSE_TOLERANCE
        out[f"reason_{r + 1}"] = np.where(adverse, np.asarray(names, dtype=object)[j], None)
        out[f"contribution_{r + 1}"] = np.where(adverse, contrib, np.nan)
        values = np.array([_fmt(raw.iat[i, jj]) for i, jj in enumerate(j)], dtype=object) if raw is not None else []
        out[f"value_{r + 1}"] = np.where(adverse, values, None) if len(declined) else values
    return pd.DataFrame(out)


ADVERSE_TOLERANCE = 1e-9  # a contribution within this of zero is estimation noise (a feature at the background's value)


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float | np.floating) else str(v)


@dataclass
class ReasonCodeRun:
    """What :func:`reason_codes_population` wrote."""

    output: str
    rows: int
    declined: int
    seconds: float


def reason_codes_population(
    population: Population,
    predictor,
    backend,
    *,
    background: np.ndarray,
    output: str | Path,
    threshold: float = 0.5,
    top_k: int = 4,
    n_permutations: int = 1,
    random_state: int = 0,
    id_column: str | None = None,
) -> ReasonCodeRun:
    """For every row scored below ``threshold``: its ``top_k`` adverse features, written to ``output`` (Parquet).

    Adverse features are those with the most negative Shapley values (permutation estimator with
    ``n_permutations`` antithetic pairs of feature orders, the same orders for every row, against ``background``).
    A row lists fewer than ``top_k`` reasons when fewer features push it down (by more than
    :data:`ADVERSE_TOLERANCE`). Columns: ``row`` (position in the
    input file), ``id_column`` if given, ``score``, then ``reason_i``, ``contribution_i``, ``value_i``.
    Partitions are written as they come back, in file order; the file appears only when complete.
    """
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    if id_column is not None:
        fields = pq.ParquetFile(population.path).schema_arrow
        if id_column not in fields.names:
            raise DataError(f"--id-column: '{id_column}' is not a column of '{population.path}'")
        id_type = fields.field(id_column).type
    else:
        id_type = None
    frames = backend.map(
        _reason_partition,
        population.partitions,
        population=population,
        predictor=backend.share(predictor),
        background=np.asarray(background, dtype=np.float64),
        threshold=threshold,
        top_k=top_k,
        n_permutations=n_permutations,
        seed=int(random_state),
        id_column=id_column,
    )
    declined = write_parquet(output, frames, schema=lambda frame: _reason_schema(frame, id_type))
    return ReasonCodeRun(str(output), population.rows, declined, round(time.perf_counter() - t0, 3))


def _reason_schema(frame: pd.DataFrame, id_type):
    """A fixed Arrow schema, so partitions without declined rows (all-null columns) write the same types."""
    import pyarrow as pa

    fields = []
    for c in frame.columns:
        if c == "row":
            fields.append(pa.field(c, pa.int64()))
        elif c == "score" or c.startswith("contribution_"):
            fields.append(pa.field(c, pa.float64()))
        elif c.startswith(("reason_", "value_")):
            fields.append(pa.field(c, pa.string()))
        else:
            fields.append(pa.field(c, id_type))
    return pa.schema(fields)


# ------------------------------------------------------------------------------------- drift and data quality
def _profile_partition(part: Partition, *, population: Population, reference) -> tuple[dict, int]:
    from audit.monitoring import profile

    codes = population.schema.to_codes(population.read(part))
    return profile(codes, reference), len(codes)


def profile_population(population: Population, reference, backend) -> tuple[dict, int]:
    """Counts of every population row against the training ``reference`` (:class:`audit.monitoring.Reference`),
    one partition at a time on ``backend``: what the drift and data quality sections need, in bounded memory."""
    from audit.monitoring import add_profiles

    total, rows = None, 0
    shared = backend.share(reference)
    for prof, n in backend.map(_profile_partition, population.partitions, population=population, reference=shared):
        total = add_profiles(total, prof)
        rows += n
    return total, rows
