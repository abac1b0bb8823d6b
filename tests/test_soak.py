"""The soak test's short version (issue 26): 20 runs with every kind of fault at least once, nothing lost.

The 200-run version is ``python bench/soak.py`` (its counts are in docs/reliability.md)."""

from __future__ import annotations

import importlib.util
import signal

import pytest

from tests.conftest import ROOT


def _soak_module():
    spec = importlib.util.spec_from_file_location("soak", ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
def test_twenty_runs_with_faults_lose_nothing(tmp_path):
    soak = _soak_module()
    res = soak.soak(20, seed=1, folder=tmp_path)
    assert res["problems"] == [] and res["lost"] == 0, res
    assert set(res["faults"]) == set(soak.FAULTS), res  # every kind injected
    assert res["completed"] >= 10 and res["published folders"] >= res["completed"], res
    assert res["other exits"] == {}, res
    # the checks can fail: a published run's file edited afterwards, a history page that misses a run
    from audit.report.reader import ReportSchemaError, validate_report

    out = tmp_path / "reports" / "soak"
    runs = sorted(soak._published(out))
    hashes = {name: soak._hashes(out / name) for name in runs}
    (out / runs[0] / "report.html").write_text("edited")
    (out / "index.html").write_text((out / "index.html").read_text().replace(runs[1], "gone"))
    problems = soak._invariants(out, hashes, validate_report, ReportSchemaError)
    assert any("changed after its run ended" in p for p in problems), problems
    assert any("history page" in p for p in problems), problems
