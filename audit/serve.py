"""A small local scoring server for a saved model: ``python -m audit serve MODEL --port 8080``.

It answers the two payload formats ``model.format: http`` speaks, so an endpoint audit can be tried (and tested)
without a serving stack:

- ``POST /v2/models/<name>/infer``: KServe v2 / open inference protocol, one input per raw column; answers one output
  of shape ``[n]`` named as the positive label (e.g. ``">50K"``): the probability of that class;
- ``POST /invocations``: MLflow's scoring protocol (``dataframe_split`` or ``dataframe_records``); answers
  ``{"predictions": [{"<positive label>": p}, ...]}``, one mapping from class to probability per row;
- ``GET /v2/health/ready``: 200 once the model is loaded.

``MODEL`` is an artifact folder (``reports/<name>/latest/model``) or an exported ``model.onnx`` /
``model.torchscript.pt`` with its JSON beside it. It listens on 127.0.0.1 unless ``--host`` says otherwise; it is a
test and demonstration server (no TLS, no authentication), not a production one.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd

MAX_BODY = 256 << 20


def load_for_serving(path: str | Path):
    """The predictor of an artifact folder or an exported file."""
    from audit.model.artifact import detect_format, load_model
    from audit.model.formats import load_exported

    path = Path(path)
    fmt = detect_format(path, "auto")
    if fmt in ("onnx", "torchscript"):
        return load_exported(path, fmt)
    return load_model(path)


def make_server(predictor, *, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A threading HTTP server scoring with ``predictor`` (not started; ``port=0`` picks a free port)."""
    lock = threading.Lock()  # one forward pass at a time: the net is not re-entrant under torch's thread pool
    schema = predictor.schema
    positive = schema.positive_label  # the answers name the class they score, so no client has to guess it

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, code: int, obj) -> None:
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path.rstrip("/") in ("/v2/health/ready", "/health", "/ping"):
                self._send(200, {"ready": True})
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"error": "request too large"})
                return
            try:
                req = json.loads(self.rfile.read(length))
                if self.path.startswith("/v2/models/") and self.path.endswith("/infer"):
                    frame = pd.DataFrame({i["name"]: i["data"] for i in req["inputs"]})
                    p = self._score(frame)
                    out = {"name": positive, "shape": [len(p)], "datatype": "FP64", "data": p.tolist()}
                    self._send(200, {"model_name": "audit", "outputs": [out]})
                elif self.path.rstrip("/") == "/invocations":
                    if "dataframe_split" in req:
                        split = req["dataframe_split"]
                        frame = pd.DataFrame(split["data"], columns=split["columns"])
                    else:
                        frame = pd.DataFrame.from_records(req["dataframe_records"])
                    self._send(200, {"predictions": [{positive: v} for v in self._score(frame).tolist()]})
                else:
                    self._send(404, {"error": f"no route {self.path}"})
            except (KeyError, TypeError, ValueError) as exc:
                self._send(400, {"error": f"{exc.__class__.__name__}: {exc}"})

        def _score(self, frame: pd.DataFrame) -> np.ndarray:
            for f in schema.features:
                if f.is_categorical:
                    frame[f.name] = frame[f.name].astype(object)
                else:
                    frame[f.name] = pd.to_numeric(frame[f.name], errors="coerce")
            with lock:
                return predictor.predict_proba(frame[schema.feature_names])

    return ThreadingHTTPServer((host, port), Handler)


def serve(path: str | Path, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Load the model at ``path`` and serve it until interrupted."""
    server = make_server(load_for_serving(path), host=host, port=port)
    h, p = server.server_address[:2]
    print(f"serving {path} on http://{h}:{p} (kserve-v2: /v2/models/audit/infer, mlflow: /invocations); Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
