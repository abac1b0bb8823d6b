"""Large-data benchmark (``make bench-scale``): wall time and peak memory of a population audit at 100k, 1M, 5M rows.

For each size, a fresh process audits a synthetic credit-like Parquet population (see ``scale_data.py``) with a
model trained once on 50k rows, and times each stage: scoring every row, performance metrics, fairness (three
sensitive features and an intersection, 200 Poisson-bootstrap replicates), permutation importance (every feature,
5 repeats), partial dependence (4 features), and drift + data quality (one more scan of the file, counting every
feature against the training rows). The peak memory is the largest resident size of that process and
its children (polled every 0.1 s with psutil, and the kernel's ru_maxrss), so it includes Python, torch and the
libraries (about 0.4 GiB before any data).

Efficiency: the rows the model scored in scoring, permutation importance and PD per second, over the network's bare
forward pass on ready tensors (best of 3 passes over a million rows, measured before and after the sizes; the median
of the two is the anchor). Permutation importance counts the rows it scored: a row that its permutation leaves
unchanged keeps its score (the rows asked are printed beside). An efficiency above 1.0 is a measurement error: the
cell reads ``refused`` and the bench exits 1.

Usage::

    python bench/scale.py                       # 100k, 1M and 5M rows, local backend
    python bench/scale.py --sizes 100000,1000000 --backend dask --json out.json

Data files are generated once into ``bench/.data/`` (git-ignored) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data"
TRAIN_ROWS = 50_000
PD_FEATURES = ["income", "debt_to_income", "utilization", "employment"]

CONFIG = """\
name: scale-bench
seed: 11
dataset:
  train: {{path: train.parquet}}
  population: {{path: {population}}}
  target: outcome
  positive_label: repaid
  drop: [applicant_id, sex, ethnicity]
model: {{source: {source}, path: model, hidden: [64, 32], max_epochs: 4, threshold: 0.6}}
modules:
  permutation_importance: {{n_repeats: 5}}
  partial_dependence: {{features: {pd_features}, grid_resolution: 10}}
fairness:
  sensitive_features: [sex, ethnicity, age]
  bins: {{age: [25, 40, 65]}}
  intersections: [[sex, ethnicity]]
  n_bootstrap: 200
compute: {{backend: {backend}, chunk_rows: {chunk_rows}}}
report: {{output_dir: reports}}
"""


def _write_config(population: str, backend: str, chunk_rows: int, source: str) -> Path:
    path = DATA / f"scale-{backend}-{Path(population).stem}.yaml"
    path.write_text(
        CONFIG.format(
            population=population,
            backend=backend,
            chunk_rows=chunk_rows,
            source=source,
            pd_features=json.dumps(PD_FEATURES),
        )
    )
    return path


def prepare(sizes: list[int]) -> dict[str, float]:
    """Generate the data files that are missing and train the model once; returns the seconds each took."""
    sys.path.insert(0, str(HERE))
    from scale_data import generate

    took = {}
    DATA.mkdir(exist_ok=True)
    if not (DATA / "train.parquet").exists():
        t0 = time.perf_counter()
        generate(DATA / "train.parquet", TRAIN_ROWS, seed=1)
        took["generate train"] = time.perf_counter() - t0
    for n in sizes:
        target = DATA / f"population_{n}.parquet"
        if not target.exists():
            t0 = time.perf_counter()
            generate(target, n, seed=2)
            took[f"generate {n}"] = time.perf_counter() - t0
    if not (DATA / "model").is_dir():
        from audit.config import load_config
        from audit.data import load_dataset
        from audit.pipeline import prepare_model

        t0 = time.perf_counter()
        cfg = load_config(_write_config(f"population_{sizes[0]}.parquet", "local", 1 << 18, "train"))
        prepare_model(cfg, load_dataset(cfg), DATA)
        took["train model"] = time.perf_counter() - t0
    return took


def bare_forward_rate() -> float:
    """Rows per second of the network's own forward pass on ready tensors (the ceiling); the best of 3 passes over
    a million rows."""
    import numpy as np
    import torch

    from audit.config import load_config
    from audit.data import load_dataset
    from audit.model.artifact import load_model

    cfg = load_config(_write_config("population_100000.parquet", "local", 1 << 18, "load"))
    predictor = load_model(DATA / "model")
    codes = predictor.schema.to_codes(load_dataset(cfg).X_train)
    codes = np.tile(codes, (max(1, 1_000_000 // len(codes)), 1))
    x_num, x_cat = predictor.tensors(codes)
    bs = 65536
    best = 0.0
    with torch.inference_mode():
        predictor.net(x_num[:bs], x_cat[:bs])
        for _ in range(3):
            t0 = time.perf_counter()
            for s in range(0, len(codes), bs):
                torch.sigmoid(predictor.net(x_num[s : s + bs], x_cat[s : s + bs]))
            best = max(best, len(codes) / (time.perf_counter() - t0))
    return best


# ------------------------------------------------------------------------------------------------ one size
def child(config: str) -> dict:
    """Run the timed stages in this process; returns the figures (printed as JSON by ``--child``)."""
    import resource

    import numpy as np

    from audit.compute import make_backend
    from audit.config import load_config
    from audit.data import load_dataset
    from audit.fairness import group_fairness_many, groupings
    from audit.metrics import classification_metrics
    from audit.model.artifact import load_model
    from audit.population import (
        open_population,
        partial_dependence_population,
        permutation_importance_population,
        score_population,
    )

    t0 = time.perf_counter()
    cfg = load_config(config)
    ds = load_dataset(cfg)
    predictor = load_model(cfg.resolve(cfg.model.path), batch_size=cfg.model.predict_batch_size)
    pop = open_population(cfg, predictor.schema)  # checksums the file
    setup_s = time.perf_counter() - t0
    stages: dict[str, dict] = {}
    names = predictor.schema.feature_names
    with make_backend(cfg.compute) as backend:

        def timed(name, rows, fn):
            t0 = time.perf_counter()
            out = fn()
            stages[name] = {"seconds": time.perf_counter() - t0, "model_rows": rows}
            return out

        sp = timed("score", pop.rows, lambda: score_population(pop, predictor, backend))
        thr = cfg.model.threshold
        perf = timed("performance", 0, lambda: classification_metrics(sp.y, sp.proba, threshold=thr))
        fc = cfg.fairness

        def fairness():
            groups = groupings(sp.sensitive, cfg, list(predictor.schema.sensitive))
            return group_fairness_many(
                sp.y, sp.proba, groups, threshold=thr, n_bootstrap=fc.n_bootstrap, random_state=1, backend=backend
            )

        fair = timed("fairness", 0, fairness)
        reps = cfg.modules.permutation_importance.n_repeats
        pi = timed(
            "permutation importance",
            pop.rows * len(names) * reps,
            lambda: permutation_importance_population(
                pop, predictor, backend, y=sp.y, proba=sp.proba, n_repeats=reps, threshold=thr, random_state=1
            ),
        )
        # rows the model scored: a row a permutation leaves unchanged keeps its score (the rows asked stay apart)
        stages["permutation importance"]["model_rows_asked"] = stages["permutation importance"]["model_rows"]
        stages["permutation importance"]["model_rows"] = pi.rows_evaluated - pi.n_rows
        X = predictor.schema.to_codes(ds.X_test)
        cols = [names.index(f) for f in cfg.modules.partial_dependence.features]
        from audit.explain.partial_dependence import quantile_grid

        grids = [
            np.unique(X[:, j]) if predictor.schema.features[j].is_categorical else quantile_grid(X[:, j], 10)
            for j in cols
        ]
        timed(
            "partial dependence",
            pop.rows * sum(len(g) for g in grids),
            lambda: partial_dependence_population(
                pop, predictor, backend, columns=cols, grids=grids, chunk_rows=cfg.compute.chunk_rows
            ),
        )
        from audit.monitoring import Reference, drift_from_profile, quality_from_profile, score_psi
        from audit.population import profile_population

        def monitoring():  # issue 19: drift and data quality on every population row
            ref = Reference.build(predictor.schema.to_codes(ds.X_train), predictor.schema)
            counts, rows = profile_population(pop, ref, backend)
            proba_train = predictor.predict_codes(predictor.schema.to_codes(ds.X_train))
            return (
                drift_from_profile(ref, counts),
                quality_from_profile(ref, counts, rows),
                score_psi(proba_train, sp.proba),
            )

        drift, _, _ = timed("drift + data quality", 0, monitoring)
        info = backend.describe()
    return {
        "rows": pop.rows,
        "partitions": len(pop.partitions),
        "backend": info,
        "stages": stages,
        "roc_auc": perf["roc_auc"],
        "declined_share": float((sp.proba < thr).mean()),
        "dp_difference_sex": float(fair[0].measures.set_index("measure").loc["demographic_parity_difference", "value"]),
        "top_feature": pi.to_frame()["feature"][0],
        "max_csi": max(d.psi for d in drift),
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "setup_s": setup_s,
    }


def run_size(n: int, backend: str, chunk_rows: int, timeout: float) -> dict:
    """One size in a fresh process, with its peak memory (process tree, polled)."""
    import psutil

    config = _write_config(f"population_{n}.parquet", backend, chunk_rows, "load")
    out = DATA / f"result-{backend}-{n}.json"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(config), "--out", str(out)],
        stderr=subprocess.DEVNULL,
    )
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
            peak = max(peak, rss)
        except psutil.Error:
            pass
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise SystemExit(f"{n} rows: over the {timeout:.0f} s limit")
        time.sleep(0.1)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{n} rows: the child process failed with exit code {proc.returncode}")
    res = json.loads(out.read_text())
    res["wall_s"] = wall
    res["peak_mib"] = max(peak / 2**20, res["ru_maxrss_mib"])
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000,5000000", help="comma-separated row counts")
    ap.add_argument("--backend", choices=["local", "dask"], default="local")
    ap.add_argument("--chunk-rows", type=int, default=1 << 18, help="compute.chunk_rows (default 262144)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds allowed per size")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        Path(args.out).write_text(json.dumps(child(args.child)))
        return 0
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sizes = [int(s) for s in args.sizes.split(",")]
    took = prepare(sizes)
    for k, v in took.items():
        print(f"# {k}: {v:.1f} s")
    anchors = [bare_forward_rate()]  # measured again after the sizes: the machine's speed drifts
    print(
        f"# bare forward pass: {anchors[0] / 1e6:.2f} M rows/s at the start; backend {args.backend}, chunk_rows "
        f"{args.chunk_rows}"
    )
    results = []
    for n in sizes:
        print(f"# {n} rows: running", flush=True)
        results.append(run_size(n, args.backend, args.chunk_rows, args.timeout))
    anchors.append(bare_forward_rate())
    bare = statistics.median(anchors)
    print(
        f"# bare forward pass: {anchors[-1] / 1e6:.2f} M rows/s at the end; efficiencies against their median, "
        f"{bare / 1e6:.2f} M rows/s"
    )
    print(
        f"{'rows':>9} {'parts':>5} {'score':>7} {'perf':>6} {'fair':>7} {'perm.imp':>9} {'PD':>7} {'drift+DQ':>9} "
        f"{'wall s':>8} {'s/M rows':>9} {'peak MiB':>9} {'model rows':>11} {'score eff':>9} {'eff':>5}"
    )
    refused = []
    for r in results:
        n, st = r["rows"], r["stages"]
        model_rows = sum(s["model_rows"] for s in st.values())
        model_s = sum(st[k]["seconds"] for k in ("score", "permutation importance", "partial dependence"))
        r["efficiency"] = model_rows / model_s / bare
        r["score_efficiency"] = st["score"]["model_rows"] / st["score"]["seconds"] / bare
        effs = []
        for name, v in (("score eff", r["score_efficiency"]), ("eff", r["efficiency"])):
            if v > 1.0:  # faster than the bare forward pass: a measurement error, never printed as a result
                refused.append(f"{n} rows {name}: {v:.2f}")
            effs.append(f"{v:.2f}" if v <= 1.0 else "refused")
        print(
            f"{n:>9} {r['partitions']:>5} {st['score']['seconds']:>7.1f} {st['performance']['seconds']:>6.1f} "
            f"{st['fairness']['seconds']:>7.1f} {st['permutation importance']['seconds']:>9.1f} "
            f"{st['partial dependence']['seconds']:>7.1f} {st['drift + data quality']['seconds']:>9.1f} "
            f"{r['wall_s']:>8.1f} {r['wall_s'] / n * 1e6:>9.1f} "
            f"{r['peak_mib']:>9.0f} {model_rows:>11.3g} {effs[0]:>9} {effs[1]:>5}",
        )
    print(
        "# model rows: rows the model scored in scoring, permutation importance and PD (a row that a permutation "
        "leaves unchanged keeps its score and is not counted); eff: those rows per second over the bare forward pass, "
        "score eff: the scoring stage alone; s/M rows flat = linear growth"
    )
    for r in results:
        rest = r["wall_s"] - r["setup_s"] - sum(v["seconds"] for v in r["stages"].values())
        print(
            f"# {r['rows']} rows: wall {r['wall_s']:.1f} s = stages {r['wall_s'] - r['setup_s'] - rest:.1f} s + set-up "
            f"{r['setup_s']:.1f} s (config, training rows, model, population checksum) + {rest:.1f} s (process start, "
            "imports, the PD grids, the result)"
        )
        pi = r["stages"]["permutation importance"]
        print(
            f"# {r['rows']} rows: permutation importance scored {pi['model_rows']:.3g} of the {pi['model_rows_asked']:.3g}"
            f" permuted rows ({1 - pi['model_rows'] / pi['model_rows_asked']:.0%} unchanged by their permutation)"
        )
    for r in results:  # issue 19's cost target: drift and data quality add <= 15% to the wall time
        extra = r["stages"]["drift + data quality"]["seconds"]
        print(
            f"# {r['rows']} rows: drift + data quality {extra:.1f} s, {extra / (r['wall_s'] - extra):.1%} on top of "
            "the rest of the run (target <= 15%)"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(
            f"# growth {a['rows']} -> {b['rows']} rows (x{b['rows'] / a['rows']:.0f}): wall time "
            f"x{b['wall_s'] / a['wall_s']:.1f}, peak memory x{b['peak_mib'] / a['peak_mib']:.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"bare_rows_per_s": anchors, "results": results}, indent=2))
    if refused:
        print("refused (an efficiency above the bare forward pass is a measurement error): " + "; ".join(refused))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
