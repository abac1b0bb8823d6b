"""Dataset loading: the three shipped datasets, checksums, and bad-input errors."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from audit.config import config_from_dict, load_config
from audit.data import load_dataset
from audit.errors import DataError
from audit.schema import Feature, Schema
from tests.conftest import ROOT, base_config, synthetic_frame


@pytest.mark.parametrize(
    ("name", "n_train", "n_test", "n_features", "pos_rate"),
    [
        ("adult", 32561, 16281, 13, 0.2408),  # fnlwgt is dataset.weight, not a feature
        ("german_credit", 700, 300, 20, 0.70),
        ("bank_marketing", 33908, 11303, 15, 0.117),
    ],
)
def test_shipped_datasets_load_with_checksums(name, n_train, n_test, n_features, pos_rate):
    ds = load_dataset(load_config(ROOT / "configs" / f"{name}.yaml"))
    assert (len(ds.X_train), len(ds.X_test)) == (n_train, n_test)
    assert len(ds.schema.features) == n_features
    assert ds.y_train.mean() == pytest.approx(pos_rate, abs=0.002)
    assert all(len(h) == 64 for h in ds.files.values())


def test_adult_quirks_are_handled():
    ds = load_dataset(load_config(ROOT / "configs" / "adult.yaml"))
    wc = ds.schema.feature("workclass")
    assert "missing" in wc.levels and not any(lv.startswith(" ") for lv in wc.levels)
    assert ds.y_test.mean() == pytest.approx(3846 / 16281)  # trailing '.' mapped by label_map
    assert ds.schema.feature("age").kind == "numeric"


def _cfg(tmp_path, **changes):
    cfg = base_config()
    for dotted, value in changes.items():
        node = cfg
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return config_from_dict(cfg, base_dir=tmp_path, name="t")


def _write(tmp_path, frame: pd.DataFrame, name="data.csv", **kw):
    frame.to_csv(tmp_path / name, index=False, **kw)


BAD_DATA = [
    ("missing file", lambda p: None, {}, r"dataset\.train\.path: file '.*data\.csv' does not exist"),
    (
        "checksum mismatch",
        lambda p: _write(p, synthetic_frame()),
        {"dataset__train__sha256": "0" * 64},
        r"dataset\.train\.sha256: checksum mismatch",
    ),
    (
        "target absent",
        lambda p: _write(p, synthetic_frame()),
        {"dataset__target": "yy"},
        r"dataset\.target: column 'yy' not found \(did you mean 'y'\?\)",
    ),
    (
        "positive label absent",
        lambda p: _write(p, synthetic_frame()),
        {"dataset__positive_label": "maybe"},
        r"dataset\.positive_label: 'maybe' does not occur in column 'y'",
    ),
    (
        "single class",
        lambda p: _write(p, synthetic_frame().assign(y="yes")),
        {},
        r"dataset\.target: column 'y' has a single class",
    ),
    (
        "NaN in target",
        lambda p: _write(p, synthetic_frame().assign(y=lambda d: d.y.where(d.index > 3))),
        {},
        r"column 'y' has 4 missing value\(s\)",
    ),
    ("empty file", lambda p: (p / "data.csv").write_text(""), {}, r"is empty"),
    ("header only", lambda p: (p / "data.csv").write_text("x1,x2,y\n"), {}, r"has a header but no rows"),
    (
        "non-utf8",
        lambda p: (p / "data.csv").write_bytes("x1,c,y\n1,caf\xe9,yes\n".encode("latin-1")),
        {},
        r"not valid utf-8 text; set dataset\.csv\.encoding",
    ),
    (
        "wrong separator",
        lambda p: _write(p, synthetic_frame(), sep=";"),
        {},
        r"single column with dataset\.csv\.sep=','; set the right separator",
    ),
    (
        "duplicate columns",
        lambda p: (p / "data.csv").write_text("a,a,y\n1,2,yes\n3,4,no\n"),
        {},
        r"duplicate column name",
    ),
    (
        "all-NaN feature",
        lambda p: _write(p, synthetic_frame().assign(x2=np.nan)),
        {},
        r"column 'x2': every value is missing",
    ),
    (
        "infinite values",
        lambda p: _write(p, synthetic_frame().assign(x2=lambda d: d.x2.where(d.index > 5, np.inf))),
        {},
        r"column 'x2': contains infinite values",
    ),
    (
        "sensitive feature absent",
        lambda p: _write(p, synthetic_frame()),
        {"fairness__sensitive_features": ["gender"]},
        r"fairness\.sensitive_features\[0\]: column 'gender' not found",
    ),
    (
        "drop absent column",
        lambda p: _write(p, synthetic_frame()),
        {"dataset__drop": ["nope"]},
        r"dataset\.drop\[0\]: column 'nope' not found",
    ),
    (
        "numeric override on text",
        lambda p: _write(p, synthetic_frame()),
        {"dataset__features": {"numeric": ["colour"]}},
        r"column 'colour' has non-numeric values",
    ),
    (
        "too many levels",
        lambda p: _write(p, synthetic_frame().assign(x2=lambda d: [f"id{i}" for i in range(len(d))])),
        {"dataset__max_categories": 50},
        r"column 'x2': 560 distinct levels exceed dataset\.max_categories=50",
    ),
]


@pytest.mark.parametrize(("case", "setup", "changes", "message"), BAD_DATA, ids=[b[0] for b in BAD_DATA])
def test_bad_data_gives_one_clear_error(tmp_path, case, setup, changes, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        load_dataset(_cfg(tmp_path, **changes))


def test_given_test_file_and_gzip_and_parquet(tmp_path):
    f = synthetic_frame()
    with gzip.open(tmp_path / "train.csv.gz", "wt") as fh:
        f.iloc[:600].to_csv(fh, index=False)
    f.iloc[600:].to_parquet(tmp_path / "test.parquet")
    cfg = base_config("train.csv.gz")
    cfg["dataset"]["test"] = {"path": "test.parquet"}
    ds = load_dataset(config_from_dict(cfg, base_dir=tmp_path))
    assert (len(ds.X_train), len(ds.X_test)) == (600, 200)


def test_split_is_seeded_and_stratified(workdir):
    a = load_dataset(config_from_dict(base_config(), base_dir=workdir))
    b = load_dataset(config_from_dict(base_config(), base_dir=workdir))
    c = load_dataset(config_from_dict({**base_config(), "seed": 1}, base_dir=workdir))
    pd.testing.assert_frame_equal(a.X_test, b.X_test)
    assert not a.X_test.equals(c.X_test)
    assert abs(a.y_train.mean() - a.y_test.mean()) < 0.01


def test_codes_round_trip_and_unseen_levels_go_to_unknown_slot():
    s = Schema((Feature("x", "numeric"), Feature("c", "categorical", ("a", "b"))), "y", "1", "0")
    df = pd.DataFrame({"x": [1.0, np.nan, 3.0], "c": ["b", "a", "never seen"]})
    codes = s.to_codes(df)
    np.testing.assert_array_equal(codes[:, 1], [1, 0, 2])
    back = s.from_codes(codes)
    assert list(back["c"]) == ["b", "a", "<unknown>"]
    with pytest.raises(DataError, match=r"lacks feature column\(s\) \['c'\]"):
        s.to_codes(df[["x"]])


@pytest.mark.parametrize("name", ["adult", "german_credit", "bank_marketing"])
def test_fast_codes_equal_the_reference_codes_on_shipped_data(name):
    """Issue 17: the vectorised coding gives exactly the codes of the value-by-value path, on every shipped row."""
    ds = load_dataset(load_config(ROOT / "configs" / f"{name}.yaml"))
    for frame in (ds.X_train, ds.X_test):
        np.testing.assert_array_equal(ds.schema.to_codes(frame), ds.schema.to_codes_reference(frame))


def test_fast_codes_equal_the_reference_codes_on_messy_columns(tmp_path):
    """Every column type a loaded or caller-built frame can hold: Arrow and object text, numbers among text, integer
    codes with value labels, pandas categoricals, booleans, missing values and levels never seen in training."""
    from tests.messy import generate

    cfg = config_from_dict(generate.config(str(generate.write("clean", tmp_path))))
    ds = load_dataset(cfg)
    np.testing.assert_array_equal(ds.schema.to_codes(ds.X_test), ds.schema.to_codes_reference(ds.X_test))

    s = Schema(
        (
            Feature("t", "categorical", ("a", "b", "3", "missing")),
            Feature("o", "categorical", ("a", "b", "3")),
            Feature("n", "categorical", ("1", "2", "7.5")),
            Feature("l", "categorical", ("male", "female"), labels=(("1", "male"), ("2", "female"))),
            Feature("k", "categorical", ("x", "y")),
            Feature("f", "categorical", ("True", "False")),
            Feature("v", "numeric"),
            Feature("w", "numeric"),
        ),
        "y",
        "1",
        "0",
    )
    df = pd.DataFrame(
        {
            "t": pd.array(["a", None, "3", "zz", "b", "a"], dtype="str"),
            "o": pd.Series(["a", 3, None, "b", 3.0, "q"], dtype=object),
            "n": [1, 2, 7.5, np.nan, 9, 1],
            "l": [1, 2, 2, np.nan, 3, 1],
            "k": pd.Categorical(["x", "y", None, "x", "y", "x"]),
            "f": [True, False, True, False, True, False],
            "v": [1.5, np.nan, 2.0, 3.0, -1.0, 0.0],
            "w": pd.Series(["1", "2.5", "x", None, "4", "5"], dtype=object),
        }
    )
    fast, ref = s.to_codes(df), s.to_codes_reference(df)
    np.testing.assert_array_equal(fast, ref)
    assert fast[:, 0].tolist() == [0, 3, 2, 4, 1, 0]  # None -> "missing", never-seen 'zz' -> unknown slot 4


def test_numeric_prefilter_never_rejects_a_column_pandas_would_read_as_numbers():
    """Issue 17: kind inference and the second-header check skip converting a text column when too few values could
    be numbers. Every value pandas reads as a number must count as possible, or a column would be misjudged."""
    from audit.files import could_be_numeric

    rng = np.random.default_rng(0)
    pieces = ["1", "0", "9", ".", "-", "+", "e", "E", " ", "inf", "Infinity", "nan", "x", "٣", "_", ",", "0x1"]
    values = ["".join(rng.choice(pieces, size=rng.integers(1, 5))) for _ in range(5000)]
    values += ["1e5", " 42 ", "-inf", "+Infinity", "INF", "3.", ".5", "1_000", "٣", "NaN", "None", ""]
    for v in values:
        numeric = bool(pd.notna(pd.to_numeric(pd.Series([v], dtype="str"), errors="coerce")[0]))
        if numeric:
            assert could_be_numeric(pd.Series([v], dtype="str"), 1.0), v
    col = pd.Series(["a", "b", "1", None] * 10, dtype="str")
    assert not could_be_numeric(col, 0.9) and could_be_numeric(col, 0.3)
