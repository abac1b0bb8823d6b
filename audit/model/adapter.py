"""One predict interface for every model under audit.

Every audit module uses :class:`Predictor` only:

- ``predict_proba(df)``: probability of the positive class, shape ``(n_rows,)``, from a DataFrame of raw features;
- ``predict_codes(X)``: the same from a code-space array (see :mod:`audit.data`), the fast path explainers use to
  perturb category codes and numeric values without rebuilding DataFrames. For the built-in net it goes straight
  into the network in large batches; ``predict_proba(df)`` is defined as ``predict_codes(schema.to_codes(df))``,
  so both paths agree exactly.
- ``rows_evaluated``: how many rows the model has scored (benchmarks read it).

:class:`NetPredictor` also exposes ``net`` and ``tensors(X)`` as the explicit gradient handle for methods that need
one. :class:`CallablePredictor` wraps any ``DataFrame -> probabilities`` function.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from audit.data import Schema
from audit.model.network import Preprocessing, TabularNet


class Predictor:
    """Base class: subclasses implement :meth:`_predict_codes`."""

    schema: Schema
    batch_size: int = 16384

    def __init__(self) -> None:
        self.rows_evaluated = 0

    def predict_codes(self, X: np.ndarray) -> np.ndarray:
        """Positive-class probabilities for a code-space array ``X`` of shape (n_rows, n_features)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.schema.features):
            raise ValueError(f"expected a code array of shape (n, {len(self.schema.features)}), got {X.shape}")
        self.rows_evaluated += len(X)
        if len(X) <= self.batch_size:
            return self._predict_codes(X)
        return np.concatenate(
            [self._predict_codes(X[i : i + self.batch_size]) for i in range(0, len(X), self.batch_size)]
        )

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities for a DataFrame of raw feature columns, shape (n_rows,)."""
        return self.predict_codes(self.schema.to_codes(df))

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class NetPredictor(Predictor):
    """Predictor for the built-in :class:`TabularNet`.

    Parameters
    ----------
    net : TabularNet
    preprocessing : Preprocessing
    schema : Schema
    batch_size : int
        Rows per forward pass.
    """

    def __init__(
        self, net: TabularNet, preprocessing: Preprocessing, schema: Schema, *, batch_size: int = 16384
    ) -> None:
        super().__init__()
        self.net = net.eval()
        self.preprocessing = preprocessing
        self.schema = schema
        self.batch_size = batch_size

    def tensors(self, X: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Code-space array -> the network's input tensors (numerics float32, categorical codes int64)."""
        x_num, x_cat = self.preprocessing.transform(np.asarray(X, dtype=np.float64))
        return torch.from_numpy(x_num), torch.from_numpy(x_cat)

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:
        x_num, x_cat = self.tensors(X)
        with torch.inference_mode():
            return torch.sigmoid(self.net(x_num, x_cat)).double().numpy()


class CallablePredictor(Predictor):
    """Wraps any ``predict(df) -> positive-class probabilities`` function (slow path: rebuilds DataFrames)."""

    def __init__(self, fn: Callable[[pd.DataFrame], np.ndarray], schema: Schema, *, batch_size: int = 16384) -> None:
        super().__init__()
        self.fn = fn
        self.schema = schema
        self.batch_size = batch_size

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(self.schema.from_codes(X)), dtype=np.float64).reshape(-1)
