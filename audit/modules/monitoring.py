"""Data quality and drift of the audit rows against the training rows (issue 19; see :mod:`audit.monitoring`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.findings import Finding
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import draw, subplots


def population_profile(ctx: AuditContext):
    """(reference, counts, rows) of the population against the training rows, scanned once per run."""
    if "population_profile" not in ctx.cache:
        from audit.monitoring import Reference
        from audit.population import profile_population

        ref = Reference.build(ctx.train_codes(), ctx.dataset.schema, ctx.config.modules.drift.n_bins)
        counts, rows = profile_population(ctx.population.population, ref, ctx.backend)
        ctx.cache["population_profile"] = (ref, counts, rows)
    return ctx.cache["population_profile"]


def from_population(ctx: AuditContext, summarise):
    """With a population: ``summarise(reference, counts, rows)`` of its profile (every row, scanned once) and the
    place's name for titles; without one: ``(None, "audit rows")``."""
    if ctx.population is None:
        return None, "audit rows"
    ref, counts, rows = population_profile(ctx)
    return summarise(ref, counts, rows), f"population ({rows:,} rows)"


class DataQualityModule:
    name = "data_quality"
    title = "Data quality"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.data_quality.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        from audit.monitoring import column_quality, duplicate_share, quality_from_profile

        schema = ctx.dataset.schema
        train_codes = ctx.train_codes()
        audit, where = from_population(ctx, quality_from_profile)
        if audit is None:
            audit = column_quality(ctx.X_audit, ctx.codes_audit, schema, train_codes=train_codes)
        train = column_quality(ctx.dataset.X_train, train_codes, schema)
        table = audit.rename(columns={"missing": "missing_audit", "top_value_share": "top_value_share_audit"})
        table.insert(3, "missing_train", train["missing"].to_numpy())
        names = schema.feature_names
        # a repeated record repeats its weight too: with dataset.weight, rows alike in every feature but not in the
        # weight are different people (a census's identical respondents), not a double load
        dup_audit = duplicate_share(_with_weight(ctx.X_audit[names], ctx.dataset.w_test))
        dup_train = duplicate_share(_with_weight(ctx.dataset.X_train[names], ctx.dataset.w_train))
        pos_train, pos_audit = float(np.mean(ctx.dataset.y_train)), float(np.mean(ctx.y_audit))
        n_pos = len(ctx.y_audit)
        pop_y = ctx.population.scored.y if ctx.population is not None else None
        if pop_y is not None:
            pos_audit, n_pos = float(np.mean(pop_y)), len(pop_y)
        positives_where = where if pop_y is not None or ctx.population is None else "test rows"
        rows = population_profile(ctx)[2] if ctx.population is not None else len(ctx.X_audit)
        sizes = {"audit": rows, "train": len(ctx.dataset.X_train), "labels": n_pos}
        findings = self._findings(
            ctx, table, where, (dup_audit, dup_train), (pos_audit, pos_train, positives_where), sizes
        )
        constant = findings[2].evidence["features"]
        return ModuleResult(
            summary={
                "max_missing_audit": float(table["missing_audit"].max()),
                "duplicate_share_audit": dup_audit,
                "positive_rate_train": pos_train,
                "positive_rate_audit": pos_audit,
                "near_constant": constant,
            },
            tables=[
                Table(
                    "columns",
                    f"Data quality per feature: {where} against training rows",
                    table,
                    "missing: share of rows without a value; top_value_share: share of the most frequent value; "
                    "unseen_level: share of audit rows at a level never seen in training; outside_train_range: "
                    "share of audit rows below the training minimum or above its maximum.",
                )
            ],
            findings=findings,
            data={"columns": table.to_dict(orient="list"), "duplicates": {"audit": dup_audit, "train": dup_train}},
        )

    def _findings(
        self, ctx: AuditContext, table: pd.DataFrame, where: str, duplicates, positives, sizes: dict[str, int]
    ) -> list[Finding]:
        """Missing values, their rise, near-constant features, duplicates, values out of range, unseen levels and
        the class balance, each against its limit (the near-constant finding third). The two that compare the audit
        rows with the training rows by chance alone (values outside the training range, the class balance) fail
        only when a test also rejects chance at ``data_quality.alpha`` (see :func:`audit.metrics.excess_p`)."""
        from audit.metrics import two_proportion_p

        cfg = ctx.config.modules.data_quality
        names = ctx.dataset.schema.feature_names
        (dup_audit, dup_train), (pos_audit, pos_train, positives_where) = duplicates, positives
        findings = []

        def check(title, value, limit, rule, measure, subject=None, severity="medium", plain="", p_value=None):
            beyond = value > limit and (p_value is None or p_value < cfg.alpha)
            findings.append(
                Finding(
                    self.name,
                    title,
                    "fail" if beyond else "pass",
                    severity,
                    {measure: value} | ({"p_value": p_value} if p_value is not None else {}),
                    rule,
                    measure=measure,
                    subject=subject,
                    value=float(value),
                    limit=float(limit),
                    plain=plain,
                    id=f"data_quality.{measure}",
                )  # fmt: skip
            )

        worst = table.sort_values("missing_audit", ascending=False).iloc[0]
        check(
            f"Most missing feature in the {where}: {worst['feature']} ({worst['missing_audit']:.1%})",
            float(worst["missing_audit"]), cfg.max_missing, f"missing share <= {cfg.max_missing}", "missing_share",
            plain="The share of audit rows without a value for the feature that lacks most; the model sees them as "
            "'missing'.",
        )  # fmt: skip
        increase = (table["missing_audit"] - table["missing_train"]).to_numpy()
        k = int(np.argmax(increase))
        check(
            f"Largest rise in missing values since training: {names[k]} ({increase[k]:+.1%})",
            float(increase[k]), cfg.max_missing_increase, f"rise <= {cfg.max_missing_increase}", "missing_increase",
            subject=names[k], plain="A feature missing more often than in training points to a broken data feed.",
        )  # fmt: skip

        def no_feature(features: list, what: str, severity: str, rule: str, measure: str, plain: str) -> None:
            """A check that passes when no feature is in ``features`` (near-constant ones, empty ones)."""
            findings.append(
                Finding(
                    self.name, f"{len(features)} {what} in the {where}" + (f": {features}" if features else ""),
                    "fail" if features else "pass", severity, {"features": features}, rule,
                    id=f"data_quality.{measure}", measure=measure, value=float(len(features)), limit=0.0, plain=plain,
                )
            )  # fmt: skip

        no_feature(
            table[table["top_value_share_audit"] >= cfg.near_constant]["feature"].tolist(), "near-constant feature(s)",
            "low", f"no feature with one value in >= {cfg.near_constant:.0%} of rows", "near_constant",
            "A feature that hardly varies carries no information and often means a feed stuck on a default.",
        )  # fmt: skip
        check(
            f"Duplicate test rows: {dup_audit:.1%} (training {dup_train:.1%})", dup_audit, cfg.max_duplicates,
            f"duplicate share <= {cfg.max_duplicates}", "duplicate_share", severity="low",
            plain="Rows repeating an earlier row in every feature"
            + (" and in the weight" if ctx.dataset.w_test is not None else "")
            + ": a double load, or a large share of identical applicants.",
        )  # fmt: skip
        self._out_of_range(check, table[table["kind"] == "numeric"], sizes, cfg)
        cat = table[table["kind"] == "categorical"]
        if len(cat):
            row = cat.sort_values("unseen_level", ascending=False).iloc[0]
            check(
                f"Levels never seen in training: {row['feature']} ({row['unseen_level']:.2%} of rows)",
                float(row["unseen_level"]), cfg.max_unseen, f"share <= {cfg.max_unseen}", "unseen_levels",
                subject=str(row["feature"]),
                plain="Rows at a level the model never saw are scored through its 'unknown' slot.",
            )  # fmt: skip
        no_feature(
            table[table["missing_audit"] >= 1.0]["feature"].tolist(), "feature(s) without a value", "high",
            "every feature has a value in some row", "empty_features",
            "A feature missing in every row is a broken feed or a renamed column: the model scores every row as if the "
            "value were unknown, and nothing about that feature can be checked.",
        )  # fmt: skip
        p = two_proportion_p(pos_audit, sizes["labels"], pos_train, sizes["train"])
        check(
            f"Positive rate {pos_audit:.1%} in the {positives_where}, {pos_train:.1%} in training (p = {p:.2g})",
            abs(pos_audit - pos_train), cfg.max_class_balance_shift, f"|difference| <= {cfg.max_class_balance_shift}"
            f", or within chance (two-proportion p >= {cfg.alpha})", "class_balance_shift", p_value=p,
            plain="A different share of positives changes what accuracy and calibration mean.",
        )  # fmt: skip
        return findings

    @staticmethod
    def _out_of_range(check, numeric: pd.DataFrame, sizes: dict[str, int], cfg) -> None:
        """The out-of-range check of the numeric feature with the largest share outside the training range."""
        from audit.metrics import adjust_pvalues, excess_p

        if not len(numeric):
            return
        row = numeric.sort_values("outside_train_range", ascending=False).iloc[0]
        share = float(row["outside_train_range"])
        # rows from the training distribution fall outside its range with chance 2 / (n + 1); the worst of the k
        # numeric features is judged by the smallest Bonferroni-adjusted p-value
        chance = 2 / (sizes["train"] + 1)
        ps = [excess_p(float(v), sizes["audit"], chance) for v in numeric["outside_train_range"]]
        p = float(np.nanmin(adjust_pvalues(ps, "bonferroni"))) if np.isfinite(ps).any() else 1.0
        check(
            f"Values outside the training range: {row['feature']} ({share:.2%} of rows, p = {p:.2g})",
            share, cfg.max_out_of_range, f"share <= {cfg.max_out_of_range}, or more than chance explains "
            f"(binomial p >= {cfg.alpha}, Bonferroni over {len(numeric)} numeric features)", "out_of_range",
            subject=str(row["feature"]), p_value=p,
            plain="The model extrapolates on values it never saw; its scores there are least supported. Rows "
            "drawn from the training distribution land outside its range with chance 2 / (training rows + 1), "
            "so a few of them are no fault.",
        )  # fmt: skip


class DriftModule:
    name = "drift"
    title = "Drift since training (PSI / CSI and tests)"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.drift.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        from audit.monitoring import (
            FeatureDrift,
            decide,
            drift_from_profile,
            feature_drift,
            score_psi,
            score_shift_test,
        )

        cfg = ctx.config.modules.drift
        schema = ctx.dataset.schema
        opts = dict(
            moderate=cfg.psi_moderate, significant=cfg.psi_significant, alpha=cfg.alpha, correction=cfg.correction,
            features=cfg.features,
        )  # fmt: skip
        drifts, where = from_population(ctx, lambda ref, counts, rows: drift_from_profile(ref, counts, **opts))
        current = ctx.proba_audit if ctx.population is None else ctx.population.scored.proba
        if drifts is None:
            drifts = feature_drift(ctx.train_codes(), ctx.codes_audit, schema, n_bins=cfg.n_bins, **opts)
        s_psi, s_table = score_psi(ctx.proba_train, current, n_bins=cfg.n_bins)
        score = FeatureDrift("model score", "score", s_psi, "KS", *score_shift_test(ctx.proba_train, current))
        decide([*drifts, score], **{k: opts[k] for k in ("moderate", "significant", "alpha", "correction")})
        table = pd.DataFrame([d.__dict__ for d in drifts]).sort_values("psi", ascending=False, kind="stable")
        rule = (
            f"PSI < {cfg.psi_moderate}, or the {cfg.correction}-adjusted p-value >= {cfg.alpha} (drifted: both "
            f"PSI >= {cfg.psi_moderate} and adjusted p < {cfg.alpha})"
        )
        findings = [_score_finding(self.name, cfg, score, where)]
        for d in drifts:
            if not d.drifted:
                continue
            findings.append(
                Finding(
                    self.name,
                    f"{d.feature} drifted: CSI {d.psi:.3f} ({d.band}), {d.test} p = {d.p_adjusted:.2g} adjusted",
                    "fail",
                    "high" if d.band == "significant" else "medium",
                    {"psi": d.psi, "statistic": d.statistic, "p_value": d.p_value, "p_adjusted": d.p_adjusted},
                    rule,
                    gating=cfg.gate,
                    id=f"drift.feature.{d.feature}",
                    measure="csi",
                    subject=d.feature,
                    value=d.psi,
                    limit=cfg.psi_moderate,
                    plain=f"{d.feature} in the {where} is distributed differently from training's, by more than "
                    "sampling noise explains and by enough to matter.",
                )  # fmt: skip
            )
        n_drift = int(sum(d.drifted for d in drifts))
        if not n_drift:
            findings.append(
                Finding(
                    self.name,
                    f"No feature drifted ({len(drifts)} checked)",
                    "pass",
                    "medium",
                    {"features": len(drifts)},
                    rule,
                    gating=cfg.gate,
                    id="drift.features",
                    measure="drifted_features",
                    value=0.0,
                    limit=0.0,
                    plain=f"No feature moved by CSI >= {cfg.psi_moderate} with a significant test.",
                )  # fmt: skip
            )
        return ModuleResult(
            summary={"score_psi": s_psi, "drifted_features": n_drift, "max_csi": float(table["psi"].max())},
            tables=[
                Table(
                    "features",
                    f"Drift per feature: {where} against training rows",
                    table,
                    f"psi: the feature's CSI over {cfg.n_bins} training-quantile bins (plus missing) or its levels; "
                    f"test: Kolmogorov-Smirnov (numeric) or chi-square (categorical); p_adjusted: {cfg.correction}.",
                ),
                Table("score", f"Score distribution: training against {where}", s_table),
            ],
            figures=[self._figure(table, cfg)],
            findings=findings,
            data={
                "features": table.to_dict(orient="list"),
                "score_psi": s_psi,
                "score_bins": s_table.to_dict(orient="list"),
            },
        )

    @staticmethod
    def _figure(table: pd.DataFrame, cfg) -> Figure:
        top = table.head(20).iloc[::-1]
        return Figure(
            "csi",
            f"Characteristic Stability Index per feature; dashed: {cfg.psi_moderate} (moderate), dotted: "
            f"{cfg.psi_significant} (significant). Red: significant, orange: moderate.",
            draw(_draw_csi, top[["feature", "psi", "band"]], cfg.psi_moderate, cfg.psi_significant),
        )


def _score_finding(section: str, cfg, score, where: str) -> Finding:
    """The drift finding of the model's score: its PSI, and the KS test adjusted with the features' tests."""
    s_psi, s_p, s_band = score.psi, score.p_adjusted, score.band
    return Finding(
        section,
        f"Score PSI {s_psi:.3f} ({s_band}), KS p = {s_p:.2g} adjusted",
        "fail" if score.drifted else "pass",
        "high" if s_band == "significant" else "medium",
        {"psi": s_psi, "p_value": score.p_value, "p_adjusted": s_p},
        f"score PSI < {cfg.psi_moderate}, or the p-value of a two-sample KS test of the scores >= "
        f"{cfg.alpha}, {cfg.correction}-adjusted with the features' (drifted: both)",
        gating=cfg.gate,
        id="drift.score_psi",
        measure="score_psi",
        subject="score",
        value=s_psi,
        limit=cfg.psi_moderate,
        plain=f"The distribution of the model's scores on the {where} moved from training's by PSI "
        f"{s_psi:.3f} (bands: < {cfg.psi_moderate} stable, up to {cfg.psi_significant} moderate, above "
        f"significant); a two-sample KS test of the scores, adjusted with the features' tests, gives "
        f"p = {s_p:.2g}, and the score has drifted only when both say so.",
    )


# ------------------------------------------------------------------------------------ figures (see plotting.draw)
def _draw_csi(top: pd.DataFrame, moderate: float, significant: float):
    fig, ax = subplots(figsize=(6.0, 0.3 * len(top) + 1.2))
    colours = ["#b2182b" if b == "significant" else "#ef8a62" if b == "moderate" else "#67a9cf" for b in top["band"]]
    ax.barh(top["feature"], top["psi"], color=colours)
    ax.axvline(moderate, ls="--", color="grey", lw=1)
    ax.axvline(significant, ls=":", color="grey", lw=1)
    ax.set(xlabel="CSI (PSI of the feature)", title="Feature drift since training")
    return fig


def _with_weight(frame: pd.DataFrame, weight: np.ndarray | None) -> pd.DataFrame:
    """``frame`` with the rows' ``dataset.weight`` as one more column (``frame`` itself without one)."""
    return frame if weight is None else frame.assign(**{"\0weight": weight})
