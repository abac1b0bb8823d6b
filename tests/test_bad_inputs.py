"""The catalogue of bad inputs, through the CLI: each gives exit code 2, one line that names the key or column and
the fix, no traceback, and nothing written to the output folder. Plus the trust model for pickled models."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from audit.cli import main
from tests.conftest import base_config, synthetic_frame, write_config


def _cfg(**changes):
    """base_config with dotted-path changes; the output folder is 'bad_out' so tests can check nothing lands."""
    cfg = copy.deepcopy(base_config())
    cfg["report"]["output_dir"] = "bad_out"
    for dotted, value in changes.items():
        node = cfg
        keys = dotted.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return cfg


def _data(frame: pd.DataFrame, **kw):
    def setup(d):
        frame.to_csv(d / "data.csv", index=False, **kw)

    return setup


def _text(name: str, content: str | bytes):
    def setup(d):
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())

    return setup


def _trained_model(mutate=None):
    """Train a model into reports/small/latest/model, then optionally damage it."""

    def setup(d):
        synthetic_frame().to_csv(d / "data.csv", index=False)
        assert main(["run", str(write_config(d, base_config())), "-q"]) == 0
        if mutate:
            mutate(d / "reports" / "small" / "latest" / "model")

    return setup


def _with_test_file(frame: pd.DataFrame):
    def setup(d):
        synthetic_frame().to_csv(d / "data.csv", index=False)
        frame.to_csv(d / "test.csv", index=False)

    return setup


F = synthetic_frame
LOAD = {"source": "load", "path": "reports/small/latest/model"}
CASES = [
    # (id, setup(folder) or None, config (dict) or raw YAML text, expected substring)
    ("malformed YAML", None, "seed: [1, 2\n", "not valid YAML at line 2"),
    ("empty config", None, "", "is empty"),
    ("unknown key", None, _cfg(sead=1), "sead: unknown key 'sead'; did you mean 'seed'?"),
    ("misspelt nested key", None, _cfg(**{"modules.ale.n_bin": 3}), "did you mean 'n_bins'?"),
    ("wrong type", None, _cfg(seed="zero"), "seed: got 'zero'; input should be a valid integer"),
    ("negative size", None, _cfg(**{"model.batch_size": -5}), "model.batch_size: got -5"),
    ("zero size", None, _cfg(**{"modules.permutation_importance.n_repeats": 0}), "n_repeats: got 0"),
    ("zero sample", None, _cfg(**{"modules.ale.sample_size": 0}), "modules.ale.sample_size: got 0"),
    ("threshold above 1", None, _cfg(**{"model.threshold": 1.5}), "model.threshold: got 1.5"),
    (
        "fairness threshold below 0",
        None,
        _cfg(**{"fairness.thresholds.disparate_impact_ratio": -0.1}),
        "fairness.thresholds.disparate_impact_ratio: got -0.1",
    ),
    ("name escapes the output folder", None, _cfg(name="../../etc"), "name: got '../../etc'"),
    ("load without path", None, _cfg(**{"model.source": "load"}), "model.path is missing"),
    ("missing data file", None, _cfg(), "dataset.train.path: file"),
    ("unreadable data path (a folder)", lambda d: (d / "data.csv").mkdir(), _cfg(), "is not a file"),
    ("wrong separator", _data(F(), sep=";"), _cfg(), "set the right separator"),
    (
        "checksum mismatch",
        _data(F()),
        _cfg(**{"dataset.train.sha256": "a" * 64}),
        "dataset.train.sha256: checksum mismatch",
    ),
    ("duplicate column names", _text("data.csv", "a,a,y\n1,2,yes\n3,4,no\n"), _cfg(), "duplicate column name"),
    ("target missing", _data(F().drop(columns="y")), _cfg(), "dataset.target: column 'y' not found"),
    (
        "positive label absent",
        _data(F()),
        _cfg(**{"dataset.positive_label": "maybe"}),
        "dataset.positive_label: 'maybe'",
    ),
    ("single-class target", _data(F().assign(y="yes")), _cfg(), "has a single class"),
    ("NaN in target", _data(F().assign(y=lambda d: d.y.where(d.index > 0))), _cfg(), "column 'y' has 1 missing value"),
    ("all-NaN feature", _data(F().assign(x2=np.nan)), _cfg(), "column 'x2': every value is missing"),
    ("constant feature", _data(F().assign(x2=1.0)), _cfg(), "column 'x2': constant"),
    (
        "infinite values",
        _data(F().assign(x2=lambda d: d.x2.where(d.index > 2, np.inf))),
        _cfg(),
        "column 'x2': contains infinite values",
    ),
    (
        "thousands of levels",
        _data(pd.concat([F()] * 2, ignore_index=True).assign(x2=lambda d: [f"id{i}" for i in range(len(d))])),
        _cfg(),
        "distinct levels exceed dataset.max_categories=1000",
    ),
    (
        "non-UTF-8 file",
        _text("data.csv", "x1,c,y\n1,caf\xe9,yes\n2,b,no\n".encode("latin-1")),
        _cfg(),
        "not valid utf-8 text; set dataset.csv.encoding",
    ),
    ("empty file", _text("data.csv", ""), _cfg(), "is empty"),
    (
        "unseen category at audit time",
        _with_test_file(F(50, seed=1).assign(colour="purple")),
        _cfg(**{"dataset.test": {"path": "test.csv"}, "dataset.unseen_categories": "error"}),
        "column 'colour': 50 audit row(s) have level(s) ['purple'] never seen in training",
    ),
    (
        "sensitive feature absent",
        _data(F()),
        _cfg(**{"fairness.sensitive_features": ["gender"]}),
        "fairness.sensitive_features[0]: column 'gender' not found",
    ),
    (
        "sensitive feature with one group",
        _data(F().assign(group="A")),
        _cfg(**{"dataset.drop": ["group"]}),
        "column 'group' has a single group",
    ),
    (
        "derived regex does not match",
        _data(F()),
        _cfg(**{"fairness.derived": {"sex": {"source": "colour", "regex": "^(r)ed"}}}),
        "fairness.derived.sex.regex: '^(r)ed' does not match",
    ),
    (
        "intersection of unknown feature",
        None,
        _cfg(**{"fairness.intersections": [["group", "sex"]]}),
        "fairness.intersections: ['sex'] are not sensitive features",
    ),
    ("row cap exceeded", _data(F()), _cfg(**{"dataset.max_rows": 100}), "has more than dataset.max_rows=100 rows"),
    (
        "model from another schema",
        _trained_model(),
        _cfg(model=LOAD, **{"dataset.drop": ["x2"], "modules.partial_dependence.pairs": [], "modules.ale.pairs": []}),
        "model.path: the saved model needs column(s) ['x2']",
    ),
    (
        "corrupt weights file",
        _trained_model(lambda m: (m / "weights.pt").write_bytes(b"garbage")),
        _cfg(model=LOAD),
        "weights.pt' cannot be loaded",
    ),
    (
        "incomplete model folder",
        _trained_model(lambda m: (m / "schema.json").unlink()),
        _cfg(model=LOAD),
        "lacks ['schema.json']",
    ),
    (
        "instance id out of range",
        _data(F()),
        _cfg(**{"local.instances.ids": [3, 100000]}),
        "local.instances.ids: [100000] out of range; the audit (test) rows are numbered 0 to 239",
    ),
    (
        "local explanations with no rows selected",
        None,
        _cfg(**{"local.instances": {"random": 0, "declined": 0, "borderline": 0, "per_group": 0}}),
        "local.instances: selects no rows; give ids or a count above 0",
    ),
    (
        "counterfactual constraint on unknown feature",
        _data(F()),
        _cfg(**{"local.counterfactuals.immutable": ["x9"]}),
        "local.counterfactuals.immutable[0]: 'x9' is neither a feature nor a sensitive column",
    ),
    (
        "monotone constraint on a categorical",
        _data(F()),
        _cfg(**{"local.counterfactuals.monotone": {"colour": "increase"}}),
        "local.counterfactuals.monotone.colour: 'colour' is categorical; this key takes a numeric feature",
    ),
    (
        "transition to an unknown level",
        _data(F()),
        _cfg(**{"local.counterfactuals.transitions": {"colour": {"red": ["purple"]}}}),
        "local.counterfactuals.transitions.colour: unknown level(s) ['purple']",
    ),
    (
        "monotone direction misspelt",
        None,
        _cfg(**{"local.counterfactuals.monotone": {"x1": "up"}}),
        "local.counterfactuals.monotone.x1: 'up' is not allowed; input should be 'increase' or 'decrease'",
    ),
    (
        "untrusted pickle",
        lambda d: (_data(F())(d), _text("model.joblib", b"not even a pickle")(d)),
        _cfg(model={"source": "load", "path": "model.joblib"}),
        "unpickling runs arbitrary code; it is refused unless the config sets model.trust: true",
    ),
]


@pytest.mark.parametrize(("case", "setup", "config", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_catalogue(tmp_path, capsys, case, setup, config, expected):
    if setup is not None:
        setup(tmp_path)
    capsys.readouterr()
    path = tmp_path / "bad.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False))
    code = main(["run", str(path), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "bad_out").exists()


def test_catalogue_has_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.fixture
def sklearn_pickle(workdir):
    import joblib
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    frame = synthetic_frame()
    pipe = make_pipeline(
        make_column_transformer((OneHotEncoder(handle_unknown="ignore"), ["colour", "group"]), remainder="passthrough"),
        LogisticRegression(max_iter=500),
    )
    pipe.fit(frame[["x1", "x2", "colour", "group"]], frame["y"])
    joblib.dump(pipe, workdir / "model.joblib")
    return workdir


def test_trusted_pickle_is_audited_and_recorded(sklearn_pickle, capsys):
    cfg = base_config()
    cfg["model"] = {"source": "load", "path": "model.joblib", "trust": True}
    cfg["fairness"] = {"sensitive_features": []}
    assert main(["run", str(write_config(sklearn_pickle, cfg)), "-q"]) in (0, 1)
    report = json.loads((sklearn_pickle / "reports" / "small" / "latest" / "report.json").read_text())
    assert report["provenance"]["model"]["trusted_pickle"] is True
    assert report["provenance"]["model"]["kind"] == "sklearn.pipeline.Pipeline"
    assert report["modules"]["performance"]["summary"]["test_roc_auc"] > 0.75


def test_trusted_model_that_fails_to_load_gives_exit_3_and_a_report(workdir):
    (workdir / "model.joblib").write_bytes(b"this is not a pickle")
    cfg = base_config()
    cfg["model"] = {"source": "load", "path": "model.joblib", "trust": True}
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) == 3
    latest = workdir / "reports" / "small" / "latest"
    report = json.loads((latest / "report.json").read_text())
    assert report["audit"]["verdict"] == "error" and report["audit"]["modules_failed"] == ["model"]
    assert "failed to load" in report["modules"]["model"]["error"]
    assert report["modules"]["performance"]["status"] == "not_run"
    html = (latest / "report.html").read_text()
    assert "This module failed" in html and "failed to load" in html
