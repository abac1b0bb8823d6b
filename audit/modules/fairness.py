"""Fairness audit: group metrics for every sensitive feature and intersection, measures with intervals, verdicts."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.fairness import MEASURES, RULES, group_fairness_many, group_labels, groupings, verdict
from audit.findings import Finding
from audit.modules._shared import audit_groupings, labelled_population, no_labels_finding
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import draw, subplots

_SEVERITY = {
    "disparate_impact_ratio": "high",
    "equalized_odds_difference": "high",
    "demographic_parity_difference": "medium",
    "equal_opportunity_difference": "medium",
    "calibration_gap": "medium",
}


def _audit_rows(ctx: AuditContext) -> tuple[np.ndarray, np.ndarray, str]:
    """Labels and scores the fairness numbers are computed on: the population if there is one, else the test split."""
    if labelled_population(ctx):
        sp = ctx.population.scored
        return sp.y, sp.proba, f"population ({sp.rows} rows)"
    return ctx.y_audit, ctx.proba_audit, f"test rows ({len(ctx.y_audit)})"


def _num(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _zero_width(m, n_bootstrap: int) -> bool:
    """A bootstrap interval that collapsed to a point (every replicate gave the same value: a rate of 0 or 1 from a
    handful of events) measures no uncertainty; no verdict rests on it. Without a bootstrap there is no interval."""
    return n_bootstrap > 0 and not math.isnan(m.ci_low) and m.ci_low == m.ci_high


def _named(grouping: str, label: str | None) -> str:
    """A group as a reader names it: 'Female', but 'age < 25' for a bin or a code."""
    if label is None:
        return "?"
    return f"{grouping} {label}" if re.match(r"^[<>\d-]", label) else label


def _plain(m, grouping: str, fav: str) -> str:
    """What a headline measure means, in one sentence naming the groups (and those left out for too few events)."""
    text = _plain_gap(m, grouping, fav)
    ref, widest = getattr(m, "reference", None), getattr(m, "widest_pair", None)
    if ref is not None and m.measure != "disparate_impact_ratio":
        text += f" Compared with the reference group, {_named(grouping, ref)}"
        text += f"; the widest pair is {widest} ({m.widest_value:.3f})." if widest else "."
    left = getattr(m, "left_out", None)
    return text + (f" Left out for too few events (fairness.min_events): {', '.join(left[:4])}." if left else "")


def _plain_gap(m, grouping: str, fav: str) -> str:
    dis, adv = _named(grouping, m.disadvantaged), _named(grouping, m.advantaged)
    dv, av = m.disadvantaged_value, m.advantaged_value
    if m.measure == "disparate_impact_ratio":
        return (
            f"{dis} get the {fav} at {m.value:.2f} times the rate of {adv} ({dv:.1%} vs {av:.1%}); the four-fifths "
            "rule asks for at least 0.80."
        )
    if m.measure == "demographic_parity_difference":
        return (
            f"{dis} get the {fav} {m.value * 100:.1f} percentage points less often than {adv} ({dv:.1%} vs {av:.1%})."
        )
    if m.measure == "equal_opportunity_difference":
        return (
            f"Among people whose true outcome is favourable, {dis} get the {fav} {m.value * 100:.1f} points less often "
            f"than {adv} (TPR {dv:.1%} vs {av:.1%})."
        )
    if m.measure == "equalized_odds_difference":
        which = "true positive rate" if m.rate == "tpr" else "false positive rate"
        return (
            f"The larger gap is in the {which}: {dv:.1%} for {dis} against {av:.1%} for {adv} "
            f"({m.value * 100:.1f} points)."
        )
    return (
        f"Scores are worst calibrated for {dis} (expected calibration error {dv:.3f}) and best for {adv} ({av:.3f}); "
        f"the gap is {m.value:.3f}."
    )


def _weights(ctx: AuditContext) -> np.ndarray | None:
    """The row weights of the rows the numbers are computed on (``dataset.weight``; a population has none)."""
    return None if labelled_population(ctx) else ctx.w_audit


def _calibration_null(p: np.ndarray, groups: dict[str, np.ndarray], ctx: AuditContext, seed: int):
    """``calibrated(grouping, reference, gap)``: :func:`audit.fairness.calibration_gap_null_p` on the rows the
    numbers were computed on, over the groups with enough rows; only called for a gap that would fail."""
    from audit.fairness import calibration_gap_null_p, encode_groups

    fc = ctx.config.fairness
    weight = _weights(ctx)

    def calibrated(name: str, reference: str | None, gap: float) -> float:
        levels, codes = encode_groups(np.asarray(groups[name]))
        hit = np.flatnonzero(levels.astype(str) == str(reference))
        if not len(hit):
            return float("nan")
        eligible = np.bincount(codes, minlength=len(levels)) >= fc.min_group_size
        return calibration_gap_null_p(
            p, codes, eligible, int(hit[0]), gap, n_sim=max(fc.n_bootstrap, 199), seed=seed,
            favourable_positive=ctx.dataset.schema.favourable_is_positive, sample_weight=weight,
        )  # fmt: skip

    return calibrated


def _reference(res, configured: str | None) -> str | None:
    """The reference group of a grouping, as its measures used it (:func:`audit.fairness.reference_index`): the
    configured one when it has enough rows, else the largest group with enough rows."""
    used = res.measures["reference"].iloc[0] if len(res.measures) else None
    return configured if used is None else used


def _group_table(res, ref: str | None, min_group_size: int) -> Table:
    """Group metrics with the overall row first, intervals, and the disparity against the reference group."""
    t = res.table.copy()
    overall = {"group": "overall (all rows)", "eligible": True, **res.overall}
    overall["count"] = int(t["count"].sum())
    if "weight" in t:
        overall["weight"] = float(t["weight"].sum())
    t = pd.concat([pd.DataFrame([overall]), t], ignore_index=True)
    if ref is not None and ref in set(t["group"]):
        sr_ref = float(t.loc[t["group"] == ref, "selection_rate"].iloc[0])
        t["selection_ratio_vs_ref"] = t["selection_rate"] / sr_ref if sr_ref > 0 else np.nan
        t["selection_diff_vs_ref"] = t["selection_rate"] - sr_ref
    cols = ["group", "count", "weight", "eligible", "base_rate", "selection_rate", "selection_rate_low", "selection_rate_high",
            "selection_ratio_vs_ref", "selection_diff_vs_ref", "tpr", "tpr_low", "tpr_high", "fpr", "fpr_low",
            "fpr_high", "accuracy", "precision", "roc_auc", "ece"]  # fmt: skip
    t = t[[c for c in cols if c in t.columns]]
    return Table(
        f"groups_{res.name}",
        f"Group metrics by {res.name} (reference group: {ref})",
        t,
        f"Base rate: actual share with the favourable outcome; selection rate: share given it by the model. Ratio "
        f"and difference against the reference group '{ref}' (the largest eligible group unless "
        f"fairness.reference_groups names one). Groups below {min_group_size} rows are shown but never used in a "
        "measure (eligible: false).",
    )


class FairnessModule:
    name = "fairness"
    title = "Fairness and bias"

    def enabled(self, config: AuditConfig) -> bool:
        return config.fairness.enabled and bool(config.fairness.sensitive_features or config.fairness.derived)

    def run(self, ctx: AuditContext) -> ModuleResult:
        fc = ctx.config.fairness
        schema = ctx.dataset.schema
        sensitive = list(schema.sensitive)
        seed = ctx.seed_for(self.name)
        y, p, audited = _audit_rows(ctx)
        groups, results = self._measure(ctx, y, p, sensitive, seed)
        findings = []
        if ctx.population is not None and not labelled_population(ctx):
            findings.append(no_labels_finding(self.name, "fairness on the population", "the test split"))
        fav = f"'{schema.favourable_label or schema.positive_label}' decision"
        rows = []
        calibrated = _calibration_null(p, groups, ctx, seed)
        for res in results:
            rows += self._judge(ctx, res, fav, findings, calibrated)
        proxies = self._proxies(ctx, sensitive, seed)
        findings += self._proxy_findings(fc, proxies)
        tables, references = self._tables(ctx, results, rows, proxies, audited, fav)
        single = [r for r in results if " x " not in r.name]
        figures = [self._rates_figure(single, "fairness_rates")] if single else []
        figures += [self._rates_figure([r], f"fairness_{r.name}") for r in results if " x " in r.name]
        figures.append(self._roc_figure(y, p, sensitive, groups, ctx.config, _weights(ctx)))
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
                    "overall": res.overall,
                    "reference": references[res.name],
                }
                for res in results
            }
            | {
                "flagged_proxies": sorted({r.feature for r in proxies.itertuples() if r.flagged}),
                "flagged_proxy_pairs": [[r.feature, r.sensitive] for r in proxies.itertuples() if r.flagged],
            },
        )

    @staticmethod
    def _measure(ctx: AuditContext, y, p, sensitive: list[str], seed: int):
        """The groupings of the rows the numbers are computed on, and their group metrics and measures."""
        cfg, fc = ctx.config, ctx.config.fairness
        if labelled_population(ctx):  # every row of the population, grouped the same way
            groups = groupings(ctx.population.scored.sensitive, cfg, sensitive)
        else:
            groups = audit_groupings(ctx)
        results = group_fairness_many(
            y, p, groups, threshold=cfg.model.threshold, min_group_size=fc.min_group_size, min_events=fc.min_events,
            n_bootstrap=fc.n_bootstrap,
            confidence=fc.confidence, random_state=seed, backend=ctx.backend,
            favourable_positive=ctx.dataset.schema.favourable_is_positive, references=fc.reference_groups,
            sample_weight=_weights(ctx),
        )  # fmt: skip
        return groups, results

    def _judge(self, ctx: AuditContext, res, fav: str, findings: list[Finding], calibrated) -> list[dict]:
        """A grouping's measures against their thresholds: a table row each, and the findings (appended). A
        calibration gap beyond its limit fails only when ``calibrated(grouping, reference, gap)``, the chance that a
        perfectly calibrated model reaches it on these groups, is below ``1 - fairness.confidence``."""
        fc = ctx.config.fairness
        thresholds = fc.thresholds.model_dump()
        rows = []
        for m in res.measures.assign(calibrated_null_p=None).itertuples():
            limit = thresholds[m.measure]
            if m.not_assessable is None and _zero_width(m, fc.n_bootstrap):
                m = m._replace(not_assessable=f"its {int(fc.confidence * 100)}% bootstrap interval has zero width "
                               f"([{m.ci_low:.3g}, {m.ci_high:.3g}]): too few events to measure its uncertainty")  # fmt: skip
            assessable = m.not_assessable is None and not math.isnan(m.value)
            if not assessable:
                status = "not_assessable"
            elif limit is None:
                status = "info"
            else:
                status = verdict(m.value, m.ci_low, m.ci_high, limit, m.kind)
                if status == "fail" and m.measure == "calibration_gap":
                    null_p = calibrated(res.name, m.reference, float(m.value))
                    m = m._replace(calibrated_null_p=null_p)
                    if null_p >= 1 - fc.confidence:
                        status = "inconclusive"  # a perfectly calibrated model reaches this gap on these groups
            rule = RULES[m.measure]
            rows.append(
                {"grouping": res.name, "measure": m.measure, "value": m.value, "ci_low": m.ci_low,
                 "ci_high": m.ci_high, "threshold": limit, "verdict": status.replace("_", " "),
                 "disadvantaged": m.disadvantaged, "advantaged": m.advantaged, "rule": rule,
                 "meaning": _plain(m, res.name, fav) if assessable else f"not assessable: {m.not_assessable}"}
            )  # fmt: skip
            if limit is None and assessable:
                continue
            findings.append(self._measure_finding(fc, res, m, status, limit, rule, assessable, fav))
        if res.insufficient:
            findings.append(
                Finding(
                    self.name,
                    f"{res.name}: {len(res.insufficient)} group(s) below {fc.min_group_size} rows reported as "
                    "insufficient data",
                    "info",
                    "low",
                    {"groups": res.insufficient},
                    id=f"fairness.insufficient_groups.{res.name}",
                    subject=res.name,
                )  # fmt: skip
            )
        return rows

    def _measure_finding(self, fc, res, m, status: str, limit, rule: str, assessable: bool, fav: str) -> Finding:
        sign = "<=" if m.kind == "max" else ">="
        label = m.measure.replace("_", " ")
        if assessable:
            title = (
                f"{label} by {res.name}: {m.value:.3f} [{m.ci_low:.3f}, {m.ci_high:.3f}] "
                f"({m.disadvantaged} vs {m.advantaged})"
            )
        else:
            title = f"{label} by {res.name}: not assessable, {m.not_assessable}"
        return Finding(
            self.name,
            title,
            status,
            _SEVERITY[m.measure] if status in ("fail", "inconclusive") else "info",
            {
                "insufficient_groups": res.insufficient,
                "disadvantaged": m.disadvantaged,
                "advantaged": m.advantaged,
                "reference": m.reference,
                "widest_pair": m.widest_pair,
                "widest_value": _num(m.widest_value),
                "left_out_for_too_few_events": m.left_out or [],
            }
            | ({"calibrated_null_p": m.calibrated_null_p} if getattr(m, "calibrated_null_p", None) is not None else {}),
            f"{sign} {limit} ({int(fc.confidence * 100)}% bootstrap interval)" if limit is not None else None,
            gating=m.measure in fc.gate,
            id=f"fairness.{m.measure}.{res.name}",
            measure=m.measure,
            subject=res.name,
            value=None if not assessable else float(m.value),
            ci_low=None if not assessable else _num(m.ci_low),
            ci_high=None if not assessable else _num(m.ci_high),
            limit=limit,
            rule=rule,
            plain=_plain(m, res.name, fav) if assessable else f"Not assessable: {m.not_assessable}.",
        )

    def _proxy_findings(self, fc, proxies: pd.DataFrame) -> list[Finding]:
        return [
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
                id=f"fairness.proxy.{r.feature}.{r.sensitive}",
            )  # fmt: skip
            for r in proxies.itertuples()
            if r.flagged
        ]

    @staticmethod
    def _tables(ctx: AuditContext, results, rows: list[dict], proxies, audited: str, fav: str):
        """The measures table, a group table per grouping (with its reference group), definitions and proxies."""
        cfg, fc, schema = ctx.config, ctx.config.fairness, ctx.dataset.schema
        thresholds = fc.thresholds.model_dump()
        measures = pd.DataFrame(rows)
        shown = ["grouping", "measure", "value", "ci_low", "ci_high", "threshold", "verdict", "disadvantaged",
                 "advantaged"]  # fmt: skip
        tables = [
            Table(
                "measures",
                "Headline fairness measures: who, by how much, how sure",
                measures[shown],
                f"Over groups with at least {fc.min_group_size} rows; {int(fc.confidence * 100)}% bootstrap "
                f"intervals from {fc.n_bootstrap} Poisson resamples of the {audited}, shifted by the bootstrap "
                "estimate of bias (gaps over groups are biased upward by resampling); 'inconclusive' when the interval "
                "straddles the threshold. Disadvantaged / advantaged: the groups with the lowest and highest rate "
                f"behind the measure (selection: the {fav})."
                + (
                    f" Rates weighted by dataset.weight '{cfg.dataset.weight}'; group sizes and the events behind "
                    "the support rules are row counts."
                    if _weights(ctx) is not None
                    else ""
                ),
            )
        ]
        references = {}
        for res in results:
            ref = _reference(res, fc.reference_groups.get(res.name))
            references[res.name] = ref
            tables.append(_group_table(res, ref, fc.min_group_size))
        definitions = [
            {"measure": m, "definition": MEASURES[m][1], "rule": RULES[m],
             "passes when": ("at most" if MEASURES[m][0] == "max" else "at least") + f" {thresholds[m]}"
             if thresholds[m] is not None else "no threshold set"}
            for m in MEASURES
        ]  # fmt: skip
        tables.append(
            Table(
                "definitions",
                "What the measures mean",
                pd.DataFrame(definitions),
                "Selection: the favourable decision (model score "
                + (">=" if schema.favourable_is_positive else "<")
                + f" {cfg.model.threshold}). TPR: share of people whose true outcome is favourable who are selected; "
                "FPR: share of the others who are selected; ECE: expected calibration error (mean gap between score "
                "and observed rate over 10 score bins).",
            )
        )
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
        return tables, references

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
    def _rates_figure(results: list, name: str) -> Figure:
        """Selection rate, TPR and FPR per group, one row of panels per grouping, with intervals."""
        return Figure(
            name,
            "Selection rate, true and false positive rate by group, with bootstrap intervals; dashed red: four-fifths "
            "of the highest selection rate; grey: groups below the minimum size (not used in any measure).",
            draw(_draw_rates, [(res.name, res.table) for res in results]),
        )

    @staticmethod
    def _roc_figure(
        y: np.ndarray,
        p: np.ndarray,
        sensitive: list[str],
        groups: dict[str, np.ndarray],
        cfg: AuditConfig,
        w: np.ndarray | None = None,
    ) -> Figure:
        from sklearn.metrics import roc_curve

        panels = []
        for s in sensitive:
            lab = groups[s]
            curves = []
            for g in pd.unique(lab):
                m = lab == g
                yg = y[m]
                if m.sum() < cfg.fairness.min_group_size or yg.min() == yg.max():
                    continue
                fpr, tpr, _ = roc_curve(yg, p[m], sample_weight=None if w is None else w[m])
                curves.append((str(g)[:20], fpr, tpr))
            panels.append((s, curves))
        return Figure(
            "fairness_roc",
            "ROC curve per group (groups below the minimum size omitted).",
            draw(_draw_group_roc, panels),
        )


# ------------------------------------------------------------------------------------ figures (see plotting.draw)
def _draw_rates(tables: list[tuple[str, pd.DataFrame]]):
    """``tables``: (grouping name, its group table) per grouping."""
    heights = [0.28 * len(t) + 0.9 for _, t in tables]
    fig, axes = subplots(
        len(tables), 3, figsize=(7.2, sum(heights) + 0.5), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    for i, (row, (grouping, t)) in enumerate(zip(axes, tables, strict=True)):
        labels = [g if len(g) <= 24 else g[:23] + "…" for g in t["group"]]
        y = np.arange(len(t))
        for ax, key, title in zip(
            row, ("selection_rate", "tpr", "fpr"), ("selection rate", "true positive rate", "false positive rate"),
            strict=True,
        ):  # fmt: skip
            v = t[key].to_numpy(dtype=float)
            if f"{key}_low" in t:
                err = np.vstack([v - t[f"{key}_low"], t[f"{key}_high"] - v])
                ax.errorbar(v, y, xerr=np.nan_to_num(np.abs(err)), fmt="none", ecolor="#7f8c8d", capsize=2)
            colors = np.where(t["eligible"], "#2e6db4", "#bdc3c7")
            ax.scatter(v, y, c=colors, zorder=3, s=18)
            ax.set(xlim=(0, 1), ylim=(len(t) - 0.5, -0.5))
            ax.set_xlabel(f"{title} (share)" if i == len(tables) - 1 else "")
            if i == 0:
                ax.set_title(title)
            if key == "selection_rate":
                eligible = t.loc[t["eligible"], key]
                if len(eligible):
                    ax.axvline(0.8 * eligible.max(), color="#c0392b", ls="--", lw=1)
            ax.set_yticks(y, labels if key == "selection_rate" else [])
        row[0].set_ylabel(grouping)
    return fig


def _draw_group_roc(panels: list[tuple[str, list]]):
    """``panels``: (sensitive feature, [(group label, FPR, TPR), ...]) per feature."""
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = subplots(nrows, cols, figsize=(3.8 * cols, 3.5 * nrows), squeeze=False)
    for ax, (s, curves) in zip(axes.flat, panels, strict=False):
        for label, fpr, tpr in curves:
            ax.plot(fpr, tpr, lw=1.2, label=label)
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC by {s}")
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig
