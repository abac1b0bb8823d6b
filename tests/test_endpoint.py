"""Issue 18, item 6: auditing a model behind an HTTP endpoint (kserve-v2, mlflow-invocations, a JSON template),
its failure modes (hang, 5xx, 429, wrong row count, NaN) and its request budget."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from audit.cli import main
from tests.conftest import light_config, synthetic_frame, with_html, write_config
from tests.test_formats import _close


@pytest.fixture(scope="module")
def native(tmp_path_factory):
    """A trained synthetic model's native audit: (folder, report)."""
    folder = tmp_path_factory.mktemp("native")
    synthetic_frame().to_csv(folder / "data.csv", index=False)
    cfg = light_config(keep=("partial_dependence", "network"))  # the sections compared
    cfg["name"] = "native"
    assert main(["run", str(write_config(folder, cfg)), "-q"]) in (0, 1)
    run = folder / "reports" / "native" / "latest"
    return folder, json.loads((run / "report.json").read_text())


@contextmanager
def serving(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def model_server(native):
    from audit.serve import load_for_serving, make_server

    folder, _ = native
    server = make_server(load_for_serving(folder / "reports" / "native" / "latest" / "model"))
    with serving(server) as url:
        yield url


def _endpoint_config(name: str, keep: tuple[str, ...] = (), **model) -> dict:
    cfg = with_html(light_config(keep=("partial_dependence", "network", *keep)))  # the sections compared, the page
    cfg["name"] = name
    cfg["model"] = {"source": "load", "timeout_s": 10, "backoff_s": 0.01, **model}
    return cfg


def _report(folder, name):
    return json.loads((folder / "reports" / name / "latest" / "report.json").read_text())


@pytest.mark.parametrize(
    "payload",
    [
        {"payload": "kserve-v2", "path_": "/v2/models/audit/infer"},
        {"payload": "mlflow-invocations", "path_": "/invocations"},
        {
            "payload": "template",
            "path_": "/invocations",
            "template": '{"dataframe_records": "$records"}',
            "response_path": "predictions",
        },
    ],
    ids=["kserve-v2", "mlflow", "template"],
)
def test_an_endpoint_audit_matches_the_native_audit(native, model_server, payload):
    folder, ref = native
    route = payload.pop("path_")
    name = f"http-{payload['payload']}"
    cfg = _endpoint_config(name, url=model_server + route, predict_batch_size=256, max_concurrency=3, **payload)
    assert main(["run", str(write_config(folder, cfg, f"{name}.yaml")), "-q"]) in (0, 1)
    rep = _report(folder, name)
    _close(rep["modules"]["fairness"]["tables"], ref["modules"]["fairness"]["tables"])
    _close(rep["modules"]["partial_dependence"]["data"], ref["modules"]["partial_dependence"]["data"])
    _close(rep["modules"]["performance"]["data"]["test"], ref["modules"]["performance"]["data"]["test"])
    model = rep["provenance"]["model"]
    assert model["format"] == "http" and model["url"] == cfg["model"]["url"]
    sent = model["requests"]
    rows = sum(m.get("rows_evaluated", 0) for m in rep["modules"].values())
    assert sent["rows"] >= rows > 0 and sent["requests"] >= sent["rows"] / 256 and sent["retries"] == 0
    assert rep["modules"]["gradients"]["summary"] == {"applicable": False}
    html = (folder / "reports" / name / "latest" / "report.html").read_text()
    assert f"sent {sent['rows']:,} rows in {sent['requests']:,} requests (0 retries" in html
    assert "scored by the endpoint" in html


class Faulty(BaseHTTPRequestHandler):
    """A kserve-v2 endpoint that misbehaves as ``mode`` says; counts the requests it saw."""

    mode = "ok"
    seen = 0
    auth: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):  # noqa: N802
        cls = type(self)
        cls.seen += 1
        cls.auth.append(self.headers.get("Authorization"))
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = req["inputs"][0]["shape"][0]
        data = [0.5] * n
        code = 200
        if cls.mode == "hang":
            time.sleep(5)
        elif cls.mode == "500" or (cls.mode == "429-then-ok" and cls.seen <= 2):
            code = 500 if cls.mode == "500" else 429
        elif cls.mode == "rows":
            data = data[:-1]
        elif cls.mode == "nan":
            data[0] = float("nan")
        body = json.dumps({"outputs": [{"name": "p", "shape": [len(data)], "data": data}]}).encode()
        if code != 200:
            body = b'{"error": "overloaded"}'
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        if code == 429:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def faulty(mode):
    Faulty.mode, Faulty.seen, Faulty.auth = mode, 0, []
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Faulty)) as url:
        yield url + "/v2/models/m/infer"


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("hang", "did not answer within model.timeout_s (1 s)"),
        ("500", "answered HTTP 500"),
        ("rows", "returned 239 scores for 240 rows"),
        ("nan", "NaN or outside [0, 1]"),
    ],
)
def test_a_failing_endpoint_fails_the_audit_clearly_and_in_time(workdir, mode, message):
    with faulty(mode) as url:
        cfg = _endpoint_config("faulty", url=url, timeout_s=1, retries=2, output="p")
        t0 = time.perf_counter()
        code = main(["run", str(write_config(workdir, cfg)), "-q"])
        took = time.perf_counter() - t0
    assert code == 3
    rep = _report(workdir, "faulty")
    assert rep["modules"]["model"]["status"] == "error" and message in rep["modules"]["model"]["error"]
    assert took < 8, took  # one timeout, not one per retry
    if mode == "500":
        assert Faulty.seen == 3 and rep["provenance"]["model"]["requests"]["retries"] == 2


def test_429_is_retried_and_the_token_is_sent_but_never_written(workdir, monkeypatch):
    monkeypatch.setenv("AUDIT_TEST_TOKEN", "s3cret-token-value")
    with faulty("429-then-ok") as url:
        cfg = _endpoint_config("retry", url=url, token_env="AUDIT_TEST_TOKEN", retries=3, output="p")
        cfg["local"]["enabled"] = False
        assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
    rep = _report(workdir, "retry")
    assert rep["provenance"]["model"]["requests"]["retries"] == 2
    assert set(Faulty.auth) == {"Bearer s3cret-token-value"}
    for f in (workdir / "reports" / "retry" / "latest").iterdir():
        if f.suffix in (".json", ".html"):
            assert "s3cret" not in f.read_text(), f.name
    monkeypatch.delenv("AUDIT_TEST_TOKEN")
    assert main(["run", str(write_config(workdir, cfg)), "-q"]) == 2  # named but unset: bad config


def test_a_request_budget_lowers_the_sample_sizes_and_holds(native, model_server):
    folder, _ = native
    url = model_server + "/v2/models/audit/infer"
    cfg = _endpoint_config("budget", keep=("local",), url=url, predict_batch_size=512, max_rows=30_000)
    assert main(["run", str(write_config(folder, cfg, "budget.yaml")), "-q"]) in (0, 1)
    rep = _report(folder, "budget")
    sent = rep["provenance"]["model"]["requests"]
    assert sent["rows"] <= 30_000 and sent["max_rows"] == 30_000
    budget = rep["provenance"]["model"]["budget"]
    assert budget["lowered"] and all(f < 1 for f in budget["factors"].values())
    assert budget["planned_rows"]["lime"] > 0 and "local.lime.num_samples 500" in str(budget["lowered"]["lime"])
    notes = rep["provenance"]["dataset"]["notes"]
    assert any("lowered to fit the endpoint's request budget" in n for n in notes)
    assert all(m["status"] != "error" for m in rep["modules"].values())
    # a budget that does not even cover scoring: the model is marked failed before the budget is exceeded
    cfg = _endpoint_config("tiny-budget", url=url, max_rows=100)
    assert main(["run", str(write_config(folder, cfg, "tiny.yaml")), "-q"]) == 3
    rep = _report(folder, "tiny-budget")
    assert "model.max_rows" in rep["modules"]["model"]["error"]
    assert rep["provenance"]["model"]["requests"]["rows"] == 0


def test_endpoint_config_mistakes_fail_at_validate(workdir, capsys):
    cfg = _endpoint_config("bad", url="http://127.0.0.1:1/x", path="model")
    assert main(["validate", str(write_config(workdir, cfg)), "--no-data"]) == 2
    assert "model.url and model.path" in capsys.readouterr().err
    cfg = _endpoint_config("bad", url="http://127.0.0.1:1/x", payload="template", template='{"rows": 1}')
    assert main(["validate", str(write_config(workdir, cfg)), "--no-data"]) == 2
    assert "placeholder" in capsys.readouterr().err


@pytest.mark.slow
def test_the_adult_net_served_in_both_payload_formats_audits_as_the_native_net(tmp_path):
    """Acceptance: the Adult net behind a local server, kserve-v2 and mlflow-invocations, against the native run."""
    import yaml

    from audit.serve import load_for_serving, make_server
    from tests.conftest import ROOT

    cfg = yaml.safe_load((ROOT / "configs" / "adult.yaml").read_text())
    for split in ("train", "test"):
        cfg["dataset"][split]["path"] = str(ROOT / "configs" / cfg["dataset"][split]["path"])
    cfg["report"] = {"output_dir": str(tmp_path / "out"), "formats": ["json"]}
    cfg["model"]["max_epochs"] = 3
    cfg["local"] = {"enabled": False}
    cfg["network"] = {"enabled": False}
    cfg["fairness"]["n_bootstrap"] = 20
    cfg["modules"] = {
        "performance": {"n_bootstrap": 20},
        "permutation_importance": {"enabled": False},
        "partial_dependence": {"features": ["age", "education-num", "sex"], "sample_size": 200, "ice_curves": 20},
        "ale": {"enabled": False},
        "interactions": {"enabled": False},
    }
    cfg["name"] = "adult-native"
    assert main(["run", str(write_config(tmp_path, cfg, "native.yaml")), "-q"]) in (0, 1)
    run = tmp_path / "out" / "adult-native" / "latest"
    ref = json.loads((run / "report.json").read_text())
    with serving(make_server(load_for_serving(run / "model"))) as url:
        for payload, route in (("kserve-v2", "/v2/models/audit/infer"), ("mlflow-invocations", "/invocations")):
            cfg["name"] = f"adult-{payload}"
            cfg["model"] = {"source": "load", "url": url + route, "payload": payload, "max_concurrency": 2}
            assert main(["run", str(write_config(tmp_path, cfg, f"{payload}.yaml")), "-q"]) in (0, 1)
            rep = json.loads((tmp_path / "out" / cfg["name"] / "latest" / "report.json").read_text())
            _close(rep["modules"]["fairness"]["tables"], ref["modules"]["fairness"]["tables"])
            _close(rep["modules"]["partial_dependence"]["data"], ref["modules"]["partial_dependence"]["data"])
            assert rep["provenance"]["model"]["requests"]["rows"] >= 48_842  # train + test scored over HTTP


def test_https_endpoints_are_verified_against_the_configured_ca(workdir, capsys):
    """A self-signed certificate for 127.0.0.1: refused by default (exit 3, the reason named), accepted with
    model.tls_ca pointing at it."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    Faulty.mode, Faulty.seen, Faulty.auth = "ok", 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Faulty)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/v2/models/m/infer"
        cfg = _endpoint_config("tls", url=url, retries=0, output="p")
        cfg["local"]["enabled"] = False
        assert main(["run", str(write_config(workdir, cfg)), "-q"]) == 3
        rep = _report(workdir, "tls")
        assert (
            "CERTIFICATE_VERIFY_FAILED" in rep["modules"]["model"]["error"]
            and "model.tls_ca" in rep["modules"]["model"]["error"]
        )
        cfg["model"]["tls_ca"] = "cert.pem"
        assert main(["run", str(write_config(workdir, cfg)), "-q"]) in (0, 1)
        assert _report(workdir, "tls")["provenance"]["model"]["requests"]["rows"] > 0
        cfg["model"]["tls_ca"] = "missing.pem"
        capsys.readouterr()
        assert main(["run", str(write_config(workdir, cfg)), "-q"]) == 2
        assert "model.tls_ca" in capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()
