"""Model layer: the tabular net, its training, artifacts, and the predict adapter. Only this package imports torch.

Its names are imported on first use (PEP 562), so ``import audit.model`` costs nothing until a model is needed, and
PyTorch Lightning is imported only to train.
"""

from __future__ import annotations

import importlib

_NAMES = {
    "CallablePredictor": "audit.model.adapter",
    "NetPredictor": "audit.model.adapter",
    "Predictor": "audit.model.adapter",
    "load_model": "audit.model.artifact",
    "model_hash": "audit.model.artifact",
    "save_model": "audit.model.artifact",
}

__all__ = list(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'audit.model' has no attribute {name!r}")
