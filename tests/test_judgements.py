"""Judgements a reviewer can trust (issue 23): fragile decisions measured on rows drawn at random, a sensitive
attribute used as a model input named as such, one verdict per proxy pair."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
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


def _support_case():
    """Training rows where a top-coded value (capital 99999 in 0.5% of rows, as in Adult) and a level of 5 rows (occupation
    'rare') each flip the model's decision on their own: the cheapest recourse an unconstrained search finds."""
    from audit.schema import Feature, Schema

    rng = np.random.default_rng(0)
    n = 1000
    capital = np.r_[np.full(5, 99999.0), rng.choice([0.0, 100.0, 500.0, 2000.0], size=n - 5)]
    occupation = np.r_[np.full(5, 2.0), rng.choice([0.0, 1.0], size=n - 5)]
    training = np.column_stack([capital, occupation])
    schema = Schema(
        (Feature("capital", "numeric"), Feature("occupation", "categorical", ("clerk", "sales", "rare"))),
        "y", "1", "0", (),
    )  # fmt: skip

    def predict(X):
        return np.where((X[:, 0] >= 50000) | (X[:, 1] == 2), 0.9, 0.1)

    return predict, training, schema, np.array([[0.0, 0.0], [100.0, 1.0]])


def test_recourse_stays_inside_the_training_support():
    """Pertinent negatives and counterfactuals never propose a top-coded value or a level of a handful of rows
    (issue 23, point 9); without the support limits both searches propose exactly those (the test can fail)."""
    from audit.explain.contrastive import contrastive
    from audit.explain.counterfactual import Constraints, constraint_violations, counterfactuals

    predict, training, schema, X = _support_case()
    reference = np.array([0.0, 0.0])
    loose, strict = Constraints(), Constraints(support_quantile=0.01, min_level_count=20)
    cem_loose = contrastive(predict, X, reference, training, schema, constraints=loose)
    assert all(pn is not None for pn in cem_loose.pn)  # an unconstrained PN flips them with 99999 or 'rare'
    cem = contrastive(predict, X, reference, training, schema, constraints=strict)
    for pn in cem.pn:
        assert pn is None or (pn.get(0, 0.0) < 99999 and pn.get(1, 0.0) != 2.0), pn
    cf_loose = counterfactuals(predict, X, training, schema=schema, constraints=loose, random_state=0)
    assert cf_loose.found.any()
    cf = counterfactuals(predict, X, training, schema=schema, constraints=strict, random_state=0)
    assert not cf.found.any()  # nothing inside the support flips this model
    assert constraint_violations(cf_loose, training, schema=schema, constraints=strict)["support"] > 0
    assert constraint_violations(cf, training, schema=schema, constraints=strict)["support"] == 0
