"""MLflow pyfunc model folders (``model.format: mlflow``), loaded only with ``model.trust: true``.

Loading one unpickles its Python model (cloudpickle) and imports its code. The audit scores it with its own
``predict(df)`` on the raw feature columns. The positive label's column comes from the model: the classes of the
scikit-learn flavour's estimator (a pyfunc logged with ``pyfunc_predict_fn="predict_proba"``), the columns of a
frame it returns when they are named by class, the output names of its signature; else from the config
(``model.output`` names the column, ``model.output_index`` gives its position; see :mod:`audit.model.output`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.data import Dataset
from audit.errors import ModelLoadError, ModelRuntimeError
from audit.files import sha256_file
from audit.model.adapter import CallablePredictor
from audit.model.external import adopt_raw_inputs, check_scoring
from audit.model.output import OutputColumn, label_texts, positive_column

MAX_MLMODEL_BYTES = 1 << 20


def load_mlflow(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[CallablePredictor, dict]:
    """The predictor of an MLflow pyfunc folder and its provenance (see the module docstring)."""
    desc, flavors = _description(cfg, path)
    try:
        import mlflow
        import mlflow.pyfunc
    except ImportError:
        raise ModelLoadError("model.format: mlflow needs MLflow: pip install '.[mlflow]' (make installs it)") from None
    try:
        model = mlflow.pyfunc.load_model(str(path))
    except Exception as exc:  # noqa: BLE001 - the trusted model itself is broken: a model failure
        raise ModelRuntimeError(f"MLflow model '{path}' failed to load: {exc.__class__.__name__}: {exc}") from exc
    predictor = CallablePredictor(lambda df: df, ds.schema, batch_size=cfg.model.predict_batch_size)
    info = adopt_raw_inputs(predictor, ds)
    names = ds.schema.feature_names
    head = ds.raw_frames()[1].iloc[:8][names].reset_index(drop=True)
    try:
        out = model.predict(head)
    except Exception as exc:  # noqa: BLE001 - the model raising on the audit rows: a model failure
        raise ModelRuntimeError(f"MLflow model '{path}' failed on the first audit rows: {exc}") from exc
    column, pick = _column(out, model, desc, cfg, ds.schema.positive_label)

    def predict(df: pd.DataFrame) -> np.ndarray:
        return column.take(pick(model.predict(df[names])))

    predictor.fn, predictor.format = predict, "mlflow"
    info["output_column"] = column.describe()
    info["load_check"] = check_scoring(predictor, ds, predict)
    return predictor, {
        "source": "load", "format": "mlflow", "path": str(path), "hash": folder_sha256(path),
        "hash_of": "every file in the folder (relative names and bytes, sorted)", "runtime": f"mlflow {mlflow.__version__}",
        "flavors": flavors, "logged_with": desc.get("mlflow_version"),
        "trusted": "the whole model (model.trust: true): its Python model was unpickled and its code imported", **info,
    }  # fmt: skip


def _description(cfg: AuditConfig, path: Path) -> tuple[dict, list[str]]:
    """The folder's ``MLmodel`` description and flavors, checked before anything is unpickled."""
    import yaml

    mlmodel = path / "MLmodel"
    if not mlmodel.is_file():
        raise ModelLoadError(f"model.path: '{path}' has no MLmodel file; point it at an MLflow model folder")
    if mlmodel.stat().st_size > MAX_MLMODEL_BYTES:
        raise ModelLoadError(f"model.path: '{mlmodel}' is larger than 1 MB; not an MLflow model description")
    try:
        desc = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
        flavors = sorted(desc["flavors"])
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign MLmodel
        raise ModelLoadError(
            f"model.path: '{mlmodel}' is not an MLflow model description ({exc.__class__.__name__})"
        ) from None
    if "python_function" not in flavors:
        raise ModelLoadError(f"model.path: '{path}' has flavors {flavors}, none of them python_function (pyfunc)")
    if not cfg.model.trust:
        raise ModelLoadError(
            f"model.path: '{path}' is an MLflow model; loading one unpickles its Python model and runs its code, so "
            "it is refused unless the config sets model.trust: true (only for models you produced or verified)"
        )
    return desc, flavors


def _column(out, model, desc: dict, cfg: AuditConfig, positive: str):
    """The positive label's :class:`OutputColumn` and a function that turns the model's output into an array."""
    label_map, what = dict(cfg.dataset.label_map), "the MLflow model"
    if isinstance(out, pd.DataFrame):
        cols = [str(c) for c in out.columns]
        if cfg.model.output is not None:
            if cfg.model.output not in cols:
                raise ModelLoadError(
                    f"model.output: the MLflow model's output has no column {cfg.model.output!r}; it has {cols[:20]}"
                )
            index = cols.index(cfg.model.output)
            return OutputColumn(index, f"model.output: column {cfg.model.output!r}"), _array
        if positive in label_texts(cols, label_map):
            return positive_column(len(cols), cols, positive_label=positive, output_index=cfg.model.output_index,
                                   label_map=label_map, what=what, classes_from="its output's column names"), _array  # fmt: skip
        classes, source = None, ""
    else:
        classes, source = _classes(model, desc)
    a = np.asarray(out)
    if cfg.model.output is not None and a.ndim == 1:
        return OutputColumn(0, f"model.output: {cfg.model.output!r} (one score per row)"), _array
    n = a.shape[1] if a.ndim == 2 else 1
    return positive_column(n, classes, positive_label=positive, output_index=cfg.model.output_index,
                           label_map=label_map, what=what, classes_from=source), _array  # fmt: skip


def _classes(model, desc: dict) -> tuple[list | None, str]:
    """The classes of the model's output columns, where the model says: the scikit-learn flavour's estimator (when
    the pyfunc answers ``predict_proba``), else the column names of the signature's outputs."""
    pyfunc = (desc.get("flavors") or {}).get("python_function") or {}
    if "sklearn" in (desc.get("flavors") or {}):
        if pyfunc.get("predict_fn", "predict") == "predict":
            raise ModelLoadError(
                "model.path: the MLflow model's pyfunc answers predict(), class labels, not probabilities; log it with "
                "pyfunc_predict_fn='predict_proba'"
            )
        try:
            raw = model.get_raw_model()
        except Exception:  # noqa: BLE001 - no raw model: the signature, or the config
            raw = None
        if getattr(raw, "classes_", None) is not None:
            return list(raw.classes_), "the scikit-learn flavour's classes_"
    outputs = (desc.get("signature") or {}).get("outputs")
    try:
        import json

        specs = json.loads(outputs) if isinstance(outputs, str) else None
        names = [s["name"] for s in specs] if specs and all("name" in s for s in specs) and len(specs) > 1 else None
    except (ValueError, TypeError, KeyError):
        names = None
    return (names, "the signature's output names") if names else (None, "")


def _array(out) -> np.ndarray:
    return np.asarray(out.to_numpy() if isinstance(out, pd.DataFrame | pd.Series) else out, dtype=np.float64)


def folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files: each relative name, then its bytes' sha256, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        h.update(bytes.fromhex(sha256_file(f)))
    return h.hexdigest()
