"""A year of monthly model-risk reports on Adult, with a slow known drift (``make bench-monitoring``).

1. Trains the Adult net once (the config of ``configs/adult.yaml``), into ``reports/adult_monthly_model/``.
2. Draws 12 monthly populations of 4,000 rows from Adult's test file (``bench/.data/monitoring/month-NN.parquet``):
   months 1-3 as the test file is; from month 4 on, applicants grow older (rows are drawn with weight
   ``exp(b * (age - 38) / 13)``, ``b`` rising by 0.25 a month) and the self-employed grow (weight ``1 + 0.35 (m - 3)``).
   Months 10-12 have no labels yet (the target column is dropped), as in credit, where outcomes arrive months late.
3. Audits each month with the saved model (``model.source: load``) and the month as ``dataset.population``; the
   explainers are left out so a month takes seconds. Every run rewrites ``reports/adult_monthly/index.html``.
4. Prints the history table, the drift findings per month, and draws ``bench/monitoring_trend.png`` (test ROC AUC,
   the label-free estimate for the unlabelled months, score PSI and the age CSI by month) for the README.

Usage: ``make bench-monitoring`` (or ``.venv/bin/python bench/monitoring.py [--months 12]``). Takes about 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / ".data" / "monitoring"
REPORTS = ROOT / "reports"


def base_config() -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "adult.yaml").read_text())
    for split in ("train", "test"):
        cfg["dataset"][split]["path"] = str((ROOT / "configs" / cfg["dataset"][split]["path"]).resolve())
    cfg["report"] = {"output_dir": str(REPORTS), "formats": ["json", "html"]}
    cfg["local"] = {"enabled": False}
    cfg["network"] = {"enabled": False}
    cfg["modules"].update(
        permutation_importance={"enabled": False}, ale={"enabled": False}, interactions={"enabled": False},
        partial_dependence={"features": ["age", "hours-per-week"], "sample_size": 300},
    )  # fmt: skip
    cfg["fairness"]["n_bootstrap"] = 100
    return cfg


def months(n_months: int, seed: int = 0) -> list[Path]:
    """Write the monthly populations (the labelled test rows, reweighted), return their paths."""
    from audit.config import config_from_dict
    from audit.data import load_dataset

    cfg = config_from_dict(base_config(), base_dir=ROOT / "configs", name="adult_monthly")
    ds = load_dataset(cfg)
    frame = ds.X_test.copy()
    frame[ds.schema.target] = np.where(ds.y_test == 1, ds.schema.positive_label, ds.schema.negative_label)
    age = frame["age"].to_numpy(dtype=float)
    selfemp = frame["workclass"].astype(str).str.startswith("Self-emp").to_numpy()
    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for m in range(1, n_months + 1):
        b = 0.25 * max(0, m - 3)
        w = np.exp(b * (age - 38.0) / 13.0) * np.where(selfemp, 1.0 + 0.35 * max(0, m - 3), 1.0)
        idx = rng.choice(len(frame), size=4000, replace=True, p=w / w.sum())
        month = frame.iloc[idx].reset_index(drop=True)
        if m > n_months - 3:
            month = month.drop(columns=[ds.schema.target])  # labels not arrived yet
        path = DATA / f"month-{m:02d}.parquet"
        month.to_parquet(path, index=False, row_group_size=2000)
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--months", type=int, default=12)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from audit.cli import main as audit_main
    from audit.history import collect, table_text

    t0 = time.perf_counter()
    cfg = base_config()
    cfg["name"] = "adult_monthly_model"
    (DATA).mkdir(parents=True, exist_ok=True)
    (DATA / "model.yaml").write_text(yaml.safe_dump(cfg))
    assert audit_main(["run", str(DATA / "model.yaml"), "-q"]) in (0, 1)
    model = REPORTS / "adult_monthly_model" / "latest" / "model"
    paths = months(args.months)
    out = REPORTS / "adult_monthly"
    findings_by_month = []
    for m, path in enumerate(paths, 1):
        cfg = base_config()
        cfg["name"] = "adult_monthly"
        cfg["model"] = {"source": "load", "path": str(model.resolve())}
        cfg["dataset"]["population"] = {"path": str(path)}
        cfg["report"]["keep_last"] = 24
        (DATA / "month.yaml").write_text(yaml.safe_dump(cfg))
        t = time.perf_counter()
        code = audit_main(["run", str(DATA / "month.yaml"), "-q"])
        rep = json.loads((out / "latest" / "report.json").read_text())
        drifted = [f["subject"] for f in rep["findings"] if f["module"] == "drift" and f["status"] == "fail"]
        est = rep["modules"]["performance"]["data"].get("estimate", {})
        real = rep["modules"]["performance"]["data"].get("population", {}).get("roc_auc")
        findings_by_month.append((m, drifted, real, est.get("roc_auc")))
        print(
            f"month {m:2d}: exit {code}, {time.perf_counter() - t:5.1f} s, drifted: {drifted or 'none'}, population "
            f"ROC AUC {f'{real:.3f}' if real is not None else 'no labels'}, estimate {est.get('roc_auc', float('nan')):.3f} "
            f"[{est.get('roc_auc_low', float('nan')):.3f}, {est.get('roc_auc_high', float('nan')):.3f}]",
            flush=True,
        )
    rows = collect(out)[-len(paths) :]
    print()
    print(table_text(rows))
    print(f"\nhistory page: {out / 'index.html'}; {time.perf_counter() - t0:.0f} s in all")
    trend_png(rows, findings_by_month, ROOT / "bench" / "monitoring_trend.png")


def trend_png(rows, by_month, path: Path) -> None:
    """The README's picture of the year: ROC AUC (measured and estimated), score PSI, the age CSI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(1, len(rows) + 1)
    labelled = [m[2] for m in by_month]
    est = [r["measures"].get("ROC AUC (estimated from scores)", {}) for r in rows]
    psi = [r["measures"].get("score PSI", {}).get("value") for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.2))
    ax = axes[0]
    ax.plot(x, [v if v is not None else np.nan for v in labelled], "o-", label="population ROC AUC (labels)")
    ax.plot(x, [e.get("value", np.nan) for e in est], "s--", label="estimated (CBPE)")
    ax.fill_between(
        x,
        [e.get("low") or np.nan for e in est],
        [e.get("high") or np.nan for e in est],
        alpha=0.25,
        label="estimate 95%",
    )
    ax.set(xlabel="month", ylabel="ROC AUC", title="Performance, measured and estimated")
    ax.legend(fontsize=7)
    ax = axes[1]
    ax.plot(x, psi, "o-", label="score PSI")
    ax.axhline(0.1, ls="--", color="grey", lw=1)
    ax.axhline(0.25, ls=":", color="grey", lw=1)
    ax.set(xlabel="month", ylabel="PSI", title="Drift since training (dashed: 0.1, dotted: 0.25)")
    drift_from = next((m for m, d, _, _ in by_month if d), None)
    if drift_from:
        ax.axvline(drift_from, color="#b2182b", lw=1)
        ax.text(drift_from + 0.1, ax.get_ylim()[1] * 0.9, "first drift finding", color="#b2182b", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
