"""Fairness audit: group metrics for every sensitive feature and intersection, measures with intervals, verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.fairness import encode_groups, group_fairness_many, group_labels, verdict
from audit.findings import Finding
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import subplots, to_png

_SEVERITY = {
    "disparate_impact_ratio": "high",
    "equalized_odds_difference": "high",
    "demographic_parity_difference": "medium",
    "equal_opportunity_difference": "medium",
    "calibration_gap": "medium",
}


def groupings(frame: pd.DataFrame, cfg: AuditConfig, sensitive: list[str]) -> dict[str, np.ndarray]:
    """Group labels per sensitive feature and per configured intersection.

    Value labels (``dataset.value_labels``) name the groups; a column declared categorical (or labelled, or derived)
    is grouped by its levels, never binned; numeric ones are binned by ``fairness.bins`` or quantiles (see
    :func:`audit.fairness.group_labels`).
    """
    from audit.data import category_strings

    fc = cfg.fairness
    ds = cfg.dataset
    out = {}
    for s in sensitive:
        col = frame[s]
        categorical = s in ds.features.categorical or s in ds.value_labels or s in fc.derived
        if s in ds.value_labels:  # raw codes (a population) and labels (the loaded splits) give the same groups
            col = pd.Series(category_strings(col, labels=dict(ds.value_labels[s])), index=col.index, dtype=object)
        out[s] = group_labels(col, edges=fc.bins.get(s), quantiles=fc.quantiles, categorical=categorical)
    for combo in fc.intersections:
        levels, codes = encode_groups(out[combo[0]])
        for c in combo[1:]:  # combine integer codes, build each distinct label once
            lv_c, codes_c = encode_groups(out[c])
            pairs, codes = np.unique(codes * len(lv_c) + codes_c, return_inverse=True)
            levels = np.array([f"{levels[q // len(lv_c)]} & {lv_c[q % len(lv_c)]}" for q in pairs], dtype=object)
        out[" x ".join(combo)] = levels[codes.reshape(-1)]
    return out


def audit_groupings(ctx: AuditContext) -> dict[str, np.ndarray]:
    """:func:`groupings` of all audit rows for the schema's sensitive features, computed once per run.

    Modules that look at a subset of rows index these labels, so a numeric sensitive feature binned by quantiles
    gets the same bins in every section of the report.
    """
    if "groupings" not in ctx.cache:
        ctx.cache["groupings"] = groupings(ctx.X_audit, ctx.config, list(ctx.dataset.schema.sensitive))
    return ctx.cache["groupings"]


def _audit_rows(ctx: AuditContext) -> tuple[np.ndarray, np.ndarray, str]:
    """Labels and scores the fairness numbers are computed on: the population if there is one, else the test split."""
    if ctx.population is not None:
        sp = ctx.population.scored
        return sp.y, sp.proba, f"population ({sp.rows} rows)"
    return ctx.y_audit, ctx.proba_audit, f"test rows ({len(ctx.y_audit)})"


class FairnessModule:
    name = "fairness"
    title = "Fairness and bias"

    def enabled(self, config: AuditConfig) -> bool:
        return config.fairness.enabled and bool(config.fairness.sensitive_features or config.fairness.derived)

    def run(self, ctx: AuditContext) -> ModuleResult:
        cfg = ctx.config
        fc = cfg.fairness
        schema = ctx.dataset.schema
        sensitive = list(schema.sensitive)
        seed = ctx.seed_for(self.name)
        y, p, audited = _audit_rows(ctx)
        if ctx.population is not None:  # every row of the population, grouped the same way
            groups = groupings(ctx.population.scored.sensitive, cfg, sensitive)
        else:
            groups = audit_groupings(ctx)
        results = group_fairness_many(
            y,
            p,
            groups,
            threshold=cfg.model.threshold,
            min_group_size=fc.min_group_size,
            n_bootstrap=fc.n_bootstrap,
            confidence=fc.confidence,
            random_state=seed,
            backend=ctx.backend,
            favourable_positive=schema.favourable_is_positive,
        )
        findings, rows = [], []
        thresholds = fc.thresholds.model_dump()
        for res in results:
            for m in res.measures.itertuples():
                limit = thresholds[m.measure]
                status = verdict(m.value, m.ci_low, m.ci_high, limit, m.kind) if limit is not None else "info"
                rows.append({"grouping": res.name, **m._asdict()} | {"threshold": limit, "verdict": status})
                if limit is None:
                    continue
                sign = "<=" if m.kind == "max" else ">="
                findings.append(
                    Finding(
                        self.name,
                        f"{m.measure.replace('_', ' ')} by {res.name}: {m.value:.3f} [{m.ci_low:.3f}, {m.ci_high:.3f}]",
                        status,
                        _SEVERITY[m.measure] if status != "pass" else "info",
                        {
                            "value": m.value,
                            "ci_low": m.ci_low,
                            "ci_high": m.ci_high,
                            "insufficient_groups": res.insufficient,
                        },
                        f"{sign} {limit} ({int(fc.confidence * 100)}% bootstrap interval)",
                        gating=m.measure in fc.gate,
                    )
                )
            if res.insufficient:
                findings.append(
                    Finding(
                        self.name,
                        f"{res.name}: {len(res.insufficient)} group(s) below {fc.min_group_size} rows reported as "
                        "insufficient data",
                        "info",
                        "low",
                        {"groups": res.insufficient},
                    )
                )
        proxies = self._proxies(ctx, sensitive, seed)
        findings += [
            Finding(
                self.name,
                f"{r.feature} is a likely proxy for {r.sensitive} (bias-corrected Cramér's V {r.cramers_v:.2f}, "
                f"permutation p = {r.p_value:.3f}"
                + (f", importance rank {int(r.importance_rank)})" if not math.isnan(r.importance_rank) else ")"),
                "fail",
                "medium",
                {
                    "cramers_v": r.cramers_v,
                    "cramers_v_uncorrected": r.cramers_v_uncorrected,
                    "p_value": r.p_value,
                    "importance_rank": r.importance_rank,
                },
                f"bias-corrected Cramér's V < {fc.proxy_association} or permutation p >= {fc.proxy_alpha}",
            )
            for r in proxies.itertuples()
            if r.flagged
        ]
        measures = pd.DataFrame(rows)
        tables = [
            Table(
                "measures",
                "Headline fairness measures",
                measures[["grouping", "measure", "value", "ci_low", "ci_high", "threshold", "verdict"]],
                f"Over groups with at least {fc.min_group_size} rows; {int(fc.confidence * 100)}% percentile "
                f"bootstrap intervals from {fc.n_bootstrap} Poisson resamples of the {audited}; 'inconclusive' when "
                "the interval straddles the threshold.",
            )
        ]
        for res in results:
            cols = [
                "group",
                "count",
                "eligible",
                "base_rate",
                "selection_rate",
                "accuracy",
                "tpr",
                "fpr",
                "fnr",
                "precision",
                "roc_auc",
                "ece",
            ]
            tables.append(Table(f"groups_{res.name}", f"Group metrics by {res.name}", res.table[cols]))
        tables.append(
            Table(
                "proxies",
                "Association of each feature with each sensitive feature",
                proxies,
                "Cramér's V corrected for bias (Bergsma 2013; the uncorrected V beside it grows with the number of "
                f"levels even for unrelated columns), numeric features in quintiles; p-value from {fc.proxy_permutations} "
                f"shuffles of the sensitive column. Flagged: corrected V >= {fc.proxy_association} and "
                f"p < {fc.proxy_alpha}. Importance rank from permutation importance when it ran.",
            )
        )
        figures = [self._rates_figure(res) for res in results] + [self._roc_figure(y, p, sensitive, groups, cfg)]
        return ModuleResult(
            summary={
                "groupings": len(results),
                "fail": sum(f.status == "fail" for f in findings),
                "inconclusive": sum(f.status == "inconclusive" for f in findings),
                "bootstrap": fc.n_bootstrap,
                "rows": len(y),
            },
            tables=tables,
            figures=figures,
            findings=findings,
            data={
                res.name: {
                    "groups": res.table.to_dict("list"),
                    "measures": res.measures.to_dict("list"),
                    "insufficient": res.insufficient,
                }
                for res in results
            },
        )

    @staticmethod
    def _proxies(ctx: AuditContext, sensitive: list[str], seed: int) -> pd.DataFrame:
        from audit.fairness import association

        fc = ctx.config.fairness
        schema = ctx.dataset.schema
        pi = ctx.results.get("permutation_importance")
        ranks = pi.data["rank_by_feature"] if pi is not None else {}
        X = ctx.X_audit
        groups = audit_groupings(ctx)
        rng = np.random.default_rng(seed)
        rows = []
        labels = {f.name: group_labels(X[f.name], quantiles=5, categorical=f.is_categorical) for f in schema.features}
        for s in sensitive:
            s_lab = groups[s]
            shuffles = np.stack([rng.permutation(len(s_lab)) for _ in range(fc.proxy_permutations)]).astype(np.int32)
            for f in schema.feature_names:
                if f == s:
                    continue
                a = association(labels[f], s_lab, permutations=shuffles)
                rows.append(
                    {
                        "sensitive": s,
                        "feature": f,
                        "cramers_v": a.v,
                        "cramers_v_uncorrected": a.v_raw,
                        "p_value": a.p_value,
                        "flagged": bool(a.v >= fc.proxy_association and a.p_value < fc.proxy_alpha),
                        "importance_rank": ranks.get(f, np.nan),
                    }
                )
        return pd.DataFrame(rows).sort_values("cramers_v", ascending=False, kind="stable").reset_index(drop=True)

    @staticmethod
    def _rates_figure(res) -> Figure:
        t = res.table
        labels = [g if len(g) <= 28 else g[:27] + "…" for g in t["group"]]
        y = np.arange(len(t))
        fig, axes = subplots(1, 3, figsize=(11, max(2.8, 0.3 * len(t) + 1.6)), sharey=True)
        for ax, key, title in zip(
            axes,
            ("selection_rate", "tpr", "fpr"),
            ("selection rate", "true positive rate", "false positive rate"),
            strict=True,
        ):
            v = t[key].to_numpy(dtype=float)
            if f"{key}_low" in t:
                err = np.vstack([v - t[f"{key}_low"], t[f"{key}_high"] - v])
                ax.errorbar(v, y, xerr=np.nan_to_num(np.abs(err)), fmt="none", ecolor="#7f8c8d", capsize=2)
            colors = np.where(t["eligible"], "#2e6db4", "#bdc3c7")
            ax.scatter(v, y, c=colors, zorder=3, s=22)
            ax.set(xlabel=title, xlim=(0, 1))
            if key == "selection_rate":
                eligible = t.loc[t["eligible"], key]
                if len(eligible):
                    line = 0.8 * eligible.max()
                    ax.axvline(line, color="#c0392b", ls="--", lw=1, label="4/5 of the highest")
                    ax.legend(fontsize=7, loc="lower right")
        axes[0].set_yticks(y, labels, fontsize=8)
        axes[0].invert_yaxis()
        fig.suptitle(f"Rates by {res.name} (grey: below the minimum group size)")
        fig.tight_layout()
        return Figure(
            f"fairness_{res.name}",
            f"Selection rate, TPR and FPR by {res.name} with bootstrap intervals; dashed red: four-fifths of the highest selection rate.",
            to_png(fig),
        )

    @staticmethod
    def _roc_figure(
        y: np.ndarray, p: np.ndarray, sensitive: list[str], groups: dict[str, np.ndarray], cfg: AuditConfig
    ) -> Figure:
        from sklearn.metrics import roc_curve

        cols = min(3, len(sensitive))
        nrows = math.ceil(len(sensitive) / cols)
        fig, axes = subplots(nrows, cols, figsize=(3.8 * cols, 3.5 * nrows), squeeze=False)
        for ax, s in zip(axes.flat, sensitive, strict=False):
            lab = groups[s]
            for g in pd.unique(lab):
                m = lab == g
                yg = y[m]
                if m.sum() < cfg.fairness.min_group_size or yg.min() == yg.max():
                    continue
                fpr, tpr, _ = roc_curve(yg, p[m])
                ax.plot(fpr, tpr, lw=1.2, label=str(g)[:20])
            ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
            ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC by {s}")
            ax.legend(fontsize=7, loc="lower right")
        for ax in list(axes.flat)[len(sensitive) :]:
            ax.axis("off")
        fig.tight_layout()
        return Figure("fairness_roc", "ROC curve per group (groups below the minimum size omitted).", to_png(fig))
