"""Stable, structured finding ids (issue 23, point 10): ``section.check[.subject[.group]]`` from config names, at
most 80 characters, unique, and the same for the same checks when only the seed and the data sample change."""

from __future__ import annotations

import re

from audit.config import load_config
from audit.findings import Finding, short_id
from audit.pipeline import run_audit
from tests.conftest import base_config, synthetic_frame, write_config

SLUG = re.compile(r"[a-z]+(_[a-z]+){4,}")  # five words joined by underscores: a sentence, not a name


def _run(folder, seed: int, sample: int):
    folder.mkdir()
    synthetic_frame(800, seed=sample).to_csv(folder / "data.csv", index=False)
    cfg = base_config()
    cfg["seed"] = seed
    cfg["modules"]["weak_segments"] = {"min_support": 40}
    cfg["model"]["dropout"] = 0.1  # so uncertainty by group has findings
    return run_audit(load_config(write_config(folder, cfg)), quiet=True)


def test_ids_are_named_not_sentences_and_do_not_move_with_seed_or_sample(tmp_path):
    a, b = _run(tmp_path / "a", 0, 0), _run(tmp_path / "b", 1, 1)
    for run in (a, b):
        ids = [f.key for f in run.findings]
        assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
        assert all(len(i) <= 80 for i in ids), [i for i in ids if len(i) > 80]
        derived = [f.key for f in run.findings if not f.id]  # every check names its own id
        assert derived == [], derived
        assert not [i for i in ids if SLUG.search(i)], [i for i in ids if SLUG.search(i)]
        assert not [i for i in ids if re.search(r"\d\.\d", i)], ids  # no number computed from the data

    def stable(run):  # every check with a verdict is always there (weak slices are found or not with the data;
        # notes such as "strong interaction x1 x colour" appear when the data show one)
        return {f.key for f in run.findings if f.status != "info" and not f.key.startswith("weak_segments.slice.")}

    assert stable(a) == stable(b), stable(a) ^ stable(b)
    assert {"fairness.disparate_impact_ratio.group", "performance.overfit_gap", "data_quality.missing_share"} <= stable(
        a
    )


def test_a_long_id_is_cut_with_a_hash_and_stays_apart():
    long_a = "weak_segments.slice." + "marital-status=Married-civ-spouse&occupation=Prof-specialty&sex=Male"
    long_b = long_a.replace("Male", "Female")
    assert len(short_id(long_a)) == 80 and short_id(long_a) != short_id(long_b)
    assert short_id(long_a) == short_id(long_a) and short_id("drift.score_psi") == "drift.score_psi"
    assert Finding("weak_segments", "t", "fail", id=long_a).key == short_id(long_a)
