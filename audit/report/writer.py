"""report.json and the self-contained report.html."""

from __future__ import annotations

import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from audit._version import __version__
from audit.data import Dataset
from audit.report.card import model_card_fields

SCHEMA_VERSION = "1.3"  # 1.1: model_card; 1.2: audit.summary, structured findings with ids; 1.3: verdict = headline
_PACKAGES = (
    "numpy",
    "pandas",
    "scikit-learn",
    "torch",
    "pytorch-lightning",
    "shap",
    "lime",
    "fairlearn",
    "pydantic",
    "matplotlib",
    "seaborn",
    "jinja2",
    "pyarrow",
    "dask",
    "distributed",
)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version(), "audit": __version__}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: Path) -> str | None:
    """The commit checked out at ``path`` (``<sha>-dirty`` with uncommitted changes there), or None outside git."""
    try:
        res = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if res.returncode != 0 or not res.stdout.strip():
            return None
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() + ("-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _table_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.to_dict(orient="records")


def build_report_json(run, ds: Dataset, fingerprint: str, folder: Path | None = None) -> dict[str, Any]:
    """Every number of the run, its findings, and provenance, as plain JSON types.

    ``folder``: where the run's files are being written (for the sha256 of ``scores.parquet``)."""
    from audit.findings import sort_findings
    from audit.jsonable import to_jsonable
    from audit.report.summary import summarize

    cfg = run.config
    findings = [f.to_json() for f in sort_findings(run.findings)]
    failed = [f for f in run.findings if f.status == "fail"]
    summary = summarize(run.findings, run.modules, run.exit_code)
    verdict = summary["headline"]  # one word, the same everywhere: pass, review, fail or error
    modules = {}
    for m in run.modules:
        entry: dict[str, Any] = {"title": m.title, "status": m.status, "duration_s": round(m.duration_s, 3)}
        if m.rows_evaluated is not None:
            entry["rows_evaluated"] = m.rows_evaluated  # rows this module had the model score (its cost)
        if m.error:
            entry["error"] = m.error
        if m.result is not None:
            entry["summary"] = m.result.summary
            entry["tables"] = {t.name: {"title": t.title, "rows": _table_records(t.frame)} for t in m.result.tables}
            entry["data"] = m.result.data
            entry["figures"] = [f.name for f in m.result.figures]
        modules[m.name] = entry
    duration = (run.finished - run.started).total_seconds() if run.finished else None
    report = {
        "schema_version": SCHEMA_VERSION,
        "audit": {
            "name": cfg.name,
            "title": cfg.report.title or f"Audit of {cfg.name}",
            "run_id": run.run_id,
            "verdict": verdict,
            "exit_code": run.exit_code,
            "n_findings": len(findings),
            "n_failed": len(failed),
            "n_gating_failed": sum(f.gating for f in failed),
            "modules_failed": [m.name for m in run.modules if m.status == "error"],
            "summary": summary,
        },
        "findings": findings,
        "modules": modules,
        "model_card": dict(model_card_fields(cfg)),
        "provenance": {
            "config": cfg.model_dump(mode="json"),
            "config_hash": cfg.config_hash(),
            "seed": cfg.seed,
            "dataset": {
                "name": cfg.dataset.name or cfg.name,
                "files": ds.files,
                "fingerprint": fingerprint,
                "rows": {"train": len(ds.X_train), "test": len(ds.X_test)}
                | ({"population": run.compute["population"]["rows"]} if "population" in run.compute else {}),
                "features": ds.schema.to_json()["features"],
                "target": ds.schema.target,
                "positive_label": ds.schema.positive_label,
                "favourable_label": ds.schema.favourable_label or ds.schema.positive_label,
                "tied": [list(g) for g in ds.tied],
                "filter": cfg.dataset.filter,
                "index_col": cfg.dataset.index_col,
                "notes": ds.notes,
            },
            "model": run.model_info,
            "compute": run.compute,
            "versions": package_versions(),
            "git_commit": git_commit(Path(__file__).resolve().parent),
            "config_dir": cfg.base_dir,
            "config_git_commit": git_commit(Path(cfg.base_dir)),
            "sidecars": _sidecars(folder),
            "started": run.started.isoformat(),
            "finished": run.finished.isoformat() if run.finished else None,
            "duration_s": round(duration, 3) if duration is not None else None,
            "stages_s": run.stages,
        },
    }
    return to_jsonable(report)


def _sidecars(folder: Path | None) -> dict[str, Any]:
    """Files beside report.json that hold per-row data (``scores.parquet``), with their sha256."""
    from audit.files import sha256_file

    out: dict[str, Any] = {}
    if folder is not None and (folder / "scores.parquet").is_file():
        out["scores.parquet"] = {
            "sha256": sha256_file(folder / "scores.parquet"),
            "contents": "every audit row: row, data_row, label, score, decision, favourable, group:<sensitive>, "
            "x:<raw column>",
        }
    return out


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")


def render_html(report: dict[str, Any], run, *, medium: str = "screen") -> str:
    """The report page (see :mod:`audit.report.html`); ``medium="print"`` for the PDF."""
    from audit.report.html import render_html as _render

    return _render(report, run, medium=medium)
