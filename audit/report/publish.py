"""Writing a finished run into its folder and publishing it: report.json (always), scores.parquet, report.html and
report.pdf, then the folder's atomic rename, ``latest`` and the history page."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from audit.data import Dataset, dataset_fingerprint
from audit.history import update
from audit.output import OutputError
from audit.report.pdf import start_pdf
from audit.report.writer import build_report_json, render_html, write_json
from audit.results import AuditRun


def write_run(run: AuditRun, ds: Dataset, folder) -> None:
    """Write the report files into the run's temporary folder, then publish it (see :class:`audit.output.RunFolder`).

    A file system error (no space, permissions changed under us) removes the folder and is bad input (exit 2)."""
    t0 = time.perf_counter()
    formats = run.config.report.formats
    tmp_dir = folder.tmp
    try:
        if run.scores is not None:
            run.scores.to_parquet(tmp_dir / "scores.parquet", index=False)
        report = build_report_json(run, ds, dataset_fingerprint(ds), tmp_dir)
        pdf = start_pdf(render_html(report, run, medium="print"), tmp_dir / "report.pdf") if "pdf" in formats else None
        write_json(report, tmp_dir / "report.json")  # while the renderer process lays out the PDF
        if "html" in formats:
            (tmp_dir / "report.html").write_text(render_html(report, run), encoding="utf-8")
        if pdf is not None:
            pdf()
        run.run_dir = folder.publish()
        _update_history(run, folder.out_root)
    except OSError as exc:
        folder.discard()
        raise OutputError(
            f"report.output_dir: writing the report into '{folder.out_root}' failed "
            f"({exc.strerror or exc.__class__.__name__}); free some space or pick another folder; nothing was kept"
        ) from None
    run.stages["write report"] = round(time.perf_counter() - t0, 3)


def _update_history(run: AuditRun, out_root: Path) -> None:
    """Prune old runs (``report.keep_last``) and rewrite ``index.html``; a failure here leaves the published run as
    it is and says so on stderr (the report itself is complete)."""
    try:
        removed = update(out_root, run.config.name, run.config.report.keep_last)
    except OSError as exc:
        print(f"warning: the history page in '{out_root}' was not updated ({exc.strerror or exc})", file=sys.stderr)
        return
    run.pruned = removed
