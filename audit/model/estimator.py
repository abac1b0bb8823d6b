"""scikit-learn-style models: a trusted pickle (joblib), a skops file, or an object passed in Python.

Each is scored with its own ``predict_proba`` on the raw feature columns; the positive label's column comes from
its ``classes_`` (see :mod:`audit.model.output`), and :func:`audit.model.external.check_scoring` proves at load time
that the audit's path gives the same scores as the object itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.data import Dataset
from audit.errors import ModelLoadError, ModelRuntimeError
from audit.files import sha256_file
from audit.model.adapter import CallablePredictor
from audit.model.external import adopt_raw_inputs, check_scoring
from audit.model.output import OutputColumn, positive_column


def audited(obj: Any, cfg: AuditConfig, ds: Dataset, what: str) -> tuple[CallablePredictor, dict]:
    """The predictor of an estimator with ``predict_proba`` (or a plain function of a frame), checked at load time
    against the object's own output; returns it and the provenance shared by every format here."""
    predictor = CallablePredictor(lambda df: df, ds.schema, batch_size=cfg.model.predict_batch_size)
    info = adopt_raw_inputs(predictor, ds)
    names = ds.schema.feature_names
    head = ds.raw_frames()[1].iloc[:8][names].reset_index(drop=True)
    if hasattr(obj, "predict_proba"):
        call = obj.predict_proba
        classes, source = getattr(obj, "classes_", None), "the estimator's classes_"
    elif callable(obj):
        call, classes, source = obj, None, ""
    else:
        raise ModelRuntimeError(
            f"{what} ({type(obj).__name__}) is neither callable nor has predict_proba; pass predict_proba(df) -> "
            "probabilities of the positive label, or a fitted estimator"
        )
    plain = not hasattr(obj, "predict_proba")
    column = _column(call, head, classes, source, cfg, ds.schema.positive_label, what, plain_function=plain)

    def predict(df: pd.DataFrame) -> np.ndarray:
        return column.take(call(df[names]))

    predictor.fn = predict
    info["output_column"] = column.describe()
    info["load_check"] = check_scoring(predictor, ds, predict)
    return predictor, info


def _column(call, head, classes, source, cfg: AuditConfig, positive: str, what: str, *, plain_function: bool):
    """The positive label's column of ``call``'s output (an :class:`OutputColumn`; a plain function's 1-D output is
    that probability, as :func:`audit.api.run_audit` documents)."""
    try:
        out = np.asarray(call(head))
    except Exception as exc:  # noqa: BLE001 - the user's model raising on the audit rows: a model failure
        raise ModelRuntimeError(f"{what} failed on the first audit rows: {exc.__class__.__name__}: {exc}") from exc
    if plain_function and out.ndim == 1:
        return OutputColumn(
            0, "a function's one score per row: the positive label's probability (run_audit's contract)"
        )
    n = out.shape[1] if out.ndim == 2 else 1
    return positive_column(
        n, classes, positive_label=positive, output_index=cfg.model.output_index,
        label_map=dict(cfg.dataset.label_map), what=what, classes_from=source,
    )  # fmt: skip


def load_pickle(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[CallablePredictor, dict]:
    """A pickled model with ``predict_proba(df)`` (e.g. a scikit-learn pipeline), only with ``model.trust: true``."""
    if not cfg.model.trust:
        raise ModelLoadError(
            f"model.path: '{path}' is a pickle, and unpickling runs arbitrary code; it is refused unless the config "
            "sets model.trust: true (only for files you produced or verified)"
        )
    import joblib

    try:
        obj = joblib.load(path)
    except Exception as exc:  # noqa: BLE001 - the trusted file itself is broken: a model failure, not bad config
        raise ModelRuntimeError(f"trusted model '{path}' failed to load: {exc.__class__.__name__}: {exc}") from exc
    predictor, info = audited(obj, cfg, ds, f"trusted model '{path}'")
    info = {"source": "load", "path": str(path), "hash": sha256_file(path), "trusted_pickle": True,
            "kind": f"{type(obj).__module__}.{type(obj).__name__}", **info}  # fmt: skip
    return predictor, info


def load_skops(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[CallablePredictor, dict]:
    """A scikit-learn model saved with ``skops.io``: only types skops trusts by default or ``model.trusted_types``
    lists are built; any other type refuses the file before anything in it is constructed."""
    if not path.is_file():
        raise ModelLoadError(f"model.path: '{path}' is not a file; point it at the .skops file")
    try:
        import skops
        import skops.io as sio
    except ImportError:
        raise ModelLoadError(
            "model.format: skops needs the skops package (pip install skops; make installs it)"
        ) from None
    try:
        untrusted = list(sio.get_untrusted_types(file=path))  # reads the file's schema; constructs nothing
    except Exception as exc:  # noqa: BLE001 - not a zip, no schema, a foreign file
        raise ModelLoadError(
            f"model.path: '{path}' is not a readable skops file ({exc.__class__.__name__}: {str(exc)[:150]})"
        ) from None
    refused = [t for t in untrusted if t not in cfg.model.trusted_types]
    if refused:
        raise ModelLoadError(
            f"model.path: '{path}' holds types that skops does not trust by default: {refused[:20]}; nothing was "
            "loaded. List the ones you trust in model.trusted_types"
        )
    try:
        obj = sio.load(path, trusted=untrusted)
    except Exception as exc:  # noqa: BLE001 - the trusted file itself is broken: a model failure
        raise ModelRuntimeError(f"skops model '{path}' failed to load: {exc.__class__.__name__}: {exc}") from exc
    predictor, info = audited(obj, cfg, ds, f"skops model '{path}'")
    info = {"source": "load", "format": "skops", "path": str(path), "hash": sha256_file(path),
            "runtime": f"skops {skops.__version__}", "kind": f"{type(obj).__module__}.{type(obj).__name__}",
            "trusted": untrusted or "only the types skops trusts by default", **info}  # fmt: skip
    return predictor, info


def python_model(model: Any, cfg: AuditConfig, ds: Dataset) -> tuple[CallablePredictor, dict]:
    """A model handed over in Python (:func:`audit.api.run_audit`): an estimator with ``predict_proba`` (its
    ``classes_`` give the column), or a plain function ``predict_proba(df) -> probabilities of the positive label``
    (one per row; a function that returns one column per class needs ``model.output_index``)."""
    kind = f"{type(model).__module__}.{getattr(type(model), '__qualname__', type(model).__name__)}"
    if not hasattr(model, "predict_proba") and callable(model):
        kind = getattr(model, "__qualname__", kind)
    predictor, info = audited(model, cfg, ds, "the model passed to run_audit")
    return predictor, {"source": "python", "kind": kind, "hash": None, "path": None, **info}
