"""Model performance on the test split (and train, to show over-fitting)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.findings import Finding
from audit.metrics import bootstrap_intervals, classification_metrics, expected_calibration_error
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import draw, subplots


class PerformanceModule:
    name = "performance"
    title = "Model performance"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.performance.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        cfg = ctx.config.modules.performance
        thr = ctx.config.model.threshold
        w = ctx.w_audit  # dataset.weight: every metric weighted (population runs have none, see the config check)
        test = classification_metrics(ctx.y_audit, ctx.proba_audit, threshold=thr, n_bins=cfg.n_bins, sample_weight=w)
        train = classification_metrics(
            ctx.dataset.y_train, ctx.proba_train, threshold=thr, n_bins=cfg.n_bins, sample_weight=ctx.dataset.w_train
        )
        # With a population, the headline numbers (and the gates) are on every row of it; the test split stays
        # as a column, so a population that drifted away from the model's data shows next to it.
        y_a, p_a, where = ctx.y_audit, ctx.proba_audit, "test split"
        columns = {"test": test, "train": train}
        population = None
        unlabelled = ctx.population is not None and ctx.population.scored.y is None
        if ctx.population is not None and not unlabelled:
            y_a, p_a = ctx.population.scored.y, ctx.population.scored.proba
            population = classification_metrics(y_a, p_a, threshold=thr, n_bins=cfg.n_bins)
            columns = {"population": population, **columns}
            where = f"population ({len(y_a)} rows)"
        ci = bootstrap_intervals(
            ctx.y_audit, ctx.proba_audit, threshold=thr, n_bins=cfg.n_bins, n_bootstrap=cfg.n_bootstrap,
            random_state=ctx.seed_for(self.name), sample_weight=w,
        ) if cfg.n_bootstrap else {}  # fmt: skip
        metrics = self._metrics_table(columns, ci)
        cm_frame, cm = self._confusion(ctx, y_a, p_a, thr)
        ece, bins = expected_calibration_error(y_a, p_a, n_bins=cfg.n_bins, sample_weight=None if population else w)
        findings = self._findings(ctx, population or test, train, test, ci, population, ece)
        estimate, est_table = None, None
        if ctx.population is not None and cfg.estimate:
            estimate, est_table, more = self._estimate(ctx, test, population, thr)
            findings += more
        return ModuleResult(
            summary={"test_roc_auc": test["roc_auc"], "test_accuracy": test["accuracy"], "test_ece": test["ece"]}
            | (
                {"population_roc_auc": population["roc_auc"], "population_ece": ece, "population_rows": len(y_a)}
                if population
                else {}
            )
            | ({"estimated_roc_auc": estimate.roc_auc} if estimate is not None else {}),
            tables=[
                Table(
                    "metrics",
                    "Metrics on the " + ("population, " if population else "") + "test and training splits",
                    metrics.reset_index(),
                    f"Threshold {thr} for accuracy, F1 and the confusion matrix. Test intervals: 95% percentile "
                    f"intervals from {cfg.n_bootstrap} Poisson bootstrap resamples of the test rows."
                    + _weighted_note(ctx),
                ),
                Table(
                    "confusion",
                    f"Confusion matrix on the {where} at threshold {thr}"
                    + (" (rows, unweighted)" if w is not None else ""),
                    cm_frame.reset_index(names=""),
                ),
                Table("calibration", f"Reliability table, {where}", bins),
            ]
            + ([est_table] if est_table is not None else []),
            figures=[self._reliability(bins, ece, where), self._roc(ctx)],
            findings=findings,
            data={
                "test": test,
                "test_ci": {m: list(v) for m, v in ci.items()},
                "train": train,
                **({"population": population} if population else {}),
                **({"estimate": estimate.__dict__} if estimate is not None else {}),
                "confusion_matrix": cm.tolist(),
                "calibration_bins": bins.to_dict("list"),
            },
        )

    @staticmethod
    def _metrics_table(columns: dict, ci: dict) -> pd.DataFrame:
        """One column per split, the test split's interval beside it, and the train-test gap."""
        metrics = pd.DataFrame(columns)
        metrics.insert(
            list(metrics.columns).index("test") + 1, "test_low", [ci.get(m, (np.nan,))[0] for m in metrics.index]
        )
        metrics.insert(
            list(metrics.columns).index("test") + 2,
            "test_high",
            [ci.get(m, (np.nan, np.nan))[1] for m in metrics.index],
        )
        metrics["train - test"] = metrics["train"] - metrics["test"]
        metrics.loc["rows", "train - test"] = np.nan
        metrics.index.name = "metric"
        return metrics

    @staticmethod
    def _confusion(ctx: AuditContext, y, p, thr: float):
        from sklearn.metrics import confusion_matrix

        cm = confusion_matrix(y, (p >= thr).astype(int), labels=[0, 1])
        schema = ctx.dataset.schema
        frame = pd.DataFrame(
            cm,
            index=[f"actual {schema.negative_label}", f"actual {schema.positive_label}"],
            columns=[f"predicted {schema.negative_label}", f"predicted {schema.positive_label}"],
        )
        return frame, cm

    def _findings(self, ctx: AuditContext, head, train, test, ci, population, ece: float) -> list[Finding]:
        """The ROC AUC gate (when configured), the train-test gap and the calibration error."""
        cfg = ctx.config.modules.performance
        findings = []
        if cfg.min_roc_auc is not None:
            ok = head["roc_auc"] >= cfg.min_roc_auc
            lo, hi = (np.nan, np.nan) if population else ci.get("roc_auc", (np.nan, np.nan))
            interval = f" [{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) else ""
            findings.append(
                Finding(
                    self.name,
                    f"{'Population' if population else 'Test'} ROC AUC {head['roc_auc']:.3f}{interval}",
                    "pass" if ok else "fail",
                    "high",
                    {"roc_auc": head["roc_auc"]},
                    f"ROC AUC >= {cfg.min_roc_auc}",
                    gating=True,
                    id="performance.roc_auc",
                    measure="roc_auc",
                    subject="population" if population else "test",
                    value=float(head["roc_auc"]),
                    ci_low=float(lo) if np.isfinite(lo) else None,
                    ci_high=float(hi) if np.isfinite(hi) else None,
                    limit=cfg.min_roc_auc,
                    plain=f"The model ranks {'population' if population else 'test'} rows with ROC AUC "
                    f"{head['roc_auc']:.3f}{interval}; the gate asks for at least {cfg.min_roc_auc}.",
                )
            )
        gap = train["roc_auc"] - test["roc_auc"]
        findings.append(
            Finding(
                self.name,
                f"Train-test ROC AUC gap {gap:+.3f}",
                "pass" if gap <= cfg.max_overfit_gap else "fail",
                "medium",
                {"train_roc_auc": train["roc_auc"], "test_roc_auc": test["roc_auc"]},
                f"gap <= {cfg.max_overfit_gap}",
                id="performance.overfit_gap",
                measure="roc_auc_gap",
                value=float(gap),
                limit=cfg.max_overfit_gap,
                plain=f"The model ranks training rows better than test rows by {gap:.3f} in ROC AUC (allowed: "
                f"{cfg.max_overfit_gap}).",
            )
        )
        on = " on the population" if population else ""
        findings.append(
            Finding(
                self.name,
                f"Expected calibration error {ece:.3f}{on}",
                "info",
                "info",
                {"ece": ece},
                id="performance.ece",
            )
        )
        return findings

    def _estimate(self, ctx: AuditContext, test: dict, population: dict | None, thr: float):
        """CBPE on the population, calibrated on the test split (see :func:`audit.monitoring.cbpe`); with labels,
        checked against the realised figures."""
        from audit.monitoring import cbpe

        cfg = ctx.config.modules.performance
        est = cbpe(
            ctx.population.scored.proba, ctx.y_audit, ctx.proba_audit, threshold=thr,
            n_simulations=cfg.n_simulations, random_state=ctx.seed_for("estimate"),
        )  # fmt: skip
        rows = []
        for m in ("roc_auc", "accuracy", "positive_rate"):
            rows.append({"metric": m, "estimate": getattr(est, m), "low": getattr(est, f"{m}_low"),
                         "high": getattr(est, f"{m}_high"), "realised_on_population": population[m] if population
                         else None, "test_split (last labelled)": test[m]})  # fmt: skip
        frame = pd.DataFrame(rows)
        table = Table(
            "estimate",
            "Label-free performance estimate on the population (CBPE)",
            frame,
            f"An estimate, not a measurement: each row's label is drawn with its calibrated score's probability "
            f"({est.n_simulations} draws, {est.confidence:.0%} intervals), the calibration map fitted on the labelled "
            f"test split (its ECE {est.reference_ece_raw:.3f} before, {est.reference_ece_calibrated:.3f} after). It "
            "holds only while the model stays as calibrated on the population as on the test split; a change in "
            "how outcomes follow the features is invisible to it.",
        )
        interval = f"{est.roc_auc:.3f} [{est.roc_auc_low:.3f}, {est.roc_auc_high:.3f}]"
        findings = []
        if population is None:
            findings.append(
                Finding(
                    self.name,
                    "Population performance: not assessable: no labels",
                    "not_assessable",
                    "info",
                    {},
                    plain="The population has no labels; the estimate below stands in for its ROC AUC and accuracy.",
                    id="performance.population_no_labels",
                )  # fmt: skip
            )
            findings.append(
                Finding(
                    self.name,
                    f"Estimated population ROC AUC {interval} (no labels; test split {test['roc_auc']:.3f})",
                    "info",
                    "info",
                    {"estimate": est.roc_auc, "low": est.roc_auc_low, "high": est.roc_auc_high},
                    measure="estimated_roc_auc",
                    subject="population",
                    value=est.roc_auc,
                    ci_low=est.roc_auc_low,
                    ci_high=est.roc_auc_high,
                    plain=f"Without labels, the model's ROC AUC on the population is estimated at {interval} from "
                    f"its calibrated scores; the last labelled figure (test split) is {test['roc_auc']:.3f}. The "
                    "estimate holds only while the model stays calibrated.",
                    id="performance.population_roc_auc_estimate",
                )  # fmt: skip
            )
        else:
            # checked against the wider interval: a 95% interval misses one month in twenty by design
            missed = [
                m for m in ("roc_auc", "accuracy")
                if not est.check_intervals[m][0] <= population[m] <= est.check_intervals[m][1]
            ]  # fmt: skip
            level = f"{est.check_confidence:.0%}"
            findings.append(
                Finding(
                    self.name,
                    "Label-free estimate "
                    + (
                        "unreliable: the realised "
                        + " and ".join(m.replace("roc_auc", "ROC AUC") for m in missed)
                        + (" fall" if len(missed) > 1 else " falls")
                        + f" outside its {level} interval"
                        if missed
                        else f"agrees with the realised figures (ROC AUC {interval})"
                    ),
                    "fail" if missed else "pass",
                    "medium",
                    {m: {"estimate": getattr(est, m), "realised": population[m]} for m in ("roc_auc", "accuracy")},
                    f"the realised ROC AUC and accuracy inside the estimate's {level} intervals",
                    id="performance.estimate",
                    measure="estimate_check",
                    plain="The population has labels, so the label-free estimate can be checked: "
                    + (
                        "it missed: the model is not calibrated on the population as it was on the test split, so "
                        "estimates for unlabelled months are not to be trusted until it is recalibrated."
                        if missed
                        else "it holds, so estimates for months whose labels have not arrived yet can be relied on while the "
                        "data stay alike."
                    ),
                )  # fmt: skip
            )
        return est, table, findings

    @staticmethod
    def _reliability(bins: pd.DataFrame, ece: float, where: str) -> Figure:
        return Figure(
            "reliability",
            f"Reliability diagram on the {where}; points are equal-width bins.",
            draw(_draw_reliability, bins, ece),
        )

    @staticmethod
    def _roc(ctx: AuditContext) -> Figure:
        from sklearn.metrics import roc_auc_score, roc_curve

        curves = [
            ("test", ctx.y_audit, ctx.proba_audit, ctx.w_audit),
            ("train", ctx.dataset.y_train, ctx.proba_train, ctx.dataset.w_train),
        ]
        if ctx.population is not None and ctx.population.scored.y is not None:
            curves.insert(0, ("population", ctx.population.scored.y, ctx.population.scored.proba, None))
        lines = []
        for name, y, p, w in curves:
            fpr, tpr, _ = roc_curve(y, p, sample_weight=w)
            lines.append((f"{name} (AUC {roc_auc_score(y, p, sample_weight=w):.3f})", fpr, tpr))
        return Figure("roc", "ROC curves on the " + ", ".join(c[0] for c in curves) + " rows.", draw(_draw_roc, lines))


def _weighted_note(ctx: AuditContext) -> str:
    """The sentence a caption gets when ``dataset.weight`` weights its numbers."""
    name = ctx.config.dataset.weight
    return f" Every metric but rows is weighted by dataset.weight '{name}'." if name else ""


# ------------------------------------------------------------------------------------ figures (see plotting.draw)
def _draw_reliability(bins: pd.DataFrame, ece: float):
    fig, ax = subplots(figsize=(3.55, 3.4))
    ok = bins["rows"] > 0
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.plot(bins.loc[ok, "mean_predicted"], bins.loc[ok, "observed_rate"], marker="o", label="model")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed positive rate",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"Reliability diagram (ECE {ece:.3f})",
    )
    ax.legend(loc="upper left", fontsize=8)
    return fig


def _draw_roc(lines):
    """``lines``: (label, FPR, TPR) per curve."""
    fig, ax = subplots(figsize=(3.55, 3.4))
    for label, fpr, tpr in lines:
        ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax.legend(loc="lower right", fontsize=8)
    return fig
