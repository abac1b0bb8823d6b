"""Train the built-in net or load the model under audit, in whatever format: :func:`prepare_model` picks the loader.

Each loader returns the :class:`~audit.model.adapter.Predictor` every section uses and the model's provenance for
the report. Our own formats (the artifact folder, its ONNX / TorchScript exports, a Lightning checkpoint with our
JSON beside it) are coded with the model's own schema; a model from another tool (:mod:`audit.model.estimator`,
:mod:`audit.model.pyfunc`, :mod:`audit.model.onnx_graph`, :mod:`audit.model.endpoint`, a Python object) receives raw
values and is checked at load time against its own API (:mod:`audit.model.external`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from audit.compute import apply_torch_threads
from audit.config import AuditConfig
from audit.data import Dataset
from audit.errors import ModelLoadError
from audit.files import sha256_file
from audit.progress import Progress

if TYPE_CHECKING:
    from audit.model.adapter import Predictor


def prepare_model(
    cfg: AuditConfig, ds: Dataset, run_tmp: Path | None, progress: Progress | None = None, *, model: Any = None
) -> tuple[Predictor, dict]:
    """Train or load the model (or take ``model``, an object passed in Python); returns the predictor and its
    provenance. ``run_tmp``: where a trained model's artifact is written (None: nowhere)."""
    if model is not None:
        from audit.model.estimator import python_model

        return python_model(model, cfg, ds)
    if cfg.model.source == "train":
        return train(cfg, ds, run_tmp, progress)
    if cfg.model.url:
        return connect_endpoint(cfg, ds)
    from audit.model.artifact import detect_format

    path = cfg.resolve(cfg.model.path or "", key="model.path")
    fmt = detect_format(path, cfg.model.format)
    if fmt in ("pickle", "skops"):
        from audit.model.estimator import load_pickle, load_skops

        return (load_pickle if fmt == "pickle" else load_skops)(cfg, path, ds)
    if fmt == "mlflow":
        from audit.model.pyfunc import load_mlflow

        return load_mlflow(cfg, path, ds)
    loader = {"onnx": load_onnx_file, "torchscript": load_exported_file, "lightning": load_lightning_file}
    return loader.get(fmt, load_artifact)(cfg, path, ds)


def train(cfg: AuditConfig, ds: Dataset, run_tmp: Path | None, progress: Progress | None) -> tuple[Predictor, dict]:
    """Train the built-in net on the training rows; with ``run_tmp``, save its artifact (and exports) there."""
    from audit.model.adapter import NetPredictor
    from audit.model.artifact import save_model
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


def load_artifact(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[Predictor, dict]:
    """Our artifact folder (:mod:`audit.model.artifact`), coded with its own levels."""
    from audit.model.artifact import load_model, model_hash, read_model_meta

    predictor = load_model(path, batch_size=cfg.model.predict_batch_size)
    _adopt_model_schema(predictor, ds)
    meta = read_model_meta(path)
    return predictor, {"source": "load", "path": str(path), "hash": model_hash(path), **_meta_info(meta)}


def connect_endpoint(cfg: AuditConfig, ds: Dataset) -> tuple[Predictor, dict]:
    """A model behind ``model.url`` (see :mod:`audit.model.endpoint`): it receives raw values. Its answers' class
    column is decided from the first answer; the raw values are checked here, the scores are not (every row sent
    is one more request of the budget)."""
    from audit.model.endpoint import HttpPredictor
    from audit.model.external import adopt_raw_inputs, check_scoring

    tls_ca = cfg.resolve(cfg.model.tls_ca, key="model.tls_ca") if cfg.model.tls_ca else None
    predictor = HttpPredictor(cfg.model, ds.schema, tls_ca=tls_ca, label_map=dict(cfg.dataset.label_map))
    raw = adopt_raw_inputs(predictor, ds)
    raw["load_check"] = check_scoring(predictor, ds, None)
    info = {"source": "load", "format": "http", "path": None, "url": cfg.model.url, "hash": None,
            "runtime": predictor.runtime, "trusted": "nothing: the audit only sends rows and reads scores", **raw}  # fmt: skip
    return predictor, info


def load_onnx_file(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[Predictor, dict]:
    """An ONNX graph: our export (JSON beside it) or a graph from another tool (raw values, checked at load time
    against the graph run on the rows as read)."""
    from audit.model.external import adopt_raw_inputs, check_scoring
    from audit.model.formats import load_onnx
    from audit.model.onnx_graph import OnnxGraphPredictor

    predictor = load_onnx(path, cfg.model, ds.schema, batch_size=cfg.model.predict_batch_size)
    if not isinstance(predictor, OnnxGraphPredictor):
        return _exported_info(cfg, path, "onnx", predictor, ds)
    raw = adopt_raw_inputs(predictor, ds)
    head = ds.raw_frames()[1].iloc[:8][ds.schema.feature_names].reset_index(drop=True)
    column = predictor.choose_column(head, ds.schema.positive_label, dict(cfg.dataset.label_map))
    raw["output_column"] = column.describe()
    raw["load_check"] = check_scoring(predictor, ds, predictor._score_frame)
    predictor, info = _exported_info(cfg, path, "onnx", predictor, ds)
    return predictor, {**info, **raw}


def load_exported_file(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[Predictor, dict]:
    """An exported TorchScript file with our artifact's JSON beside it (see :mod:`audit.model.formats`)."""
    from audit.model.formats import load_exported

    predictor = load_exported(path, "torchscript", batch_size=cfg.model.predict_batch_size)
    return _exported_info(cfg, path, "torchscript", predictor, ds)


def _exported_info(cfg: AuditConfig, path: Path, fmt: str, predictor: Predictor, ds: Dataset):
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


def load_lightning_file(cfg: AuditConfig, path: Path, ds: Dataset) -> tuple[Predictor, dict]:
    """A Lightning checkpoint of the user's module (see :func:`audit.model.formats.load_lightning`)."""
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
