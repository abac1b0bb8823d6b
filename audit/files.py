"""Reading data files, bounded while reading: size, rows, columns, line length and decompression ratio, with the
header quirks of real files (a second header row, repeated or unnamed columns, a wrong separator) refused with
the exact fix. Checksums, and atomic Parquet writing.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import re
from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import AuditConfig, DataFile
from audit.errors import DataError


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


def read_file(cfg: AuditConfig, spec: DataFile, key: str) -> tuple[pd.DataFrame, str]:
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
    """With ``dataset.columns``: those, the target, the index and weight columns and what the filter and the fairness
    config read."""
    ds = cfg.dataset
    want = [*ds.columns, ds.target]
    want += [c for c in (ds.index_col, ds.weight) if c]
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
        raw_header = None
        if opts.header != "none" and not opts.names:  # the names as written: pandas renames repeats ("x.1")
            with _open_limited(path, limit) as fh:
                raw = pd.read_csv(fh, nrows=1, header=None, dtype=str, keep_default_na=False, **{
                    k: v for k, v in kwargs.items() if k not in ("header", "names", "na_values")})  # fmt: skip
            raw_header = [str(v) for v in raw.iloc[0]] if len(raw) else None
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
        if raw_header is not None and len(raw_header) == head.shape[1]:
            df.attrs["raw_header"] = raw_header
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


def could_be_numeric(col: pd.Series, share: float) -> bool:
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
    raw = df.attrs.get("raw_header")
    if raw is not None:  # decided on the header as written: "x1" and "x1.1" may well be two columns
        written = [c for c in raw if c != ""]
        dupes = sorted({c for c in written if written.count(c) > 1})
        mangled = [c for c, r in zip(df.attrs.get("file_columns", cols), raw, strict=False) if c != r and r in dupes]
    else:
        dupes = sorted({c for c in cols if cols.count(c) > 1})
        mangled = [
            c for c in cols if (m := _MANGLED.match(c)) and m.group(1) in cols and fmt == "csv" and not opts.names
        ]
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
    referenced = {ds.index_col, ds.weight, *ds.drop, *(ds.columns or ())}
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
        if pd.api.types.is_numeric_dtype(rest) or not could_be_numeric(rest, 0.9):
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
