"""Config validation: a table of bad configs, each with the message a user should see."""

from __future__ import annotations

import copy

import pytest

from audit.config import config_from_dict, load_config
from audit.errors import ConfigError
from tests.conftest import ROOT, base_config


def _with(path: str, value):
    cfg = copy.deepcopy(base_config())
    keys = path.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return cfg


_DELETE = object()

BAD = [
    (
        "unknown top-level key suggests the closest",
        _with("sead", 1),
        r"sead: unknown key 'sead'; did you mean 'seed'\?",
    ),
    (
        "misspelt nested key",
        _with("dataset.tagret", "y"),
        r"dataset\.tagret: unknown key 'tagret'; did you mean 'target'\?",
    ),
    ("misspelt module", _with("modules.permutation_importanc", {}), r"did you mean 'permutation_importance'\?"),
    (
        "misspelt module option",
        _with("modules.ale.n_bin", 5),
        r"modules\.ale\.n_bin: unknown key.*did you mean 'n_bins'",
    ),
    ("wrong type", _with("seed", "zero"), r"seed: got 'zero'; input should be a valid integer"),
    ("negative seed", _with("seed", -1), r"seed: got -1; input should be greater than or equal to 0"),
    (
        "zero repeats",
        _with("modules.permutation_importance.n_repeats", 0),
        r"modules\.permutation_importance\.n_repeats: got 0; input should be greater than or equal to 1",
    ),
    (
        "negative batch size",
        _with("model.batch_size", -5),
        r"model\.batch_size: got -5; input should be greater than or equal to 1",
    ),
    (
        "threshold above 1",
        _with("model.threshold", 1.5),
        r"model\.threshold: got 1\.5; input should be less than or equal to 1",
    ),
    ("test_size out of range", _with("dataset.split.test_size", 1.2), r"dataset\.split\.test_size: got 1\.2"),
    (
        "bad literal",
        _with("model.source", "download"),
        r"model\.source: 'download' is not allowed; input should be 'train' or 'load'",
    ),
    ("load without path", _with("model.source", "load"), r"model\.source is 'load' but model\.path is missing"),
    ("missing target", _with("dataset.target", _DELETE), r"dataset\.target: required key is missing"),
    ("missing dataset", {"seed": 1}, r"dataset: required key is missing"),
    (
        "bad checksum format",
        _with("dataset.train.sha256", "abc"),
        r"dataset\.train\.sha256: got 'abc'; string should match",
    ),
    ("bad name", _with("name", "../escape"), r"name: got '\.\./escape'; string should match pattern"),
    ("list instead of mapping", _with("dataset.csv", [1, 2]), r"dataset\.csv: got \[1, 2\]"),
]


@pytest.mark.parametrize(("case", "cfg", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_configs_name_key_value_and_fix(case, cfg, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(cfg)


def test_top_level_must_be_a_mapping():
    with pytest.raises(ConfigError, match="expected a mapping"):
        config_from_dict([1, 2])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: [1, 2\n", r"not valid YAML at line 2"),
        ("", r"is empty"),
        ("dataset: {train: {path: x.csv}, target: y, positive_label: 1}\nfoo: 1\n", r"foo: unknown key 'foo'"),
    ],
)
def test_yaml_file_errors(tmp_path, text, message):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_name_defaults_to_file_stem_and_paths_resolve_from_config_folder(tmp_path):
    import yaml

    p = tmp_path / "my-audit.yaml"
    p.write_text(yaml.safe_dump(base_config()))
    cfg = load_config(p)
    assert cfg.name == "my-audit"
    assert cfg.resolve("data.csv") == (tmp_path / "data.csv").resolve()


@pytest.mark.parametrize("name", ["adult", "german_credit", "bank_marketing"])
def test_shipped_configs_validate(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.name == name
    assert cfg.dataset.train.sha256


def test_config_hash_is_stable_and_sensitive():
    a = config_from_dict(base_config())
    b = config_from_dict(base_config())
    c = config_from_dict(_with("seed", 3))
    assert a.config_hash() == b.config_hash() != c.config_hash()
