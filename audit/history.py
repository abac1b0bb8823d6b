"""The history of a config's runs: ``<output_dir>/<name>/index.html`` and ``python -m audit history CONFIG``.

After every run the index page is written again from the run folders' ``report.json`` files: one row per run (date,
verdict, failed checks by severity, data / model / config hashes) and a trend chart per headline measure (test ROC
AUC, ECE, score PSI, and every fairness measure a run reported as a finding, with its interval as a band). The page is
one self-contained HTML file (inline SVG, no script, no external request). ROC AUC and ECE are those of the audited
rows (the population if there is one, else the test split); a population without labels has none, only the
estimate from its scores. ``report.keep_last: N`` prunes the oldest
run folders first, and never removes the run ``latest`` points to nor the run the newest run compared itself with.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

from audit.findings import recorded_verdict

RUN_ID = re.compile(r"^\d{8}T\d{6}(-\d{3}Z(-[0-9a-f]{4})?)?$")
MAX_REPORT_BYTES = 256 << 20
SEVERITIES = ("high", "medium", "low", "info")
CACHE = ".history.json"
"""Each run's history row, keyed by run folder with its report.json's size and mtime (see :func:`collect`)."""
CACHE_VERSION = 2  # 2: verdicts of reports before schema 1.3 read from their headline


def run_folders(out_root: Path) -> list[Path]:
    """The published run folders under ``out_root``, oldest first."""
    if not out_root.is_dir():
        return []
    return sorted(
        (p for p in out_root.iterdir() if RUN_ID.match(p.name) and p.is_dir() and not p.is_symlink()),
        key=lambda p: p.name,
    )


def _read(path: Path) -> dict | None:
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def summarize_run(report: dict) -> dict:
    """One history row from a report.json."""
    audit, prov, modules = report.get("audit", {}), report.get("provenance", {}), report.get("modules", {})
    failed = [f for f in report.get("findings", []) if f.get("status") == "fail"]
    by_sev = {s: sum(f.get("severity") == s for f in failed) for s in SEVERITIES}
    perf = (modules.get("performance") or {}).get("summary") or {}
    drift = (modules.get("drift") or {}).get("summary") or {}
    measures: dict[str, dict] = {}
    population = (prov.get("compute") or {}).get("population") or {}
    unlabelled = population.get("labels") is False  # measured figures would be the test split's: left out
    for key, value in (
        ("ROC AUC", None if unlabelled else perf.get("population_roc_auc", perf.get("test_roc_auc"))),
        ("ECE", None if unlabelled else perf.get("population_ece", perf.get("test_ece"))),
        ("score PSI", drift.get("score_psi")),
    ):
        if isinstance(value, int | float):
            measures[key] = {"value": float(value)}
    estimate = (modules.get("performance") or {}).get("data", {}).get("estimate") or {}
    if isinstance(estimate.get("roc_auc"), int | float):
        measures["ROC AUC (estimated from scores)"] = {
            "value": estimate["roc_auc"], "low": estimate.get("roc_auc_low"), "high": estimate.get("roc_auc_high")
        }  # fmt: skip
    for f in report.get("findings", []):
        if f.get("module") == "fairness" and f.get("measure") and isinstance(f.get("value"), int | float):
            name = f"{f['measure']} · {f.get('subject') or ''}".strip(" ·")
            measures.setdefault(name, {"value": f["value"], "low": f.get("ci_low"), "high": f.get("ci_high")})
    model = prov.get("model") or {}
    return {
        "run_id": audit.get("run_id"),
        "started": (prov.get("started") or "")[:19].replace("T", " "),
        "verdict": recorded_verdict(audit),
        "exit_code": audit.get("exit_code"),
        "failed": by_sev,
        "checks": audit.get("n_findings"),
        "data_hash": (prov.get("dataset") or {}).get("fingerprint"),
        "model_hash": model.get("hash"),
        "config_hash": prov.get("config_hash"),
        "baseline_run": ((modules.get("comparison") or {}).get("summary") or {}).get("baseline_run"),
        "measures": measures,
    }


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _read_cache(out_root: Path) -> dict:
    """``{run folder name: {"stamp": [size, mtime_ns], "row": history row}}`` from :data:`CACHE`, or empty."""
    data = _read(out_root / CACHE)
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("runs"), dict):
        return {}
    return data["runs"]


def collect(out_root: Path) -> list[dict]:
    """History rows of every readable run under ``out_root``, oldest first.

    A run's row is taken from :data:`CACHE` when its report.json has the size and modification time recorded
    there, else summarised from the report.json (2 MB on Adult; a year of monthly runs or a folder of test runs
    would otherwise be read in full after every run), and the cache is written again. The cache is only an
    accelerator: unreadable, of another version or stale, it is ignored entry by entry, and not being able to
    write it changes nothing else.
    """
    cached = _read_cache(out_root)
    fresh: dict[str, dict] = {}
    rows = []
    for folder in run_folders(out_root):
        stamp = _stamp(folder / "report.json")
        if stamp is None:
            continue
        hit = cached.get(folder.name)
        if isinstance(hit, dict) and hit.get("stamp") == stamp and isinstance(hit.get("row"), dict):
            row = hit["row"]
        else:
            rep = _read(folder / "report.json")
            if rep is None:
                continue
            try:
                row = summarize_run(rep)
            except (AttributeError, KeyError, TypeError, ValueError):  # a report.json of another shape: left out
                continue
            row["run_id"] = row["run_id"] or folder.name
        fresh[folder.name] = {"stamp": stamp, "row": row}
        rows.append(row)
    if fresh != cached:
        tmp = out_root / (CACHE + ".tmp")
        try:
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "runs": fresh}), encoding="utf-8")
            tmp.replace(out_root / CACHE)
        except OSError:
            tmp.unlink(missing_ok=True)
    return rows


def prune(out_root: Path, keep_last: int) -> list[str]:
    """Remove the oldest run folders beyond the newest ``keep_last``; never ``latest``'s run nor the newest run's
    baseline. Returns the removed run ids."""
    runs = run_folders(out_root)
    if len(runs) <= keep_last:
        return []
    protected = set()
    latest = out_root / "latest"
    if latest.is_symlink():
        protected.add(Path(latest.readlink()).name)
    if runs:
        rep = _read(runs[-1] / "report.json")
        try:
            base = summarize_run(rep)["baseline_run"] if rep is not None else None
        except (AttributeError, KeyError, TypeError, ValueError):
            base = None
        if base:
            protected.add(str(base))
    removed = []
    for folder in runs[: len(runs) - keep_last]:
        if folder.name in protected:
            continue
        shutil.rmtree(folder)
        removed.append(folder.name)
    return removed


def write_index(out_root: Path, name: str) -> Path:
    """(Re)write ``out_root/index.html`` from the runs there; written to a temporary file and renamed."""
    rows = collect(out_root)
    page = render_index(rows, name)
    tmp = out_root / ".index.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out_root / "index.html")
    return out_root / "index.html"


def update(out_root: Path, name: str, keep_last: int | None) -> list[str]:
    """After a run: prune (when configured), then rewrite the index page. Returns the pruned run ids."""
    removed = prune(out_root, keep_last) if keep_last else []
    write_index(out_root, name)
    return removed


# --------------------------------------------------------------------------------------------------- rendering
def table_text(rows: list[dict]) -> str:
    """The history as a plain-text table (the ``history`` command)."""
    head = ["run", "started (UTC)", "verdict", "failed high/med/low", "ROC AUC", "estimated", "ECE", "score PSI"]
    head.append("model")
    lines = [head]
    for r in rows:

        def num(key, m=r["measures"]):
            v = m.get(key, {}).get("value")
            return f"{v:.4f}" if isinstance(v, int | float) else "-"

        f = r["failed"]
        lines.append(
            [
                r["run_id"],
                r["started"],
                str(r["verdict"]),
                f"{f['high']}/{f['medium']}/{f['low']}",
                num("ROC AUC"),
                num("ROC AUC (estimated from scores)"),
                num("ECE"),
                num("score PSI"),
                (r["model_hash"] or "-")[:12],
            ]  # fmt: skip
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def _chart(title: str, points: list[tuple[int, float, float | None, float | None]], n_runs: int) -> str:
    """An inline SVG line chart: x = run number, y = value, a band from low to high where given."""
    w, h, left, right, top, bottom = 360, 170, 46, 10, 24, 26
    ys = [v for _, v, lo, hi in points for v in (v, lo, hi) if v is not None]
    lo_y, hi_y = min(ys), max(ys)
    if hi_y - lo_y < 1e-9:
        lo_y, hi_y = lo_y - 0.5 * (abs(lo_y) or 1) * 0.1, hi_y + 0.5 * (abs(hi_y) or 1) * 0.1
    pad = 0.08 * (hi_y - lo_y)
    lo_y, hi_y = lo_y - pad, hi_y + pad

    def x(i):
        return left + (w - left - right) * (i / max(n_runs - 1, 1))

    def y(v):
        return top + (h - top - bottom) * (1 - (v - lo_y) / (hi_y - lo_y))

    parts = [
        f'<svg class="trend" role="img" aria-label="{html.escape(title)}" viewBox="0 0 {w} {h}" width="{w}" '
        f'height="{h}">',
        f'<text x="{left}" y="15" font-size="12" font-weight="600">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{y(hi_y - pad) + 4:.1f}" font-size="10" text-anchor="end">{hi_y - pad:.3g}</text>',
        f'<text x="{left - 4}" y="{y(lo_y + pad) + 4:.1f}" font-size="10" text-anchor="end">{lo_y + pad:.3g}</text>',
        f'<text x="{left}" y="{h - 8}" font-size="10">run 1</text>',
        f'<text x="{w - right}" y="{h - 8}" font-size="10" text-anchor="end">run {n_runs}</text>',
    ]
    band = [(i, lo, hi) for i, _, lo, hi in points if lo is not None and hi is not None]
    if len(band) >= 2:
        poly = [f"{x(i):.1f},{y(hi):.1f}" for i, _, hi in band] + [f"{x(i):.1f},{y(lo):.1f}" for i, lo, _ in band[::-1]]
        parts.append(f'<polygon class="band" points="{" ".join(poly)}" fill="#9ecae1" fill-opacity="0.5"/>')
    line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v, _, _ in points)
    parts.append(f'<polyline points="{line}" fill="none" stroke="#08519c" stroke-width="1.6"/>')
    for i, v, _, _ in points:
        parts.append(
            f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2.6" fill="#08519c"><title>run {i + 1}: {v:.4g}</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_index(rows: list[dict], name: str) -> str:
    esc = html.escape
    names: list[str] = []
    for r in rows:
        for k in r["measures"]:
            if k not in names:
                names.append(k)
    charts = []
    for key in names:
        pts = []
        for i, r in enumerate(rows):
            m = r["measures"].get(key)
            if m and isinstance(m.get("value"), int | float):
                lo, hi = m.get("low"), m.get("high")
                ok = isinstance(lo, int | float) and isinstance(hi, int | float)
                pts.append((i, float(m["value"]), float(lo) if ok else None, float(hi) if ok else None))
        if pts:
            charts.append(_chart(key, pts, len(rows)))
    body = []
    for i, r in enumerate(reversed(rows)):
        f = r["failed"]
        verdict = str(r["verdict"])
        link = f'<a href="{esc(r["run_id"])}/report.html">{esc(r["run_id"])}</a>'
        body.append(
            f'<tr class="run v-{esc(verdict)}"><td>{len(rows) - i}</td><td>{link}</td><td>{esc(r["started"])}</td>'
            f"<td>{esc(verdict)}</td><td>{f['high']}</td><td>{f['medium']}</td><td>{f['low']}</td>"
            f"<td>{r['checks'] if r['checks'] is not None else ''}</td>"
            f"<td><code>{esc((r['data_hash'] or '')[:12])}</code></td><td><code>{esc((r['model_hash'] or '-')[:12])}</code></td>"
            f"<td><code>{esc((r['config_hash'] or '')[:12])}</code></td></tr>"
        )
    css = (
        "body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse}"
        "td,th{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left}.v-fail td,.v-error td{background:#fde0dd}"
        ".charts{display:flex;flex-wrap:wrap;gap:12px}code{font-size:12px}"
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
        f"<title>History of {esc(name)}</title><style>{css}</style></head><body>"
        f"<h1>History of the audit {esc(name)}</h1>"
        f"<p>{len(rows)} run(s), newest first below; written after every run. Each run's report is linked.</p>"
        f'<h2>Trends</h2><div class="charts">{"".join(charts) or "<p>No headline measures yet.</p>"}</div>'
        '<h2>Runs</h2><table id="runs"><thead><tr><th>#</th><th>run</th><th>started (UTC)</th><th>verdict</th>'
        "<th>failed high</th><th>medium</th><th>low</th><th>checks</th><th>data</th><th>model</th><th>config</th></tr>"
        f"</thead><tbody>{''.join(body)}</tbody></table></body></html>\n"
    )
