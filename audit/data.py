"""Loading a dataset described in config into one :class:`Schema` plus train and test frames.

The schema is the contract every later stage reads: feature order and kinds, categorical levels (learnt on the
training split only), target, positive and favourable labels, sensitive features. It also defines the *code space*
the fast paths work in: one float64 column per raw feature, a categorical as the integer index of its level, with
``len(levels)`` as the "unknown" slot for levels never seen in training.

:func:`load_dataset` runs the steps a real file needs, each with its own one-line errors: read (bounded in bytes,
rows and columns while reading), header quirks (a second header row, repeated or unnamed columns), column references
of the whole config, row filter, column selection and index column, value labels, derived sensitive columns, labels,
feature types (a numeric column with stray text is refused with the offending values and rows), the split (which
depends only on the data and the seed), levels and unseen levels.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import json
import lzma
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from audit.config import AuditConfig, DataFile
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


@dataclass
class Dataset:
    """A loaded dataset: raw feature frames, 0/1 labels, the schema, and provenance.

    ``ids_test``: the ``dataset.index_col`` value of each audit row (None without one); ``tied``: groups of features
    that encode the same thing (``dataset.tied``).
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


# ---------------------------------------------------------------------------------------------------- levels
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


# ---------------------------------------------------------------------------------------------------- files
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_digest(path: Path, expected: str | None, *, path_key: str, sha_key: str, from_config: bool = True) -> str:
    """sha256 of the file at ``path``, checked against ``expected`` when given.

    ``from_config``: the path came from a config (relative paths start at its folder), not from the command line.

    Raises
    ------
    DataError
        Naming ``path_key`` (missing, not a file, unreadable) or ``sha_key`` (checksum mismatch).
    """
    try:
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError) as exc:  # a loop of links, a name too long, a NUL byte
        raise DataError(f"{path_key}: '{path}' cannot be opened ({_os_reason(exc)}); fix the path") from None
    if not exists:
        raise DataError(
            f"{path_key}: file '{path}' does not exist; fix the path"
            + (" (relative paths start at the config's folder)" if from_config else "")
        )
    if not is_file:
        raise DataError(f"{path_key}: '{path}' is not a file (a folder, a device or a pipe); point it at a data file")
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise DataError(
            f"{path_key}: file '{path}' cannot be read ({_os_reason(exc)}); check its permissions"
        ) from None
    if expected and digest.lower() != expected.lower():
        raise DataError(
            f"{sha_key}: checksum mismatch for '{path}': expected {expected.lower()}, file has {digest}; "
            "the file is corrupt or not the one the config was written for"
        )
    return digest


def _os_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:120] or exc.__class__.__name__


class _ReadLimit(Exception):
    """A limit on what a file may expand to was reached while reading it."""


MAX_EXPANSION = 100  # a compressed file that expands more than this (past 16 MB) is refused as a compression bomb
MAX_LINE_BYTES = 4 << 20


class _LimitedReader(io.RawIOBase):
    """Reads a (decompressed) stream, stopping with :class:`_ReadLimit` past ``limit`` bytes, past a line of
    :data:`MAX_LINE_BYTES`, or (compressed files) past :data:`MAX_EXPANSION` times the compressed bytes read."""

    def __init__(self, stream, raw, limit: int) -> None:
        self.stream, self.raw, self.limit = stream, raw, limit
        self.total = 0
        self.since_newline = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        n = len(data)
        self.total += n
        if self.total > self.limit:
            raise _ReadLimit(f"it holds more than {self.limit >> 20} MB of text")
        nl = data.rfind(b"\n")
        self.since_newline = n - nl - 1 if nl >= 0 else self.since_newline + n
        if self.since_newline > MAX_LINE_BYTES:
            raise _ReadLimit(f"a line is longer than {MAX_LINE_BYTES >> 20} MB (not a table of rows)")
        if self.raw is not self.stream and self.total > 16 << 20:
            packed = max(self.raw.tell(), 1)
            if self.total > MAX_EXPANSION * packed:
                raise _ReadLimit(
                    f"it expands more than {MAX_EXPANSION}x when decompressed (a compression bomb?); decompress it "
                    "yourself if it is genuine"
                )
        buffer[:n] = data
        return n

    def close(self) -> None:
        try:
            if self.stream is not self.raw:
                self.stream.close()
            self.raw.close()
        finally:
            super().close()


def _open_limited(path: Path, limit: int) -> io.BufferedReader:
    raw = open(path, "rb")  # noqa: SIM115 - closed by the reader
    head = raw.read(6)
    raw.seek(0)
    if head[:2] == b"\x1f\x8b":
        stream = gzip.GzipFile(fileobj=raw)
    elif head[:3] == b"BZh":
        stream = bz2.BZ2File(raw)
    elif head[:6] == b"\xfd7zXZ\x00":
        stream = lzma.LZMAFile(raw)
    else:
        stream = raw
    return io.BufferedReader(_LimitedReader(stream, raw, limit), buffer_size=1 << 16)


def _read_file(cfg: AuditConfig, spec: DataFile, key: str) -> tuple[pd.DataFrame, str]:
    """Read one data file, bounded while reading: size, rows, columns, line length, decompression ratio."""
    ds = cfg.dataset
    path = cfg.resolve(spec.path, key=f"{key}.path")
    limit = ds.max_file_mb << 20
    fmt = spec.format
    if fmt == "auto":
        fmt = "parquet" if path.suffix.lower() in {".parquet", ".pq"} else "csv"
    try:
        size = path.stat().st_size if path.is_file() else None
    except (OSError, ValueError):
        size = None
    if size is not None and size > limit:
        raise DataError(
            f"{key}.path: '{path}' is {size >> 20} MB, more than dataset.max_file_mb={ds.max_file_mb}; raise the cap "
            "if the file is genuine, or sample it"
        )
    digest = verified_digest(path, spec.sha256, path_key=f"{key}.path", sha_key=f"{key}.sha256")
    if fmt == "parquet":
        df = _read_parquet(cfg, path, key)
    else:
        df = _read_csv(cfg, spec, path, key, limit)
    if len(df) == 0:
        raise DataError(f"{key}.path: '{path}' has a header but no rows")
    _check_headers(cfg, df, spec, path, key, fmt)
    df.columns = [str(c) for c in df.columns]
    df.attrs.setdefault("file_columns", list(df.columns))
    df.index = pd.RangeIndex(1, len(df) + 1)  # data row numbers (1-based, after the header), kept through filters
    return df, digest


def _read_parquet(cfg: AuditConfig, path: Path, key: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = cfg.dataset
    try:
        pf = pq.ParquetFile(path)
        md = pf.metadata
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{key}.path: '{path}' is not a readable Parquet file ({exc.__class__.__name__})") from None
    if md.num_columns > ds.max_columns:
        raise DataError(
            f"{key}.path: '{path}' has {md.num_columns} columns, more than dataset.max_columns={ds.max_columns}; "
            "select the columns you need (dataset.columns reads only those) or raise the cap"
        )
    if ds.max_rows is not None and md.num_rows > ds.max_rows:
        raise DataError(
            f"{key}.path: '{path}' has {md.num_rows} rows, more than dataset.max_rows={ds.max_rows}; "
            "sample the file or raise the cap"
        )
    expanded = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
    if expanded > ds.max_file_mb << 20:
        raise DataError(
            f"{key}.path: '{path}' expands to {expanded >> 20} MB, more than dataset.max_file_mb={ds.max_file_mb}; "
            "raise the cap if the file is genuine, or sample it"
        )
    nested = [f.name for f in pf.schema_arrow if pa.types.is_nested(f.type)]
    if nested:
        raise DataError(
            f"{key}.path: column(s) {nested[:5]} of '{path}' hold lists or structures, not single values; "
            "flatten them into columns or drop them from the file"
        )
    wanted = None
    if ds.columns is not None:
        wanted = _needed_columns(cfg, list(pf.schema_arrow.names))
    try:
        df = pf.read(columns=wanted).to_pandas()
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{key}.path: '{path}' cannot be read as Parquet ({exc.__class__.__name__})") from None
    df.attrs["file_columns"] = [str(c) for c in pf.schema_arrow.names]
    return df


def _needed_columns(cfg: AuditConfig, have: list[str]) -> list[str]:
    """With ``dataset.columns``: those, the target, the index column and what the filter and the fairness config read."""
    ds = cfg.dataset
    want = [*ds.columns, ds.target]
    if ds.index_col:
        want.append(ds.index_col)
    if ds.filter:
        from audit.expr import parse_filter

        want += list(parse_filter(ds.filter).columns)
    want += list(cfg.fairness.sensitive_features) + [d.source for d in cfg.fairness.derived.values()]
    return [c for c in dict.fromkeys(want) if c in have]


def _read_csv(cfg: AuditConfig, spec: DataFile, path: Path, key: str, limit: int) -> pd.DataFrame:
    ds = cfg.dataset
    opts = ds.csv
    kwargs = dict(
        sep=opts.sep,
        header=None if opts.header == "none" else "infer",
        names=opts.names,
        na_values=opts.na_values or None,
        skipinitialspace=opts.skipinitialspace,
        encoding=opts.encoding,
        skiprows=spec.skiprows or None,
        engine="c",
    )
    try:
        with _open_limited(path, limit) as fh:  # the header alone: count the columns before reading rows
            head = pd.read_csv(fh, nrows=0, **kwargs)
        if head.shape[1] > ds.max_columns:
            raise DataError(
                f"{key}.path: '{path}' has {head.shape[1]} columns, more than dataset.max_columns={ds.max_columns}; "
                "select the columns you need (dataset.columns reads only those) or raise the cap"
            )
        usecols = _needed_columns(cfg, [str(c) for c in head.columns]) if ds.columns is not None else None
        nrows = None if ds.max_rows is None else ds.max_rows + 1
        with _open_limited(path, limit) as fh:
            df = pd.read_csv(fh, nrows=nrows, usecols=usecols, **kwargs)
        df.attrs["file_columns"] = [str(c) for c in head.columns]
    except _ReadLimit as exc:
        raise DataError(
            f"{key}.path: '{path}' was refused while reading: {exc}; raise dataset.max_file_mb if the file is genuine"
        ) from None
    except LookupError:
        raise DataError(
            f"dataset.csv.encoding: {opts.encoding!r} is not a known text encoding; use e.g. utf-8 or latin-1"
        ) from None
    except UnicodeDecodeError:
        raise DataError(
            f"{key}.path: '{path}' is not valid {opts.encoding} text; set dataset.csv.encoding (e.g. latin-1)"
        ) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{key}.path: '{path}' is empty; point the config at a file with a header and rows") from None
    except (pd.errors.ParserError, ValueError, OSError, EOFError, gzip.BadGzipFile, lzma.LZMAError) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise DataError(f"{key}.path: '{path}' cannot be parsed as csv: {first}; check dataset.csv options") from None
    if ds.max_rows is not None and len(df) > ds.max_rows:
        raise DataError(
            f"{key}.path: '{path}' has more than dataset.max_rows={ds.max_rows} rows; sample the file or raise the cap"
        )
    return df


_MANGLED = re.compile(r"^(.*)\.(\d+)$")
_UNNAMED = re.compile(r"^Unnamed: \d+$")


def _could_be_numeric(col: pd.Series, share: float) -> bool:
    """False only when fewer than ``share`` of the present values of a text column could be numbers, decided without
    converting the column: a value ``pd.to_numeric`` reads as a number has a digit or spells infinity, so counting
    those (one RE2 pass in Arrow) bounds the numeric share from above. Anything but an Arrow text column: True."""
    if not isinstance(col.array, pd.arrays.ArrowStringArray):
        return True
    import pyarrow.compute as pc

    arr = col.array.__arrow_array__()
    present = len(arr) - arr.null_count
    if present == 0:
        return True
    hits = pc.sum(pc.match_substring_regex(arr, r"\p{N}|^\s*[-+]?(?i:inf|infinity)\s*$")).as_py() or 0
    return hits >= share * present


def _check_headers(cfg: AuditConfig, df: pd.DataFrame, spec: DataFile, path: Path, key: str, fmt: str) -> None:
    """Header quirks of real files, each refused with the exact fix: repeated names, a second header row, an unnamed
    index column, a wrong separator."""
    ds = cfg.dataset
    opts = ds.csv
    cols = [str(c) for c in df.columns]
    dupes = sorted({c for c in cols if cols.count(c) > 1})
    mangled = [c for c in cols if (m := _MANGLED.match(c)) and m.group(1) in cols and fmt == "csv" and not opts.names]
    if dupes or mangled:
        repeats = dupes or sorted({_MANGLED.match(c).group(1) for c in mangled})
        note = f" (pandas renamed the repeats to {mangled[:5]})" if mangled else ""
        raise DataError(
            f"{key}.path: duplicate column name(s) {repeats} in '{path}'{note}; rename them in the file, or set "
            f"dataset.csv.header: none with unique dataset.csv.names and {key}.skiprows: {spec.skiprows + 1}"
        )
    if df.shape[1] == 1 and opts.sep not in {"\t"} and fmt == "csv":
        raise DataError(
            f"{key}.path: '{path}' parsed into a single column with dataset.csv.sep={opts.sep!r}; "
            "set the right separator (e.g. ';')"
        )
    referenced = {ds.index_col, *ds.drop, *(ds.columns or ())}
    for c in cols:
        if _UNNAMED.match(c) and c not in referenced and (ds.columns is None):
            v = pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
            seq = len(v) > 1 and bool(np.all(np.diff(v) == 1))
            what = f"holds row numbers {v[0]:g}..{v[-1]:g} (a saved index)" if seq else "has no name in the header"
            raise DataError(
                f"{key}.path: column '{c}' of '{path}' {what}; set dataset.index_col: '{c}' to use it as the row id, "
                f"or add '{c}' to dataset.drop"
            )
    if fmt != "csv" or len(df) < 3:
        return
    # a second header row: text in the first row of columns whose other rows are numbers
    first = df.iloc[0]
    suspects = []
    for c in df.columns:
        rest = df[c].iloc[1:]
        if pd.api.types.is_numeric_dtype(rest) or not _could_be_numeric(rest, 0.9):
            continue
        num = pd.to_numeric(rest, errors="coerce")
        share = num.notna().sum() / max(int(rest.notna().sum()), 1)
        cell = first[c]
        if share >= 0.9 and isinstance(cell, str) and pd.isna(pd.to_numeric(cell, errors="coerce")):
            suspects.append(cell)
    numeric_dtype = sum(pd.api.types.is_numeric_dtype(df[c]) for c in df.columns)
    if len(suspects) >= 2 and len(suspects) >= 0.5 * (len(suspects) + numeric_dtype):
        what = "a second header row" if opts.header != "none" else "a header row"
        fix = (
            f"set {key}.skiprows: {spec.skiprows + 1} to use the second row as the header"
            if opts.header != "none"
            else f"set dataset.csv.header: infer (or {key}.skiprows: {spec.skiprows + 1})"
        )
        raise DataError(f"{key}.path: the first data row of '{path}' looks like {what} ({suspects[:4]}); {fix}")


# ---------------------------------------------------------------------------------------------------- parquet out
def write_parquet(path: Path, frames, *, schema=None, row_group_size: int | None = None) -> int:
    """Write DataFrames to one Parquet file as they come; returns the rows written.

    The file is written under a temporary name beside ``path`` and renamed when complete, so a reader never sees a
    partial file, and a failure leaves nothing. ``schema``: a ``callable(frame) -> pyarrow.Schema`` (or None, to take
    each frame's own types), so frames with all-null columns still write the same types.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = None
    rows = 0
    try:
        for frame in frames:
            table = pa.Table.from_pandas(frame, preserve_index=False, schema=schema(frame) if schema else None)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table, row_group_size=row_group_size)
            rows += len(frame)
        if writer is None:
            raise ValueError(f"nothing to write to '{path}'")
        writer.close()
        writer = None
        tmp.replace(path)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return rows


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
    text = repr(value)
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
        if c not in ds.features.numeric and not _could_be_numeric(col, 0.9):
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
    """Load, verify and split the dataset described by ``cfg.dataset``.

    Raises
    ------
    DataError
        For any file, checksum or column problem, with a one-line message naming the key or column.
    """
    from audit.references import check_columns, check_references

    ds = cfg.dataset
    files: dict[str, str] = {}
    notes: list[str] = []
    train_df, digest = _read_file(cfg, ds.train, "dataset.train")
    files[str(ds.train.path)] = digest
    test_df = None
    if ds.test is not None:
        test_df, digest = _read_file(cfg, ds.test, "dataset.test")
        files[str(ds.test.path)] = digest
        if list(test_df.columns) != list(train_df.columns):
            raise DataError(
                f"dataset.test: columns differ from the training file: {list(test_df.columns)} vs {list(train_df.columns)}"
            )
    # every key that names a column of the file, before any work
    check_columns(cfg, train_df.attrs.get("file_columns", list(train_df.columns)), list(train_df.columns))
    for frame in (train_df, test_df):
        if frame is not None:
            frame.attrs.clear()  # pandas deep-copies attrs into every column it hands out: drop them once used

    train_df = apply_filter(cfg, train_df, "training file")
    if test_df is not None:
        test_df = apply_filter(cfg, test_df, "test file")
    n_read = len(train_df)

    derived = cfg.fairness.derived
    columns = list(train_df.columns)
    for name in derived:
        if name in columns:
            raise DataError(f"fairness.derived.{name}: '{name}' already is a column; pick another name")
    if ds.index_col and ds.index_col == ds.target:
        raise DataError(f"dataset.index_col: '{ds.index_col}' is the target column; pick the row-id column")
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
    derived_names = list(derived)
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

    # ------------------------------------------------------------------ labels
    y_all_raw = _labels(train_df, cfg, "training")
    pos = str(ds.positive_label)
    present = sorted(set(y_all_raw))
    if pos not in present:
        raise DataError(
            f"dataset.positive_label: {ds.positive_label!r} does not occur in column '{ds.target}'; "
            f"its values are {present[:10]}"
        )
    if len(present) < 2:
        raise DataError(f"dataset.target: column '{ds.target}' has a single class ({present[0]!r}); an audit needs two")
    negative_label = next(v for v in present if v != pos) if len(present) == 2 else f"not {pos}"
    if len(present) > 2:
        negatives = [v for v in present if v != pos]
        notes.append(f"target '{ds.target}' has {len(present)} classes; {negatives} are treated as the negative class")
    favourable = None
    if ds.favourable_label is not None:
        fav = str(ds.favourable_label)
        if fav != pos and fav not in present:
            raise DataError(
                f"dataset.favourable_label: {fav!r} does not occur in column '{ds.target}'; its values are {present[:10]}"
            )
        favourable = pos if fav == pos else negative_label if len(present) == 2 else f"not {pos}"

    # ------------------------------------------------------------------ feature kinds, on the whole training file
    non_features = {ds.target, *ds.drop, *derived, *([ds.index_col] if ds.index_col else [])}
    selected = [c for c in columns if c not in derived_names]
    if ds.columns is not None:
        keep = set(ds.columns)
        selected = [c for c in selected if c in keep]
    feature_cols = [c for c in selected if c not in non_features]
    if not feature_cols:
        raise DataError("dataset.drop: no feature columns are left; drop fewer columns")
    kinds = _infer_kinds(cfg, train_df, feature_cols, "training", notes)
    if test_df is not None:  # numbers with stray text in the test file are missing values, counted in the notes
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

    # ------------------------------------------------------------------ split: depends on the data and the seed only
    y_all = (y_all_raw == pos).astype(np.int64)
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
        y_test_raw, y_train_raw = y_all_raw[te_idx], y_all_raw[tr_idx]
    else:
        y_train_raw = y_all_raw
        y_test_raw = _labels(test_df, cfg, "test")
    unknown_test = sorted(set(y_test_raw) - set(present))
    if unknown_test:
        raise DataError(
            f"dataset.label_map: test labels {unknown_test[:5]} do not occur in the training labels {present}; "
            "map them with dataset.label_map"
        )

    # ------------------------------------------------------------------ features
    features: list[Feature] = []
    for c in feature_cols:
        col = train_df[c]
        if col.isna().all():
            raise DataError(f"column '{c}': every value is missing in the training data; add it to dataset.drop")
        if col.nunique(dropna=True) < 2:
            raise DataError(
                f"column '{c}': constant in the training data (every value is {col.dropna().iloc[0]!r}); "
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

    sensitive = list(dict.fromkeys([*cfg.fairness.sensitive_features, *derived_names]))  # derived ones are sensitive
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
    for f in features:
        if f.is_categorical:
            values = category_strings(test_df[f.name])
            unseen = sorted(set(values) - set(f.levels))
            if not unseen:
                continue
            n_rows = int(np.isin(values, unseen).sum())
            if ds.unseen_categories == "error":
                raise DataError(
                    f"column '{f.name}': {n_rows} audit row(s) have level(s) {unseen[:5]} never seen in training; "
                    "set dataset.unseen_categories: unknown to score them through the model's unknown slot"
                )
            notes.append(
                f"column '{f.name}': {n_rows} audit row(s) with unseen level(s) {unseen[:5]} scored as unknown"
            )
    schema = Schema(tuple(features), ds.target, pos, negative_label, tuple(sensitive), favourable)
    check_references(cfg, schema, sensitive)
    keep = feature_cols + [s for s in sensitive if s not in feature_cols]
    y_train = (y_train_raw == pos).astype(np.int64)
    y_test = (y_test_raw == pos).astype(np.int64)
    if len(train_df) < 10 or len(test_df) < 2:
        raise DataError(f"dataset: too few rows after loading ({len(train_df)} train, {len(test_df)} test)")
    if len(np.unique(y_test)) < 2:
        only = pos if y_test[0] == 1 else negative_label
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
    if ds.filter:
        notes.append(f"dataset.filter {ds.filter!r} kept {n_read} training-file rows")
    out = Dataset(
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
    )
    return out


def dataset_fingerprint(ds: Dataset) -> str:
    """Hash of the loaded data (both splits), independent of file encoding."""
    h = hashlib.sha256()
    for frame, y in ((ds.X_train, ds.y_train), (ds.X_test, ds.y_test)):
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        h.update(np.ascontiguousarray(y).tobytes())
    h.update(json.dumps(ds.schema.to_json(), sort_keys=True).encode())
    return h.hexdigest()
