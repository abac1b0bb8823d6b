"""The default Adult audit end to end (``make bench-audit``): wall time, time per stage and import cost, 3 runs.

Each run is a fresh Python process doing exactly what ``make audit`` does (``python -m audit run
configs/adult.yaml``, report into ``reports/adult/``, PDF included, ended as ``audit.cli.exit_now`` ends it), so the
wall time includes the interpreter, every import, training, the report and the process exit. The stages come from
the run itself (``report.json``'s ``provenance.stages_s``, plus the report writing, which the child times around the
pipeline's writer). The import cost is measured apart: a second fresh process imports, in the same order, every
module the audit process had imported by its end, and times that. Figures are drawn by a renderer process beside the
audit (see ``audit/figure_worker.py``); its imports run in parallel and are not in the import figure.

Medians of the 3 runs are compared with the targets of issue 17 (a quiet 2-core machine): wall <= 25 s, training
<= 6 s at test ROC AUC >= 0.90, report writing (HTML + PDF) <= 5 s, imports <= 3 s.

Usage: ``make bench-audit`` (or ``.venv/bin/python bench/audit_run.py [--runs N] [--config PATH] [--json out.json]``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"wall": 25.0, "train model": 6.0, "write report": 5.0, "imports": 3.0}
MIN_AUC = 0.90


def child(config: str, out: Path) -> None:
    """One audit, as ``python -m audit run`` does it, recording what the parent needs into ``out``."""
    t0 = time.perf_counter()
    import audit.pipeline as pipeline
    from audit.cli import main

    seen: dict = {}
    write = pipeline.write_run

    def timed_write(run, ds, folder):
        write(run, ds, folder)
        seen["run"] = run

    pipeline.write_run = timed_write
    rc = main(["run", "-q", config])
    run = seen.get("run")
    record = {"rc": rc, "in_process_s": time.perf_counter() - t0, "modules": list(sys.modules)}
    if run is not None:
        report = json.loads((Path(run.run_dir) / "report.json").read_text())
        record["stages"] = dict(run.stages)
        record["duration_s"] = report["provenance"]["duration_s"]
        record["test_roc_auc"] = report["modules"]["performance"]["summary"]["test_roc_auc"]
        record["run_dir"] = str(run.run_dir)
    out.write_text(json.dumps(record))


IMPORTER = """
import importlib, sys, time, json
names = json.load(open(sys.argv[1]))
t0 = time.perf_counter()
for n in names:
    if n in sys.modules or n == "__main__" or n.startswith("audit.__main__"):
        continue
    try:
        importlib.import_module(n)
    except Exception:
        pass
print(time.perf_counter() - t0)
"""


def import_seconds(modules: list[str]) -> float:
    """Seconds a fresh interpreter takes to import ``modules`` in order (what the audit process imported)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(modules, fh)
    try:
        out = subprocess.run([sys.executable, "-c", IMPORTER, fh.name], capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(fh.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--config", default="configs/adult.yaml")
    ap.add_argument("--json", type=Path, help="also write the runs as JSON here")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.config, args.child)
        from audit.cli import exit_now

        exit_now(0)  # and the process ends as `python -m audit` ends it (see audit.cli.exit_now)

    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run.json"
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--config", args.config, "--child", str(out)],
                cwd=ROOT,
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0 or not out.is_file():
                print(f"run {i + 1}: the audit process failed (exit {proc.returncode})", file=sys.stderr)
                return 1
            rec = json.loads(out.read_text())
        rec["wall"] = wall
        rec["imports"] = import_seconds(rec.pop("modules"))
        runs.append(rec)
        print(
            f"run {i + 1}: wall {wall:.1f} s, exit {rec['rc']}, test ROC AUC {rec.get('test_roc_auc', float('nan')):.4f}",
            file=sys.stderr,
        )

    stages = list(runs[0]["stages"])
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(
        f"Adult audit ({args.config}), {len(runs)} runs, each a fresh process; medians; "
        f"cpus {len(os.sched_getaffinity(0))}; load average at the end {load}"
    )
    rows = [("wall (process start to exit)", [r["wall"] for r in runs], TARGETS["wall"])]
    rows.append(("imports (fresh process, same modules)", [r["imports"] for r in runs], TARGETS["imports"]))
    rows.append(("run duration (report.json)", [r["duration_s"] for r in runs], None))
    rows += [(f"  {s}", [r["stages"][s] for r in runs], TARGETS.get(s)) for s in stages]
    width = max(len(name) for name, _, _ in rows)
    print(f"{'':{width}}  median   runs                   target")
    met = True
    for name, values, target in rows:
        m = statistics.median(values)
        mark = ""
        if target is not None:
            ok = m <= target
            met &= ok
            mark = f"<= {target:g} s {'met' if ok else 'NOT met'}"
        each = " ".join(f"{v:6.2f}" for v in values)
        print(f"{name:{width}}  {m:6.2f}   {each:22} {mark}")
    auc = [r["test_roc_auc"] for r in runs]
    ok = min(auc) >= MIN_AUC
    met &= ok
    print(
        f"test ROC AUC {statistics.median(auc):.4f} (>= {MIN_AUC} {'met' if ok else 'NOT met'}; same in every run: {len(set(auc)) == 1})"
    )
    print("all targets met" if met else "some targets NOT met")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
