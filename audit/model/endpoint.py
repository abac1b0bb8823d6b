"""A model reachable only over HTTP (``model.format: http``, ``model.url``).

Every row an explainer evaluates becomes part of a JSON request: rows are sent in batches of
``model.predict_batch_size``, at most ``model.max_concurrency`` requests at a time, each with a timeout
(``model.timeout_s``); a 429 or 5xx answer (or a refused / reset connection) is retried up to ``model.retries``
times with exponential backoff (``model.backoff_s``, doubled per attempt, or the server's ``Retry-After`` if
longer, capped at 60 s). A request that times out is not retried: a hung endpoint fails the audit after one timeout.

Payload formats (``model.payload``), raw feature values as the data files hold them (integers, numbers, text), with
missing ones as JSON ``null``:

- ``kserve-v2``: the KServe / Triton "open inference protocol" ``{"inputs": [{"name": column, "shape": [n, 1],
  "datatype": "FP64" | "INT64" | "BOOL" | "BYTES", "data": [...]}, ...]}``, one input per raw feature column; the
  answer's ``outputs`` entry named ``model.output`` (else one named as the positive label, else the first) holds
  ``n`` probabilities, or ``n x k`` of them.
- ``mlflow-invocations``: MLflow's scoring server ``{"dataframe_split": {"columns": [...], "data": [[...], ...]}}``;
  the answer's ``predictions`` (or a bare list) holds one number, list or ``{class: probability}`` mapping per row.
- ``template``: ``model.template``, a JSON document in which the string ``"$records"`` is replaced by the rows as
  ``[{column: value}, ...]``, ``"$rows"`` by ``[[value, ...], ...]`` and ``"$columns"`` by the column names; the
  answer's list is found at ``model.response_path`` (dotted, list positions as numbers: ``outputs.0.data``).

Which number is the positive label's probability comes from the answer where it says (a mapping keyed by class,
an output named as the positive label), else from the config: ``model.output`` naming a one-column output or
``model.output_index`` (see :mod:`audit.model.output`). It is decided from the first answer, before any section
runs; an answer that does not say, with a config that does not either, stops the run (exit code 2).

The request budget: ``model.max_requests`` and ``model.max_rows`` bound the whole audit. A call that would exceed
either is refused before anything is sent (the module that made it fails and the report says which cap); the
pipeline also lowers the explainers' sample sizes to fit (see :mod:`audit.budget`). A bearer token
is read from the environment variable ``model.token_env`` names; the token never appears in the config or report.
An ``https://`` endpoint's certificate is always verified, against the system's CAs or the PEM bundle ``model.tls_ca``
names (an internal CA); a certificate that does not verify fails the run with the reason.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from audit.errors import ModelLoadError, ModelRuntimeError
from audit.model.adapter import RawPredictor, plain_frame
from audit.model.output import OutputColumn, label_texts, positive_column

MAX_RESPONSE_BYTES = 64 << 20
MAX_RETRY_WAIT_S = 60.0
PLACEHOLDERS = ("$records", "$rows", "$columns")


class EndpointError(ModelRuntimeError):
    """The endpoint failed, hung or answered something unusable (exit code 3; the module is marked failed)."""


class BudgetSpent(EndpointError):
    """A request would exceed ``model.max_requests`` or ``model.max_rows``."""


class HttpPredictor(RawPredictor):
    """Scores rows by sending them to ``cfg.url`` (see the module docstring for the protocol).

    Parameters
    ----------
    cfg : ModelConfig
        ``url``, ``payload``, ``template``, ``response_path``, ``output``, ``output_index``, ``timeout_s``,
        ``retries``, ``backoff_s``, ``max_concurrency``, ``max_requests``, ``max_rows``, ``token_env``,
        ``predict_batch_size``.
    schema : Schema
        The raw columns sent (in this order) and their kinds.
    """

    format = "http"
    net = None
    gradient_handle = "none: a remote endpoint exposes only its scores"

    def __init__(self, cfg, schema, *, tls_ca=None, label_map: dict | None = None) -> None:
        super().__init__(schema, batch_size=cfg.predict_batch_size)
        self.cfg = cfg
        self.url = cfg.url
        self.label_map = dict(label_map or {})
        self.column: OutputColumn | None = None  # decided from the first answer (see _column)
        self.requests_sent = 0  # every attempt, retries included
        self.rows_sent = 0
        self.retried = 0
        self.elapsed_s = 0.0
        self._lock = threading.Lock()
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if cfg.token_env:
            token = os.environ.get(cfg.token_env)
            if not token:
                raise ModelLoadError(
                    f"model.token_env: the environment variable {cfg.token_env!r} is not set; export the bearer "
                    "token in it (the token itself never goes into the config)"
                )
            self._headers["Authorization"] = f"Bearer {token}"
        self.template = json.loads(cfg.template) if cfg.payload == "template" else None
        self.runtime = f"http ({cfg.payload})"
        self._tls = None
        if cfg.url.startswith("https://"):
            import ssl

            try:  # certificates always verified: the system's CAs, or the bundle model.tls_ca names
                self._tls = ssl.create_default_context(cafile=str(tls_ca) if tls_ca else None)
            except (OSError, ssl.SSLError) as exc:
                raise ModelLoadError(
                    f"model.tls_ca: '{tls_ca}' is not a readable PEM CA bundle ({exc.__class__.__name__}); point it "
                    "at the certificate of the CA that signed the endpoint's"
                ) from None

    # ------------------------------------------------------------------------------------------------ budget
    def describe(self) -> dict:
        """What was sent: for the report's provenance."""
        return {
            "url": self.url,
            "payload": self.cfg.payload,
            "requests": self.requests_sent,
            "rows": self.rows_sent,
            "retries": self.retried,
            "seconds_waiting": round(self.elapsed_s, 3),
            "max_requests": self.cfg.max_requests,
            "max_rows": self.cfg.max_rows,
            "batch_size": self.batch_size,
            "max_concurrency": self.cfg.max_concurrency,
            "authorization": f"bearer token from ${self.cfg.token_env}" if self.cfg.token_env else None,
        }

    def rows_left(self) -> int | None:
        """Rows the budget still allows (``None``: no cap), counting the requests cap as full batches."""
        caps = []
        if self.cfg.max_rows is not None:
            caps.append(self.cfg.max_rows - self.rows_sent)
        if self.cfg.max_requests is not None:
            caps.append((self.cfg.max_requests - self.requests_sent) * self.batch_size)
        return max(0, min(caps)) if caps else None

    def _reserve(self, rows: int, requests: int) -> None:
        with self._lock:
            cfg = self.cfg
            if cfg.max_rows is not None and self.rows_sent + rows > cfg.max_rows:
                raise BudgetSpent(
                    f"the request budget is spent: {rows:,} more rows would exceed model.max_rows ({cfg.max_rows:,}; "
                    f"{self.rows_sent:,} sent); raise it or lower this section's sample sizes"
                )
            if cfg.max_requests is not None and self.requests_sent + requests > cfg.max_requests:
                raise BudgetSpent(
                    f"the request budget is spent: {requests:,} more requests would exceed model.max_requests "
                    f"({cfg.max_requests:,}; {self.requests_sent:,} sent); raise it or lower the sample sizes"
                )
            self.rows_sent += rows
            self.requests_sent += requests

    # ------------------------------------------------------------------------------------------------ scoring
    def predict_codes(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.schema.features):
            raise ValueError(f"expected a code array of shape (n, {len(self.schema.features)}), got {X.shape}")
        return self._score_rows(self.raw_frame(X)) if len(X) else np.zeros(0)

    def predict_frame(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows (a population partition) sent as they were read, with the budget and concurrency of
        :meth:`predict_codes`."""
        codes = self.schema.to_codes(df)
        frame = plain_frame(df[self.schema.feature_names]).reset_index(drop=True)
        proba = self._score_rows(frame) if len(frame) else np.zeros(0)
        return proba, codes[:, self.schema.categorical_mask].astype(np.int64)

    def _score_rows(self, frame: pd.DataFrame) -> np.ndarray:
        """Every row of ``frame`` in requests of ``batch_size`` rows, at most ``max_concurrency`` at a time."""
        n = len(frame)
        step = self.batch_size
        spans = [(i, min(i + step, n)) for i in range(0, n, step)]
        self._reserve(n, len(spans))
        self.rows_evaluated += n
        t0 = time.perf_counter()
        try:
            if len(spans) == 1:
                parts = [self._score(frame)]
            else:
                with ThreadPoolExecutor(max_workers=min(self.cfg.max_concurrency, len(spans))) as pool:
                    parts = list(pool.map(lambda s: self._score(frame.iloc[s[0] : s[1]]), spans))
        finally:
            self.elapsed_s += time.perf_counter() - t0
        return np.concatenate(parts)

    def _score(self, frame: pd.DataFrame) -> np.ndarray:
        answer = self._post(self._body(frame))
        p = self._parse(answer, len(frame))
        if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
            bad = int((~np.isfinite(p)).sum() + ((p < 0) | (p > 1)).sum())
            raise EndpointError(
                f"model.url: the endpoint returned {bad} score(s) that are NaN or outside [0, 1] for {len(frame)} "
                "rows; it must return the probability of the positive label"
            )
        return p

    def _body(self, frame: pd.DataFrame) -> bytes:
        cols = list(frame.columns)
        typed = {c: _json_values(frame[c]) for c in cols}
        values = {c: v for c, (v, _) in typed.items()}
        if self.cfg.payload == "kserve-v2":
            body = {
                "inputs": [
                    {"name": c, "shape": [len(frame), 1], "datatype": typed[c][1], "data": values[c]} for c in cols
                ]
            }
        else:
            rows = [list(r) for r in zip(*(values[c] for c in cols), strict=True)]
            if self.cfg.payload == "mlflow-invocations":
                body = {"dataframe_split": {"columns": cols, "data": rows}}
            else:
                fill = {
                    "$rows": rows,
                    "$records": [dict(zip(cols, r, strict=True)) for r in rows],
                    "$columns": cols,
                }
                body = _substitute(self.template, fill)
        return json.dumps(body, allow_nan=False).encode()

    def _post(self, body: bytes):
        cfg = self.cfg
        attempt = 0
        while True:
            req = urllib.request.Request(self.url, data=body, headers=self._headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=cfg.timeout_s, context=self._tls) as resp:  # noqa: S310
                    raw = resp.read(MAX_RESPONSE_BYTES + 1)
                break
            except urllib.error.HTTPError as exc:
                retry = exc.code == 429 or exc.code >= 500
                if not retry or attempt >= cfg.retries:
                    detail = exc.read(300).decode("utf-8", "replace").strip().splitlines()
                    raise EndpointError(
                        f"model.url: the endpoint answered HTTP {exc.code} {exc.reason}"
                        + (f" ({detail[0][:200]})" if detail else "")
                        + (f" after {attempt + 1} attempts" if attempt else "")
                    ) from None
                wait = _retry_after(exc.headers.get("Retry-After"))
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as exc:
                import ssl

                reason = getattr(exc, "reason", exc)
                if isinstance(reason, ssl.SSLError) or isinstance(exc, ssl.SSLError):
                    raise EndpointError(
                        f"model.url: the TLS connection to {self.url} failed ({getattr(reason, 'reason', None) or reason}"
                        "); if the endpoint's certificate is signed by an internal CA, set model.tls_ca to its PEM file"
                    ) from None
                if isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError):
                    raise EndpointError(
                        f"model.url: the endpoint did not answer within model.timeout_s ({cfg.timeout_s:g} s)"
                    ) from None
                if attempt >= cfg.retries:
                    raise EndpointError(
                        f"model.url: cannot reach {self.url} ({reason}) after {attempt + 1} attempt(s); is the server up?"
                    ) from None
                wait = 0.0
            attempt += 1
            self._reserve(0, 1)  # a retry is a request too: the budget bounds it
            with self._lock:
                self.retried += 1
            time.sleep(min(MAX_RETRY_WAIT_S, max(wait, cfg.backoff_s * 2 ** (attempt - 1))))
        if len(raw) > MAX_RESPONSE_BYTES:
            raise EndpointError(f"model.url: an answer was larger than {MAX_RESPONSE_BYTES >> 20} MB")
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise EndpointError(
                f"model.url: the endpoint's answer is not JSON ({raw[:80].decode('utf-8', 'replace')!r})"
            ) from None

    def _parse(self, answer, n: int) -> np.ndarray:
        cfg = self.cfg
        named = None  # how the answer names the positive label's column, when it does
        try:
            if cfg.payload == "kserve-v2":
                outputs = answer["outputs"]
                if cfg.output:
                    out = next(o for o in outputs if o.get("name") == cfg.output)
                else:
                    own = [o for o in outputs if self._is_positive(o.get("name"))]
                    out, named = (
                        (own[0], "the answer's output named as the positive label") if own else (outputs[0], None)
                    )
                data = np.asarray(out["data"], dtype=np.float64)
                shape = [int(s) for s in out.get("shape") or [len(data)]]
                items = data.reshape(shape[0], -1) if shape and shape[0] == n else data.reshape(-1, 1)
            else:
                if cfg.payload == "template":
                    items = answer
                    for key in (cfg.response_path or "").split("."):
                        if key:
                            items = items[int(key)] if isinstance(items, list) else items[key]
                else:
                    items = answer["predictions"] if isinstance(answer, dict) else answer
                if items and isinstance(items[0], dict):  # one {class: probability} mapping per row
                    key = cfg.output if cfg.output else self._positive_key(items[0])
                    named = f"the answer's mapping key {key!r}"
                    items = [v[key] for v in items]
                items = np.asarray(items, dtype=np.float64).reshape(len(items), -1)
        except (KeyError, IndexError, TypeError, ValueError, StopIteration) as exc:
            raise EndpointError(
                f"model.url: the endpoint's answer does not have the {cfg.payload} shape this audit reads "
                f"({exc.__class__.__name__}: {str(exc)[:100]}); check model.payload, model.output and "
                "model.response_path"
            ) from None
        if len(items) != n:
            raise EndpointError(f"model.url: the endpoint returned {len(items)} scores for {n} rows")
        return self._column(items.shape[1], named).take(items).copy()

    def _is_positive(self, name) -> bool:
        return name is not None and label_texts([name], self.label_map) == [self.schema.positive_label]

    def _positive_key(self, row: dict):
        """The key of a ``{class: probability}`` mapping that is the positive label (model.output names it else)."""
        keys = [k for k in row if self._is_positive(k)]
        if not keys:
            raise ModelLoadError(
                f"model.output: the endpoint answers mappings with keys {list(row)[:10]}, none of them "
                f"dataset.positive_label {self.schema.positive_label!r}; set model.output to the positive label's key"
            )
        return keys[0]

    def _column(self, n_columns: int, named: str | None) -> OutputColumn:
        """The positive label's column, decided from the first answer and kept (see :mod:`audit.model.output`)."""
        with self._lock:
            if self.column is None:
                if named is not None and n_columns == 1:
                    self.column = OutputColumn(0, named)
                elif self.cfg.output is not None and n_columns == 1:
                    self.column = OutputColumn(0, f"model.output: {self.cfg.output!r} (one score per row)")
                else:
                    self.column = positive_column(
                        n_columns, None, positive_label=self.schema.positive_label,
                        output_index=self.cfg.output_index, what="the endpoint's answer",
                    )  # fmt: skip
            return self.column


def _json_values(s: pd.Series) -> tuple[list, str]:
    """A column of raw values as JSON values and its KServe datatype: integers as integers (``INT64``), other numbers
    as floats (``FP64``), booleans as booleans (``BOOL``), anything else as text (``BYTES``); a missing value is
    ``None``."""
    missing = s.isna().to_numpy()
    if pd.api.types.is_bool_dtype(s) and not missing.any():
        vals, kind = s.to_numpy(dtype=bool).tolist(), "BOOL"
    elif pd.api.types.is_integer_dtype(s) and not missing.any():
        vals, kind = s.to_numpy(dtype=np.int64).tolist(), "INT64"
    elif pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        vals, kind = s.to_numpy(dtype=np.float64, na_value=np.nan).tolist(), "FP64"
    else:
        vals, kind = [str(v) for v in s.astype(object).where(~missing, "").tolist()], "BYTES"
    return [None if m else v for v, m in zip(vals, missing.tolist(), strict=True)], kind


def _substitute(node, fill: dict):
    if isinstance(node, str) and node in fill:
        return fill[node]
    if isinstance(node, list):
        return [_substitute(v, fill) for v in node]
    if isinstance(node, dict):
        return {k: _substitute(v, fill) for k, v in node.items()}
    return node


def _retry_after(value) -> float:
    try:
        return min(MAX_RETRY_WAIT_S, max(0.0, float(value)))
    except (TypeError, ValueError):
        return 0.0
