"""One predict interface for every model under audit.

Every audit module uses :class:`Predictor` only:

- ``predict_proba(df)``: probability of the positive class, shape ``(n_rows,)``, from a DataFrame of raw features;
- ``predict_codes(X)``: the same from a code-space array (see :mod:`audit.data`), the fast path explainers use to
  perturb category codes and numeric values without rebuilding DataFrames. For the built-in net it goes straight
  into the network in large batches; ``predict_proba(df)`` is ``predict_codes(schema.to_codes(df))`` (the built-in
  net takes the frame's columns straight into its inputs, with the same result: tested), so both paths agree exactly;
- ``inputs``/``input_column``/``predict_inputs``: the model's own input arrays, where explainers that change a few
  columns of the same rows many times change them (the built-in net's embedded rows, the input of its first layer;
  the code rows themselves for the others).
- ``rows_evaluated``: how many rows the model has scored (benchmarks read it).

:class:`NetPredictor` also exposes ``net`` and ``tensors(X)`` as the explicit gradient handle for methods that need
one. Models from other tools derive from :class:`RawPredictor`: they receive raw values, never codes;
:class:`CallablePredictor` wraps any ``DataFrame -> probabilities`` function.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from audit.model.network import Preprocessing, TabularNet
from audit.schema import RawValues, Schema, category_index, text_values

ROW_ALIGN = 64
"""The built-in net scores rows in blocks whose size is a multiple of this (the last block zero-padded).

float32 kernels give a row a result that can differ in the last bit with the number of rows in the call: matrix
products (measured with MKL: up to 2.9e-6 in a logit for 1, 2, 3, 5, 7 or 1001 rows against 8,192) and the
vectorised sigmoid, whose scalar tail loop rounds differently (1 ulp, 6e-8). With blocks whose size is a multiple
of 8 every row got the same bits whatever the block size, its position in the block or the thread count. So a row's
score is a function of the row alone, whoever calls the model and however they batch it (tested): the shap library
scoring its own masked batches reproduces our SHAP values to 1e-12, not 1e-7.
"""


class Predictor:
    """Base class: subclasses implement :meth:`_predict_codes`."""

    schema: Schema
    batch_size: int = 8192
    row_wise: bool = False
    """Whether a row's score is a function of the row alone, bit for bit, however rows are batched (the built-in net,
    see :data:`ROW_ALIGN`): explainers may then reuse a row's known score for an unchanged row instead of scoring it
    again."""

    def __init__(self) -> None:
        self.rows_evaluated = 0

    def predict_codes(self, X: np.ndarray) -> np.ndarray:
        """Positive-class probabilities for a code-space array ``X`` of shape (n_rows, n_features)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.schema.features):
            raise ValueError(f"expected a code array of shape (n, {len(self.schema.features)}), got {X.shape}")
        self.rows_evaluated += len(X)
        return self._in_blocks(self._predict_codes, X)

    @property
    def block_rows(self) -> int:
        """Rows per model call: ``batch_size`` rounded down to a multiple of :data:`ROW_ALIGN` (at least one)."""
        return max(ROW_ALIGN, self.batch_size // ROW_ALIGN * ROW_ALIGN)

    def _in_blocks(self, fn: Callable[..., np.ndarray], *arrays: np.ndarray) -> np.ndarray:
        """``fn`` on blocks of :attr:`block_rows` rows of ``arrays``, concatenated."""
        step = self.block_rows
        n = len(arrays[0])
        if n <= step:
            return fn(*arrays)
        return np.concatenate([fn(*(a[i : i + step] for a in arrays)) for i in range(0, n, step)])

    def inputs(self, X: np.ndarray) -> list[np.ndarray]:
        """The model's own input arrays for code-space rows ``X``: here ``[X]`` itself, not a copy (the built-in net
        overrides it); callers copy before changing them.

        For explainers that score the same rows many times with a few columns changed (permutation importance,
        partial dependence): they transform the rows once, change the columns in the model's input space (see
        :meth:`input_column`) and call :meth:`predict_inputs`; the scores equal :meth:`predict_codes` of the changed
        code rows exactly, because every value is transformed on its own.
        """
        return [np.asarray(X, dtype=np.float64)]

    def input_column(self, j: int) -> tuple[int, int]:
        """Where feature ``j`` is in :meth:`inputs`: (array, column)."""
        return 0, j

    def predict_inputs(self, inputs: list[np.ndarray]) -> np.ndarray:
        """Positive-class probabilities from :meth:`inputs` arrays (in blocks, as :meth:`predict_codes`)."""
        return self.predict_codes(inputs[0])

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities for a DataFrame of raw feature columns, shape (n_rows,)."""
        return self.predict_codes(self.schema.to_codes(df))

    def predict_frame(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_proba` of ``df`` and its categorical features' level codes, int64, shape (n_rows,
        n_categorical) in schema order: the codes of ``schema.to_codes(df)`` (``len(levels)``: never seen)."""
        codes = self.schema.to_codes(df)
        return self.predict_codes(codes), codes[:, self.schema.categorical_mask].astype(np.int64)

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


class NetPredictor(Predictor):
    """Predictor for the built-in :class:`TabularNet` (row-wise scores: see :data:`ROW_ALIGN`).

    Parameters
    ----------
    net : TabularNet
    preprocessing : Preprocessing
    schema : Schema
    batch_size : int
        Rows per forward pass.
    """

    row_wise = True

    def __init__(
        self, net: TabularNet, preprocessing: Preprocessing, schema: Schema, *, batch_size: int = 8192
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

    def inputs(self, X: np.ndarray) -> list[np.ndarray]:
        """Code-space rows -> ``[z]``, the first layer's input (float32, one row per row): the standardised numerics,
        then each categorical feature's embedding (see :meth:`input_column`); see :meth:`Predictor.inputs`.

        Rows embedded once are scored many times without the embedding look-ups, a third of the forward pass at
        this net's size; the scores are the same bits as from the code rows (a look-up and a concatenation only
        copy values; tested).
        """
        x_num, x_cat = self.tensors(X)
        with torch.inference_mode():
            return [self.net.embed(x_num, x_cat).numpy()]

    def input_column(self, j: int) -> tuple[int, int | slice]:
        """Where feature ``j`` is in :meth:`inputs`: a numeric feature's column, or the slice of columns of a
        categorical feature's embedding."""
        p = self.preprocessing
        if j in p.numeric_idx:
            return 0, p.numeric_idx.index(j)
        k = p.categorical_idx.index(j)
        widths = [e.embedding_dim for e in self.net.embeddings]
        start = len(p.numeric_idx) + sum(widths[:k])
        return 0, slice(start, start + widths[k])

    def predict_inputs(self, inputs: list[np.ndarray]) -> np.ndarray:
        (z,) = inputs
        self.rows_evaluated += len(z)
        return self._in_blocks(self._forward_embedded, z)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Positive-class probabilities for a DataFrame of raw feature columns, shape (n_rows,).

        Equal to ``predict_codes(schema.to_codes(df))`` (tested on every shipped data set), without building the
        code array: each column goes from the frame into the network's numeric or categorical input.
        """
        return self.predict_frame(df)[0]

    def predict_frame(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Predictor.predict_frame` without a code array: each column goes from the frame into the network's
        numeric or categorical input (equal to it, tested)."""
        schema, p = self.schema, self.preprocessing
        schema.check_columns(df)
        # one column at a time into a column-ordered buffer (contiguous writes; the values are the same)
        num = np.empty((len(df), len(p.numeric_idx)), order="F")
        cat = np.empty((len(df), len(p.categorical_idx)), dtype=np.int64)  # codes as integers: no float round trip
        for k, j in enumerate(p.numeric_idx):
            num[:, k] = schema.column_codes(df, j)
        for k, j in enumerate(p.categorical_idx):
            cat[:, k] = category_index(df[schema.features[j].name], schema.features[j])
        self.rows_evaluated += len(df)
        proba = self._in_blocks(self._forward, *p.transform_columns(num, cat))
        order = np.argsort(p.categorical_idx, kind="stable")  # the net's categorical order -> schema order
        return proba, cat if np.array_equal(order, np.arange(len(order))) else cat[:, order]

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:
        return self._forward(*self.preprocessing.transform(X))

    def _forward(self, x_num: np.ndarray, x_cat: np.ndarray) -> np.ndarray:
        """Probabilities of one block of input rows: embedded, then :meth:`_forward_embedded`."""
        x_num, x_cat = torch.from_numpy(np.ascontiguousarray(x_num)), torch.from_numpy(np.ascontiguousarray(x_cat))
        with torch.inference_mode():
            return self._forward_embedded(self.net.embed(x_num, x_cat).numpy())

    def _forward_embedded(self, z: np.ndarray) -> np.ndarray:
        """Probabilities of one block of embedded rows (:meth:`inputs`)."""
        z = torch.from_numpy(np.ascontiguousarray(z))
        n = len(z)
        pad = -n % ROW_ALIGN
        if pad:  # see ROW_ALIGN: a row's score must not depend on how many rows were scored with it
            z = torch.cat([z, z.new_zeros((pad, z.shape[1]))])
        with torch.inference_mode():
            return torch.sigmoid(self.net.forward_embedded(z))[:n].double().numpy()  # sigmoid on whole blocks too


class RawPredictor(Predictor):
    """Base of the models from other tools (scikit-learn objects, MLflow, ONNX graphs on raw columns, endpoints):
    they have their own preprocessing, so they receive the raw feature values as the data files hold them, never the
    audit's codes or level text.

    :attr:`raw` (:class:`~audit.schema.RawValues`) turns the code-space rows that explainers build back into those
    values; a population partition, already raw, goes to the model as it was read (:meth:`predict_frame`).
    Subclasses implement :meth:`_score_frame`: a frame of raw feature columns -> positive-class probabilities.
    """

    raw_inputs = True

    def __init__(self, schema: Schema, *, raw: RawValues | None = None, batch_size: int = 8192) -> None:
        super().__init__()
        self.schema = schema
        self.raw = raw if raw is not None else text_values(schema)
        self.batch_size = batch_size

    def raw_frame(self, X: np.ndarray) -> pd.DataFrame:
        """Code-space rows -> the frame of raw values the model receives."""
        return self.raw.frame(self.schema, np.asarray(X, dtype=np.float64))

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:
        return self._score_frame(self.raw_frame(X))

    def predict_frame(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`Predictor.predict_frame` of raw rows (a population partition): the model scores the rows as they
        were read, in blocks of :attr:`block_rows` (a level never seen in training reaches it as itself)."""
        codes = self.schema.to_codes(df)
        frame = plain_frame(df[self.schema.feature_names])
        self.rows_evaluated += len(frame)
        step = self.block_rows
        parts = [self._score_frame(frame.iloc[i : i + step].reset_index(drop=True)) for i in range(0, len(frame), step)]
        proba = np.concatenate(parts) if parts else np.zeros(0)
        return proba, codes[:, self.schema.categorical_mask].astype(np.int64)

    def _score_frame(self, frame: pd.DataFrame) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def plain_frame(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with pandas categoricals (a population's dictionary columns) turned into plain columns of their values,
    as a model trained on the file's values expects them."""
    cats = [c for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)]
    if not cats:
        return df
    out = df.copy(deep=False)
    for c in cats:
        out[c] = df[c].astype(df[c].cat.categories.dtype)
    return out


class CallablePredictor(RawPredictor):
    """Wraps any ``predict(df) -> positive-class probabilities`` function of raw feature columns."""

    def __init__(
        self,
        fn: Callable[[pd.DataFrame], np.ndarray],
        schema: Schema,
        *,
        raw: RawValues | None = None,
        batch_size: int = 8192,
    ) -> None:
        super().__init__(schema, raw=raw, batch_size=batch_size)
        self.fn = fn

    def _score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.fn(frame), dtype=np.float64).reshape(-1)
