"""Issue 21: a user's own model is scored exactly as it scores itself, in every format it can be shipped in.

The user's model is a scikit-learn pipeline with its own preprocessing (a median imputer for numbers, a one-hot
encoder that ignores unknown levels for text), fitted on more rows than the audit's training file: it knows a
charge level that only the audit's test rows have, an integer-coded column is declared categorical with value
labels, and numbers and text have missing values. Each test audits it in one format and compares the report's
scores (``scores.parquet``) with the model's own output on the same raw rows of the test file, for the favourable
class first and last, with integer and with string class labels.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from tests.conftest import write_config

TOLERANCE = 1e-6
NUMERIC, TEXT = ["age", "priors"], ["charge", "sex"]
FEATURES = [*NUMERIC, *TEXT, "race"]


def recidivism(seed: int = 0, n: int = 900, *, text_missing: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) of a recidivism-like file: a rare charge level only in the test rows, missing values, an
    integer-coded race column; the label ``recid`` is 1 for a new offence."""
    rng = np.random.default_rng(seed)
    charges = np.array([f"C-{k:02d}" for k in range(10)], dtype=object)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 70, n),
            "priors": rng.poisson(2.0, n).astype(float),
            "charge": rng.choice(charges, n),
            "sex": rng.choice(["Male", "Female"], n, p=[0.75, 0.25]),
            "race": rng.integers(1, 5, n),
        }
    )
    frame.loc[rng.random(n) < 0.06, "priors"] = np.nan
    if text_missing:
        frame.loc[rng.random(n) < 0.05, "charge"] = np.nan
    test = frame.index >= 600
    rare = np.flatnonzero(test)[::12]
    frame.loc[rare, "charge"] = "C-RARE"  # a level the audit's training rows lack; the user's model knows it
    logit = (-0.6 + 0.45 * frame["priors"].fillna(2) - 0.04 * (frame["age"] - 40)
             + 2.5 * (frame["charge"] == "C-RARE") + 0.8 * frame["charge"].isin(charges[:3]) + 0.3 * (frame["race"] == 2))  # fmt: skip
    frame["recid"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return frame.iloc[:600].reset_index(drop=True), frame.iloc[600:].reset_index(drop=True)


def user_pipeline(frame: pd.DataFrame, y, *, text_imputer: bool = True):
    """The user's own model: preprocessing inside, fitted on every row it had (audit train and test rows)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    text = OneHotEncoder(handle_unknown="ignore")
    if text_imputer:  # skl2onnx converts no imputer of text with NaN: the ONNX cases have no missing text
        text = make_pipeline(SimpleImputer(strategy="constant", fill_value="NA"), text)
    ct = ColumnTransformer(
        [("num", SimpleImputer(strategy="median"), NUMERIC), ("text", text, TEXT),
         ("race", OneHotEncoder(handle_unknown="ignore"), ["race"])]
    )  # fmt: skip
    return make_pipeline(ct, LogisticRegression(max_iter=1000)).fit(frame[FEATURES], y)


LABELS = {"int": {0: 0, 1: 1}, "str": {0: "no", 1: "yes"}}


@pytest.fixture(scope="module", params=[("int", 0), ("str", "yes")], ids=["int-0-first", "str-yes-last"])
def case(request, tmp_path_factory):
    """A folder with train.csv and test.csv, the user's pipeline fitted on both, and the positive label: with
    integer labels the favourable class 0 is the model's first column; with text labels "yes" its last."""
    kind, positive = request.param
    folder = tmp_path_factory.mktemp(f"ext-{kind}-{positive}")
    train, test = recidivism()
    for frame in (train, test):
        frame["recid"] = frame["recid"].map(LABELS[kind])
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    both = pd.concat([train, test], ignore_index=True)
    pipe = user_pipeline(both, both["recid"])
    return folder, pipe, positive


def audit_config(name: str, positive, model: dict | None = None, *, value_labels: bool = True) -> dict:
    """Every section off but performance: these tests are about the scores."""
    off = {"enabled": False}
    cfg = {
        "name": name,
        "seed": 0,
        "dataset": {
            "train": {"path": "train.csv"}, "test": {"path": "test.csv"}, "target": "recid",
            "positive_label": positive, "features": {"categorical": ["race"]},
        },
        "model": {"source": "load", **(model or {})},
        "modules": {k: off for k in ("permutation_importance", "partial_dependence", "ale", "interactions",
                                     "weak_segments", "stability", "faithfulness", "contrastive", "drift",
                                     "data_quality")},
        "fairness": {"enabled": False},
        "local": {"enabled": False},
        "network": {"enabled": False},
        "report": {"output_dir": "reports", "formats": ["json"], "compare": {"enabled": False}},
        "compute": {"threads": 1},  # no figure worker process for a section's two figures
    }  # fmt: skip
    if value_labels:
        cfg["dataset"]["value_labels"] = {"race": {1: "A", 2: "B", 3: "C", 4: "D"}}
    return cfg


def raw_test_rows(folder) -> pd.DataFrame:
    """The test file's rows as the user reads them (the model's own view)."""
    return pd.read_csv(folder / "test.csv")


def audited_scores(folder, name: str) -> tuple[np.ndarray, dict]:
    """The report's scores in test-file row order, and the model's provenance."""
    run = folder / "reports" / name / "latest"
    scores = pd.read_parquet(run / "scores.parquet").sort_values("data_row")
    return scores["score"].to_numpy(), json.loads((run / "report.json").read_text())["provenance"]["model"]


def own_scores(pipe, rows: pd.DataFrame, positive) -> np.ndarray:
    return pipe.predict_proba(rows[FEATURES])[:, list(pipe.classes_).index(positive)]


def run(folder, cfg) -> int:
    return main(["run", str(write_config(folder, cfg, f"{cfg['name']}.yaml")), "-q"])


def assert_exact(folder, name: str, want: np.ndarray) -> dict:
    got, model = audited_scores(folder, name)
    assert len(got) == len(want)
    worst = float(np.abs(got - want).max())
    assert worst <= TOLERANCE, f"max |report score - model's own| = {worst}"
    rare = raw_test_rows(folder)["charge"].eq("C-RARE").to_numpy()
    assert (
        rare.sum() >= 10 and np.abs(got[rare] - want[rare]).max() <= TOLERANCE
    )  # the level the audit never trained on
    return model


# ------------------------------------------------------------------------------------ scikit-learn objects
def test_value_labels_that_merge_codes_are_refused_for_a_model_from_another_tool(case, capsys):
    """Codes 3 and 4 of race both labelled "C": the label cannot say which code a row had, so the model could not
    receive it. Refused before anything is scored, with exit 2 and the fix (it used to end at load with exit 3, "the
    audit would send column 'race' ... as 3 where the data has 4"); nothing is written."""
    import skops.io as sio

    folder, pipe, positive = case
    sio.dump(pipe, folder / "merged.skops")
    trusted = [t for t in sio.get_untrusted_types(file=folder / "merged.skops")]
    cfg = audit_config("merged", positive, {"path": "merged.skops", "trusted_types": trusted})
    cfg["dataset"]["value_labels"] = {"race": {1: "A", 2: "B", 3: "C", 4: "C"}}
    capsys.readouterr()
    assert run(folder, cfg) == 2
    err = capsys.readouterr().err
    assert "dataset.value_labels.race: codes 3 and 4 share the label 'C'" in err and "own label" in err, err
    assert not (folder / "reports" / "merged").exists()


def test_skops_file(case):
    import skops.io as sio

    folder, pipe, positive = case
    sio.dump(pipe, folder / "model.skops")
    trusted = [t for t in sio.get_untrusted_types(file=folder / "model.skops")]
    cfg = audit_config("skops", positive, {"path": "model.skops", "trusted_types": trusted})
    assert run(folder, cfg) in (0, 1)
    model = assert_exact(folder, "skops", own_scores(pipe, raw_test_rows(folder), positive))
    assert model["output_column"]["chosen_by"].startswith("the estimator's classes_")
    assert model["output_column"]["column"] == list(pipe.classes_).index(positive)
    assert model["load_check"]["raw_values_equal"] and model["load_check"]["max_difference"] <= TOLERANCE
    assert model["levels_only_in_audit_rows"] == {"charge": ["C-RARE"]}


def test_trusted_joblib_file(case):
    import joblib

    folder, pipe, positive = case
    joblib.dump(pipe, folder / "model.joblib")
    assert run(folder, audit_config("joblib", positive, {"path": "model.joblib", "trust": True})) in (0, 1)
    assert_exact(folder, "joblib", own_scores(pipe, raw_test_rows(folder), positive))


def test_python_api(case):
    from audit.api import run_audit

    folder, pipe, positive = case
    cfg = audit_config("python", positive)
    del cfg["model"]
    result = run_audit(cfg, model=pipe, base_dir=folder)
    assert result.exit_code in (0, 1)
    assert_exact(folder, "python", own_scores(pipe, raw_test_rows(folder), positive))


# ------------------------------------------------------------------------------------------------ MLflow
def test_mlflow_sklearn_flavour_with_predict_proba(case):
    import mlflow.sklearn

    folder, pipe, positive = case
    path = folder / "mlflow_sk"
    if not path.exists():
        mlflow.sklearn.save_model(pipe, str(path), pyfunc_predict_fn="predict_proba",
                                  serialization_format="cloudpickle")  # fmt: skip
    assert run(folder, audit_config("mlflow-sk", positive, {"path": str(path), "trust": True})) in (0, 1)
    model = assert_exact(folder, "mlflow-sk", own_scores(pipe, raw_test_rows(folder), positive))
    assert model["output_column"]["chosen_by"].startswith("the scikit-learn flavour's classes_")


def _custom_pyfunc(folder, name, pipe, *, frame: bool):
    import mlflow.pyfunc

    class Custom(mlflow.pyfunc.PythonModel):
        def __init__(self, pipe, frame):
            self.pipe, self.frame = pipe, frame

        def predict(self, context, model_input, params=None):
            p = self.pipe.predict_proba(model_input[FEATURES])
            return pd.DataFrame(p, columns=[str(c) for c in self.pipe.classes_]) if self.frame else p

    path = folder / name
    if not path.exists():
        mlflow.pyfunc.save_model(str(path), python_model=Custom(pipe, frame), pip_requirements=[])
    return path


def test_mlflow_custom_pyfunc(case, capsys):
    folder, pipe, positive = case
    want = own_scores(pipe, raw_test_rows(folder), positive)
    # a frame whose columns are named by class: the model says which is which
    path = _custom_pyfunc(folder, "pyfunc_frame", pipe, frame=True)
    assert run(folder, audit_config("pyfunc-frame", positive, {"path": str(path), "trust": True})) in (0, 1)
    assert assert_exact(folder, "pyfunc-frame", want)["output_column"]["chosen_by"].startswith("its output's column")
    # a bare array of two columns: nothing says which class each is; the run stops before any section
    path = _custom_pyfunc(folder, "pyfunc_array", pipe, frame=False)
    capsys.readouterr()
    assert run(folder, audit_config("pyfunc-array", positive, {"path": str(path), "trust": True})) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.output_index" in err and "2 columns" in err, err
    assert not (folder / "reports" / "pyfunc-array").exists()
    index = list(pipe.classes_).index(positive)
    cfg = audit_config("pyfunc-array", positive, {"path": str(path), "trust": True, "output_index": index})
    assert run(folder, cfg) in (0, 1)
    assert assert_exact(folder, "pyfunc-array", want)["output_column"]["chosen_by"].startswith("model.output_index")


# -------------------------------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def onnx_case(tmp_path_factory):
    """The same data without missing text (skl2onnx's imputer takes no NaN among strings), the pipeline converted
    with one input per raw column; favourable class 0 and 1."""
    folder = tmp_path_factory.mktemp("onnx")
    train, test = recidivism(text_missing=False)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    both = pd.concat([train, test], ignore_index=True)
    return folder, user_pipeline(both, both["recid"], text_imputer=False)


def _per_column_graph(pipe, zipmap: bool):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType

    types = [(c, FloatTensorType([None, 1])) for c in NUMERIC] + [(c, StringTensorType([None, 1])) for c in TEXT]
    types.append(("race", Int64TensorType([None, 1])))
    return to_onnx(pipe, initial_types=types, options={id(pipe.steps[-1][1]): {"zipmap": zipmap}})


def _onnx_own(onx, rows: pd.DataFrame, output: str, column: int) -> np.ndarray:
    """The graph run by onnxruntime on the raw rows, as its user would feed it."""
    import onnxruntime as ort

    session = ort.InferenceSession(onx.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {c: rows[[c]].to_numpy(np.float32) for c in NUMERIC}
    feeds |= {c: rows[[c]].astype(str).to_numpy() for c in TEXT}
    feeds["race"] = rows[["race"]].to_numpy(np.int64)
    out = session.run([output], feeds)[0]
    if isinstance(out, list):
        return np.array([row[list(row)[column]] for row in out])
    return np.asarray(out)[:, column]


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])
@pytest.mark.parametrize("positive", [0, 1])
def test_skl2onnx_graph_with_one_input_per_column(onnx_case, zipmap, positive):
    folder, pipe = onnx_case
    onx = _per_column_graph(pipe, zipmap)
    name = f"onnx-{zipmap}-{positive}"
    (folder / f"{name}.onnx").write_bytes(onx.SerializeToString())
    assert run(folder, audit_config(name, positive, {"path": f"{name}.onnx"})) in (0, 1)
    output = "output_probability" if zipmap else "probabilities"
    want = _onnx_own(onx, raw_test_rows(folder), output, list(pipe.classes_).index(positive))
    model = assert_exact(folder, name, want)
    how = model["output_column"]["chosen_by"]
    assert how.startswith("the ZipMap's labels" if zipmap else "the classifier's class labels in the graph"), how


@pytest.mark.parametrize("positive", [0, 1])
def test_onnx_graph_on_one_float_matrix(onnx_case, positive):
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    folder, _ = onnx_case
    charges = sorted(pd.concat([pd.read_csv(folder / "train.csv"), raw_test_rows(folder)])["charge"].unique())

    def matrix(df):
        cols = [(df["age"].to_numpy(float) - 40) / 10, df["priors"].fillna(2).to_numpy(float)]
        cols += [(df["charge"].astype(str).to_numpy() == c).astype(float) for c in charges]
        return np.column_stack(cols).astype(np.float32)

    both = pd.concat([pd.read_csv(folder / "train.csv"), raw_test_rows(folder)], ignore_index=True)
    clf = LogisticRegression(max_iter=1000).fit(matrix(both), both["recid"])
    onx = to_onnx(clf, initial_types=[("input", FloatTensorType([None, 2 + len(charges)]))], options={"zipmap": False})
    (folder / f"matrix-{positive}.onnx").write_bytes(onx.SerializeToString())
    columns = [
        {"column": "age", "mean": 40, "scale": 10},
        {"column": "priors"},
        {"column": "charge", "one_hot": charges},
    ]
    name = f"matrix-{positive}"
    # priors has missing values: the graph would see NaN (the user's matrix fills 2); keep the rows without any
    cfg = audit_config(name, positive, {"path": f"{name}.onnx", "onnx_columns": columns}, value_labels=False)
    cfg["dataset"]["drop"], cfg["dataset"]["features"] = ["sex", "race"], {}
    cfg["dataset"]["filter"] = "priors >= 0"
    assert run(folder, cfg) in (0, 1)
    rows = raw_test_rows(folder)
    rows = rows[rows["priors"] >= 0].reset_index(drop=True)
    want = clf.predict_proba(matrix(rows))[:, list(clf.classes_).index(positive)]
    got, model = audited_scores(folder, name)
    assert np.abs(got - want).max() <= TOLERANCE
    assert model["output_column"]["chosen_by"].startswith("the classifier's class labels in the graph")


# ------------------------------------------------------------------------------------------------ endpoint
def _serve(pipe, *, mapping: bool):
    """A test endpoint for mlflow-invocations backed by the user's pipeline: one {class: p} mapping per row
    (``mapping``) or a bare list of per-class probabilities."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):  # noqa: N802
            req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            split = req["dataframe_split"]
            frame = pd.DataFrame(split["data"], columns=split["columns"]).fillna(np.nan)
            p = pipe.predict_proba(frame[FEATURES])
            rows = (
                [dict(zip([str(c) for c in pipe.classes_], r, strict=True)) for r in p.tolist()]
                if mapping
                else p.tolist()
            )
            body = json.dumps({"predictions": rows}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_endpoint(case, capsys):
    folder, pipe, positive = case
    want = own_scores(pipe, raw_test_rows(folder), positive)
    for mapping in (True, False):
        server = _serve(pipe, mapping=mapping)
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/invocations"
            endpoint = {"format": "http", "url": url, "payload": "mlflow-invocations"}
            name = f"http-{mapping}"
            if mapping:  # the answer names its classes
                assert run(folder, audit_config(name, positive, endpoint)) in (0, 1)
                assert assert_exact(folder, name, want)["output_column"]["chosen_by"].startswith("the answer's mapping")
                continue
            capsys.readouterr()
            assert run(folder, audit_config(name, positive, endpoint)) == 2  # a bare list: nothing says
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "model.output_index" in err, err
            endpoint["output_index"] = list(pipe.classes_).index(positive)
            assert run(folder, audit_config(name, positive, endpoint)) in (0, 1)
            assert_exact(folder, name, want)
        finally:
            server.shutdown()
            server.server_close()


# ---------------------------------------------------------------------------------------- the pieces alone
def test_raw_values_give_back_the_file_values_exactly():
    """Codes, then back: integers stay integers, value labels become their codes again, missing stays missing."""
    from audit.schema import Feature, Schema, raw_values

    raw = pd.DataFrame({"n": [3, 5, 7], "f": [1.5, np.nan, 2.0], "race": [1, 2, 1], "t": ["a", None, "b"]})
    schema = Schema(
        (Feature("n", "numeric"), Feature("f", "numeric"), Feature("race", "categorical", ("A", "B"), (("1", "A"), ("2", "B"))),
         Feature("t", "categorical", ("a", "b", "missing"))),
        "y", "1", "0",
    )  # fmt: skip
    values = raw_values(schema, [raw])
    back = values.frame(schema, schema.to_codes(raw))
    assert back["n"].dtype == np.int64 and back["race"].dtype == np.int64
    assert back["n"].tolist() == [3, 5, 7] and back["race"].tolist() == [1, 2, 1]
    assert back["t"].iloc[0] == "a" and pd.isna(back["t"].iloc[1]) and back["t"].iloc[2] == "b"
    assert np.isnan(back["f"].iloc[1]) and back["f"].iloc[2] == 2.0
    unknown = schema.to_codes(pd.DataFrame({"n": [1], "f": [1.0], "race": [9], "t": ["zzz"]}))  # never seen
    out = values.frame(schema, unknown)
    assert pd.isna(out["race"].iloc[0]) and pd.isna(out["t"].iloc[0]) and values.unknown_rows[0] == 1
    assert "<unknown>" not in out.astype(str).to_numpy() and "missing" not in out.astype(str).to_numpy()


@pytest.mark.parametrize(
    ("n", "classes", "index", "column", "message"),
    [
        (2, [0, 1], None, 0, None),
        (2, ["yes", "no"], None, 1, None),
        (2, [1.0, 0.0], None, 1, None),
        (2, None, None, None, "does not say which class"),
        (1, None, None, None, "one column"),
        (1, None, 0, 0, None),
        (2, None, 1, 1, None),
        (2, [0, 1], 1, None, "remove model.output_index"),
        (2, ["a", "b"], None, None, "none of them"),
        (3, None, 5, None, "column 5"),
    ],
)
def test_positive_column_comes_from_the_model_or_the_config(n, classes, index, column, message):
    from audit.errors import ModelLoadError
    from audit.model.output import positive_column

    positive = "no" if classes and "no" in classes else "0"
    if message is None:
        assert positive_column(n, classes, positive_label=positive, output_index=index).index == column
    else:
        with pytest.raises(ModelLoadError, match=message if message != "column 5" else "5, but"):
            positive_column(n, classes, positive_label=positive, output_index=index)
