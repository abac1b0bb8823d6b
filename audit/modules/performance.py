"""Model performance on the test split (and train, to show over-fitting)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.findings import Finding
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import draw, subplots


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
    b = np.clip((np.asarray(p, dtype=float) * n_bins).astype(int), 0, n_bins - 1)  # as the fairness module bins
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
    """The headline metrics of a probabilistic binary classifier (labels 0/1).

    Computed from two sorts, counts and sums; each equals scikit-learn's ``roc_auc_score``,
    ``average_precision_score``, ``accuracy_score``, ``f1_score``, ``log_loss`` (scores clipped to [1e-15, 1 -
    1e-15]) and ``brier_score_loss`` within 1e-12 (accuracy and F1 to the bit; tested). On millions of rows
    scikit-learn's input checks, label binarisation and merge sorts cost most of its time: 5M rows took 10 s there,
    about 1 s here.

    Examples
    --------
    >>> m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), threshold=0.5)
    >>> m["roc_auc"], m["pr_auc"], m["accuracy"], m["f1"]
    (0.75, 0.8333333333333333, 0.75, 0.6666666666666666)
    """
    from audit.explain._common import class_rows, roc_auc_sorted, sorted_classes

    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    if not np.isfinite(p).all():
        raise ValueError("the scores contain NaN or infinite values; the model must return probabilities")
    positive = y.astype(bool)
    n, n_pos = len(y), int(np.count_nonzero(positive))
    pred = p >= threshold
    tp, n_pred = int(np.count_nonzero(pred & positive)), int(np.count_nonzero(pred))
    both = 0 < n_pos < n
    roc_auc = pr_auc = float("nan")
    if both:
        pos, neg = sorted_classes(p, class_rows(positive))
        roc_auc = roc_auc_sorted(pos, neg)
        pr_auc = _average_precision_sorted(pos, neg)
    clipped = np.clip(p, 1e-15, 1 - 1e-15)
    loss = np.where(positive, -np.log(clipped), -np.log(1 - clipped))
    return {
        "rows": int(n),
        "positive_rate": float(y.mean()),
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "accuracy": float((n - n_pred - n_pos + 2 * tp) / n) if n else float("nan"),  # (tp + tn) / n
        "f1": float(2 * tp / (n_pos + n_pred)) if n_pos + n_pred else 0.0,  # sklearn's zero_division=0
        "log_loss": float(loss.mean()),
        "brier": float(np.mean((positive - p) ** 2)),
        "ece": expected_calibration_error(y, p, n_bins=n_bins)[0],
    }


def _average_precision_sorted(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision (scikit-learn's: the precision at each threshold times the recall it adds) from the
    positives' and the negatives' scores, each sorted ascending.

    Only thresholds at a positive's score add recall: for each distinct positive score ``v``, the positives at ``v``
    count ``k / P`` of recall at precision ``pos >= v / (pos >= v + neg >= v)``.
    """
    first = np.flatnonzero(np.r_[True, pos[1:] != pos[:-1]])  # where each distinct positive score starts
    values = pos[first]
    at_value = np.diff(np.r_[first, len(pos)])
    pos_at_or_above = len(pos) - first
    neg_at_or_above = len(neg) - np.searchsorted(neg, values, side="left")
    precision = pos_at_or_above / (pos_at_or_above + neg_at_or_above)
    return float(np.sum(at_value / len(pos) * precision))


def bootstrap_intervals(
    y: np.ndarray,
    p: np.ndarray,
    *,
    threshold: float,
    n_bins: int = 10,
    n_bootstrap: int = 200,
    confidence: float = 0.95,
    random_state: int | None = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile intervals of the headline metrics from a Poisson(1) bootstrap of the rows.

    Every metric is a weighted sum over rows, so a replicate is a column of row weights and all replicates are a
    few matrix products: ROC AUC from one sort (ties share their weight half-and-half, as in the Mann-Whitney
    statistic), accuracy, F1, log loss, Brier score and ECE from weighted sums.

    Examples
    --------
    >>> from sklearn.metrics import roc_auc_score
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 4000); p = np.clip(0.35 * y + 0.65 * rng.uniform(size=4000), 0, 1)
    >>> lo, hi = bootstrap_intervals(y, p, threshold=0.5)["roc_auc"]
    >>> bool(lo < roc_auc_score(y, p) < hi)
    True
    """
    y = np.asarray(y).astype(float)
    rng = np.random.default_rng(random_state)
    W = rng.poisson(1.0, size=(len(y), n_bootstrap)).astype(float)
    reps = weighted_metrics(y, np.asarray(p, dtype=float), W, threshold=threshold, n_bins=n_bins)
    alpha = (1 - confidence) / 2
    out = {}
    for k, v in reps.items():
        v = v[np.isfinite(v)]
        out[k] = (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))) if len(v) >= 10 else (np.nan, np.nan)
    return out


def weighted_metrics(
    y: np.ndarray, p: np.ndarray, W: np.ndarray, *, threshold: float, n_bins: int = 10
) -> dict[str, np.ndarray]:
    """ROC AUC, accuracy, F1, log loss, Brier score and ECE for each column of row weights ``W`` (n, B).

    A weight ``w`` counts a row ``w`` times (the bootstrap's resample); a test checks every metric against
    scikit-learn's ``sample_weight``.
    """
    y = np.asarray(y).astype(float)
    p = np.asarray(p, dtype=float)
    from audit.explain._common import weighted_auc

    tot = W.sum(axis=0)
    auc = weighted_auc(y, p, W)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = (p >= threshold).astype(float)
        correct = (d == y).astype(float)
        tp = W.T @ (d * y)
        f1 = 2 * tp / (W.T @ (d + y))
        pc = np.clip(p, 1e-15, 1 - 1e-15)
        ll = -(W.T @ (y * np.log(pc) + (1 - y) * np.log(1 - pc))) / tot
        brier = (W.T @ ((p - y) ** 2)) / tot
        b = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
        ece = np.zeros(W.shape[1])
        for k in range(n_bins):
            m = b == k
            if m.any():
                ece += np.abs(W[m].T @ y[m] - W[m].T @ p[m])
        ece /= tot
    return {"roc_auc": auc, "accuracy": (W.T @ correct) / tot, "f1": f1, "log_loss": ll, "brier": brier, "ece": ece}


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
        unlabelled = ctx.population is not None and ctx.population.scored.y is None
        if ctx.population is not None and not unlabelled:
            y_a, p_a = ctx.population.scored.y, ctx.population.scored.proba
            population = classification_metrics(y_a, p_a, threshold=thr, n_bins=cfg.n_bins)
            columns = {"population": population, **columns}
            where = f"population ({len(y_a)} rows)"
        head = population or test
        metrics = pd.DataFrame(columns)
        ci = bootstrap_intervals(
            ctx.y_audit, ctx.proba_audit, threshold=thr, n_bins=cfg.n_bins, n_bootstrap=cfg.n_bootstrap,
            random_state=ctx.seed_for(self.name),
        ) if cfg.n_bootstrap else {}  # fmt: skip
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
        from sklearn.metrics import confusion_matrix

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
        findings.append(Finding(self.name, f"Expected calibration error {ece:.3f}{on}", "info", "info", {"ece": ece}))
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
                    f"intervals from {cfg.n_bootstrap} Poisson bootstrap resamples of the test rows.",
                ),
                Table(
                    "confusion",
                    f"Confusion matrix on the {where} at threshold {thr}",
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
            rows.append(
                {
                    "metric": m,
                    "estimate": getattr(est, m),
                    "low": getattr(est, f"{m}_low"),
                    "high": getattr(est, f"{m}_high"),
                    "realised_on_population": population[m] if population else None,
                    "test_split (last labelled)": test[m],
                }
            )
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

        curves = [("test", ctx.y_audit, ctx.proba_audit), ("train", ctx.dataset.y_train, ctx.proba_train)]
        if ctx.population is not None and ctx.population.scored.y is not None:
            curves.insert(0, ("population", ctx.population.scored.y, ctx.population.scored.proba))
        lines = []
        for name, y, p in curves:
            fpr, tpr, _ = roc_curve(y, p)
            lines.append((f"{name} (AUC {roc_auc_score(y, p):.3f})", fpr, tpr))
        return Figure("roc", "ROC curves on the " + ", ".join(c[0] for c in curves) + " rows.", draw(_draw_roc, lines))


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
