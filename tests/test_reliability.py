"""Reproducibility and interruption: same config, same report; a killed run never moves `latest`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from audit.config import load_config
from audit.pipeline import run_audit
from tests.conftest import ROOT, base_config, light_config, synthetic_frame, with_html, write_config

# run identity and timing; a comparison section names its baseline run, which is another run each time
VOLATILE = {
    "run_id",
    "started",
    "finished",
    "duration_s",
    "stages_s",
    "git_commit",
    "config_git_commit",
    "baseline_run",
    "baseline_path",
}


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def test_same_config_gives_identical_report_json(workdir):
    cfg = load_config(write_config(workdir, base_config()))
    run_audit(cfg, quiet=True)  # so that both runs below compare with a previous run
    a = run_audit(cfg, quiet=True)
    b = run_audit(cfg, quiet=True)
    ra = json.loads((a.run_dir / "report.json").read_text())
    rb = json.loads((b.run_dir / "report.json").read_text())
    assert ra["audit"]["run_id"] != rb["audit"]["run_id"]
    assert _strip(ra) == _strip(rb)
    assert ra["provenance"]["model"]["hash"] == rb["provenance"]["model"]["hash"]


def test_changing_the_seed_changes_the_numbers(workdir):
    a = run_audit(load_config(write_config(workdir, light_config())), quiet=True)
    b = run_audit(load_config(write_config(workdir, light_config() | {"seed": 1})), quiet=True)
    ra, rb = (json.loads((r.run_dir / "report.json").read_text()) for r in (a, b))
    assert ra["modules"]["permutation_importance"]["data"] != rb["modules"]["permutation_importance"]["data"]


def test_interrupt_leaves_latest_on_previous_run(workdir):
    cfg = load_config(write_config(workdir, light_config(keep=("ale",))))
    first = run_audit(cfg, quiet=True)
    latest = workdir / "reports" / "small" / "latest"
    assert latest.resolve() == first.run_dir.resolve()

    def interrupt(stage):
        if stage == "ale":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_audit(cfg, quiet=True, on_stage=interrupt)
    assert latest.resolve() == first.run_dir.resolve()
    names = sorted(p.name for p in (workdir / "reports" / "small").iterdir())
    assert names == sorted([first.run_id, "latest", "index.html", ".history.json"])  # the history lists the runs left


def test_killed_process_leaves_no_report_and_latest_unmoved(workdir):
    cfg_path = write_config(workdir, light_config() | {"model": {"hidden": [16], "max_epochs": 200, "patience": 200}})
    first = run_audit(load_config(cfg_path), quiet=True)
    out = workdir / "reports" / "small"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "audit", "run", str(cfg_path), "-q"], env=env)
    deadline = time.time() + 60
    while not list(out.glob(".tmp-*")) and time.time() < deadline:  # the run has started writing
        time.sleep(0.05)
    assert list(out.glob(".tmp-*")), "the run never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "latest").resolve() == first.run_dir.resolve()
    complete = [p for p in out.iterdir() if not p.name.startswith(".") and p.name not in ("latest", "index.html")]
    assert complete == [first.run_dir]
    # the next run clears the killed run's temporary folder
    run_audit(load_config(write_config(workdir, light_config())), quiet=True)
    assert not list(out.glob(".tmp-*"))


def test_sigterm_cleans_up_like_ctrl_c(workdir):
    """A scheduler stops a job with SIGTERM: the run removes its own temporary folder and exits 143 (it used to die
    at once, leaving the folder for the next run to clear)."""
    cfg_path = write_config(workdir, light_config() | {"model": {"hidden": [16], "max_epochs": 200, "patience": 200}})
    out = workdir / "reports" / "small"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "audit", "run", str(cfg_path), "-q"], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not list(out.glob(".tmp-*")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(out.glob(".tmp-*")), "the run never started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip() == "terminated: no report was written", err
    assert not out.exists() or not any(out.iterdir())  # nothing left: not even the folders it created


def test_results_do_not_depend_on_thread_count(tiny_model):
    import numpy as np
    import torch

    from audit.explain.permutation import permutation_importance
    from audit.model.adapter import NetPredictor
    from audit.model.training import train_model

    cfg, ds, predictor, _ = tiny_model
    codes = ds.schema.to_codes(ds.X_test)
    before = torch.get_num_threads()
    out = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            res = train_model(
                ds.schema, ds.schema.to_codes(ds.X_train), ds.y_train, cfg.model, validation_size=0.2, seed=0
            )
            pred = NetPredictor(res.net, res.preprocessing, ds.schema)
            pi = permutation_importance(
                pred.predict_codes, codes, ds.y_test, feature_names=ds.schema.feature_names, n_repeats=2, random_state=0
            )
            out.append((pred.predict_codes(np.tile(codes, (20, 1))), pi.importances))
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(out[0][0], out[1][0])
    np.testing.assert_array_equal(out[0][1], out[1][1])


def test_second_run_compares_with_the_first(workdir, capsys):
    from audit.cli import main

    first = run_audit(load_config(write_config(workdir, light_config())), quiet=True)
    solo = json.loads((first.run_dir / "report.json").read_text())["modules"]["comparison"]
    assert solo["summary"]["baseline"].startswith("none")
    cfg = with_html(light_config()) | {"seed": 7}
    cfg["fairness"] = {"sensitive_features": ["group"], "thresholds": {"demographic_parity_difference": 0.2}}
    second = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    comp = json.loads((second.run_dir / "report.json").read_text())["modules"]["comparison"]
    assert comp["data"]["baseline_run"] == first.run_id
    keys = {c["key"] for c in comp["data"]["config_changes"]}
    assert {"seed", "fairness.thresholds.demographic_parity_difference"} <= keys
    assert comp["tables"]["performance"]["rows"] and comp["tables"]["fairness"]["rows"]
    assert comp["tables"]["ranks"]["rows"]  # Spearman only over features clearly important in both runs
    html = (second.run_dir / "report.html").read_text()
    assert "Comparison with the baseline run" in html and first.run_id in html
    # an explicit baseline, and a bad one
    assert main(["run", str(write_config(workdir, cfg)), "-q", "--baseline", str(first.run_dir)]) in (0, 1)
    assert main(["run", str(write_config(workdir, cfg)), "-q", "--baseline", str(workdir / "nope")]) == 2
    assert "--baseline: " in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ issue 16: no lost runs
def test_two_runs_with_the_same_timestamp_both_complete(workdir, monkeypatch):
    """A clock that does not move gives both runs the same timestamp; the first suffix drawn is the same too, so the
    second run finds its temporary folder taken and draws another. Both complete; neither touches the other."""
    import datetime as dt
    import threading

    import audit.output as output

    frozen = dt.datetime(2026, 12, 1, 12, 0, 0, 123000, tzinfo=dt.UTC)
    suffixes = iter(["beef", "beef", "beef", "cafe"])
    lock = threading.Lock()

    def suffix():
        with lock:
            return next(suffixes, "f00d")

    monkeypatch.setattr(output, "new_suffix", suffix)
    cfg = load_config(write_config(workdir, light_config()))
    runs, errors = [], []

    def go():
        try:
            runs.append(run_audit(cfg, quiet=True, clock=lambda: frozen))
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ids = sorted(r.run_id for r in runs)
    assert ids[0] != ids[1] and all(i.startswith("20261201T120000-123Z-") for i in ids)
    out = workdir / "reports" / "small"
    for r in runs:
        rep = json.loads((r.run_dir / "report.json").read_text())
        assert rep["audit"]["run_id"] == r.run_id
        assert (r.run_dir / "model" / "weights.pt").is_file()
    assert not list(out.glob(".tmp-*")) and not list(out.glob(".latest.tmp-*"))
    assert (out / "latest").resolve().name in ids


def test_a_stale_folder_whose_pid_was_recycled_is_removed(workdir):
    """A killed run's .pid names a process id that now belongs to another live process (here: pid 1, started long
    before): the start time tells them apart, and the next run removes the folder."""
    out = workdir / "reports" / "small"
    stale = out / ".tmp-20250101T000000-000Z-dead"
    stale.mkdir(parents=True)
    (stale / ".pid").write_text(
        json.dumps({"pid": 1, "started": "999999999", "host": __import__("socket").gethostname()})
    )
    (stale / "half.json").write_text("{")
    mine = out / ".tmp-20250101T000000-000Z-live"
    mine.mkdir()
    from audit.output import _process_start

    (mine / ".pid").write_text(
        json.dumps(
            {"pid": os.getpid(), "started": _process_start(os.getpid()), "host": __import__("socket").gethostname()}
        )
    )
    run_audit(load_config(write_config(workdir, light_config())), quiet=True)
    assert not stale.exists()
    assert mine.exists()  # a live run's folder is never touched


@pytest.mark.parametrize("content", ["{not json", "[1, 2, 3]", '{"audit": "x"}', ""])
def test_a_broken_previous_report_does_not_break_later_runs(workdir, content):
    cfg = load_config(write_config(workdir, light_config()))
    first = run_audit(cfg, quiet=True)
    (first.run_dir / "report.json").write_text(content)
    second = run_audit(cfg, quiet=True)
    rep = json.loads((second.run_dir / "report.json").read_text())
    assert second.exit_code in (0, 1) and rep["modules"]["comparison"]["status"] == "ok"
    assert rep["modules"]["comparison"]["summary"]["baseline"].startswith("none")
    assert any("previous run" in n and "unreadable" in n for n in rep["provenance"]["dataset"]["notes"])
    third = run_audit(cfg, quiet=True)  # and the run after compares with the second again
    assert json.loads((third.run_dir / "report.json").read_text())["modules"]["comparison"]["data"]["baseline_run"] == (
        second.run_id
    )


def test_a_full_disk_while_writing_the_report_is_bad_input_and_leaves_nothing(workdir, capsys, monkeypatch):
    import errno

    import audit.report.publish as writer
    from audit.cli import main

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer, "write_json", full)
    assert main(["run", str(write_config(workdir, base_config())), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "No space left on device" in err and "report.output_dir" in err
    out = workdir / "reports" / "small"
    assert not out.exists() or not any(out.iterdir())


def test_a_column_empty_in_every_audit_row_is_audited(workdir):
    frame = synthetic_frame()
    frame.to_csv(workdir / "data.csv", index=False)
    test = synthetic_frame(200, seed=5).assign(x2=float("nan"))
    test.to_csv(workdir / "test.csv", index=False)
    cfg = base_config()
    cfg["dataset"]["test"] = {"path": "test.csv"}
    run = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    assert run.exit_code in (0, 1), [m.error for m in run.modules if m.error]


def test_reason_codes_output_that_is_a_folder_is_refused_before_any_work(workdir, capsys):
    from audit.cli import main

    (workdir / "folder").mkdir()
    (workdir / "in.parquet").write_bytes(b"")
    cfg = write_config(workdir, base_config())
    code = main(["reason-codes", str(cfg), "--input", str(workdir / "in.parquet"), "--output", str(workdir / "folder")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--output: " in err and "is a folder" in err


def test_wide_data_is_capped_and_says_so(tmp_path):
    """60 features: the modules whose cost grows with the feature count work on the 30 most important and say so
    (issue 16: wide data must not run for minutes unnoticed)."""
    import time

    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n, m = 800, 60
    X = rng.normal(size=(n, m))
    frame = pd.DataFrame({f"f{i}": X[:, i].round(3) for i in range(m)})
    frame["group"] = rng.choice(["A", "B"], n)
    frame["y"] = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-X[:, :3].sum(1))), "yes", "no")
    frame.to_csv(tmp_path / "data.csv", index=False)
    cfg = with_html(base_config())  # the notes on capped sections are read in the page
    cfg["modules"]["partial_dependence"].pop("pairs")
    cfg["modules"]["ale"].pop("pairs")
    cfg["local"]["shap"] = {"max_model_rows": 200_000}
    t0 = time.perf_counter()
    run = run_audit(load_config(write_config(tmp_path, cfg)), quiet=True)
    assert time.perf_counter() - t0 < 120
    rep = json.loads((run.run_dir / "report.json").read_text())
    titles = [f["title"] for f in rep["findings"]]
    for module in ("partial dependence", "ale"):
        assert any(t.startswith(f"{module} computed for the 30 most important") for t in titles), module
    assert len(rep["modules"]["partial_dependence"]["data"]["features"]) == 30
    assert "background was reduced" in rep["modules"]["shap"]["data"]["method_note"]
    html = (run.run_dir / "report.html").read_text()
    assert "(local.lime.max_features)" in html and "(local.counterfactuals.max_features)" in html
