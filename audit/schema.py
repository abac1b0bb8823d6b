"""The schema of an audited dataset and the *code space* every fast path works in.

The schema is the contract every later stage reads: feature order and kinds, categorical levels (learnt on the
training split only), target, positive and favourable labels, sensitive features. The code space: one float64
column per raw feature, a categorical as the integer index of its level, with ``len(levels)`` as the "unknown" slot
for levels never seen in training.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import pandas as pd

from audit.errors import DataError

MISSING_LEVEL = "missing"
UNKNOWN_LEVEL = "<unknown>"


@dataclass(frozen=True)
class Feature:
    """One raw feature. ``levels`` holds a categorical's training levels, in code order; ``labels`` the
    ``(raw code, label)`` pairs of ``dataset.value_labels`` (levels are labels; raw codes are still understood)."""

    name: str
    kind: Literal["numeric", "categorical"]
    levels: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def is_categorical(self) -> bool:
        return self.kind == "categorical"


@dataclass(frozen=True)
class Schema:
    """Features, target and sensitive columns of an audited dataset.

    ``favourable_label`` is the outcome that is good for the person (``dataset.favourable_label``); by default the
    positive label. When it is the negative label (a model that predicts default), fairness selection rates, declined
    rows, reason codes and recourse follow the favourable outcome, not the positive one.
    """

    features: tuple[Feature, ...]
    target: str
    positive_label: str
    negative_label: str
    sensitive: tuple[str, ...] = ()
    favourable_label: str | None = None

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def categorical_mask(self) -> np.ndarray:
        return np.array([f.is_categorical for f in self.features], dtype=bool)

    @property
    def favourable_is_positive(self) -> bool:
        return self.favourable_label is None or self.favourable_label == self.positive_label

    def declined(self, p: np.ndarray, threshold: float) -> np.ndarray:
        """Boolean mask of the unfavourable decisions among scores ``p`` (below the threshold, unless the favourable
        outcome is the negative class)."""
        p = np.asarray(p)
        return p < threshold if self.favourable_is_positive else p >= threshold

    @property
    def adverse_sign(self) -> float:
        """-1 when a negative contribution to the score is adverse (the favourable label is positive), else +1."""
        return -1.0 if self.favourable_is_positive else 1.0

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    # ------------------------------------------------------------------ code space
    def to_codes(self, df: pd.DataFrame) -> np.ndarray:
        """Raw feature frame -> float64 array (n_rows, n_features) in code space.

        Examples
        --------
        >>> s = Schema((Feature("x", "numeric"), Feature("c", "categorical", ("a", "b"))), "y", "1", "0")
        >>> s.to_codes(pd.DataFrame({"x": [1.5, 2.0], "c": ["b", "zzz"]}))
        array([[1.5, 1. ],
               [2. , 2. ]])
        """
        self.check_columns(df)
        out = np.empty((len(df), len(self.features)), dtype=np.float64)
        for j in range(len(self.features)):
            out[:, j] = self.column_codes(df, j)
        return out

    def check_columns(self, df: pd.DataFrame) -> None:
        """Raise :class:`DataError` naming the feature columns ``df`` lacks."""
        missing = [f.name for f in self.features if f.name not in df.columns]
        if missing:
            raise DataError(
                f"input frame lacks feature column(s) {missing}; the model was built on {self.feature_names}"
            )

    def column_codes(self, df: pd.DataFrame, j: int) -> np.ndarray:
        """Column ``j`` of :meth:`to_codes`: float64 level codes, or the numeric values (a NumPy numeric array; NaN
        for missing), equal once stored as float64."""
        f = self.features[j]
        col = df[f.name]
        if f.is_categorical:
            return category_codes(col, f)
        if isinstance(col.dtype, np.dtype) and col.dtype.kind in "iuf":
            return col.to_numpy()  # plain NumPy numbers: converted where they are stored
        return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)

    def to_codes_reference(self, df: pd.DataFrame) -> np.ndarray:
        """:meth:`to_codes` the slow, obvious way (every value to its level text, then looked up); tests prove the
        fast path gives the same codes."""
        out = np.empty((len(df), len(self.features)), dtype=np.float64)
        for j, f in enumerate(self.features):
            col = df[f.name]
            if f.is_categorical:
                values = category_strings(col, labels=dict(f.labels) if f.labels else None)
                position = {level: i for i, level in enumerate(f.levels)}
                out[:, j] = [position.get(v, len(f.levels)) for v in values]
            else:
                out[:, j] = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        return out

    def from_codes(self, codes: np.ndarray) -> pd.DataFrame:
        """Code-space array -> raw feature frame (inverse of :meth:`to_codes` for known levels)."""
        cols = {}
        for j, f in enumerate(self.features):
            if f.is_categorical:
                lv = np.array([*f.levels, UNKNOWN_LEVEL], dtype=object)
                cols[f.name] = lv[codes[:, j].astype(np.int64)]
            else:
                cols[f.name] = codes[:, j]
        return pd.DataFrame(cols)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Schema:
        feats = tuple(
            Feature(f["name"], f["kind"], tuple(f["levels"]), tuple(tuple(p) for p in f.get("labels", ())))
            for f in d["features"]
        )
        return cls(
            feats,
            d["target"],
            d["positive_label"],
            d["negative_label"],
            tuple(d.get("sensitive", ())),
            d.get("favourable_label"),
        )


def category_strings(col: pd.Series, *, labels: dict[str, str] | None = None) -> np.ndarray:
    """The level text of every value: integers (and integer-valued floats) without a decimal point, missing values
    as :data:`MISSING_LEVEL`, and with ``labels`` (``dataset.value_labels``) a code replaced by its label.

    Examples
    --------
    >>> category_strings(pd.Series([1.0, 2.0, None])).tolist()
    ['1', '2', 'missing']
    >>> category_strings(pd.Series([1, 2]), labels={"1": "male"}).tolist()
    ['male', '2']
    """
    missing = col.isna().to_numpy()
    if pd.api.types.is_float_dtype(col):
        v = col.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = ~missing
        finite = v[ok]
        out = np.full(len(v), MISSING_LEVEL, dtype=object)
        if finite.size and np.all(finite == np.round(finite)) and np.abs(finite).max() < 2**53:
            out[ok] = finite.astype(np.int64).astype(str)
        else:
            out[ok] = finite.astype(str)
    elif pd.api.types.is_bool_dtype(col) or pd.api.types.is_integer_dtype(col):
        out = np.full(len(col), MISSING_LEVEL, dtype=object)
        out[~missing] = col[~missing].astype(str).to_numpy(dtype=object)
    else:
        out = col.astype(str).to_numpy(dtype=object)
        if missing.any():
            out[missing] = MISSING_LEVEL
    if labels:
        mapped = pd.Series(out, dtype=object).map(labels).to_numpy(dtype=object)
        hit = pd.notna(mapped)
        out = np.where(hit, mapped, out)
    return out


def category_codes(col: pd.Series, feature: Feature) -> np.ndarray:
    """The level codes of a categorical column (float64; ``len(levels)`` for levels never seen in training): the
    codes of :func:`category_index`, as the code space stores them."""
    return category_index(col, feature).astype(np.float64)


def category_index(col: pd.Series, feature: Feature) -> np.ndarray:
    """The level codes of a categorical column as int64 (``len(levels)`` for levels never seen in training).

    Text columns are coded by hashing against the fixed levels (Arrow's ``index_in``, or ``pandas.Categorical``),
    without turning every value into a Python string first; only values that do not match as they are (a number in a
    text column, a code with a value label) take the slow path of :func:`category_strings`. Equal to it for every
    value (tested on every shipped data set).
    """
    levels = list(feature.levels)
    n_levels = len(levels)
    if not feature.labels and isinstance(col.array, pd.arrays.ArrowStringArray):
        import pyarrow.compute as pc

        # Arrow strings (pandas' default text dtype): one hash lookup of every value in the levels, in C. A missing
        # value matches the null after the levels (n_levels), a value never seen matches nothing (filled with
        # n_levels + 1); one small table then maps both to their codes
        arr = col.array.__arrow_array__()
        options, table = _arrow_lookup(feature.levels, arr.type)
        return table.take(pc.fill_null(pc.index_in(arr, options=options), n_levels + 1).to_numpy())
    if not feature.labels and isinstance(col.dtype, pd.CategoricalDtype) and _text_index(col.cat.categories):
        # a pandas categorical of text (a population's dictionary columns): each category is coded once, as a text
        # column's values are, and the rows take their category's code; a missing value (-1) takes the last entry
        codes = category_index(pd.Series(col.cat.categories.to_numpy(dtype=object), dtype=object), feature)
        return np.append(codes, _missing_code(levels))[col.cat.codes.to_numpy()]
    textual = pd.api.types.is_string_dtype(col) or col.dtype == object
    if feature.labels or not textual:
        codes = _level_positions(category_strings(col, labels=dict(feature.labels) or None), levels)
        codes[codes < 0] = n_levels
        return codes
    codes = _level_positions(col, levels)
    missing = col.isna().to_numpy()
    other = (codes < 0) & ~missing
    if other.any():  # e.g. a number among text: its level text decides
        codes[other] = _level_positions(category_strings(col[other]), levels)
    if missing.any():
        codes[missing] = _missing_code(levels)
    codes[codes < 0] = n_levels
    return codes


def _missing_code(levels) -> int:
    """The code of a missing value: the position of :data:`MISSING_LEVEL` among ``levels`` when the model saw
    missing values in training, else the unknown slot ``len(levels)``."""
    return levels.index(MISSING_LEVEL) if MISSING_LEVEL in levels else len(levels)


def _text_index(index: pd.Index) -> bool:
    """Whether every entry of ``index`` is a Python string (so :func:`category_strings` keeps it as it is)."""
    return pd.api.types.is_string_dtype(index) and pd.api.types.infer_dtype(index, skipna=False) == "string"


def _level_positions(values, levels: list[str]) -> np.ndarray:
    """Each value's position in ``levels`` (int64; -1 where none, missing values included), by hashing: the codes
    of ``pandas.Categorical(values, categories=levels)``, which pandas deprecates for values outside the levels."""
    return pd.Index(levels, dtype=object).get_indexer(values).astype(np.int64, copy=False)


@functools.lru_cache(maxsize=256)
def _arrow_lookup(levels: tuple[str, ...], type_):
    """For :func:`category_index`: ``index_in`` options whose value set is the levels then a null, as an Arrow array
    of the column's string type, and the table from their positions (plus ``len(levels) + 1``, never seen) to codes
    (built once per feature and type)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = len(levels)
    table = np.arange(n + 2, dtype=np.int64)
    table[n] = _missing_code(levels)
    table[n + 1] = n
    return pc.SetLookupOptions(pa.array([*levels, None], type=type_), skip_nulls=False), table


def apply_value_labels(frame: pd.DataFrame, value_labels: dict) -> None:
    """Replace coded values by their labels (``dataset.value_labels``) in place; the columns become text."""
    for name, labels in value_labels.items():
        if name in frame.columns:
            frame[name] = pd.Series(category_strings(frame[name], labels=dict(labels)), index=frame.index, dtype=object)


# ------------------------------------------------------------------------------------------- back to raw values
@dataclass(frozen=True)
class RawValues:
    """How code-space rows go back to the raw values a model from another tool was trained on.

    The code space is the audit's own: a level is its text (``1.0`` in a float column is the level ``"1"``, a coded
    value with ``dataset.value_labels`` is its label, a missing value is :data:`MISSING_LEVEL`). A model with its own
    preprocessing (a scikit-learn pipeline, an MLflow or ONNX model, an endpoint) must see the values the file has:
    for each categorical feature ``levels`` holds the raw value of every level, in code order, as the file's column
    holds it (same dtype: ``1`` in an integer column, ``"male"`` in a text column, NaN for a missing value); a numeric
    feature the file stores as integers comes back as integers when every value of the block is a whole number.

    Build it with :func:`raw_values` from the raw frames: every level of the schema must occur in them. The
    unknown slot (a level that occurs in none of the frames: only rows of a population file can have one) has no
    raw value; such rows go to the model with a missing value there and are counted in ``unknown_rows``.
    """

    levels: dict[str, pd.Series]
    integer: dict[str, np.dtype]
    unknown_rows: list[int]  # a one-item list: rows sent with a level the audit could not give back

    def frame(self, schema: Schema, X: np.ndarray) -> pd.DataFrame:
        """Code-space rows ``X`` (n_rows, n_features) -> a frame of raw values, one column per feature.

        Examples
        --------
        >>> s = Schema((Feature("x", "numeric"), Feature("sex", "categorical", ("female", "male"), (("1", "male"),
        ...     ("2", "female")))), "y", "1", "0")
        >>> raw = pd.DataFrame({"x": [3, 4], "sex": [1, 2]})
        >>> r = raw_values(s, [raw])
        >>> r.frame(s, s.to_codes(raw)).equals(raw)
        True
        """
        X = np.asarray(X)
        cols = {}
        unknown = np.zeros(len(X), dtype=bool)
        for j, f in enumerate(schema.features):
            if f.is_categorical:
                cols[f.name], missing = _raw_levels(self.levels[f.name], X[:, j])
                unknown |= missing
            else:
                cols[f.name] = _raw_numbers(X[:, j], self.integer.get(f.name))
        self.unknown_rows[0] += int(unknown.sum())
        return pd.DataFrame(cols)


def raw_values(schema: Schema, frames: list[pd.DataFrame]) -> RawValues:
    """The :class:`RawValues` of ``schema`` read off ``frames`` (the raw training and audit rows, value labels not
    applied). Raises ValueError naming a level that occurs in none of the frames."""
    levels, integer = {}, {}
    for f in schema.features:
        cols = [fr[f.name] for fr in frames if f.name in fr.columns]
        if not f.is_categorical:
            if cols and all(pd.api.types.is_integer_dtype(c) and not pd.api.types.is_bool_dtype(c) for c in cols):
                integer[f.name] = np.result_type(*[c.dtype for c in cols])
            continue
        labels = dict(f.labels) or None
        first: dict[str, object] = {}
        for col in cols:
            texts = category_strings(col, labels=labels)
            _, at = np.unique(texts, return_index=True)
            for i in np.sort(at):
                first.setdefault(texts[i], col.iloc[i])
        absent = [lv for lv in f.levels if lv not in first]
        if absent:
            raise ValueError(f"level(s) {absent[:5]} of {f.name!r} occur in none of the raw rows")
        dtype = cols[0].dtype if all(c.dtype == cols[0].dtype for c in cols) else object
        values = [first[lv] for lv in f.levels]
        levels[f.name] = pd.Series(values, dtype=dtype if not isinstance(dtype, pd.CategoricalDtype) else object)
    return RawValues(levels, integer, [0])


def text_values(schema: Schema) -> RawValues:
    """:class:`RawValues` for a model with no raw rows to read values from: each level as its text, a missing value
    as ``None`` (never the level text :data:`MISSING_LEVEL`)."""
    levels = {
        f.name: pd.Series([None if lv == MISSING_LEVEL else lv for lv in f.levels], dtype=object)
        for f in schema.features
        if f.is_categorical
    }
    return RawValues(levels, {}, [0])


def _raw_levels(values: pd.Series, codes: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    """The raw value of each code (the column's dtype where every code is a known level) and the unknown mask."""
    codes = np.asarray(codes).astype(np.int64)
    unknown = codes >= len(values)
    if not unknown.any():
        return values.take(codes).reset_index(drop=True), unknown
    if pd.api.types.is_bool_dtype(values.dtype):
        base = values.astype(object)
    elif pd.api.types.is_integer_dtype(values.dtype):
        base = values.astype(np.float64)
    else:
        base = values
    out = base.take(np.where(unknown, 0, codes)).reset_index(drop=True)
    out[unknown] = np.nan if out.dtype != object else None
    return out, unknown


def _raw_numbers(v: np.ndarray, integer: np.dtype | None) -> np.ndarray:
    """A numeric feature's values, as the file's integers when it stores integers and every value is whole."""
    v = np.asarray(v, dtype=np.float64)
    if integer is not None and np.isfinite(v).all() and np.array_equal(v, np.round(v)):
        return v.astype(integer)
    return v


def widen_levels(schema: Schema, frame: pd.DataFrame) -> tuple[Schema, dict[str, list[str]]]:
    """``schema`` with every level of ``frame`` (the audit rows) that training lacks appended to its feature's levels
    (sorted), and those levels per feature.

    For a model from another tool: its own preprocessing may know a level the audit's training rows lack, so such a
    level must reach it as itself, not through the unknown slot. Appending keeps every training level's code.
    """
    features, added = [], {}
    for f in schema.features:
        if f.is_categorical and f.name in frame.columns:
            extra = sorted(set(category_strings(frame[f.name], labels=dict(f.labels) or None)) - set(f.levels))
            if extra:
                added[f.name] = extra
                f = replace(f, levels=(*f.levels, *extra))
        features.append(f)
    return replace(schema, features=tuple(features)), added
