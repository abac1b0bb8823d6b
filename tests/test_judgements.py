"""Judgements a reviewer can trust (issue 23): fragile decisions measured on rows drawn at random, a sensitive
attribute used as a model input named as such, one verdict per proxy pair."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd

from audit.config import load_config
from audit.modules.global_explain import PermutationModule
from audit.pipeline import run_audit
from tests.conftest import light_config, write_config


def _fragile(workdir, instances: dict) -> dict:
    cfg = light_config(keep=("local", "contrastive"))
    cfg["local"]["instances"] = {"declined": 0, "borderline": 0, "per_group": 0, "random": 0, **instances}
    run = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    rep = json.loads((run.run_dir / "report.json").read_text())
    return next(f for f in rep["findings"] if f["id"] == "contrastive.fragile")


def test_fragile_decisions_are_judged_on_rows_drawn_at_random(workdir):
    """Rows picked because they sit at the threshold are fragile by construction: alone, they give no verdict;
    beside drawn rows, they are counted apart and the verdict rests on the drawn ones."""
    only_chosen = _fragile(workdir, {"borderline": 6})
    assert only_chosen["status"] == "not_assessable", only_chosen
    assert only_chosen["evidence"]["chosen_rows"] == 6 and only_chosen["evidence"]["chosen_fragile_share"] > 0.5
    mixed = _fragile(workdir, {"borderline": 6, "random": 12})
    ev = mixed["evidence"]
    assert mixed["status"] in ("pass", "fail") and ev["chosen_rows"] == 6 and ev["drawn_rows"] >= 10, ev
    assert ev["fragile_share"] < ev["chosen_fragile_share"], ev  # the borderline rows no longer inflate it
    assert "reported apart" in mixed["title"]


def _table(rows):
    return pd.DataFrame(rows, columns=["feature", "members", "importance", "ci_low", "ci_high", "rank"])


def test_a_sensitive_attribute_used_as_input_is_a_finding_with_its_rank():
    cfg = SimpleNamespace(top_k=2, proxies=["rel"])
    table = _table([("x", "x", 0.2, 0.1, 0.3, 1), ("rel", "rel", 0.1, 0.05, 0.15, 2), ("sex", "sex", 0.01, 0, 0.02, 3)])
    found = {f.key: f for f in PermutationModule._input_findings(table, ["sex", "race"], cfg)}
    sex = found["permutation_importance.sensitive_input.sex"]
    assert sex.status == "fail" and sex.severity == "medium" and sex.evidence["rank"] == 3  # an input, below top 2
    assert "is a model input, ranked #3 of 3" in sex.title
    race = found["permutation_importance.sensitive_input.race"]
    assert race.status == "pass" and race.evidence == {"input": False}  # not read by the model
    rel = found["permutation_importance.proxy_rank.rel"]
    assert rel.status == "info" and "fairness.proxy" in rel.plain  # judged once, in the fairness section
    top = _table([("sex", "sex", 0.2, 0.1, 0.3, 1)])
    (f,) = PermutationModule._input_findings(top, ["sex"], SimpleNamespace(top_k=2, proxies=[]))
    assert f.status == "fail" and f.severity == "high"


def test_weak_segment_findings_say_what_they_compare(workdir):
    """The module's findings, both ways: against all rows the title gives the overall error; against the expected
    error it gives what the slice's scores predict, with the observed and expected errors in the evidence."""
    for against, words in (("overall", "overall"), ("expected", "where its scores predict")):
        cfg = light_config(keep=("weak_segments",))
        cfg["modules"]["weak_segments"] = {"min_support": 30, "against": against, "significance": 0.5, "min_effect": 0}
        run = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
        rep = json.loads((run.run_dir / "report.json").read_text())
        slices = [f for f in rep["findings"] if f["id"].startswith("weak_segments.slice.")]
        assert slices, [f["id"] for f in rep["findings"] if f["module"] == "weak_segments"]
        f = slices[0]
        assert words in f["title"] and {"error", "expected", "effect"} <= set(f["evidence"]), f
