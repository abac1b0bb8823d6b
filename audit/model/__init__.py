"""Model layer: the tabular net, its training, artifacts, and the predict adapter. Only this package imports torch."""

from audit.model.adapter import CallablePredictor, NetPredictor, Predictor
from audit.model.artifact import load_model, model_hash, save_model

__all__ = ["CallablePredictor", "NetPredictor", "Predictor", "load_model", "model_hash", "save_model"]
