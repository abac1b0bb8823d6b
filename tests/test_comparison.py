"""Comparison with the previous run knows noise: a seed-only change on German Credit raises no drift, a real change
(a decision threshold, a model retrained on shuffled labels) does."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from audit.config import load_config
from audit.pipeline import run_audit
from tests.conftest import ROOT, write_config


def _german(folder, **changes) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "german_credit.yaml").read_text())
    cfg["dataset"]["train"]["path"] = str(ROOT / "datasets" / "german_credit" / "german_credit_readable.csv")
    cfg["report"] = {"output_dir": str(folder / "out"), "formats": ["json"]}
    cfg["local"] = {"enabled": False}
    cfg["network"] = {"enabled": False}
    cfg["modules"].update(
        partial_dependence={"enabled": False}, ale={"enabled": False}, interactions={"enabled": False}
    )
    for key, value in changes.items():
        node = cfg
        *path, last = key.split(".")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = value
    return cfg


def _drift(run) -> list[str]:
    rep = json.loads((run.run_dir / "report.json").read_text())
    return [f["title"] for f in rep["findings"] if f["module"] == "comparison" and f["status"] == "fail"]


@pytest.fixture(scope="module")
def german_baseline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("german")
    run = run_audit(load_config(write_config(folder, _german(folder), "german.yaml")), quiet=True)
    return folder, run


def test_a_seed_only_change_is_not_drift(german_baseline):
    folder, base = german_baseline
    run = run_audit(load_config(write_config(folder, _german(folder, seed=1), "german.yaml")), quiet=True)
    rep = json.loads((run.run_dir / "report.json").read_text())
    comp = rep["modules"]["comparison"]
    assert comp["data"]["baseline_run"] == base.run_id
    assert [c["key"] for c in comp["data"]["config_changes"]] == ["seed"]
    assert _drift(run) == []
    # the changes are there, beyond the tolerance, but within the noise the runs' intervals show
    rows = pd.DataFrame(comp["tables"]["fairness"]["rows"])
    assert rows["beyond tolerance"].any() and not rows["drift"].any()


def test_a_real_change_is_drift(german_baseline):
    folder, base = german_baseline
    run = run_audit(
        load_config(write_config(folder, _german(folder, **{"model.threshold": 0.8}), "german.yaml")),
        quiet=True,
        baseline=base.run_dir,
    )
    found = _drift(run)
    assert any("accuracy moved" in t for t in found) and any("disparate impact" in t for t in found)
    rep = json.loads((run.run_dir / "report.json").read_text())
    assert rep["modules"]["comparison"]["summary"]["noise_judged_by"].startswith("paired bootstrap")


def test_a_model_retrained_on_shuffled_labels_is_drift(german_baseline, tmp_path):
    folder, base = german_baseline
    frame = pd.read_csv(ROOT / "datasets" / "german_credit" / "german_credit_readable.csv")
    frame["credit_risk"] = np.random.default_rng(0).permutation(frame["credit_risk"].to_numpy())
    frame.to_csv(tmp_path / "shuffled.csv", index=False)
    cfg = _german(folder, **{"dataset.train": {"path": str(tmp_path / "shuffled.csv")}})
    run = run_audit(load_config(write_config(folder, cfg, "german.yaml")), quiet=True, baseline=base.run_dir)
    found = _drift(run)
    assert any("roc_auc moved" in t for t in found), found
