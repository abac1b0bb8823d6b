"""Saving and loading a trained model as an artifact folder, with no pickle anywhere.

Layout of a model folder::

    weights.pt          state_dict, loaded with torch.load(weights_only=True)
    preprocessing.json  numeric transforms and statistics, embedding table sizes
    schema.json         features (kinds, categorical levels), target, positive label
    model.json          format version, architecture, training history

Python API (what an auditor uses to re-score data)::

    >>> from audit.model import load_model                      # doctest: +SKIP
    >>> model = load_model("reports/adult/latest/model")         # doctest: +SKIP
    >>> p = model.predict_proba(df)   # P(positive) per row       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from audit.errors import ModelLoadError
from audit.model.preprocessing import Preprocessing
from audit.schema import Schema

if TYPE_CHECKING:  # torch is imported only once a model folder's description has been checked
    from audit.model.adapter import NetPredictor

FORMAT_VERSION = 1
FILES = ("weights.pt", "preprocessing.json", "schema.json", "model.json")


def save_model(
    path: str | Path, predictor: NetPredictor, *, architecture: dict, history: list[dict], best_epoch: int
) -> str:
    """Write ``predictor`` to folder ``path`` and return the model hash (see :func:`model_hash`)."""
    import torch

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    torch.save(predictor.net.state_dict(), p / "weights.pt")
    _dump(p / "preprocessing.json", predictor.preprocessing.to_json())
    _dump(p / "schema.json", predictor.schema.to_json())
    _dump(
        p / "model.json",
        {
            "format_version": FORMAT_VERSION,
            "kind": "audit.TabularNet",
            "architecture": architecture,
            "history": history,
            "best_epoch": best_epoch,
        },
    )
    return model_hash(p)


def detect_format(path: Path, declared: str) -> str:
    """``model.format``, or what ``path`` is when it is ``auto``: a folder with an ``MLmodel`` file an MLflow model,
    any other folder our artifact, ``.onnx`` ONNX, ``.torchscript.pt`` / ``.ts`` TorchScript, ``.ckpt`` a Lightning
    checkpoint, ``.skops`` skops, ``.pkl`` / ``.pickle`` / ``.joblib`` a pickle."""
    if declared != "auto":
        return declared
    name = path.name.lower()
    if path.is_dir() and (path / "MLmodel").is_file():
        return "mlflow"
    if path.is_dir() or not path.exists():
        return "artifact"  # a missing path gets the artifact loader's message
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith((".torchscript.pt", ".ts")):
        return "torchscript"
    if name.endswith(".skops"):
        return "skops"
    if name.endswith(".ckpt"):
        return "lightning"
    if name.endswith((".pkl", ".pickle", ".joblib")):
        return "pickle"
    raise ModelLoadError(
        f"model.path: '{path}' is not a model folder, and its name does not say which format it is; set "
        "model.format to one of artifact, onnx, torchscript, lightning, skops, mlflow, pickle"
    )


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def model_hash(path: str | Path) -> str:
    """sha256 over the artifact's files (names and bytes, in a fixed order)."""
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode())
        h.update((Path(path) / name).read_bytes())
    return h.hexdigest()


def load_model(path: str | Path, *, batch_size: int = 8192) -> NetPredictor:
    """Load a model folder written by :func:`save_model`.

    Parameters
    ----------
    path : path-like
        The artifact folder.
    batch_size : int
        Rows per forward pass.

    Returns
    -------
    NetPredictor
        With ``predict_proba(df)`` on raw feature columns and the fast ``predict_codes``.

    Raises
    ------
    ModelLoadError
        If a file is missing, unreadable or inconsistent; the message says which.
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(f"model.path: '{p}' is not a model folder; train once with model.source: train")
    missing = [n for n in FILES if not (p / n).is_file()]
    if missing:
        raise ModelLoadError(f"model.path: '{p}' lacks {missing}; it is not a complete model artifact")
    schema, pre, meta = read_description(p, weights=p / "weights.pt")
    import torch

    from audit.model.adapter import NetPredictor
    from audit.model.network import build_net

    net = build_net(pre, meta["architecture"])
    try:
        state = torch.load(p / "weights.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - any failure here means a corrupt or foreign weights file
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]
        raise ModelLoadError(
            f"model.path: '{p / 'weights.pt'}' cannot be loaded ({first}); retrain the model"
        ) from None
    return NetPredictor(net, pre, schema, batch_size=batch_size)


MAX_JSON_BYTES = 64 << 20
MAX_PARAMETERS = 200_000_000  # what this auditor will allocate for a tabular net described by an artifact


def read_description(p: Path, *, weights: Path) -> tuple[Schema, Preprocessing, dict]:
    """The checked ``schema.json``, ``preprocessing.json`` and ``model.json`` of artifact folder ``p``, for the
    weights in file ``weights`` (our ``weights.pt``, or an exported ``model.onnx`` / ``model.torchscript.pt``).

    Raises ModelLoadError naming the file when one is missing, too large, not JSON, or describes sizes the weights
    file cannot hold."""
    texts = {}
    for name in ("model.json", "schema.json", "preprocessing.json"):
        f = p / name
        try:
            if f.stat().st_size > MAX_JSON_BYTES:
                raise ModelLoadError(
                    f"model.path: '{f}' is larger than {MAX_JSON_BYTES >> 20} MB; not a model artifact"
                )
            texts[name] = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise ModelLoadError(
                f"model.path: '{f}' is not readable JSON ({exc.__class__.__name__}); the artifact is damaged, retrain "
                "(an exported model needs the schema.json, preprocessing.json and model.json written beside it)"
            ) from None
    meta = texts["model.json"]
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        got = meta.get("format_version") if isinstance(meta, dict) else type(meta).__name__
        raise ModelLoadError(f"model.path: '{p}' has format_version {got!r}; this audit reads {FORMAT_VERSION}")
    try:
        schema = Schema.from_json(texts["schema.json"])
        pre = Preprocessing.from_json(texts["preprocessing.json"])
        _check_sizes(schema, pre, meta.get("architecture"), weights.stat().st_size)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelLoadError(
            f"model.path: '{p}' has a malformed model description ({exc.__class__.__name__}: "
            f"{str(exc)[:150]}); the artifact is damaged or foreign, retrain"
        ) from None
    return schema, pre, meta


def _check_sizes(schema: Schema, pre: Preprocessing, arch, weights_bytes: int) -> None:
    """Refuse, before allocating anything, a model description that is inconsistent or claims absurd sizes.

    Raises ValueError / TypeError (the caller turns them into a one-line ModelLoadError).
    """
    if not isinstance(arch, dict):
        raise TypeError("model.json has no architecture mapping")
    hidden, dims = arch["hidden"], arch["embedding_dims"]
    if not (isinstance(hidden, list) and 0 < len(hidden) <= 32 and all(_count(h, 16_384) for h in hidden)):
        raise ValueError(f"hidden layers {str(hidden)[:60]} must be 1 to 32 widths of 1 to 16,384")
    cards = list(pre.cardinalities)
    if not (isinstance(dims, list) and len(dims) == len(cards) and all(_count(d, 1024) for d in dims)):
        raise ValueError("embedding_dims must give one width of 1 to 1,024 per categorical feature")
    if not all(_count(c, 10_000_000) for c in cards):
        raise ValueError("an embedding table claims more than 10,000,000 levels")
    if not 0.0 <= float(arch["dropout"]) < 1.0:
        raise ValueError("dropout must be in [0, 1)")
    n_num, n_cat = len(pre.numeric_idx), len(pre.categorical_idx)
    if n_num + n_cat != len(schema.features) or n_cat != len(cards):
        raise ValueError("preprocessing.json and schema.json describe different features")
    for j, c in zip(pre.categorical_idx, cards, strict=True):
        if not schema.features[j].is_categorical or len(schema.features[j].levels) + 1 != c:
            raise ValueError(f"feature {schema.features[j].name!r} has another number of levels than its embedding")
    params, width = sum(c * d for c, d in zip(cards, dims, strict=True)), n_num + sum(dims)
    for h in [*hidden, 1]:
        params += width * h + h
        width = h
    if params > MAX_PARAMETERS or params * 4 > 2 * weights_bytes + (1 << 20):
        raise ValueError(
            f"the description claims {params:,} parameters, but weights.pt holds {weights_bytes:,} bytes "
            f"(at most {MAX_PARAMETERS:,} parameters are loaded)"
        )


def _count(v, high: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= high


def read_model_meta(path: str | Path) -> dict:
    """The artifact's ``model.json`` (architecture and training history)."""
    return json.loads((Path(path) / "model.json").read_text(encoding="utf-8"))
