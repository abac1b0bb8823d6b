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

import torch

from audit.data import Schema
from audit.errors import ModelLoadError
from audit.model.adapter import NetPredictor
from audit.model.network import Preprocessing
from audit.model.training import build_net

FORMAT_VERSION = 1
FILES = ("weights.pt", "preprocessing.json", "schema.json", "model.json")


def save_model(
    path: str | Path, predictor: NetPredictor, *, architecture: dict, history: list[dict], best_epoch: int
) -> str:
    """Write ``predictor`` to folder ``path`` and return the model hash (see :func:`model_hash`)."""
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


def _dump(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def model_hash(path: str | Path) -> str:
    """sha256 over the artifact's files (names and bytes, in a fixed order)."""
    h = hashlib.sha256()
    for name in FILES:
        h.update(name.encode())
        h.update((Path(path) / name).read_bytes())
    return h.hexdigest()


def load_model(path: str | Path, *, batch_size: int = 16384) -> NetPredictor:
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
    try:
        meta = json.loads((p / "model.json").read_text(encoding="utf-8"))
        schema = Schema.from_json(json.loads((p / "schema.json").read_text(encoding="utf-8")))
        pre = Preprocessing.from_json(json.loads((p / "preprocessing.json").read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"model.path: '{p}' has an unreadable JSON file ({exc.__class__.__name__}: {exc})"
        ) from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelLoadError(
            f"model.path: '{p}' has format_version {meta.get('format_version')!r}; this audit reads {FORMAT_VERSION}"
        )
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


def read_model_meta(path: str | Path) -> dict:
    """The artifact's ``model.json`` (architecture and training history)."""
    return json.loads((Path(path) / "model.json").read_text(encoding="utf-8"))
