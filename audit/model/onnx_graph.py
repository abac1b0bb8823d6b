"""ONNX graphs from other tools (skl2onnx and the like): one input per raw feature column, or one float matrix.

``mode="columns"``: one input per raw feature column, named as the column (skl2onnx's shape). The graph receives
the raw values as the data files hold them: text for ``tensor(string)`` inputs (a missing value as ""), numbers
cast to the input's element type for float / double / int64 inputs (a missing numeric as NaN, or -1 for an int64
input). ``mode="matrix"``: one float input whose columns ``model.onnx_columns`` declares (a numeric
``(value - mean) / scale``, a categorical one-hot over ``one_hot`` levels or its index in ``codes``, levels compared
as their text). A one-matrix graph with our artifact's JSON beside it is :class:`audit.model.formats.OnnxCodesPredictor`.

The output is ``model.output`` if given, else the first output named ``probability``/``probabilities``/
``output_probability``, else ``logit``/``logits`` (a sigmoid turns it into a probability), else the last one. The
positive label's column: by its label in skl2onnx's ZipMap (one ``{label: probability}`` per row), else from the
classifier's class labels in the graph (``classlabels_*`` of the ZipMap or classifier node), else from the config
(see :mod:`audit.model.output`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from audit.errors import ModelLoadError
from audit.model.adapter import RawPredictor
from audit.model.output import OutputColumn, label_texts, positive_column

CLASSIFIER_OPS = {"LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier", "ZipMap"}


class OnnxGraphPredictor(RawPredictor):
    """An ONNX graph from another tool (see the module docstring)."""

    format = "onnx"
    net = None
    gradient_handle = "none: an ONNX graph's layers are not differentiable here"

    def __init__(self, path: Path, session, schema, cfg, *, mode: str, batch_size: int = 8192) -> None:
        super().__init__(schema, batch_size=batch_size)
        import onnxruntime as ort

        self.path, self.session, self.cfg, self.mode = path, session, cfg, mode
        self.column: OutputColumn | None = None  # set by choose_column (an own graph: the positive label's)
        self.inputs = {i.name: i.type for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        if cfg.output is not None:
            if cfg.output not in outputs:
                raise ModelLoadError(f"model.output: the graph has no output {cfg.output!r}; it has {outputs}")
            self.output = cfg.output
        else:
            preferred = ("probability", "probabilities", "output_probability", "logit", "logits")
            self.output = next((o for o in preferred if o in outputs), outputs[-1])
        self.logit = self.output in ("logit", "logits")
        self.runtime = f"onnxruntime {ort.__version__}"
        if mode == "matrix" and cfg.onnx_columns:
            self._check_matrix_spec()

    def _check_matrix_spec(self) -> None:
        feats = {f.name: f for f in self.schema.features}
        for i, c in enumerate(self.cfg.onnx_columns):
            f = feats[c.column]
            if (c.one_hot or c.codes) and not f.is_categorical:
                raise ModelLoadError(
                    f"model.onnx_columns[{i}]: {c.column!r} is numeric; one_hot / codes are for categoricals"
                )
            if f.is_categorical and not (c.one_hot or c.codes):
                raise ModelLoadError(
                    f"model.onnx_columns[{i}]: {c.column!r} is categorical; give its levels as one_hot or codes"
                )

    def choose_column(self, head: pd.DataFrame, positive: str, label_map: dict) -> OutputColumn:
        """Decide (once, from the first audit rows) which column of the output is the positive label's."""
        out = self._run(self._feeds(head))
        if isinstance(out, list):  # skl2onnx's ZipMap: one {label: probability} per row
            keys = list(out[0]) if out else []
            if positive not in label_texts(keys, label_map):
                raise ModelLoadError(
                    f"model.output_index: the graph's output {self.output!r} has labels {keys[:10]}, none of them "
                    f"dataset.positive_label {positive!r}; map the labels with dataset.label_map"
                )
            self.column = OutputColumn(label_texts(keys, label_map).index(positive), "the ZipMap's labels",
                                       tuple(label_texts(keys, label_map)))  # fmt: skip
            return self.column
        a = np.asarray(out).reshape(len(head), -1)
        if self.cfg.output is not None and a.shape[1] == 1:
            self.column = OutputColumn(0, f"model.output: {self.output!r} (one score per row)")
            return self.column
        classes = graph_classes(self.path)
        self.column = positive_column(
            a.shape[1], classes, positive_label=positive, output_index=self.cfg.output_index, label_map=label_map,
            what=f"the graph's output {self.output!r}", classes_from="the classifier's class labels in the graph",
        )  # fmt: skip
        return self.column

    def _feeds(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        name, kind = next(iter(self.inputs.items()))
        if self.mode == "matrix":
            return {name: self._matrix(frame).astype(np.float64 if "double" in kind else np.float32)}
        feeds = {}
        for col, kind in self.inputs.items():
            s = frame[col]
            missing = s.isna().to_numpy().copy()  # pandas may hand out a read-only view
            if "string" in kind:
                v = np.where(missing, "", s.astype(str).to_numpy()).astype(object)
            elif "int" in kind:
                v = np.where(missing, -1, pd_numeric(s)).astype(np.int64)
            else:
                v = pd_numeric(s).astype(np.float64 if "double" in kind else np.float32)
            feeds[col] = v.reshape(-1, 1)
        return feeds

    def _matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """The float matrix of ``model.onnx_columns`` (levels compared as their text, as the config writes them)."""
        texts = self.schema.from_codes(self.schema.to_codes(frame))
        cols = []
        for c in self.cfg.onnx_columns:
            v = texts[c.column].to_numpy()
            if c.one_hot:
                cols.append((v[:, None] == np.asarray(c.one_hot, dtype=object)[None, :]).astype(np.float64))
            elif c.codes:
                index = {lv: k for k, lv in enumerate(c.codes)}
                cols.append(np.array([index.get(x, -1) for x in v], dtype=np.float64)[:, None])
            else:
                cols.append(((v.astype(np.float64) - c.mean) / c.scale)[:, None])
        return np.concatenate(cols, axis=1)

    def _run(self, feeds: dict):
        return self.session.run([self.output], feeds)[0]

    def _score_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self._scores(self._run(self._feeds(frame)), len(frame))

    def _scores(self, out, n: int) -> np.ndarray:
        column = self.column
        if isinstance(out, list):
            key = list(out[0])[column.index] if out else None
            return np.array([row[key] for row in out], dtype=np.float64)
        p = column.take(np.asarray(out, dtype=np.float64).reshape(n, -1))
        return 1.0 / (1.0 + np.exp(-p)) if self.logit else p


def graph_classes(path: Path) -> list | None:
    """The class labels of the graph's classifier (the ``classlabels_*`` attribute of a ZipMap or classifier node),
    when the graph has exactly one such list; else ``None``."""
    import onnx

    found = []
    for node in onnx.load(str(path)).graph.node:
        if node.op_type not in CLASSIFIER_OPS:
            continue
        for attr in node.attribute:
            if attr.name in ("classlabels_strings",):
                found.append(tuple(s.decode() for s in attr.strings))
            elif attr.name in ("classlabels_ints", "classlabels_int64s"):
                found.append(tuple(int(i) for i in attr.ints))
    distinct = {tuple(str(c) for c in f) for f in found if f}
    return list(found[0]) if len(distinct) == 1 else None


def pd_numeric(s) -> np.ndarray:
    """A column as float64 (level text such as "3" read as a number; anything else NaN)."""
    return pd.to_numeric(pd.Series(s), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
