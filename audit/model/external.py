"""Models from other tools (scikit-learn objects, MLflow, ONNX graphs on raw columns, endpoints): raw values in,
and a check at load time that the audit scores them exactly as they score themselves.

Such a model has its own preprocessing, fitted on data the audit never saw. So:

- it receives the raw feature values as the data files hold them (:class:`~audit.schema.RawValues`): missing values
  as missing, integer codes as integers, a coded column's codes rather than its ``dataset.value_labels``;
- a level of the audit rows that the audit's training rows lack is a level of the code space too
  (:func:`~audit.schema.widen_levels`), so it reaches the model as itself, never through the unknown slot;
- :func:`check_scoring` scores the first audit rows both through the audit's path (codes, then back to raw values)
  and through the model's own API on the rows as read, and stops the run (exit code 3) with both numbers when they
  differ by more than :data:`TOLERANCE`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from audit.data import Dataset
from audit.errors import ConfigError, ModelRuntimeError
from audit.model.adapter import RawPredictor
from audit.schema import raw_values, widen_levels

TOLERANCE = 1e-6
CHECK_ROWS = 256


def adopt_raw_inputs(predictor: RawPredictor, ds: Dataset) -> dict:
    """Give ``predictor`` the raw values of ``ds`` and every level of its audit rows; returns provenance.

    The notes that said such rows were "scored as unknown" are restated: this model received them as they are.

    Raises
    ------
    ConfigError
        When ``dataset.value_labels`` gives two codes of a column one label: the label cannot say which code a row
        had, so the model could not receive it (exit code 2, naming the codes and the fix).
    """
    merged_labels(ds.schema)
    ds.schema, added = widen_levels(ds.schema, ds.X_test)
    predictor.schema = ds.schema
    predictor.raw = raw_values(ds.schema, list(ds.raw_frames()))
    for name in added:
        head = f"column '{name}': "
        for i, note in enumerate(ds.notes):
            if note.startswith(head) and note.endswith("scored as unknown"):
                ds.notes[i] = note.replace("with unseen level(s)", "with level(s) the training rows lack,").replace(
                    "scored as unknown", "sent to the model as the file has them"
                )
    info = {"input_values": "raw, as the data files hold them (the model's own preprocessing applies)"}
    if added:
        info["levels_only_in_audit_rows"] = {name: levels[:20] for name, levels in added.items()}
    return info


def merged_labels(schema) -> None:
    """Refuse ``dataset.value_labels`` that give two codes of a column the same label, for a model that receives raw
    values (see :func:`adopt_raw_inputs`).

    Raises
    ------
    ConfigError
        Naming the column, the codes, their label and the two ways out.
    """
    for f in schema.features:
        codes: dict[str, list[str]] = {}
        for code, label in f.labels:
            codes.setdefault(label, []).append(code)
        shared = {label: c for label, c in codes.items() if len(c) > 1}
        if shared:
            label, c = next(iter(shared.items()))
            raise ConfigError(
                f"dataset.value_labels.{f.name}: codes {' and '.join(c)} share the label {label!r}, but a model from "
                f"another tool receives each row's own code, which the label cannot give back; give each code its "
                f"own label, or remove {f.name} from dataset.value_labels when auditing this model"
            )


def check_scoring(predictor: RawPredictor, ds: Dataset, own: Callable[[pd.DataFrame], np.ndarray] | None) -> dict:
    """Score the first :data:`CHECK_ROWS` audit rows through the audit's path and through ``own`` (the model's own
    API on the rows as read), and compare; returns what was checked, for the report's provenance.

    The audit's path codes the rows and gives them back as raw values (:meth:`RawPredictor.raw_frame`): those values
    must equal the rows as read, and the scores must agree within :data:`TOLERANCE`.

    Raises
    ------
    ModelRuntimeError
        Naming the column and row where the values differ, or both scores where they disagree (exit code 3).
    """
    names = ds.schema.feature_names
    rows = min(CHECK_ROWS, len(ds.X_test))
    raw = ds.raw_frames()[1].iloc[:rows][names].reset_index(drop=True)
    codes = ds.schema.to_codes(ds.X_test.iloc[:rows])
    counted = predictor.rows_evaluated, predictor.raw.unknown_rows[0]
    sent = predictor.raw_frame(codes)
    for name in names:
        bad = _differs(sent[name], raw[name])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ModelRuntimeError(
                f"the audit would send column {name!r} to the model as {sent[name].iloc[i]!r} where the data has "
                f"{raw[name].iloc[i]!r} (audit row {i}); the model cannot be audited exactly"
            )
    info = {"rows": rows, "raw_values_equal": True}
    if own is not None:
        ours = np.asarray(predictor.predict_codes(codes), dtype=np.float64)
        theirs = np.asarray(own(raw), dtype=np.float64).reshape(-1)
        diff = np.abs(ours - theirs)
        worst = int(np.nanargmax(np.where(np.isnan(diff), np.inf, diff))) if len(diff) else 0
        if len(diff) and not diff[worst] <= TOLERANCE:
            raise ModelRuntimeError(
                f"the audit scores audit row {worst} as {ours[worst]:.9g} but the model's own API as "
                f"{theirs[worst]:.9g} (difference {diff[worst]:.3g} > {TOLERANCE:g}); the model cannot be audited exactly"
            )
        info["max_difference"] = float(diff.max()) if len(diff) else 0.0
    predictor.rows_evaluated, predictor.raw.unknown_rows[0] = counted
    return info


def _differs(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Row by row: the values differ (both missing counts as equal; numbers compare as numbers)."""
    missing_a, missing_b = a.isna().to_numpy(), b.isna().to_numpy()
    both_numeric = pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b)
    if both_numeric and not (pd.api.types.is_bool_dtype(a) or pd.api.types.is_bool_dtype(b)):
        equal = a.to_numpy(dtype=np.float64, na_value=np.nan) == b.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        equal = np.array([x == y for x, y in zip(a.astype(object), b.astype(object), strict=True)], dtype=bool)
    return ~((missing_a & missing_b) | (~missing_a & ~missing_b & equal))
