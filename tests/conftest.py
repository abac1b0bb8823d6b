"""Shared fixtures: a synthetic dataset of known structure, small configs, one tiny trained model."""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore")
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)


def synthetic_frame(n: int = 800, seed: int = 0) -> pd.DataFrame:
    """y depends on x1 (strongly), colour (moderately) and x1*x2; 'group' is a sensitive column."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.uniform(-1, 1, size=n)
    colour = rng.choice(["red", "green", "blue"], size=n, p=[0.5, 0.3, 0.2])
    group = rng.choice(["A", "B"], size=n)
    logit = 2.0 * x1 + np.select([colour == "red", colour == "green"], [1.0, -1.0], 0.0) + 1.5 * x1 * x2
    y = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    return pd.DataFrame({"x1": x1.round(4), "x2": x2.round(4), "colour": colour, "group": group, "y": y})


SMALL_MODULES = {
    "permutation_importance": {"n_repeats": 2},
    "partial_dependence": {"sample_size": 100, "grid_resolution": 5, "ice_curves": 10, "pairs": [["x1", "x2"]]},
    "ale": {"sample_size": 200, "n_bins": 5, "n_bootstrap": 5, "pairs": [["x1", "x2"]]},
    "interactions": {"top_features": 3, "sample_size": 30},
}

SMALL_LOCAL = {
    "instances": {"declined": 6, "borderline": 3, "per_group": 2, "random": 3},
    "background": {"size": 30},
    "lime": {"num_samples": 500, "stability_runs": 1},
    "counterfactuals": {"n_random": 100},
}


def base_config(data_path: str = "data.csv") -> dict:
    return {
        "seed": 0,
        "dataset": {"train": {"path": data_path}, "target": "y", "positive_label": "yes", "split": {"test_size": 0.3}},
        "model": {"hidden": [16], "max_epochs": 4, "batch_size": 64, "patience": 2},
        "modules": copy.deepcopy(SMALL_MODULES),
        "fairness": {"sensitive_features": ["group"]},
        "local": copy.deepcopy(SMALL_LOCAL),
        # report.json only: a run that writes no HTML or PDF draws no figure (audit.render.deferred_figures), which
        # was 6.4 of a small audit's 7.5 s. The tests that look at figures, HTML or PDF ask for them (with_html
        # below); tests/test_report.py and tests/test_pipeline.py draw every figure of this config and of Adult
        "report": {"output_dir": "reports", "formats": ["json"]},
        # one thread and no figure worker process: tests run two at a time on two cores, and the worker's start-up
        # (matplotlib, the sections' imports: about 7 s of CPU) would cost more than each small audit; the worker's
        # own tests, and a test that compares 1 and 2 threads figure for figure, set threads themselves
        "compute": {"threads": 1},
    }


def with_html(cfg: dict) -> dict:
    """``cfg`` writing report.html as well, so its figures are drawn (see :func:`base_config`)."""
    cfg["report"]["formats"] = ["json", "html"]
    return cfg


def light_config(data_path: str = "data.csv", *, keep: tuple[str, ...] = ()) -> dict:
    """:func:`base_config` with only the cheap sections (data quality, drift, performance, permutation importance,
    fairness, comparison) and those named in ``keep``: for tests of what happens around an audit (run folders,
    baselines, interruptions), where the sections' own numbers are tested elsewhere."""
    cfg = base_config(data_path)
    for name in (
        "partial_dependence",
        "ale",
        "interactions",
        "weak_segments",
        "stability",
        "faithfulness",
        "contrastive",
    ):
        if name not in keep:
            cfg["modules"][name] = {**cfg["modules"].get(name, {}), "enabled": False}
    cfg["local"]["enabled"] = "local" in keep
    cfg["network"] = {"enabled": "network" in keep}
    return cfg


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with data.csv (synthetic) and a writer for config files."""
    synthetic_frame().to_csv(tmp_path / "data.csv", index=False)
    return tmp_path


def write_config(folder: Path, cfg: dict, name: str = "small.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(dataset, predictor, train result) trained once on the synthetic data."""
    from audit.config import config_from_dict
    from audit.data import load_dataset
    from audit.model.adapter import NetPredictor
    from audit.model.training import train_model

    folder = tmp_path_factory.mktemp("tiny")
    synthetic_frame().to_csv(folder / "data.csv", index=False)
    cfg = config_from_dict(base_config(), base_dir=folder, name="tiny")
    ds = load_dataset(cfg)
    res = train_model(ds.schema, ds.schema.to_codes(ds.X_train), ds.y_train, cfg.model, validation_size=0.2, seed=0)
    return cfg, ds, NetPredictor(res.net, res.preprocessing, ds.schema), res


# The slowest test files, slowest first (seconds of one worker, `--durations=0` on the 2-core machine, 2026-12-08):
# soak 118, scale 74, speed 68, report 63, endpoint 50, pipeline 49, reliability 39, bad inputs 35. Handed out first,
# the long ones run side by side from the start instead of one of them holding the run at its end.
LONGEST_FIRST = (
    "tests/test_soak.py",
    "tests/test_scale.py",
    "tests/test_speed.py",
    "tests/test_report.py",
    "tests/test_endpoint.py",
    "tests/test_pipeline.py",
    "tests/test_reliability.py",
    "tests/test_bad_inputs.py",
)


def pytest_collection_modifyitems(config, items):
    """The slowest test files first (longest processing time first), so that ``-n auto --dist loadfile`` (``make
    test``) keeps both workers busy to the end; within a file the order is unchanged."""

    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable
