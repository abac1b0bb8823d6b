"""Train the built-in net or load the model under audit, in whatever format: :func:`prepare_model` picks the loader.

Each loader returns the :class:`~audit.model.adapter.Predictor` every section uses and the model's provenance for
the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.compute import apply_torch_threads
from audit.config import AuditConfig
from audit.data import Dataset
from audit.errors import ModelLoadError, ModelRuntimeError
from audit.progress import Progress

if TYPE_CHECKING:
    from audit.model.adapter import Predictor


def prepare_model(
    cfg: AuditConfig, ds: Dataset, run_tmp: Path | None, progress: Progress | None = None
) -> tuple[Predictor, dict]:
    """Train or load the model; returns the predictor and its provenance."""
    from audit.model.artifact import load_model, model_hash, read_model_meta, save_model

    if cfg.model.source == "load" and cfg.model.url:
        return _connect_endpoint(cfg, ds)
    if cfg.model.source == "load":
        from audit.model.artifact import detect_format

        path = cfg.resolve(cfg.model.path or "", key="model.path")
        fmt = detect_format(path, cfg.model.format)
        if fmt == "pickle":
            return _load_trusted_pickle(cfg, path, ds)
        if fmt in ("onnx", "torchscript"):
            return _load_exported(cfg, path, fmt, ds)
        if fmt == "skops":
            return _load_skops(cfg, path, ds)
        if fmt == "lightning":
            return _load_lightning(cfg, path, ds)
        if fmt == "mlflow":
            return _load_mlflow(cfg, path, ds)
        predictor = load_model(path, batch_size=cfg.model.predict_batch_size)
        _adopt_model_schema(predictor, ds)
        meta = read_model_meta(path)
        return predictor, {"source": "load", "path": str(path), "hash": model_hash(path), **_meta_info(meta)}

    from audit.model.adapter import NetPredictor
    from audit.model.training import train_model

    apply_torch_threads()  # torch is imported now: the thread plan applies to it
    codes = ds.schema.to_codes(ds.X_train)
    res = train_model(
        ds.schema,
        codes,
        ds.y_train,
        cfg.model,
        validation_size=cfg.dataset.validation_size,
        seed=cfg.seed,
        on_epoch=progress.epochs if progress is not None else None,
    )
    predictor = NetPredictor(res.net, res.preprocessing, ds.schema, batch_size=cfg.model.predict_batch_size)
    info = {"source": "train", "architecture": res.architecture, "history": res.history, "best_epoch": res.best_epoch}
    if run_tmp is not None:
        mh = save_model(
            run_tmp / "model", predictor, architecture=res.architecture, history=res.history, best_epoch=res.best_epoch
        )
        info.update(path="model", hash=mh)
        if cfg.model.export:
            from audit.model.formats import export_model

            info["exports"] = export_model(run_tmp / "model", predictor, list(cfg.model.export))
    return predictor, info


def _connect_endpoint(cfg: AuditConfig, ds: Dataset) -> tuple[Predictor, dict]:
    """A model behind ``model.url`` (see :mod:`audit.model.endpoint`); the raw columns are the dataset's."""
    from audit.model.endpoint import HttpPredictor

    tls_ca = cfg.resolve(cfg.model.tls_ca, key="model.tls_ca") if cfg.model.tls_ca else None
    predictor = HttpPredictor(cfg.model, ds.schema, tls_ca=tls_ca)
    info = {
        "source": "load",
        "format": "http",
        "path": None,
        "url": cfg.model.url,
        "hash": None,
        "runtime": predictor.runtime,
        "trusted": "nothing: the audit only sends rows and reads scores",
    }
    return predictor, info


def _load_exported(cfg: AuditConfig, path: Path, fmt: str, ds: Dataset) -> tuple[Predictor, dict]:
    """An exported ONNX or TorchScript file with our artifact's JSON beside it (see :mod:`audit.model.formats`)."""
    from audit.files import sha256_file
    from audit.model.formats import load_exported, load_onnx

    if fmt == "onnx":
        predictor = load_onnx(path, cfg.model, ds.schema, batch_size=cfg.model.predict_batch_size)
    else:
        predictor = load_exported(path, fmt, batch_size=cfg.model.predict_batch_size)
    if predictor.schema is not ds.schema:  # the file came with our JSON: its levels code the data
        _adopt_model_schema(predictor, ds)
    info = {
        "source": "load",
        "format": fmt,
        "path": str(path),
        "hash": sha256_file(path),
        "runtime": predictor.runtime,
        "trusted": "nothing: neither format runs Python code when loaded",
        "gradient_handle": predictor.gradient_handle,
        "inputs": getattr(predictor, "mode", "exported"),
        "output": getattr(predictor, "output", None),
    }
    return predictor, info


def _load_lightning(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[Predictor, dict]:
    """A Lightning checkpoint of the user's module (see :func:`audit.model.formats.load_lightning`)."""
    from audit.files import sha256_file
    from audit.model.formats import load_lightning

    if not cfg.model.module_class:
        raise ModelLoadError("model.path is a Lightning checkpoint; set model.module_class to 'package.module:Class'")
    predictor = load_lightning(
        path, cfg.model.module_class, trust=cfg.model.trust, batch_size=cfg.model.predict_batch_size
    )
    _adopt_model_schema(predictor, ds)
    info = {
        "source": "load",
        "format": "lightning",
        "path": str(path),
        "hash": sha256_file(path),
        "runtime": predictor.runtime,
        "module_class": cfg.model.module_class,
        "trusted": predictor.trusted,
        "gradient_handle": predictor.gradient_handle,
    }
    return predictor, info


MAX_MLMODEL_BYTES = 1 << 20


def _load_mlflow(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[Predictor, dict]:
    """An MLflow pyfunc model folder (local path), only with ``model.trust: true``: loading one unpickles its Python
    model (cloudpickle) and imports its code. Its ``predict(df)`` must return the positive label's probability (one
    column, or one per class with ``model.output_index``, or a frame with the column ``model.output``)."""
    import yaml

    from audit.model.adapter import CallablePredictor

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
    try:
        import mlflow
        import mlflow.pyfunc
    except ImportError:
        raise ModelLoadError("model.format: mlflow needs MLflow: pip install '.[mlflow]' (make installs it)") from None
    try:
        model = mlflow.pyfunc.load_model(str(path))
    except Exception as exc:  # noqa: BLE001 - the trusted model itself is broken: a model failure
        raise ModelRuntimeError(f"MLflow model '{path}' failed to load: {exc.__class__.__name__}: {exc}") from exc
    names = ds.schema.feature_names
    index, column = cfg.model.output_index, cfg.model.output

    def predict(df):
        out = model.predict(df[names])
        if hasattr(out, "columns"):  # a DataFrame: the named column, else the only / indexed one
            out = out[column] if column else out.iloc[:, index if index is not None else out.shape[1] - 1]
        out = np.asarray(out, dtype=np.float64)
        if out.ndim == 2 and out.shape[1] > 1:
            out = out[:, index if index is not None else 1 if out.shape[1] == 2 else -1]
        return out.reshape(-1)

    predictor = CallablePredictor(predict, ds.schema, batch_size=cfg.model.predict_batch_size)
    predictor.format = "mlflow"
    info = {
        "source": "load",
        "format": "mlflow",
        "path": str(path),
        "hash": _folder_sha256(path),
        "hash_of": "every file in the folder (relative names and bytes, sorted)",
        "runtime": f"mlflow {mlflow.__version__}",
        "flavors": flavors,
        "logged_with": desc.get("mlflow_version"),
        "trusted": "the whole model (model.trust: true): its Python model was unpickled and its code imported",
    }
    return predictor, info


def _folder_sha256(folder: Path) -> str:
    """sha256 over a folder's files: each relative name, then its bytes' sha256, in sorted order."""
    import hashlib

    from audit.files import sha256_file

    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode())
        h.update(bytes.fromhex(sha256_file(f)))
    return h.hexdigest()


def _load_trusted_pickle(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[Predictor, dict]:
    """Load a pickled model with ``predict_proba(df)`` (e.g. a scikit-learn pipeline), only when trusted."""
    from audit.files import sha256_file
    from audit.model.adapter import CallablePredictor

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
    predictor = CallablePredictor(
        _estimator_proba(obj, ds.schema, f"trusted model '{path}'"), ds.schema, batch_size=cfg.model.predict_batch_size
    )
    info = {
        "source": "load",
        "path": str(path),
        "hash": sha256_file(path),
        "trusted_pickle": True,
        "kind": f"{type(obj).__module__}.{type(obj).__name__}",
    }
    return predictor, info


def _load_skops(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[Predictor, dict]:
    """A scikit-learn model saved with ``skops.io``: only types skops trusts by default or ``model.trusted_types``
    lists are built; any other type refuses the file before anything in it is constructed."""
    from audit.files import sha256_file
    from audit.model.adapter import CallablePredictor

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
    predictor = CallablePredictor(
        _estimator_proba(obj, ds.schema, f"skops model '{path}'"), ds.schema, batch_size=cfg.model.predict_batch_size
    )
    info = {
        "source": "load",
        "format": "skops",
        "path": str(path),
        "hash": sha256_file(path),
        "runtime": f"skops {skops.__version__}",
        "kind": f"{type(obj).__module__}.{type(obj).__name__}",
        "trusted": untrusted or "only the types skops trusts by default",
    }
    return predictor, info


def _estimator_proba(obj: Any, schema, what: str) -> Callable:
    """``df -> positive-class probabilities`` of an estimator with ``predict_proba`` (and ``classes_``)."""
    if not hasattr(obj, "predict_proba"):
        raise ModelRuntimeError(f"{what} ({type(obj).__name__}) has no predict_proba method")
    classes = [str(c) for c in getattr(obj, "classes_", [0, 1])]
    pos = schema.positive_label
    col = classes.index(pos) if pos in classes else classes.index("1") if set(classes) == {"0", "1"} else None
    if col is None:
        raise ModelRuntimeError(f"{what} predicts classes {classes}, none of them {pos!r}")
    names = schema.feature_names

    def predict(df):
        return np.asarray(obj.predict_proba(df[names]))[:, col]

    return predict


def python_model(model: Any, ds: Dataset, batch_size: int) -> tuple[Predictor, dict]:
    """A model handed over in Python (:func:`audit.api.run_audit`): an estimator with ``predict_proba`` or a plain
    function ``predict_proba(df) -> probabilities of the positive label``."""
    from audit.model.adapter import CallablePredictor

    kind = f"{type(model).__module__}.{getattr(type(model), '__qualname__', type(model).__name__)}"
    if hasattr(model, "predict_proba"):
        fn = _estimator_proba(model, ds.schema, "the model passed to run_audit")
    elif callable(model):
        names = ds.schema.feature_names

        def fn(df):
            return model(df[names])

        kind = getattr(model, "__qualname__", kind)
    else:
        raise ModelRuntimeError(
            f"the model passed to run_audit ({type(model).__name__}) is neither callable nor has predict_proba; "
            "pass predict_proba(df) -> probabilities of the positive label, or a fitted estimator"
        )
    predictor = CallablePredictor(fn, ds.schema, batch_size=batch_size)
    return predictor, {"source": "python", "kind": kind, "hash": None, "path": None}


def _meta_info(meta: dict) -> dict:
    return {k: meta.get(k) for k in ("architecture", "history", "best_epoch")}


def _adopt_model_schema(predictor: Predictor, ds: Dataset) -> None:
    """Check a saved model fits the data, then encode the audit data with the model's own levels, not the ones
    re-learnt from this data (the config still decides the sensitive features and the favourable label)."""
    _check_model_fits_data(predictor, ds)
    ds.schema = replace(predictor.schema, sensitive=ds.schema.sensitive, favourable_label=ds.schema.favourable_label)
    predictor.schema = ds.schema


def _check_model_fits_data(predictor: Predictor, ds: Dataset) -> None:
    want = {f.name: f.kind for f in predictor.schema.features}
    have = {f.name: f.kind for f in ds.schema.features}
    missing = [n for n in want if n not in ds.X_train.columns]
    if missing:
        raise ModelLoadError(
            f"model.path: the saved model needs column(s) {missing}, which the dataset lacks; "
            "audit it with the data it was trained on"
        )
    extra = [n for n in have if n not in want]
    if extra:
        raise ModelLoadError(
            f"model.path: the dataset has feature column(s) {extra} the saved model does not use; "
            "add them to dataset.drop or retrain"
        )
    kinds = [n for n in want if have.get(n) != want[n]]
    if kinds:
        raise ModelLoadError(
            f"model.path: column(s) {kinds} have another type than when the model was trained; "
            "set dataset.features to match"
        )
    if predictor.schema.positive_label != ds.schema.positive_label:
        raise ModelLoadError(
            f"model.path: the model predicts {predictor.schema.positive_label!r}, the config's "
            f"dataset.positive_label is {ds.schema.positive_label!r}"
        )
