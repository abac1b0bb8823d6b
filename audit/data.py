"""Loading a dataset described in config into one :class:`~audit.schema.Schema` plus train and test frames.

:func:`load_dataset` runs the steps a real file needs, each with its own one-line errors: read (bounded in bytes,
rows and columns while reading, see :mod:`audit.files`), header quirks (a second header row, repeated or unnamed
columns), column references of the whole config, row filter, column selection and index column, value labels,
derived sensitive columns, labels, feature types (a numeric column with stray text is refused with the offending
values and rows), the split (which depends only on the data and the seed), levels and unseen levels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.errors import DataError
from audit.files import could_be_numeric, read_file
from audit.schema import Feature, Schema, apply_value_labels, category_strings


@dataclass
class Dataset:
    """A loaded dataset: raw feature frames, 0/1 labels, the schema, and provenance.

    ``ids_test``: the ``dataset.index_col`` value of each audit row (None without one); ``tied``: groups of features
    that encode the same thing (``dataset.tied``); ``w_train`` / ``w_test``: each row's ``dataset.weight`` (None
    without one), never among the features.
    """

    schema: Schema
    X_train: pd.DataFrame
    y_train: np.ndarray
    X_test: pd.DataFrame
    y_test: np.ndarray
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256
    notes: list[str] = field(default_factory=list)
    ids_test: np.ndarray | None = None
    tied: tuple[tuple[str, ...], ...] = ()
    test_rows: np.ndarray | None = None  # each audit row's data row in its file (1-based, after the header)
    raw_columns: dict[str, tuple[pd.Series, pd.Series]] = field(default_factory=dict)
    """The columns with ``dataset.value_labels`` as the files hold them (codes, not labels), aligned with ``X_train``
    and ``X_test``: what a model from another tool was trained on (see :meth:`raw_frames`)."""
    w_train: np.ndarray | None = None
    w_test: np.ndarray | None = None

    def label_text(self, y: np.ndarray) -> np.ndarray:
        """0/1 labels as the data spell them (the positive and the negative label): what to fit a model on that the
        audit will then match to its classes (a model fitted on the 0/1 labels names its classes 0 and 1, which
        the audit cannot tell apart without ``model.output_index``).

        Examples
        --------
        >>> from audit.schema import Feature, Schema
        >>> s = Schema((Feature("x", "numeric"),), "y", ">50K", "<=50K")
        >>> Dataset(s, pd.DataFrame(), np.array([1, 0]), pd.DataFrame(), np.array([0])).label_text(np.array([1, 0]))
        array(['>50K', '<=50K'], dtype=object)
        """
        return np.where(np.asarray(y) == 1, self.schema.positive_label, self.schema.negative_label).astype(object)

    def raw_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``X_train`` and ``X_test`` with the values as the files hold them (value labels undone)."""
        if not self.raw_columns:
            return self.X_train, self.X_test
        train, test = self.X_train.copy(deep=False), self.X_test.copy(deep=False)
        for name, (tr, te) in self.raw_columns.items():
            train[name], test[name] = tr, te
        return train, test


# ---------------------------------------------------------------------------------------------------- levels


# ---------------------------------------------------------------------------------------------------- files


# ---------------------------------------------------------------------------------------------------- parquet out


# ---------------------------------------------------------------------------------------------------- steps
def add_derived(frame: pd.DataFrame, derived: dict) -> None:
    """Add the ``fairness.derived`` columns (the first group of a regex search in a source column) to ``frame`` in
    place. The regex runs in RE2 (linear time, see :func:`audit.config.compile_regex`), once per distinct value."""
    from audit.config import compile_regex

    for name, spec in derived.items():
        pattern = compile_regex(spec.regex)
        values = frame[spec.source].astype(str)
        found = {}
        for v in pd.unique(values):
            m = pattern.search(v)
            found[v] = m.group(1) if m else None
        frame[name] = values.map(found)


def apply_filter(cfg: AuditConfig, frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """The rows of ``frame`` that pass ``dataset.filter`` (all rows without one)."""
    if not cfg.dataset.filter:
        return frame
    from audit.expr import parse_filter

    try:
        mask = parse_filter(cfg.dataset.filter).mask(frame)
    except ValueError as exc:
        raise DataError(f"dataset.filter: {exc}") from None
    if not mask.any():
        raise DataError(f"dataset.filter: {cfg.dataset.filter!r} keeps none of the {len(frame)} rows of the {where}")
    return frame[mask]


def _labels(df: pd.DataFrame, cfg: AuditConfig, where: str) -> np.ndarray:
    ds = cfg.dataset
    y = df[ds.target]
    if y.isna().any():
        n = int(y.isna().sum())
        raise DataError(
            f"dataset.target: column '{ds.target}' has {n} missing value(s) in the {where} data; drop or fill them"
        )
    ys = pd.Series(category_strings(y), index=y.index).str.strip()
    if ds.label_map:
        ys = ys.replace(dict(ds.label_map))
    return ys.to_numpy(dtype=object)


def _rows_text(index: pd.Index, mask: np.ndarray, values: pd.Series, k: int = 4) -> str:
    pos = np.flatnonzero(mask)[:k]
    return ", ".join(f"{_short(values.iloc[p])} (data row {index[p]})" for p in pos)


def _short(value, limit: int = 40) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)  # -2.0, not np.float64(-2.0)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def _infer_kinds(cfg: AuditConfig, frame: pd.DataFrame, feature_cols: list[str], where: str, notes: list[str]):
    """Kind of each feature, on the whole training file; declared numerics coerced (stray text becomes missing)."""
    ds = cfg.dataset
    kinds: dict[str, str] = {}
    for c in feature_cols:
        col = frame[c]
        if c in ds.features.categorical or c in ds.value_labels:
            kinds[c] = "categorical"
            continue
        numeric_dtype = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        if numeric_dtype:
            kinds[c] = "numeric"
            continue
        if pd.api.types.is_bool_dtype(col):
            kinds[c] = "categorical"
            continue
        if c not in ds.features.numeric and not could_be_numeric(col, 0.9):
            kinds[c] = "categorical"  # under 90% numbers whatever the conversion says: no need to convert
            continue
        conv = pd.to_numeric(col, errors="coerce")
        present = col.notna().to_numpy()
        bad = present & conv.isna().to_numpy()
        n_present = int(present.sum())
        share_numeric = 1 - bad.sum() / max(n_present, 1)
        if c in ds.features.numeric:
            if share_numeric < 0.9:
                raise DataError(
                    f"dataset.features.numeric: column '{c}' has non-numeric values such as "
                    f"{_rows_text(frame.index, bad, col, 2)}; list it under dataset.features.categorical"
                )
            if bad.any():
                notes.append(
                    f"column '{c}': {int(bad.sum())} non-numeric value(s) read as missing (declared numeric), e.g. "
                    + _rows_text(frame.index, bad, col, 3)
                )
            frame[c] = conv
            kinds[c] = "numeric"
        elif share_numeric >= 0.9 and bad.any() and n_present >= 10:
            examples = _rows_text(frame.index, bad, col)
            raise DataError(
                f"column '{c}': {share_numeric:.1%} of its values in the {where} data are numbers but "
                f"{int(bad.sum())} are not: {examples}; list those strings in dataset.csv.na_values, or declare the "
                f"column in dataset.features.numeric (they become missing) or dataset.features.categorical"
            )
        else:
            kinds[c] = "categorical"
    return kinds


def load_dataset(cfg: AuditConfig) -> Dataset:
    """Load, verify and split the dataset described by ``cfg.dataset``: the steps below, in this order (each step's
    own errors come before the next step's).

    Raises
    ------
    DataError
        For any file, checksum or column problem, with a one-line message naming the key or column.
    """
    from audit.references import check_references

    ds = cfg.dataset
    notes: list[str] = []
    train_df, test_df, files = _read_files(cfg)
    train_df = apply_filter(cfg, train_df, "training file")
    if test_df is not None:
        test_df = apply_filter(cfg, test_df, "test file")
    n_read = len(train_df)
    columns = list(train_df.columns)
    raw_labelled = _labelled_and_derived(cfg, train_df, test_df)
    labels = _Labels.of(cfg, train_df, notes)
    _check_weight_key(cfg)
    feature_cols = _feature_columns(cfg, columns)
    kinds = _infer_kinds(cfg, train_df, feature_cols, "training", notes)
    if test_df is not None:
        _coerce_test_numerics(cfg, test_df, feature_cols, kinds, notes)
    train_df, test_df, y_train_raw, y_test_raw = _split(cfg, train_df, test_df, labels)
    features = _features(cfg, train_df, feature_cols, kinds)
    sensitive = list(dict.fromkeys([*cfg.fairness.sensitive_features, *cfg.fairness.derived]))  # derived: sensitive
    _check_sensitive(cfg, test_df, sensitive)
    _unseen_levels(cfg, test_df, features, notes)
    for f in features:
        if test_df[f.name].isna().all():
            notes.append(
                f"column '{f.name}': no audit row has a value (every one missing); the model saw it as missing in "
                "every row, the data quality section names it, and the sections that need its values say so"
            )
    pos = labels.positive
    schema = Schema(tuple(features), ds.target, pos, labels.negative, tuple(sensitive), labels.favourable)
    check_references(cfg, schema, sensitive)
    keep = feature_cols + [s for s in sensitive if s not in feature_cols]
    y_train, y_test = (y_train_raw == pos).astype(np.int64), (y_test_raw == pos).astype(np.int64)
    _check_audit_rows(train_df, test_df, y_test, features, labels)
    if ds.filter:
        notes.append(f"dataset.filter {ds.filter!r} kept {n_read} training-file rows")
    if ds.weight:
        notes.append(WEIGHT_NOTE.format(name=ds.weight))
    return Dataset(
        schema=schema,
        X_train=train_df[keep].reset_index(drop=True),
        y_train=y_train,
        X_test=test_df[keep].reset_index(drop=True),
        y_test=y_test,
        files=files,
        notes=notes,
        ids_test=test_df[ds.index_col].to_numpy() if ds.index_col else None,
        tied=tuple(tuple(g) for g in ds.tied),
        test_rows=test_df.index.to_numpy(dtype=np.int64),
        raw_columns=_aligned_raw(raw_labelled, train_df.index, test_df.index, split=ds.test is None, keep=keep),
        w_train=_weights(cfg, train_df, "training") if ds.weight else None,
        w_test=_weights(cfg, test_df, "audit") if ds.weight else None,
    )


def _read_files(cfg: AuditConfig) -> tuple[pd.DataFrame, pd.DataFrame | None, dict[str, str]]:
    """The training (and test) file, read and checked, and every config key that names a column of the file
    checked against its header, before any other work."""
    from audit.references import check_columns

    ds = cfg.dataset
    files: dict[str, str] = {}
    train_df, digest = read_file(cfg, ds.train, "dataset.train")
    files[str(ds.train.path)] = digest
    test_df = None
    if ds.test is not None:
        test_df, digest = read_file(cfg, ds.test, "dataset.test")
        files[str(ds.test.path)] = digest
        if list(test_df.columns) != list(train_df.columns):
            raise DataError(
                f"dataset.test: columns differ from the training file: {list(test_df.columns)} vs {list(train_df.columns)}"
            )
    check_columns(cfg, train_df.attrs.get("file_columns", list(train_df.columns)), list(train_df.columns))
    for frame in (train_df, test_df):
        if frame is not None:
            frame.attrs.clear()  # pandas deep-copies attrs into every column it hands out: drop them once used
    return train_df, test_df, files


def _labelled_and_derived(cfg: AuditConfig, train_df: pd.DataFrame, test_df: pd.DataFrame | None) -> list[dict]:
    """Value labels and derived sensitive columns applied in place (checked first); returns the coded values of
    the value-labelled columns as the files hold them, per file (a model from another tool scores codes)."""
    ds, derived = cfg.dataset, cfg.fairness.derived
    columns = list(train_df.columns)
    for name in derived:
        if name in columns:
            raise DataError(f"fairness.derived.{name}: '{name}' already is a column; pick another name")
    if ds.index_col and ds.index_col == ds.target:
        raise DataError(f"dataset.index_col: '{ds.index_col}' is the target column; pick the row-id column")
    raw_labelled = [
        {c: frame[c].copy() for c in ds.value_labels if c in frame.columns} if frame is not None else {}
        for frame in (train_df, test_df)
    ]
    for frame in (train_df, test_df):
        if frame is not None:
            apply_value_labels(frame, ds.value_labels)
            add_derived(frame, derived)
    for name, spec in derived.items():
        unmatched = train_df[name].isna()
        if unmatched.any():
            example = repr(train_df.loc[unmatched, spec.source].iloc[0])
            example = example if len(example) <= 60 else example[:50] + "...'"
            raise DataError(
                f"fairness.derived.{name}.regex: {spec.regex!r} does not match {int(unmatched.sum())} value(s) of "
                f"'{spec.source}', e.g. {example}; widen the pattern"
            )
    for key, names in (
        ("dataset.drop", ds.drop),
        ("dataset.features.numeric", ds.features.numeric),
        ("dataset.features.categorical", ds.features.categorical),
        ("fairness.sensitive_features", cfg.fairness.sensitive_features),
        ("dataset.value_labels", list(ds.value_labels)),
    ):
        for n in names:
            if n == ds.target:
                raise DataError(f"{key}: '{n}' is the target column; remove it from {key}")
    both = set(ds.features.numeric) & set(ds.features.categorical)
    if both:
        raise DataError(f"dataset.features: {sorted(both)} listed as both numeric and categorical; keep one")
    return raw_labelled


@dataclass(frozen=True)
class _Labels:
    """The training file's labels (as text) and what the config makes of them."""

    raw: np.ndarray
    positive: str
    present: list[str]
    negative: str
    favourable: str | None

    @classmethod
    def of(cls, cfg: AuditConfig, train_df: pd.DataFrame, notes: list[str]) -> _Labels:
        ds = cfg.dataset
        y_all_raw = _labels(train_df, cfg, "training")
        pos = str(ds.positive_label)
        present = sorted(set(y_all_raw))
        if pos not in present:
            raise DataError(
                f"dataset.positive_label: {ds.positive_label!r} does not occur in column '{ds.target}'; "
                f"its values are {present[:10]}"
            )
        if len(present) < 2:
            raise DataError(
                f"dataset.target: column '{ds.target}' has a single class ({present[0]!r}); an audit needs two"
            )
        negative_label = next(v for v in present if v != pos) if len(present) == 2 else f"not {pos}"
        if len(present) > 2:
            negatives = [v for v in present if v != pos]
            notes.append(
                f"target '{ds.target}' has {len(present)} classes; {negatives} are treated as the negative class"
            )
        favourable = None
        if ds.favourable_label is not None:
            fav = str(ds.favourable_label)
            if fav != pos and fav not in present:
                raise DataError(
                    f"dataset.favourable_label: {fav!r} does not occur in column '{ds.target}'; its values are "
                    f"{present[:10]}"
                )
            favourable = pos if fav == pos else negative_label if len(present) == 2 else f"not {pos}"
        return cls(y_all_raw, pos, present, negative_label, favourable)


def _feature_columns(cfg: AuditConfig, columns: list[str]) -> list[str]:
    """The model's input columns: the file's columns less the target, dropped, derived and index columns (and
    those outside ``dataset.columns``)."""
    ds, derived = cfg.dataset, cfg.fairness.derived
    non_features = {ds.target, *ds.drop, *derived, *([ds.index_col] if ds.index_col else [])}
    non_features |= {ds.weight} if ds.weight else set()
    selected = [c for c in columns if c not in derived]
    if ds.columns is not None:
        keep = set(ds.columns)
        selected = [c for c in selected if c in keep]
    feature_cols = [c for c in selected if c not in non_features]
    if not feature_cols:
        raise DataError("dataset.drop: no feature columns are left; drop fewer columns")
    return feature_cols


def _coerce_test_numerics(cfg: AuditConfig, test_df, feature_cols, kinds, notes: list[str]) -> None:
    """Numbers with stray text in the test file: refused, or (a declared numeric) missing values counted in the
    notes."""
    ds = cfg.dataset
    for c in [c for c in feature_cols if kinds[c] == "numeric"]:
        col = test_df[c]
        conv = pd.to_numeric(col, errors="coerce")
        bad = col.notna().to_numpy() & conv.isna().to_numpy()
        if bad.any() and c not in ds.features.numeric:
            raise DataError(
                f"column '{c}': numeric in the training file but {int(bad.sum())} value(s) of the test file are "
                f"not numbers: {_rows_text(test_df.index, bad, col)}; list them in dataset.csv.na_values or "
                "declare the column in dataset.features.numeric (they become missing)"
            )
        if bad.any():
            notes.append(f"column '{c}': {int(bad.sum())} non-numeric value(s) of the test file read as missing")
        test_df[c] = conv


def _split(cfg: AuditConfig, train_df, test_df, labels: _Labels):
    """The training and audit rows and their label texts: the test file, or a seeded split of the training file
    that depends only on the data and the seed (stratified on the 0/1 label)."""
    ds = cfg.dataset
    y_all = (labels.raw == labels.positive).astype(np.int64)
    if test_df is None:
        strat = y_all if ds.split.stratify else None
        idx = np.arange(len(train_df))
        try:
            from sklearn.model_selection import train_test_split

            tr_idx, te_idx = train_test_split(idx, test_size=ds.split.test_size, random_state=cfg.seed, stratify=strat)
        except ValueError as exc:
            raise DataError(
                f"dataset.split: cannot split {len(idx)} rows ({exc}); lower test_size or add rows"
            ) from None
        tr_idx.sort()
        te_idx.sort()
        test_df = train_df.iloc[te_idx]
        train_df = train_df.iloc[tr_idx]
        y_test_raw, y_train_raw = labels.raw[te_idx], labels.raw[tr_idx]
    else:
        y_train_raw = labels.raw
        y_test_raw = _labels(test_df, cfg, "test")
    unknown_test = sorted(set(y_test_raw) - set(labels.present))
    if unknown_test:
        raise DataError(
            f"dataset.label_map: test labels {unknown_test[:5]} do not occur in the training labels {labels.present}; "
            "map them with dataset.label_map"
        )
    return train_df, test_df, y_train_raw, y_test_raw


def _features(cfg: AuditConfig, train_df, feature_cols, kinds) -> list[Feature]:
    """One :class:`Feature` per input column, with a categorical's levels from the training rows."""
    ds = cfg.dataset
    features: list[Feature] = []
    for c in feature_cols:
        col = train_df[c]
        if col.isna().all():
            raise DataError(f"column '{c}': every value is missing in the training data; add it to dataset.drop")
        if col.nunique(dropna=True) < 2:
            raise DataError(
                f"column '{c}': constant in the training data (every value is {_short(col.dropna().iloc[0])}); "
                "it carries no information, add it to dataset.drop"
            )
        labels = tuple((str(k), str(v)) for k, v in ds.value_labels.get(c, {}).items())
        if kinds[c] == "numeric":
            values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if np.isinf(values).any():
                raise DataError(f"column '{c}': contains infinite values; replace them or add '{c}' to dataset.drop")
            features.append(Feature(c, "numeric"))
        else:
            levels = tuple(sorted(set(category_strings(col))))
            if len(levels) > ds.max_categories:
                raise DataError(
                    f"column '{c}': {len(levels)} distinct levels exceed dataset.max_categories={ds.max_categories}; "
                    "drop it (dataset.drop), or raise the cap if it really is categorical"
                )
            features.append(Feature(c, "categorical", levels, labels))
    return features


def _check_sensitive(cfg: AuditConfig, test_df, sensitive: list[str]) -> None:
    """Sensitive columns with two groups or more among the audit rows; ``fairness.bins`` only for numeric ones."""
    ds = cfg.dataset
    for s in sensitive:
        if test_df[s].nunique(dropna=False) < 2:
            raise DataError(
                f"fairness.sensitive_features: column '{s}' has a single group in the audit rows "
                f"({test_df[s].iloc[0]!r}); there is nothing to compare, remove it"
            )
    for name in cfg.fairness.bins:
        if name in test_df.columns and not (
            pd.api.types.is_numeric_dtype(test_df[name]) and not pd.api.types.is_bool_dtype(test_df[name])
        ):
            raise DataError(
                f"fairness.bins.{name}: '{name}' is categorical; bins cut numeric sensitive features, remove the key"
            )
        if name in ds.features.categorical:
            raise DataError(
                f"fairness.bins.{name}: '{name}' is declared categorical (grouped by its levels); remove the key"
            )


def _unseen_levels(cfg: AuditConfig, test_df, features: list[Feature], notes: list[str]) -> None:
    """Audit rows with a level training lacks: refused (``dataset.unseen_categories: error``) or counted."""
    for f in features:
        if f.is_categorical:
            values = category_strings(test_df[f.name])
            unseen = sorted(set(values) - set(f.levels))
            if not unseen:
                continue
            n_rows = int(np.isin(values, unseen).sum())
            if cfg.dataset.unseen_categories == "error":
                raise DataError(
                    f"column '{f.name}': {n_rows} audit row(s) have level(s) {unseen[:5]} never seen in training; "
                    "set dataset.unseen_categories: unknown to score them through the model's unknown slot"
                )
            notes.append(
                f"column '{f.name}': {n_rows} audit row(s) with unseen level(s) {unseen[:5]} scored as unknown"
            )


WEIGHT_NOTE = (
    "dataset.weight '{name}' weights the performance metrics, the fairness rates and their intervals, permutation "
    "importance, partial dependence, the SHAP background and the comparison with the previous run; group sizes and "
    "the events behind the support rules count rows, and so do training (the model is audited as it was fitted), "
    "ALE, interactions, weak segments, drift, data quality, stability, the local explanations' instance selection "
    "and the network sections"
)


def _check_weight_key(cfg: AuditConfig) -> None:
    """``dataset.weight`` names a column that is nothing else: not the target, an id, a sensitive feature, a
    declared feature or a tied one."""
    ds, w = cfg.dataset, cfg.dataset.weight
    if w is None:
        return
    roles = {
        "the target column (dataset.target)": w == ds.target,
        "the row-id column (dataset.index_col)": w == ds.index_col,
        "a sensitive feature (fairness.sensitive_features)": w in cfg.fairness.sensitive_features,
        "declared a feature (dataset.features)": w in ds.features.numeric or w in ds.features.categorical,
        "value-labelled (dataset.value_labels)": w in ds.value_labels,
        "tied to features (dataset.tied)": any(w in g for g in ds.tied),
    }
    clash = next((role for role, hit in roles.items() if hit), None)
    if clash:
        raise DataError(f"dataset.weight: '{w}' is {clash}; a weight column is never a feature, pick another column")


def _weights(cfg: AuditConfig, frame: pd.DataFrame, where: str) -> np.ndarray:
    """The ``dataset.weight`` column of ``frame`` as float64: numbers, none missing, none negative or infinite, and
    not all zero."""
    name = cfg.dataset.weight
    col = frame[name]
    w = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    checks = (
        (col.notna().to_numpy() & np.isnan(w), "are not numbers", "fix them in the file"),
        (col.isna().to_numpy(), "are missing", "fill them or drop the rows with dataset.filter"),
        (np.isinf(w) | (w < 0), "are negative or infinite", "a weight counts a row that many times: fix them"),
    )
    for bad, what, fix in checks:
        if bad.any():
            raise DataError(
                f"dataset.weight: {int(bad.sum())} value(s) of column '{name}' in the {where} rows {what}: "
                f"{_rows_text(frame.index, bad, col)}; {fix}"
            )
    if not w.sum() > 0:
        raise DataError(f"dataset.weight: every weight of column '{name}' in the {where} rows is 0; nothing is counted")
    return w


def _check_audit_rows(train_df, test_df, y_test: np.ndarray, features: list[Feature], labels: _Labels) -> None:
    """Enough rows, both classes among the audit rows, no infinite numbers there."""
    if len(train_df) < 10 or len(test_df) < 2:
        raise DataError(f"dataset: too few rows after loading ({len(train_df)} train, {len(test_df)} test)")
    if len(np.unique(y_test)) < 2:
        only = labels.positive if y_test[0] == 1 else labels.negative
        raise DataError(
            f"dataset.test: every audit row has the label {only!r}; ROC AUC, TPR, FPR and calibration need both "
            "classes: use a test file (or dataset.split) with both"
        )
    for f in features:
        if not f.is_categorical:
            v = pd.to_numeric(test_df[f.name], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            if np.isinf(v).any():
                raise DataError(
                    f"column '{f.name}': {int(np.isinf(v).sum())} infinite value(s) among the audit rows; "
                    f"replace them or add '{f.name}' to dataset.drop"
                )


def _aligned_raw(raw: list[dict], train_index, test_index, *, split: bool, keep: list[str]) -> dict:
    """The raw value-labelled columns (of the training file, and of the test file unless the audit rows were split
    off the training file) on the rows of ``X_train`` and ``X_test``."""
    train_raw, test_raw = raw[0], raw[0] if split else raw[1]
    return {
        c: (train_raw[c].loc[train_index].reset_index(drop=True), test_raw[c].loc[test_index].reset_index(drop=True))
        for c in train_raw
        if c in keep
    }


def dataset_fingerprint(ds: Dataset) -> str:
    """Hash of the loaded data (both splits), independent of file encoding."""
    h = hashlib.sha256()
    for frame, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        h.update(np.ascontiguousarray(y).tobytes())
    h.update(json.dumps(ds.schema.to_json(), sort_keys=True).encode())
    return h.hexdigest()
