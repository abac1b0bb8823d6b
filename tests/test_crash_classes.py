"""Issue 26: the last crash classes. Each case ended in a traceback or a wrong refusal before; here it ends as it
should: a run that goes on (and says what it found), or one line and exit code 2."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import numpy as np
import pandas as pd
import pytest

from audit.cli import main
from audit.config import load_config
from audit.pipeline import run_audit
from tests.conftest import light_config, synthetic_frame, write_config

OLD = time.time() - 3600  # older than output.STALE_WITHOUT_PID_S


# ------------------------------------------------------------------------------------ leftovers of older versions
@pytest.mark.parametrize(
    "record",
    [b"12345", b"[1, 2, 3]", b'{"pid": -3, "host": "h"}', b'{"pid": 1e30, "host": "h"}', b'{"pid": "abc"}',
     b'{"pid": 123, "host": 7}', b'{"pid": true, "host": "h"}', b"\xff\xfe\x00garbage", b"", None],
    ids=["bare pid", "a list", "negative pid", "huge pid", "text pid", "host not text", "pid a boolean", "binary",
         "empty", "pid a folder"],
)  # fmt: skip
def test_a_stale_folder_with_a_foreign_owner_record_is_removed_not_a_crash(workdir, record):
    out = workdir / "reports" / "small"
    stale = out / ".tmp-20240101T000000-000Z-0ld0"
    stale.mkdir(parents=True)
    if record is None:
        (stale / ".pid").mkdir()
    else:
        (stale / ".pid").write_bytes(record)
    os.utime(stale, (OLD, OLD))
    run = run_audit(load_config(write_config(workdir, light_config())), quiet=True)
    assert run.exit_code in (0, 1)
    assert not stale.exists()


def test_files_and_links_named_like_run_folders_are_left_alone(workdir, tmp_path):
    out = workdir / "reports" / "small"
    out.mkdir(parents=True)
    (out / ".tmp-20240101T000000-000Z-file").write_text("not ours")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (out / ".tmp-20240101T000000-000Z-link").symlink_to(elsewhere, target_is_directory=True)
    for p in out.iterdir():
        os.utime(p, (OLD, OLD), follow_symlinks=False)
    run = run_audit(load_config(write_config(workdir, light_config())), quiet=True)
    assert run.exit_code in (0, 1)
    assert (out / ".tmp-20240101T000000-000Z-file").read_text() == "not ours"
    assert (elsewhere / "keep.txt").exists() and (out / ".tmp-20240101T000000-000Z-link").is_symlink()


# ------------------------------------------------------------------------ names that look like pandas' renames
def test_distinct_columns_named_like_pandas_renames_are_read(workdir, capsys):
    frame = synthetic_frame().rename(columns={"x2": "x1.1"})  # a real header: x1, x1.1 (two columns)
    frame.to_csv(workdir / "data.csv", index=False)
    cfg = light_config()
    cfg["modules"]["partial_dependence"] = {"enabled": False}
    cfg["modules"]["ale"] = {"enabled": False}
    assert main(["validate", str(write_config(workdir, cfg))]) == 0, capsys.readouterr().err
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    rep = json.loads((workdir / "reports" / "small" / "latest" / "report.json").read_text())
    assert {"x1", "x1.1"} <= {f["name"] for f in rep["provenance"]["dataset"]["features"]}
    # a name really written twice is still refused, with the names pandas made of it
    (workdir / "data.csv").write_text("x1,x1,y\n1,2,yes\n3,4,no\n5,6,yes\n")
    assert main(["validate", str(write_config(workdir, cfg))]) == 2
    err = capsys.readouterr().err
    assert "duplicate column name(s) ['x1']" in err and "x1.1" in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------- a column with no value at all
def test_a_feature_missing_in_every_audit_row_is_named(workdir):
    synthetic_frame().to_csv(workdir / "data.csv", index=False)
    synthetic_frame(200, seed=5).assign(x2=np.nan).to_csv(workdir / "test.csv", index=False)
    cfg = light_config()
    cfg["dataset"]["test"] = {"path": "test.csv"}
    run = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    rep = json.loads((run.run_dir / "report.json").read_text())
    notes = rep["provenance"]["dataset"]["notes"]
    assert any(n.startswith("column 'x2': no audit row has a value") for n in notes), notes
    dq = next(f for f in rep["findings"] if f["id"] == "data_quality.empty_features")
    assert dq["status"] == "fail" and dq["evidence"]["features"] == ["x2"]


def test_a_feature_missing_in_every_population_row_is_named(workdir):
    frame = synthetic_frame()
    frame.to_csv(workdir / "data.csv", index=False)
    synthetic_frame(3000, seed=7).assign(x2=np.nan).to_parquet(workdir / "pop.parquet", row_group_size=1024)
    cfg = light_config()
    cfg["dataset"]["population"] = {"path": "pop.parquet"}
    cfg["compute"]["chunk_rows"] = 1024
    run = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    rep = json.loads((run.run_dir / "report.json").read_text())
    notes = rep["provenance"]["dataset"]["notes"]
    assert any(n.startswith("population column 'x2': no row has a value") for n in notes), notes
    dq = next(f for f in rep["findings"] if f["id"] == "data_quality.empty_features")
    assert dq["status"] == "fail" and dq["evidence"]["features"] == ["x2"] and "population" in dq["title"]


# ------------------------------------------------------------------------ a scheduler address that answers garbage
class _Garbage:
    """A TCP listener that answers every connection with bytes that are not Dask's protocol, then stays open."""

    def __init__(self, payload: bytes) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.payload, self.conns = payload, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            try:
                conn.sendall(self.payload)
            except OSError:
                pass

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.parametrize(
    "payload",
    [b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", b"SSH-2.0-OpenSSH_9.6\r\n", bytes(range(256)) * 4,
     b"\x01\x00\x00\x00\x00\x00\x00\x00"],
    ids=["http", "ssh", "binary", "one frame then nothing"],
)  # fmt: skip
def test_a_scheduler_address_that_answers_garbage_is_bad_config(workdir, capsys, payload):
    server = _Garbage(payload)
    try:
        cfg = light_config()
        cfg["compute"] = {"backend": "dask", "address": f"tcp://127.0.0.1:{server.port}", "timeout_s": 2}
        t0 = time.perf_counter()
        code = main(["run", str(write_config(workdir, cfg)), "-q"])
        took = time.perf_counter() - t0
    finally:
        server.close()
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "compute.address" in err and "Traceback" not in err, err
    assert took < 30, took  # within the connect timeout (and the audit's start), never for ever
    assert not (workdir / "reports").exists() or not any((workdir / "reports").rglob("report.json"))


def test_a_population_of_one_row_group_per_feature_kind_scores(workdir):
    """The population's per-feature counts of present values (for the notes above) cover text, numbers and
    categoricals read from Parquet dictionaries alike."""
    frame = synthetic_frame()
    frame.to_csv(workdir / "data.csv", index=False)
    pop = synthetic_frame(500, seed=9)
    pop["colour"] = pd.Categorical(pop["colour"])
    pop.to_parquet(workdir / "pop.parquet")
    cfg = light_config()
    cfg["dataset"]["population"] = {"path": "pop.parquet"}
    run = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    rep = json.loads((run.run_dir / "report.json").read_text())
    assert not any("no row has a value" in n for n in rep["provenance"]["dataset"]["notes"])
    dq = next(f for f in rep["findings"] if f["id"] == "data_quality.empty_features")
    assert dq["status"] == "pass"
