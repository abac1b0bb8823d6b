"""Model performance on the test split (and train, to show over-fitting)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    log_loss,
    roc_auc_score,
)

from audit.config import AuditConfig
from audit.findings import Finding
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import subplots, to_png


def expected_calibration_error(y: np.ndarray, p: np.ndarray, *, n_bins: int = 10) -> tuple[float, pd.DataFrame]:
    """Expected calibration error over equal-width probability bins, and the per-bin table.

    ECE = sum_b (n_b / n) * |mean(y in b) - mean(p in b)|.

    Examples
    --------
    >>> ece, _ = expected_calibration_error(np.array([0, 1, 1, 0]), np.array([0.0, 1.0, 1.0, 0.0]))
    >>> ece
    0.0
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    counts = np.bincount(b, minlength=n_bins)
    sum_p = np.bincount(b, weights=p, minlength=n_bins)
    sum_y = np.bincount(b, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p, mean_y = sum_p / counts, sum_y / counts
    gap = np.where(counts > 0, np.abs(mean_y - mean_p), 0.0)
    ece = float((counts * gap).sum() / max(len(y), 1))
    table = pd.DataFrame(
        {
            "bin_low": edges[:-1],
            "bin_high": edges[1:],
            "rows": counts,
            "mean_predicted": mean_p,
            "observed_rate": mean_y,
        }
    )
    return ece, table


def classification_metrics(y: np.ndarray, p: np.ndarray, *, threshold: float, n_bins: int = 10) -> dict[str, float]:
    """The headline metrics of a probabilistic binary classifier."""
    pred = (p >= threshold).astype(int)
    both = 0 < y.sum() < len(y)
    return {
        "rows": int(len(y)),
        "positive_rate": float(y.mean()),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p, n_bins=n_bins)[0],
    }


class PerformanceModule:
    name = "performance"
    title = "Model performance"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.performance.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        cfg = ctx.config.modules.performance
        thr = ctx.config.model.threshold
        test = classification_metrics(ctx.y_audit, ctx.proba_audit, threshold=thr, n_bins=cfg.n_bins)
        train = classification_metrics(ctx.dataset.y_train, ctx.proba_train, threshold=thr, n_bins=cfg.n_bins)
        # With a population, the headline numbers (and the gates) are on every row of it; the test split stays
        # as a column, so a population that drifted away from the model's data shows next to it.
        y_a, p_a, where = ctx.y_audit, ctx.proba_audit, "test split"
        columns = {"test": test, "train": train}
        population = None
        if ctx.population is not None:
            y_a, p_a = ctx.population.scored.y, ctx.population.scored.proba
            population = classification_metrics(y_a, p_a, threshold=thr, n_bins=cfg.n_bins)
            columns = {"population": population, **columns}
            where = f"population ({len(y_a)} rows)"
        head = population or test
        metrics = pd.DataFrame(columns)
        metrics["train - test"] = metrics["train"] - metrics["test"]
        metrics.loc["rows", "train - test"] = np.nan
        metrics.index.name = "metric"
        cm = confusion_matrix(y_a, (p_a >= thr).astype(int), labels=[0, 1])
        schema = ctx.dataset.schema
        cm_frame = pd.DataFrame(
            cm,
            index=[f"actual {schema.negative_label}", f"actual {schema.positive_label}"],
            columns=[f"predicted {schema.negative_label}", f"predicted {schema.positive_label}"],
        )
        ece, bins = expected_calibration_error(y_a, p_a, n_bins=cfg.n_bins)

        findings = []
        if cfg.min_roc_auc is not None:
            ok = head["roc_auc"] >= cfg.min_roc_auc
            findings.append(
                Finding(
                    self.name,
                    f"{'Population' if population else 'Test'} ROC AUC {head['roc_auc']:.3f}",
                    "pass" if ok else "fail",
                    "high",
                    {"roc_auc": head["roc_auc"]},
                    f"ROC AUC >= {cfg.min_roc_auc}",
                    gating=True,
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
            )
        )
        on = " on the population" if population else ""
        findings.append(Finding(self.name, f"Expected calibration error {ece:.3f}{on}", "info", "info", {"ece": ece}))

        return ModuleResult(
            summary={"test_roc_auc": test["roc_auc"], "test_accuracy": test["accuracy"], "test_ece": test["ece"]}
            | (
                {"population_roc_auc": population["roc_auc"], "population_ece": ece, "population_rows": len(y_a)}
                if population
                else {}
            ),
            tables=[
                Table(
                    "metrics",
                    "Metrics on the " + ("population, " if population else "") + "test and training splits",
                    metrics.reset_index(),
                    f"Threshold {thr} for accuracy, F1 and the confusion matrix.",
                ),
                Table(
                    "confusion",
                    f"Confusion matrix on the {where} at threshold {thr}",
                    cm_frame.reset_index(names=""),
                ),
                Table("calibration", f"Reliability table, {where}", bins),
            ],
            figures=[self._reliability(bins, ece, where), self._roc(ctx)],
            findings=findings,
            data={
                "test": test,
                "train": train,
                **({"population": population} if population else {}),
                "confusion_matrix": cm.tolist(),
                "calibration_bins": bins.to_dict("list"),
            },
        )

    @staticmethod
    def _reliability(bins: pd.DataFrame, ece: float, where: str) -> Figure:
        fig, ax = subplots(figsize=(4.6, 4.2))
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
        return Figure("reliability", f"Reliability diagram on the {where}; points are equal-width bins.", to_png(fig))

    @staticmethod
    def _roc(ctx: AuditContext) -> Figure:
        from sklearn.metrics import roc_curve

        fig, ax = subplots(figsize=(4.6, 4.2))
        curves = [("test", ctx.y_audit, ctx.proba_audit), ("train", ctx.dataset.y_train, ctx.proba_train)]
        if ctx.population is not None:
            curves.insert(0, ("population", ctx.population.scored.y, ctx.population.scored.proba))
        for name, y, p in curves:
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
        ax.legend(loc="lower right", fontsize=8)
        return Figure("roc", "ROC curves on the " + ", ".join(c[0] for c in curves) + " rows.", to_png(fig))
