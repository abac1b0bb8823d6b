"""Which column of a model's output is the probability of ``dataset.positive_label``: from the model, never a guess.

A model from another tool returns one column per class (``predict_proba``), a mapping from class to probability,
or a single column. The column comes from what the model says about its classes (a scikit-learn ``classes_``, the
class labels of an ONNX classifier, the keys of a mapping, the named columns of a frame); a model that does not say
must be told by the config: ``model.output_index`` (the column of the positive label, ``0`` for a one-column
output) or ``model.output`` (the output, column or key that holds it). Otherwise the run stops before any section
with one line naming ``model.output_index`` (exit code 2): a wrong column inverts every number of the report.

Class labels are compared as the data's labels are: their text (``1.0`` is ``"1"``), stripped, then
``dataset.label_map``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.errors import ModelLoadError
from audit.schema import category_strings


@dataclass(frozen=True)
class OutputColumn:
    """The positive label's column of a model's output, and how it was chosen (for the report's provenance).

    ``classes``: the model's classes in column order when the model names them (as texts), else ``None``.
    """

    index: int
    chosen_by: str
    classes: tuple[str, ...] | None = None

    def take(self, out) -> np.ndarray:
        """The positive label's probabilities from an output of shape (n,) or (n, k)."""
        a = np.asarray(out, dtype=np.float64)
        if a.ndim == 1 and self.index == 0:
            return a
        if a.ndim != 2 or self.index >= a.shape[1]:
            raise ModelLoadError(
                f"model.output_index: the model's output has shape {a.shape}; column {self.index} does not exist"
            )
        return a[:, self.index]

    def describe(self) -> dict:
        return {"column": self.index, "classes": list(self.classes) if self.classes is not None else None,
                "chosen_by": self.chosen_by}  # fmt: skip


def label_texts(values, label_map: dict[str, str] | None = None) -> list[str]:
    """Class labels as the data's labels are read: their text, stripped, then ``label_map``.

    Examples
    --------
    >>> label_texts([0.0, 1.0]), label_texts(np.array([" yes", "no"])), label_texts(["Y"], {"Y": "yes"})
    (['0', '1'], ['yes', 'no'], ['yes'])
    """
    texts = [str(t).strip() for t in category_strings(pd.Series(list(values)))]
    return [label_map.get(t, t) for t in texts] if label_map else texts


def positive_column(
    n_columns: int,
    classes: Sequence | None,
    *,
    positive_label: str,
    output_index: int | None,
    label_map: dict[str, str] | None = None,
    what: str = "the model",
    classes_from: str = "its classes",
) -> OutputColumn:
    """The column of ``positive_label`` in an output of ``n_columns`` columns.

    Parameters
    ----------
    n_columns : int
        Columns of the model's output (1 for a single score per row).
    classes : sequence, optional
        The model's classes in column order, when the model names them.
    positive_label : str
        ``dataset.positive_label`` (after ``dataset.label_map``, as the data's labels).
    output_index : int, optional
        ``model.output_index`` from the config.
    label_map : dict, optional
        ``dataset.label_map``, applied to the model's class labels as to the data's.
    what, classes_from : str
        How the model and the source of its classes are named in messages and provenance.

    Raises
    ------
    ModelLoadError
        The model names no column for the positive label and the config does not either, the config contradicts
        the model, or the column does not exist (exit code 2, one line).

    Examples
    --------
    >>> positive_column(2, [1, 0], positive_label="0", output_index=None).index
    1
    >>> positive_column(1, None, positive_label="yes", output_index=0).chosen_by
    'model.output_index: 0 (the model does not name its classes)'
    """
    if classes is not None:
        texts = label_texts(classes, label_map)
        if len(texts) != n_columns:
            raise ModelLoadError(
                f"model.path: {what} names {len(texts)} classes {texts[:10]} but returns {n_columns} column(s); set "
                "model.output_index to the column of dataset.positive_label"
            )
        if positive_label in texts:
            index = texts.index(positive_label)
            if output_index is not None and output_index != index:
                raise ModelLoadError(
                    f"model.output_index: {output_index}, but {what} puts dataset.positive_label {positive_label!r} "
                    f"in column {index} ({classes_from}: {texts[:10]}); remove model.output_index"
                )
            return OutputColumn(
                index, f"{classes_from} {texts[:10]}: {positive_label!r} is column {index}", tuple(texts)
            )
        if output_index is None:
            raise ModelLoadError(
                f"model.output_index: {what} predicts classes {texts[:10]} ({classes_from}), none of them "
                f"dataset.positive_label {positive_label!r}; map the labels with dataset.label_map, or set "
                "model.output_index to the positive label's column"
            )
    if output_index is None:
        shape = "one column" if n_columns == 1 else f"{n_columns} columns"
        raise ModelLoadError(
            f"model.output_index: {what} returns {shape} and does not say which class each holds; set "
            f"model.output_index to the column of dataset.positive_label {positive_label!r} (0-based; 0 for a single "
            "column that is its probability)"
        )
    if output_index >= n_columns:
        raise ModelLoadError(
            f"model.output_index: {output_index}, but {what} returns {n_columns} column(s); give a column from 0 to "
            f"{n_columns - 1}"
        )
    named = f" ({classes_from}: {label_texts(classes, label_map)[:10]})" if classes is not None else ""
    why = "the model does not name its classes" if classes is None else "set by the config" + named
    return OutputColumn(output_index, f"model.output_index: {output_index} ({why})", None)
