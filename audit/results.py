"""What a run produced, before it is written out: the run and each section's record, and the per-row scores."""

from __future__ import annotations

import datetime as dt
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from audit.config import AuditConfig
from audit.data import Dataset
from audit.errors import EXIT_GATE_FAILED, EXIT_MODULE_ERROR, EXIT_OK
from audit.findings import verdict_of
from audit.modules.base import AuditContext, ModuleResult


@dataclass
class ModuleRecord:
    name: str
    title: str
    status: str  # "ok" | "error" | "skipped"
    duration_s: float = 0.0
    error: str | None = None
    traceback: str | None = None
    result: ModuleResult | None = None
    rows_evaluated: int | None = None  # rows the model scored for this module


@dataclass
class AuditRun:
    """Everything a run produced, before it is written out."""

    config: AuditConfig
    run_id: str
    started: dt.datetime
    finished: dt.datetime | None = None
    dataset: Dataset | None = None
    model_info: dict[str, Any] = field(default_factory=dict)
    modules: list[ModuleRecord] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    exit_code: int = EXIT_OK
    run_dir: Path | None = None
    compute: dict[str, Any] = field(default_factory=dict)  # backend, chunk size, population provenance
    scores: Any = None  # DataFrame written as scores.parquet: every audit row's label, score, decision, groups
    pruned: list[str] = field(default_factory=list)  # run folders removed by report.keep_last after this run

    @property
    def verdict(self) -> str:
        """``pass``, ``review``, ``fail`` or ``error``: the report's headline (see :func:`audit.findings.verdict_of`)."""
        return verdict_of(self.findings, [m.name for m in self.modules if m.status == "error"])

    @property
    def findings(self):
        """Every module's findings, with the owner and remediation that ``report.findings`` gives their ids."""
        from fnmatch import fnmatchcase

        notes = self.config.report.findings
        out = []
        for m in self.modules:
            for f in m.result.findings if m.result else []:
                note = next((n for pattern, n in notes.items() if fnmatchcase(f.key, pattern)), None)
                out.append(f.with_notes(note.owner, note.remediation) if note else f)
        return out


def scores_frame(ctx: AuditContext):
    """Every audit row as the report's numbers saw it: position, id, data row, label, score, decision, whether the
    decision is favourable, the sensitive group labels (``group:<name>``) and the raw values (``x:<name>``); written
    as ``scores.parquet`` so that anyone can recompute the fairness tables, PD and SHAP from the saved model."""
    import pandas as pd

    from audit.modules._shared import audit_groupings

    ds = ctx.dataset
    schema = ds.schema
    thr = ctx.config.model.threshold
    cols: dict[str, Any] = {"row": np.arange(len(ctx.y_audit), dtype=np.int64)}
    if ds.ids_test is not None:
        cols[f"id:{ctx.config.dataset.index_col}"] = ds.ids_test
    if ds.test_rows is not None:
        cols["data_row"] = ds.test_rows
    cols["label"] = ctx.y_audit.astype(np.int8)
    cols["score"] = ctx.proba_audit
    cols["decision"] = (ctx.proba_audit >= thr).astype(np.int8)
    cols["favourable"] = ~schema.declined(ctx.proba_audit, thr)
    if ds.w_test is not None:
        cols["weight"] = ds.w_test
    for name, labels in audit_groupings(ctx).items():
        cols[f"group:{name}"] = np.asarray(labels, dtype=object).astype(str)
    for c in ctx.X_audit.columns:
        col = ctx.X_audit[c]
        numeric = pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col)
        cols[f"x:{c}"] = col.to_numpy() if numeric else col.astype(str).where(col.notna(), None).to_numpy(dtype=object)
    return pd.DataFrame(cols)


def settle_figures(run: AuditRun) -> None:
    """Wait for every section's figures. A figure that cannot be built or drawn fails its section, as it did when
    figures were built inside the section (:func:`audit.plotting.draw` builds them later, in the renderer process):
    the section is shown as failed with the reason, the exit code says so, and the rest of the report stands."""
    from audit.render import DeferredPNG

    for m in run.modules:
        if m.result is None:
            continue
        for f in m.result.figures:
            if isinstance(f.data, DeferredPNG):  # a run that shows no figure draws none (see audit.render)
                continue
            try:
                f.png  # noqa: B018 - waits for the bytes (built here if the renderer failed)
            except Exception as exc:  # noqa: BLE001 - isolation, as for the section itself
                m.status, m.result = "error", None
                m.error = f"figure '{f.name}' could not be drawn: {exc.__class__.__name__}: {exc}"
                m.traceback = traceback.format_exc(limit=8)
                break


def exit_code_of(run: AuditRun) -> int:
    if any(m.status == "error" for m in run.modules):
        return EXIT_MODULE_ERROR
    if any(f.gating and f.status == "fail" for f in run.findings):
        return EXIT_GATE_FAILED
    return EXIT_OK
