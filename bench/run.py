"""Standard workloads of shared/bench/WORKLOADS.md on the Adult model, ours beside the reference tools.

Usage: ``make bench`` (or ``.venv/bin/python bench/run.py [--repeat N]``).

The Adult model is the one ``configs/adult.yaml`` trains (seed 0); it is trained once and cached in
``bench/.cache/adult_model`` (keyed by the config hash). For every workload the table gives wall seconds, rows the
model evaluated (counted where the model is called), and two efficiencies: rows/s divided by the DataFrame
predict path's rows/s, and by the bare forward pass's rows/s, both measured in this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

from audit.config import load_config  # noqa: E402
from audit.data import load_dataset  # noqa: E402
from audit.explain.ale import ale_categorical, ale_numeric  # noqa: E402
from audit.explain.partial_dependence import partial_dependence, quantile_grid  # noqa: E402
from audit.explain.permutation import permutation_importance  # noqa: E402
from audit.model import NetPredictor, load_model, save_model  # noqa: E402

CACHE = ROOT / "bench" / ".cache" / "adult_model"


def adult_model():
    cfg = load_config(ROOT / "configs" / "adult.yaml")
    ds = load_dataset(cfg)
    stamp = CACHE / "config_hash"
    if stamp.is_file() and stamp.read_text() == cfg.config_hash():
        return ds, load_model(CACHE)
    from audit.model.training import train_model

    res = train_model(
        ds.schema,
        ds.schema.to_codes(ds.X_train),
        ds.y_train,
        cfg.model,
        validation_size=cfg.dataset.validation_size,
        seed=cfg.seed,
    )
    pred = NetPredictor(res.net, res.preprocessing, ds.schema)
    save_model(CACHE, pred, architecture=res.architecture, history=res.history, best_epoch=res.best_epoch)
    stamp.write_text(cfg.config_hash())
    return ds, pred


class DataFrameModel:
    """What a tool that only sees ``predict_proba(df)`` gets: a scikit-learn-style classifier on raw columns."""

    _estimator_type = "classifier"

    def __init__(self, predictor):
        self.predictor = predictor
        self.classes_ = np.array([0, 1])
        self.rows = 0

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags, TargetTags

        return Tags(
            estimator_type="classifier", target_tags=TargetTags(required=True), classifier_tags=ClassifierTags()
        )

    def fit(self, X, y=None):
        return self

    def predict_proba(self, X):
        self.rows += len(X)
        p = self.predictor.predict_proba(X)
        return np.column_stack([1 - p, p])

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


def best_of(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def throughputs(pred, X_df, repeat):
    t_df, _ = best_of(lambda: pred.predict_proba(X_df), repeat)
    x_num, x_cat = pred.tensors(pred.schema.to_codes(X_df))
    reps = 8
    x_num, x_cat = x_num.repeat(reps, 1), x_cat.repeat(reps, 1)
    best = 0.0
    for bs in (4096, 16384, 65536):  # the physical limit: the best batch size for the bare network

        def bare(bs=bs):
            with torch.inference_mode():
                for i in range(0, len(x_num), bs):
                    torch.sigmoid(pred.net(x_num[i : i + bs], x_cat[i : i + bs]))

        t_bare, _ = best_of(bare, repeat)
        best = max(best, len(x_num) / t_bare)
    return len(X_df) / t_df, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5, help="timed repeats per workload (best is reported)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    ap.add_argument("--skip-dice", action="store_true", help="leave out DiCE in W6 (it takes about a minute)")
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))

    ds, pred = adult_model()
    schema = ds.schema
    X_df = ds.X_test[schema.feature_names]
    codes = schema.to_codes(X_df)
    y = ds.y_test
    df_rps, bare_rps = throughputs(pred, X_df, args.repeat)
    print(f"Adult audit rows: {len(X_df)}; torch threads {torch.get_num_threads()}")
    print(
        f"raw throughput: DataFrame predict {df_rps / 1e6:.3f} M rows/s, bare forward {bare_rps / 1e6:.3f} M rows/s\n"
    )

    rows = []

    def record(wl, tool, fn, count, repeat=None):
        repeat = repeat or args.repeat
        before = count()
        t, out = best_of(fn, repeat)
        n = (count() - before) // repeat
        rps = n / t
        rows.append(
            {
                "workload": wl,
                "tool": tool,
                "seconds": t,
                "rows_evaluated": n,
                "eff_vs_dataframe": rps / df_rps,
                "eff_vs_bare": rps / bare_rps,
            }
        )
        return out

    def ours_count():
        return pred.rows_evaluated

    # W1: permutation importance, every feature, ROC AUC, 5 repeats x 14 features x 16,281 rows
    record(
        "W1",
        "audit",
        lambda: permutation_importance(
            pred.predict_codes, codes, y, feature_names=schema.feature_names, n_repeats=5, random_state=0
        ),
        ours_count,
    )
    from sklearn.inspection import partial_dependence as sk_pd
    from sklearn.inspection import permutation_importance as sk_pi

    sk_model = DataFrameModel(pred)
    record(
        "W1",
        "scikit-learn permutation_importance",
        lambda: sk_pi(sk_model, X_df, y, scoring="roc_auc", n_repeats=5, random_state=0),
        lambda: sk_model.rows,
    )

    # W2: PD, every feature, 1,000 rows (seed 0 sample), numerics on a 20-point quantile grid, every level
    idx = np.random.default_rng(0).choice(len(X_df), 1000, replace=False)
    S = codes[idx]
    # scikit-learn refuses PD on integer columns; floats hold the same values
    S_df = (
        X_df.iloc[idx].reset_index(drop=True).astype({f.name: float for f in schema.features if not f.is_categorical})
    )
    grids = []
    for j, f in enumerate(schema.features):
        grids.append(np.unique(S[:, j]) if f.is_categorical else quantile_grid(S[:, j], 20, include_extremes=False))

    def ours_pd():
        return [partial_dependence(pred.predict_codes, S, j, g) for j, g in enumerate(grids)]

    ours = record("W2", "audit", ours_pd, ours_count)

    def sk_pd_all():
        out = []
        for j, f in enumerate(schema.features):
            if f.is_categorical:
                values = np.array([f.levels[int(c)] for c in grids[j]], dtype=object)
                out.append(
                    sk_pd(
                        sk_model,
                        S_df,
                        [f.name],
                        method="brute",
                        custom_values={f.name: values},
                        categorical_features=[f.name],
                    )
                )
            else:
                out.append(sk_pd(sk_model, S_df, [f.name], method="brute", custom_values={f.name: grids[j]}))
        return out

    ref = record("W2", "scikit-learn partial_dependence (brute)", sk_pd_all, lambda: sk_model.rows)
    max_diff = max(float(np.abs(o.average - r["average"][0]).max()) for o, r in zip(ours, ref, strict=True))

    # W3: ALE, every feature, same 1,000 rows, numerics in 20 quantile bins, categoricals on every level
    mask = schema.categorical_mask

    def ours_ale():
        return [
            ale_categorical(pred.predict_codes, S, j, categorical=mask)
            if mask[j]
            else ale_numeric(pred.predict_codes, S, j, n_bins=20)
            for j in range(len(mask))
        ]

    record("W3", "audit", ours_ale, ours_count)

    # W7: fairness by sex, race and sex x race on all rows; ours with 200 bootstrap resamples, fairlearn without
    from fairlearn.metrics import (
        MetricFrame,
        demographic_parity_difference,
        equalized_odds_difference,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )
    from sklearn.metrics import accuracy_score

    from audit.fairness import group_fairness

    sens = {"sex": ds.X_test["sex"].astype(str).to_numpy(), "race": ds.X_test["race"].astype(str).to_numpy()}
    sens["sex x race"] = np.char.add(np.char.add(sens["sex"].astype(str), " & "), sens["race"].astype(str))

    def ours_fair():
        p = pred.predict_codes(codes)
        return [group_fairness(y, p, g, n_bootstrap=200, random_state=0) for g in sens.values()]

    record("W7", "audit (200 bootstrap CIs)", ours_fair, ours_count)

    def fairlearn_fair():
        d = (sk_model.predict_proba(X_df)[:, 1] >= 0.5).astype(int)
        out = []
        for g in sens.values():
            mf = MetricFrame(
                metrics={
                    "accuracy": accuracy_score,
                    "selection_rate": selection_rate,
                    "tpr": true_positive_rate,
                    "fpr": false_positive_rate,
                },
                y_true=y,
                y_pred=d,
                sensitive_features=g,
            )
            out.append(
                (
                    mf.by_group,
                    demographic_parity_difference(y, d, sensitive_features=g),
                    equalized_odds_difference(y, d, sensitive_features=g),
                )
            )
        return out

    record("W7", "fairlearn MetricFrame (no CIs)", fairlearn_fair, lambda: sk_model.rows)

    # W4-W6: SHAP, LIME, counterfactuals (bench/local.py), beside shap, lime and DiCE
    from local_workloads import run_local

    quality = run_local(pred, ds, codes, record, ours_count, DataFrameModel, skip_dice=args.skip_dice)

    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    print(f"\nW2 check: max |PD(audit) - PD(scikit-learn)| over all features and grid points = {max_diff:.2e}")
    for wl in ("W1", "W2", "W4", "W5", "W6", "W7"):
        t = table[table.workload == wl].set_index("tool")["seconds"]
        for other in t.index[1:]:
            if not other.startswith("audit"):
                print(f"{wl}: audit is {t[other] / t.iloc[0]:.1f}x faster than {other}")
    print("\nQuality on the same work:")
    with pd.option_context("display.width", 200, "display.float_format", "{:.4g}".format):
        print(pd.DataFrame(quality).to_string(index=False))
    if args.json:
        args.json.write_text(json.dumps({"timings": rows, "quality": quality}, indent=1, default=float))


if __name__ == "__main__":
    main()
