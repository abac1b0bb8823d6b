"""report.json lets anyone recompute the numbers: from report.json, the saved model and scores.parquet alone (no data
file, no audit code beyond loading the model), the fairness tables with fairlearn, PD with scikit-learn and a SHAP row
with shap, each to 1e-9."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from audit.config import load_config
from audit.model import load_model
from audit.pipeline import run_audit
from tests.conftest import base_config, write_config


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    from tests.conftest import synthetic_frame

    folder = tmp_path_factory.mktemp("recompute")
    synthetic_frame().to_csv(folder / "data.csv", index=False)
    cfg = base_config()
    cfg["local"]["background"]["size"] = 12
    run = run_audit(load_config(write_config(folder, cfg)), quiet=True)
    out = folder / "copy"
    out.mkdir()
    for name in ("report.json", "scores.parquet"):  # only these and the model travel: no data, no config
        (out / name).write_bytes((run.run_dir / name).read_bytes())
    (out / "model").mkdir()
    for f in (run.run_dir / "model").iterdir():
        (out / "model" / f.name).write_bytes(f.read_bytes())
    (folder / "data.csv").unlink()
    return out


def _features(scores: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    return scores[[f"x:{n}" for n in names]].rename(columns=lambda c: c[2:])


def test_fairness_tables_recomputed_with_fairlearn(run_folder):
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    rep = json.loads((run_folder / "report.json").read_text())
    scores = pd.read_parquet(run_folder / "scores.parquet")
    groups = rep["modules"]["fairness"]["data"]["group"]["groups"]
    table = pd.DataFrame(groups).set_index("group")
    mf = MetricFrame(
        metrics={"selection_rate": selection_rate, "tpr": true_positive_rate, "fpr": false_positive_rate,
                 "accuracy": accuracy_score},
        y_true=scores["label"], y_pred=scores["decision"], sensitive_features=scores["group:group"],
    )  # fmt: skip
    for metric in ("selection_rate", "tpr", "fpr", "accuracy"):
        np.testing.assert_allclose(table.loc[mf.by_group.index, metric], mf.by_group[metric], rtol=0, atol=1e-9)
    m = rep["modules"]["fairness"]["data"]["group"]["measures"]
    measures = dict(zip(m["measure"], m["value"], strict=True))
    dpd = demographic_parity_difference(scores["label"], scores["decision"], sensitive_features=scores["group:group"])
    assert measures["demographic_parity_difference"] == pytest.approx(dpd, abs=1e-9)


class _Wrapped:
    """The saved model as a scikit-learn classifier on raw feature frames (for sklearn's partial_dependence)."""

    _estimator_type = "classifier"

    def __init__(self, model):
        self.model = model
        self.classes_ = np.array([0, 1])

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier", target_tags=TargetTags(required=True), classifier_tags=ClassifierTags()
        )

    def fit(self, X, y=None):  # pragma: no cover - already trained
        return self

    def predict_proba(self, X):
        p = self.model.predict_proba(pd.DataFrame(X, columns=self.model.schema.feature_names))
        return np.column_stack([1 - p, p])


def test_partial_dependence_recomputed_with_sklearn(run_folder):
    from sklearn.inspection import partial_dependence

    rep = json.loads((run_folder / "report.json").read_text())
    scores = pd.read_parquet(run_folder / "scores.parquet")
    model = load_model(run_folder / "model")
    names = model.schema.feature_names
    data = rep["modules"]["partial_dependence"]["data"]
    X = _features(scores, names).iloc[data["rows"]].reset_index(drop=True)
    cats = [f.name for f in model.schema.features if f.is_categorical]
    for name, entry in data["features"].items():
        ref = partial_dependence(
            _Wrapped(model), X, [name], method="brute", kind="average",
            custom_values={name: np.array(entry["grid"], dtype=object if name in cats else float)},
            categorical_features=[c for c in cats if c == name] or None,
        )  # fmt: skip
        np.testing.assert_allclose(ref["average"][0], entry["values"], rtol=0, atol=1e-9, err_msg=name)


def test_a_shap_row_recomputed_with_shap(run_folder):
    import shap

    rep = json.loads((run_folder / "report.json").read_text())
    scores = pd.read_parquet(run_folder / "scores.parquet")
    model = load_model(run_folder / "model")
    names = model.schema.feature_names
    data = rep["modules"]["shap"]["data"]
    assert data["method"] == "exact"
    background = model.schema.to_codes(pd.DataFrame(data["background"]))
    row = data["rows"][0]
    x = model.schema.to_codes(_features(scores, names).iloc[[row]])
    out = shap.ExactExplainer(model.predict_codes, shap.maskers.Independent(background, max_samples=len(background)))(x)
    np.testing.assert_allclose(out.values[0], data["values"][0], rtol=0, atol=1e-9)
    assert float(out.base_values[0]) == pytest.approx(data["base_value"], abs=1e-9)


def test_report_records_what_was_sampled_and_where_it_came_from(run_folder):
    rep = json.loads((run_folder / "report.json").read_text())
    mods = rep["modules"]
    for name in ("partial_dependence", "ale", "interactions", "shap", "lime", "counterfactuals"):
        assert len(mods[name]["data"]["rows"]) > 0, name
    assert len(mods["shap"]["data"]["background_rows"]) == 12
    assert set(mods["partial_dependence"]["data"]["ice_rows"]) <= set(mods["partial_dependence"]["data"]["rows"])
    # one name for one concept: grid and values in PD and ALE, level names for categoricals
    assert {"grid", "values"} <= set(mods["partial_dependence"]["data"]["features"]["colour"])
    assert {"grid", "values"} <= set(mods["ale"]["data"]["features"]["colour"])
    assert set(mods["ale"]["data"]["features"]["colour"]["grid"]) <= {"red", "green", "blue"}
    # counterfactuals in raw values; "not found" is its own state
    for slots in mods["counterfactuals"]["data"]["counterfactuals"]:
        for cf in slots:
            assert isinstance(cf["found"], bool)
            if cf["found"]:
                assert cf["row"]["colour"] in {"red", "green", "blue"} and cf["changes"]
    prov = rep["provenance"]
    assert prov["versions"]["audit"] and prov["config_dir"]
    assert "scores.parquet" in prov["sidecars"] and len(prov["sidecars"]["scores.parquet"]["sha256"]) == 64
