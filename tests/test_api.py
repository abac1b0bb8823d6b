"""Issue 18, item 7: the Python API (``from audit import run_audit``) audits a model object as the CLI audits a file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from tests.conftest import light_config, synthetic_frame, write_config


@pytest.fixture
def pipeline():
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = synthetic_frame()
    pipe = make_pipeline(
        make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["colour", "group"]), remainder="passthrough"),
        LogisticRegression(max_iter=500),
    )
    return pipe.fit(frame[["x1", "x2", "colour", "group"]], frame["y"])


def _config():
    cfg = light_config(keep=("partial_dependence", "network"))  # what the tests compare, and the "not applicable"s
    cfg["fairness"] = {"sensitive_features": ["group"]}
    return cfg


def test_an_estimator_passed_in_python_is_audited_like_the_same_model_loaded_from_a_file(workdir, pipeline):
    import joblib

    from audit import run_audit

    run = run_audit(_config(), model=pipeline, base_dir=workdir)
    assert run.exit_code in (0, 1)
    api = json.loads((run.run_dir / "report.json").read_text())
    assert api["provenance"]["model"]["source"] == "python"
    assert api["provenance"]["model"]["kind"] == "sklearn.pipeline.Pipeline"
    # the scores are the estimator's own probabilities of the positive label, row for row
    scores = pd.read_parquet(run.run_dir / "scores.parquet")
    X = pd.DataFrame({c[2:]: scores[c] for c in scores.columns if c.startswith("x:")})
    col = list(pipeline.classes_).index("yes")
    np.testing.assert_array_equal(scores["score"], pipeline.predict_proba(X[["x1", "x2", "colour", "group"]])[:, col])
    # the network sections say why they do not apply; the rest ran
    assert api["modules"]["architecture"]["summary"] == {"applicable": False}
    assert any(f["module"] == "architecture" and "not applicable" in f["title"] for f in api["findings"])
    assert api["modules"]["fairness"]["status"] == "ok" and api["modules"]["partial_dependence"]["status"] == "ok"

    # the same model from a file through the CLI: the same fairness tables and partial dependence
    joblib.dump(pipeline, workdir / "model.joblib")
    cfg = _config()
    cfg["name"] = "from_file"
    cfg["model"] = {"source": "load", "path": "model.joblib", "trust": True}
    assert main(["run", str(write_config(workdir, cfg, "from_file.yaml")), "-q"]) in (0, 1)
    file = json.loads((workdir / "reports" / "from_file" / "latest" / "report.json").read_text())
    assert api["modules"]["fairness"]["tables"] == file["modules"]["fairness"]["tables"]
    assert api["modules"]["partial_dependence"]["data"] == file["modules"]["partial_dependence"]["data"]


def test_a_plain_function_is_audited_and_a_bad_object_is_a_model_failure(workdir):
    from audit import run_audit

    def predict_proba(df):
        return 1 / (1 + np.exp(-2 * df["x1"].to_numpy()))

    run = run_audit(_config(), model=predict_proba, base_dir=workdir)
    assert run.exit_code in (0, 1)
    report = json.loads((run.run_dir / "report.json").read_text())
    assert report["provenance"]["model"]["kind"].endswith("predict_proba")
    assert report["modules"]["performance"]["summary"]["test_roc_auc"] > 0.7

    bad = run_audit(_config(), model=42, base_dir=workdir)
    assert bad.exit_code == 3
    report = json.loads((bad.run_dir / "report.json").read_text())
    assert "neither callable nor has predict_proba" in report["modules"]["model"]["error"]
