"""Every config key that names a column is checked by ``validate`` (and at the start of ``run``), with "did you mean".

The table has one case per place in the config schema that names a column (:func:`audit.references.column_slots`);
a test fails when a new such key appears without a case here.
"""

from __future__ import annotations

import copy
import time

import pytest

from audit.cli import main
from audit.references import column_slots
from tests.conftest import base_config, synthetic_frame, write_config


def _valid() -> dict:
    cfg = base_config()
    ds = cfg["dataset"]
    ds.update(
        columns=["x1", "x2", "colour", "group"],
        index_col="id",
        weight="wt",
        value_labels={"group": {"A": "group A", "B": "group B"}},
        features={"numeric": ["x1"], "categorical": ["colour"]},
        filter="x1 > -10",
    )
    cfg["modules"]["permutation_importance"].update(groups={"xs": ["x1", "x2"]}, proxies=["colour"])
    cfg["modules"]["partial_dependence"]["features"] = ["x1", "colour"]
    cfg["modules"]["ale"]["features"] = ["x1", "x2"]
    cfg["fairness"].update(
        sensitive_features=["group"],
        derived={"hue": {"source": "colour", "regex": "^(r|g|b)"}},
        intersections=[["group", "hue"]],
    )
    cfg["local"]["counterfactuals"].update(
        immutable=["group"], ranges={"x1": [-5, 5]}, monotone={"x2": "increase"},
        transitions={"colour": {"red": ["blue"]}}, integer=["x1"],
    )  # fmt: skip
    return cfg


def _set(path: str, value):
    def change(cfg):
        node = cfg
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    return change


# slot: (change to the valid config, expected message)
CASES = {
    "dataset.target": (_set("dataset.target", "yy"), "dataset.target: column 'yy' not found (did you mean 'y'?)"),
    "dataset.columns[]": (
        _set("dataset.columns", ["x1", "x2", "colour", "grup"]),
        "dataset.columns[3]: column 'grup' not found (did you mean 'group'?)",
    ),
    "dataset.index_col": (
        _set("dataset.index_col", "idd"),
        "dataset.index_col: column 'idd' not found (did you mean 'id'?)",
    ),
    "dataset.weight": (_set("dataset.weight", "wgt"), "dataset.weight: column 'wgt' not found (did you mean 'wt'?)"),
    "dataset.value_labels{}": (
        _set("dataset.value_labels", {"grup": {"A": "a"}}),
        "dataset.value_labels.grup: column 'grup' not found (did you mean 'group'?)",
    ),
    "dataset.features.numeric[]": (
        _set("dataset.features.numeric", ["x1_"]),
        "dataset.features.numeric[0]: column 'x1_' not found (did you mean 'x1'?)",
    ),
    "dataset.features.categorical[]": (
        _set("dataset.features.categorical", ["colur"]),
        "dataset.features.categorical[0]: column 'colur' not found (did you mean 'colour'?)",
    ),
    "dataset.drop[]": (_set("dataset.drop", ["x_2"]), "dataset.drop[0]: column 'x_2' not found (did you mean 'x2'?)"),
    "dataset.tied[][]": (
        _set("dataset.tied", [["colour", "x_2"]]),
        "dataset.tied[0][1]: 'x_2' is not a model feature (did you mean 'x2'?)",
    ),
    "dataset.filter": (
        _set("dataset.filter", "x_1 > 0"),
        "dataset.filter: column 'x_1' not found (did you mean 'x1'?)",
    ),
    "modules.permutation_importance.groups.*[]": (
        _set("modules.permutation_importance.groups", {"xs": ["x1", "x_2"]}),
        "modules.permutation_importance.groups.xs[1]: 'x_2' is not a model feature (did you mean 'x2'?)",
    ),
    "modules.permutation_importance.proxies[]": (
        _set("modules.permutation_importance.proxies", ["colr"]),
        "modules.permutation_importance.proxies[0]: 'colr' is not a model feature (did you mean 'colour'?)",
    ),
    "modules.partial_dependence.features[]": (
        _set("modules.partial_dependence.features", ["x_1"]),
        "modules.partial_dependence.features[0]: 'x_1' is not a model feature (did you mean 'x1'?)",
    ),
    "modules.partial_dependence.pairs[][]": (
        _set("modules.partial_dependence.pairs", [["x1", "x_2"]]),
        "modules.partial_dependence.pairs[0][1]: 'x_2' is not a model feature (did you mean 'x2'?)",
    ),
    "modules.ale.features[]": (
        _set("modules.ale.features", ["colr"]),
        "modules.ale.features[0]: 'colr' is not a model feature (did you mean 'colour'?)",
    ),
    "modules.ale.pairs[][]": (
        _set("modules.ale.pairs", [["x_1", "x2"]]),
        "modules.ale.pairs[0][0]: 'x_1' is not a model feature (did you mean 'x1'?)",
    ),
    "fairness.sensitive_features[]": (
        _set("fairness.sensitive_features", ["group", "grup"]),
        "fairness.sensitive_features[1]: column 'grup' not found (did you mean 'group'?)",
    ),
    "fairness.derived.*.source": (
        _set("fairness.derived", {"hue": {"source": "colr", "regex": "^(r)"}}),
        "fairness.derived.hue.source: column 'colr' not found (did you mean 'colour'?)",
    ),
    "fairness.bins{}": (
        _set("fairness.bins", {"grup": [0.5]}),
        "fairness.bins.grup: 'grup' is not a sensitive feature (did you mean 'group'?)",
    ),
    "fairness.intersections[][]": (
        _set("fairness.intersections", [["group", "hu"]]),
        "fairness.intersections: ['hu'] are not sensitive features (did you mean 'hue'?)",
    ),
    "local.counterfactuals.immutable[]": (
        _set("local.counterfactuals.immutable", ["grop"]),
        "local.counterfactuals.immutable[0]: 'grop' is neither a feature nor a sensitive column (did you mean 'group'?)",
    ),
    "local.counterfactuals.ranges{}": (
        _set("local.counterfactuals.ranges", {"x_1": [0, 1]}),
        "local.counterfactuals.ranges.x_1: 'x_1' is not a model feature (did you mean 'x1'?)",
    ),
    "local.counterfactuals.monotone{}": (
        _set("local.counterfactuals.monotone", {"colour": "increase"}),
        "local.counterfactuals.monotone.colour: 'colour' is categorical; this key takes a numeric feature",
    ),
    "local.counterfactuals.transitions{}": (
        _set("local.counterfactuals.transitions", {"colr": {"red": ["blue"]}}),
        "local.counterfactuals.transitions.colr: 'colr' is not a model feature (did you mean 'colour'?)",
    ),
    "modules.drift.features[]": (
        _set("modules.drift.features", ["x_1"]),
        "modules.drift.features[0]: 'x_1' is not a model feature (did you mean 'x1'?)",
    ),
    "model.onnx_columns[].column": (
        _set("model", {"source": "load", "path": "m.onnx", "onnx_columns": [{"column": "x_1"}]}),
        "model.onnx_columns[0].column: 'x_1' is not a model feature (did you mean 'x1'?)",
    ),
    "local.counterfactuals.integer[]": (
        _set("local.counterfactuals.integer", ["x_2"]),
        "local.counterfactuals.integer[0]: 'x_2' is not a model feature (did you mean 'x2'?)",
    ),
}


@pytest.fixture
def folder(tmp_path):
    frame = synthetic_frame().assign(id=lambda d: [f"a{i}" for i in range(len(d))], wt=1.0)
    frame.to_csv(tmp_path / "data.csv", index=False)
    return tmp_path


def test_the_valid_config_is_valid(folder, capsys):
    assert main(["validate", str(write_config(folder, _valid()))]) == 0, capsys.readouterr().err


def test_every_key_that_names_a_column_has_a_case():
    assert set(CASES) == {slot for slot, _ in column_slots()}


@pytest.mark.parametrize("slot", list(CASES))
def test_validate_catches_every_wrong_column_reference(folder, capsys, slot):
    change, expected = CASES[slot]
    cfg = copy.deepcopy(_valid())
    change(cfg)
    capsys.readouterr()
    assert main(["validate", str(write_config(folder, cfg))]) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("slot", ["modules.ale.pairs[][]", "fairness.bins{}", "local.counterfactuals.ranges{}"])
def test_run_refuses_before_training(folder, capsys, slot):
    change, expected = CASES[slot]
    cfg = copy.deepcopy(_valid())
    cfg["model"]["max_epochs"] = 500  # a run that trained would take far longer than the check allows
    change(cfg)
    t0 = time.perf_counter()
    assert main(["run", str(write_config(folder, cfg)), "-q"]) == 2
    assert time.perf_counter() - t0 < 10
    assert expected in capsys.readouterr().err
    assert not (folder / "reports").exists()
