"""Issue 18, items 1, 2 and 8: the built-in net exported as ONNX and TorchScript, and audits of those files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from audit.cli import main
from tests.conftest import light_config, write_config


def test_exported_files_score_as_the_net_does(tiny_model, tmp_path):
    from audit.model.artifact import save_model
    from audit.model.formats import export_model, load_exported

    cfg, ds, pred, res = tiny_model
    save_model(tmp_path, pred, architecture=res.architecture, history=res.history, best_epoch=res.best_epoch)
    files = export_model(tmp_path, pred, ["onnx", "torchscript"])
    assert set(files) == {"onnx", "torchscript"}
    codes = ds.schema.to_codes(ds.X_test)
    native = pred.predict_codes(codes)
    for fmt, info in files.items():
        other = load_exported(tmp_path / info["file"], fmt)
        got = other.predict_codes(codes)
        assert np.abs(got - native).max() <= 1e-6, fmt
        # a row's score does not depend on the rows scored with it (blocks padded as the native net pads them)
        np.testing.assert_array_equal(other.predict_codes(codes[:5]), got[:5])
        assert other.predict_proba(ds.X_test[ds.schema.feature_names]).shape == (len(codes),)


def _numbers(obj):
    """Every number in a JSON structure, in order (strings and keys must match exactly)."""
    if isinstance(obj, dict):
        return [x for k in sorted(obj) for x in [k, *_numbers(obj[k])]]
    if isinstance(obj, list):
        return [x for v in obj for x in _numbers(v)]
    return [obj]


def _close(a, b, tol=1e-6):
    na, nb = _numbers(a), _numbers(b)
    assert len(na) == len(nb)
    for x, y in zip(na, nb, strict=True):
        if isinstance(x, float) or isinstance(y, float):
            assert x is not None and y is not None and abs(x - y) <= tol * max(1.0, abs(x)), (x, y)
        else:
            assert x == y, (x, y)


def test_an_audit_of_the_exported_files_matches_the_native_audit(workdir):
    cfg = light_config(keep=("partial_dependence", "network"))  # the sections compared below
    cfg["name"] = "native"
    cfg["fairness"] = {"sensitive_features": ["group"]}
    cfg["model"] = {"export": ["onnx", "torchscript"], "max_epochs": 3}
    assert main(["run", str(write_config(workdir, cfg, "native.yaml")), "-q"]) in (0, 1)
    folder = workdir / "reports" / "native" / "latest"
    native = json.loads((folder / "report.json").read_text())
    exports = native["provenance"]["model"]["exports"]
    from audit.files import sha256_file

    for info in exports.values():  # the report records each file's hash
        assert sha256_file(folder / "model" / info["file"]) == info["sha256"]
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")):
        cfg = light_config(keep=("partial_dependence", "network"))
        cfg["name"] = fmt
        cfg["fairness"] = {"sensitive_features": ["group"]}
        cfg["model"] = {"source": "load", "path": str(folder / "model" / name)}  # format detected from the name
        assert main(["run", str(write_config(workdir, cfg, f"{fmt}.yaml")), "-q"]) in (0, 1)
        rep = json.loads((workdir / "reports" / fmt / "latest" / "report.json").read_text())
        model = rep["provenance"]["model"]
        assert model["format"] == fmt and model["hash"] == exports[fmt]["sha256"] and model["runtime"]
        _close(rep["modules"]["fairness"]["tables"], native["modules"]["fairness"]["tables"])
        _close(rep["modules"]["partial_dependence"]["data"], native["modules"]["partial_dependence"]["data"])
        _close(rep["modules"]["performance"]["data"]["test"], native["modules"]["performance"]["data"]["test"])
        if fmt == "onnx":
            assert rep["modules"]["gradients"]["summary"] == {"applicable": False}
            assert "not applicable to this model format (onnx)" in json.dumps(rep["findings"])
        else:  # issue 18 item 2: IG and saliency run on the TorchScript file's weights, equal to the native run
            assert model["gradient_handle"].startswith("TabularNet rebuilt")
            for section in ("gradients", "activations"):
                _close(rep["modules"][section]["summary"], native["modules"][section]["summary"])
                _close(rep["modules"][section]["tables"], native["modules"][section]["tables"])


def test_a_file_whose_format_cannot_be_told_is_bad_config(workdir, capsys):
    (workdir / "model.bin").write_bytes(b"\x00" * 10)
    cfg = light_config()
    cfg["model"] = {"source": "load", "path": "model.bin"}
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) == 2
    assert "set model.format" in capsys.readouterr().err
    assert not (workdir / "reports").exists() or not any((workdir / "reports").rglob("report.json"))


# ------------------------------------------------------------------------------------------------------ skops
MARKER = "built.marker"


class MarkingScaler:
    """A transformer whose construction from a file leaves a marker: proves whether a loader built it."""

    def __init__(self, folder: str = ".") -> None:
        self.folder = folder

    def __setstate__(self, state):
        self.__dict__.update(state)
        from pathlib import Path

        (Path(self.folder) / MARKER).write_text("constructed")

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X


def _skops_pipeline(workdir, marking: bool):
    import skops.io as sio
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from tests.conftest import synthetic_frame

    frame = synthetic_frame()
    steps = [
        make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["colour", "group"]), remainder="passthrough")
    ]
    if marking:
        steps.append(MarkingScaler(str(workdir)))
    pipe = make_pipeline(*steps, LogisticRegression(max_iter=500)).fit(
        frame[["x1", "x2", "colour", "group"]], frame["y"]
    )
    sio.dump(pipe, workdir / "model.skops")
    (workdir / MARKER).unlink(missing_ok=True)
    return pipe


def test_a_skops_pipeline_is_audited(workdir):
    import pandas as pd

    pipe = _skops_pipeline(workdir, marking=False)
    cfg = light_config()
    cfg["model"] = {"source": "load", "path": "model.skops"}
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    folder = workdir / "reports" / "small" / "latest"
    model = json.loads((folder / "report.json").read_text())["provenance"]["model"]
    assert model["format"] == "skops" and model["kind"] == "sklearn.pipeline.Pipeline" and model["runtime"]
    scores = pd.read_parquet(folder / "scores.parquet")
    X = pd.DataFrame({c: scores[f"x:{c}"] for c in ("x1", "x2", "colour", "group")})
    col = list(pipe.classes_).index("yes")
    np.testing.assert_array_equal(scores["score"], pipe.predict_proba(X)[:, col])


def test_a_skops_file_with_an_untrusted_type_is_refused_unbuilt(workdir, capsys):
    _skops_pipeline(workdir, marking=True)
    cfg = light_config()
    cfg["model"] = {"source": "load", "path": "model.skops"}
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MarkingScaler" in err and "model.trusted_types" in err, err
    assert not (workdir / MARKER).exists()  # refused before anything in the file was constructed
    assert not any((workdir / "reports").rglob("report.json")) if (workdir / "reports").exists() else True
    # trusted by name: built (the marker proves it) and audited
    cfg["model"]["trusted_types"] = [f"{MarkingScaler.__module__}.{MarkingScaler.__qualname__}"]
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    assert (workdir / MARKER).exists()


# -------------------------------------------------------------------------------- ONNX graphs from other tools
def _sklearn_pipeline():
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from tests.conftest import synthetic_frame

    frame = synthetic_frame()
    X = frame[["x1", "x2", "colour", "group"]].astype({"x1": "float32", "x2": "float32"})
    ct = make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["colour", "group"]), remainder="passthrough")
    return make_pipeline(ct, LogisticRegression(max_iter=500)).fit(X, frame["y"])


def _audited_scores(workdir, name):
    import pandas as pd

    scores = pd.read_parquet(workdir / "reports" / name / "latest" / "scores.parquet")
    X = pd.DataFrame({c: scores[f"x:{c}"] for c in ("x1", "x2", "colour", "group")})
    return scores, X.astype({"x1": "float32", "x2": "float32"})


@pytest.mark.parametrize("zipmap", [True, False], ids=["zipmap", "tensor"])
def test_an_skl2onnx_graph_with_one_input_per_column_is_audited(workdir, zipmap):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    pipe = _sklearn_pipeline()
    types = [("x1", FloatTensorType([None, 1])), ("x2", FloatTensorType([None, 1]))]
    types += [("colour", StringTensorType([None, 1])), ("group", StringTensorType([None, 1]))]
    onx = convert_sklearn(pipe, initial_types=types, options={id(pipe.steps[-1][1]): {"zipmap": zipmap}})
    (workdir / "sk.onnx").write_bytes(onx.SerializeToString())
    cfg = light_config()
    cfg["name"] = "sk"
    cfg["model"] = {"source": "load", "path": "sk.onnx"}
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    rep = json.loads((workdir / "reports" / "sk" / "latest" / "report.json").read_text())
    assert rep["provenance"]["model"]["inputs"] == "columns"
    assert rep["provenance"]["model"]["output"] in ("output_probability", "probabilities")
    scores, X = _audited_scores(workdir, "sk")
    want = pipe.predict_proba(X)[:, list(pipe.classes_).index("yes")]
    assert np.abs(scores["score"].to_numpy() - want).max() <= 1e-6  # float32 graph against float64 scikit-learn


def test_an_onnx_graph_on_one_float_matrix_uses_the_declared_columns(workdir, capsys):
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    from tests.conftest import synthetic_frame

    frame = synthetic_frame()
    levels = {"colour": ["red", "green", "blue"], "group": ["A", "B"]}

    def matrix(df):
        cols = [(df["x1"].to_numpy(float) - 0.1) / 2.0, df["x2"].to_numpy(float)]
        cols += [(df[c].astype(str).to_numpy() == lv).astype(float) for c in levels for lv in levels[c]]
        return np.column_stack(cols).astype(np.float32)

    model = LogisticRegression(max_iter=500).fit(matrix(frame), frame["y"])
    onx = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, 7]))], options={"zipmap": False})
    (workdir / "m.onnx").write_bytes(onx.SerializeToString())
    cfg = light_config()
    cfg["name"] = "matrix"
    cfg["model"] = {
        "source": "load",
        "path": "m.onnx",
        "output": "probabilities",
        "output_index": 1,
        "onnx_columns": [
            {"column": "x1", "mean": 0.1, "scale": 2.0},
            {"column": "x2"},
            {"column": "colour", "one_hot": levels["colour"]},
            {"column": "group", "one_hot": levels["group"]},
        ],
    }
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    scores, X = _audited_scores(workdir, "matrix")
    want = model.predict_proba(matrix(X))[:, 1]
    assert np.abs(scores["score"].to_numpy() - want).max() <= 1e-6
    # a wrong output name, or a categorical without its levels: exit 2, one line
    cfg["model"]["output"] = "proba"
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) == 2
    assert "model.output: the graph has no output 'proba'" in capsys.readouterr().err
    cfg["model"]["output"] = "probabilities"
    cfg["model"]["onnx_columns"][2] = {"column": "colour"}
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) == 2
    assert "give its levels as one_hot or codes" in capsys.readouterr().err


def test_an_onnx_graph_on_one_matrix_with_our_json_beside_it(tiny_model, tmp_path):
    """One float matrix input (the standardised numerics, then the category codes), described by our artifact JSON."""
    import torch

    from audit.model.artifact import save_model
    from audit.model.formats import load_onnx

    cfg, ds, pred, res = tiny_model
    save_model(tmp_path, pred, architecture=res.architecture, history=res.history, best_epoch=res.best_epoch)
    n_num = len(pred.preprocessing.numeric_idx)

    class OneMatrix(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, m):
            return torch.sigmoid(self.net(m[:, :n_num], m[:, n_num:].long()))

    width = n_num + len(pred.preprocessing.categorical_idx)
    torch.onnx.export(
        OneMatrix(pred.net).eval(), (torch.zeros((64, width)),), str(tmp_path / "matrix.onnx"),
        input_names=["features"], output_names=["probability"], dynamic_axes={"features": {0: "rows"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    other = load_onnx(tmp_path / "matrix.onnx", cfg.model, ds.schema)
    assert other.mode == "matrix" and other.schema is not ds.schema  # the JSON's schema, not the data's
    codes = ds.schema.to_codes(ds.X_test)
    assert np.abs(other.predict_codes(codes) - pred.predict_codes(codes)).max() <= 1e-6
