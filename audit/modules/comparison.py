"""Comparison with a baseline run: what changed in the config, the performance, the fairness gaps, the importance
ranking and the findings. Changes beyond the configured tolerances become findings, so a scheduled run flags drift.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from audit.config import AuditConfig
from audit.fairness import paired_measure_changes
from audit.findings import Finding
from audit.metrics import percentile_interval, poisson_weights, weighted_metrics
from audit.modules._shared import audit_groupings
from audit.modules.base import AuditContext, ModuleResult, Table

_METRICS = ("roc_auc", "pr_auc", "accuracy", "f1", "log_loss", "brier", "ece")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def finding_key(f: dict[str, Any]) -> str:
    """A finding's identity across runs: module and title with the numbers taken out."""
    return f"{f['module']}: " + re.sub(r"[-+]?\d[\d.,]*(e[-+]?\d+)?", "#", f["title"])


def _drift(title: str, evidence: dict[str, Any], rule: str, gate: bool, **fields) -> Finding:
    """A change beyond its tolerance and beyond sampling noise since the baseline."""
    return Finding(ComparisonModule.name, title, "fail", "medium", evidence, rule, gating=gate, **fields)


def _moved(title: str, a: float, b: float, noise, tolerance: float, gate: bool, **fields) -> Finding:
    """A measure that moved from ``a`` (baseline) to ``b`` beyond ``tolerance`` and beyond sampling noise."""
    return _drift(
        title, {"baseline": a, "current": b, "beyond_noise": noise},
        f"|change| <= {tolerance} or within sampling noise", gate, value=float(b - a), limit=tolerance, **fields,
    )  # fmt: skip


def beyond_noise(a: float, b: float, ci_a, ci_b, z: float = 1.96) -> bool | None:
    """Whether ``b - a`` exceeds what sampling noise explains: each run's interval gives a standard error
    (half-width / 1.96), and the change must exceed ``z`` standard errors of the difference. None without intervals.

    Examples
    --------
    >>> beyond_noise(0.80, 0.82, (0.78, 0.82), (0.80, 0.84)), beyond_noise(0.80, 0.90, (0.79, 0.81), (0.89, 0.91))
    (False, True)
    """
    try:
        ses = [(float(hi) - float(lo)) / (2 * 1.96) for lo, hi in (ci_a, ci_b)]
    except (TypeError, ValueError):
        return None
    if not all(np.isfinite(ses)):
        return None
    se = float(np.hypot(*ses))
    return bool(abs(b - a) > z * se) if se > 0 else bool(b != a)


def _current_findings(ctx: AuditContext) -> list[dict[str, Any]]:
    return [f.to_json() for r in ctx.results.values() for f in r.findings]


def _importance_intervals(pi_data: dict) -> dict[str, tuple[float, float, float]]:
    """Per feature: mean permutation importance and its interval, the data (bootstrap) interval when the run has
    one, else the interval over repeats (groups count for each member)."""
    from scipy import stats

    raw = pi_data.get("importances")
    imp = np.asarray(raw if raw is not None else [], dtype=float)
    if imp.ndim != 2 or imp.shape[1] < 2:
        return {}
    mean = imp.mean(axis=1)
    data = pi_data.get("data_interval")
    if data is not None:
        lo, hi = (np.asarray(a, dtype=float) for a in data)
    else:
        half = stats.t.ppf(0.975, imp.shape[1] - 1) * imp.std(axis=1, ddof=1) / np.sqrt(imp.shape[1])
        lo, hi = mean - half, mean + half
    return {
        m: (float(v), float(a), float(b))
        for members, v, a, b in zip(pi_data["members"], mean, lo, hi, strict=True)
        for m in members
    }


def _important(pi_data: dict) -> list[str]:
    """Features whose importance interval lies above 0."""
    return [f for f, (_, lo, _) in _importance_intervals(pi_data).items() if lo > 0]


PAIRED_REPLICATES = 200


def paired_changes(ctx: AuditContext, base: dict[str, Any]) -> dict[str, Any] | None:
    """When both runs scored the same audit rows (the baseline's scores.parquet has the same rows and labels), a
    paired bootstrap of every change: each Poisson resample weights the same rows in both runs, so the noise of a
    difference is the noise of the difference, not of two separate samples. Returns the 95% interval of each
    metric's and each fairness measure's change, or None when the rows differ (then the runs' own intervals are
    used)."""
    from pathlib import Path

    if ctx.population is not None or not ctx.baseline_path:
        return None
    path = Path(ctx.baseline_path).parent / "scores.parquet"
    try:
        old = pd.read_parquet(path, columns=["label", "score"])
    except Exception:  # noqa: BLE001 - no sidecar (an older report) or unreadable: fall back to the intervals
        return None
    y = ctx.y_audit
    if len(old) != len(y) or not np.array_equal(old["label"].to_numpy(), y):
        return None
    p_old, p_new = old["score"].to_numpy(dtype=float), ctx.proba_audit
    thr_old = float(base["provenance"]["config"].get("model", {}).get("threshold", 0.5))
    thr_new = ctx.config.model.threshold
    seed = ctx.seed_for("comparison.paired")
    W = poisson_weights(len(y), PAIRED_REPLICATES, seed, ctx.w_audit)  # weighted as the sections weigh rows
    a = weighted_metrics(y, p_old, W, threshold=thr_old)
    b = weighted_metrics(y, p_new, W, threshold=thr_new)
    metrics = {m: percentile_interval(b[m] - a[m], 0.025) for m in a}
    fairness = paired_measure_changes(
        y, (p_old, thr_old), (p_new, thr_new), audit_groupings(ctx), min_group_size=ctx.config.fairness.min_group_size,
        min_events=ctx.config.fairness.min_events, references=ctx.config.fairness.reference_groups,
        n_replicates=PAIRED_REPLICATES, seed=seed, favourable_positive=ctx.dataset.schema.favourable_is_positive,
        sample_weight=ctx.w_audit,
    )  # fmt: skip
    return {"metrics": {m: ci for m, ci in metrics.items() if np.isfinite(ci[0])}, "fairness": fairness}


def _outside(ci) -> bool:
    return ci is not None and (ci[0] > 0 or ci[1] < 0)


def _change(a: float, b: float, tolerance: float, paired_ci, own_cis) -> tuple[dict[str, Any], bool | None]:
    """One row of a change table (without its names) and whether the change is beyond sampling noise: by the
    paired interval of the change when there is one, else by the two runs' own intervals (None without them)."""
    tol = abs(b - a) > tolerance
    noise = _outside(paired_ci) if paired_ci is not None else beyond_noise(a, b, *own_cis)
    row = {"baseline": a, "current": b, "change": b - a, "beyond tolerance": tol,
           "beyond noise": "no interval" if noise is None else noise}  # fmt: skip
    return row, noise


class ComparisonModule:
    name = "comparison"
    title = "Comparison with the baseline run"

    def enabled(self, config: AuditConfig) -> bool:
        return config.report.compare.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        base = ctx.baseline
        if base is None:
            return ModuleResult(summary={"baseline": "none (first run of this config)"})
        findings: list[Finding] = []
        tables: list[Table] = []
        meta = {"baseline_run": base["audit"]["run_id"], "baseline_path": ctx.baseline_path}
        changed = self._config(ctx, base, tables, findings)
        paired = paired_changes(ctx, base)
        mode = "paired bootstrap of the same rows" if paired else "the two runs' own intervals"
        self._performance(ctx, base, paired, mode, tables, findings)
        self._fairness(ctx, base, paired, mode, tables, findings)
        rho = self._ranks(ctx, base, tables, findings)
        delta = self._findings_delta(ctx, base, tables)
        return ModuleResult(
            summary={
                "baseline_run": meta["baseline_run"],
                "noise_judged_by": mode,
                "config_changes": len(changed),
                "new_failures": sum(d["change"] == "new" for d in delta),
                "resolved_failures": sum(d["change"] == "resolved" for d in delta),
                "rank_correlation": rho,
            },
            tables=tables,
            findings=findings,
            data={**meta, "config_changes": changed, "findings_delta": delta, "rank_correlation": rho},
        )

    def _config(self, ctx: AuditContext, base: dict, tables: list, findings: list) -> list[dict]:
        old = _flatten(base["provenance"]["config"])
        new = _flatten(ctx.config.model_dump(mode="json"))
        changed = [
            {"key": k, "baseline": str(old.get(k)), "current": str(new.get(k))}
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        ]
        tables.append(
            Table("config", "Config keys that changed", pd.DataFrame(changed, columns=["key", "baseline", "current"]))
        )
        if changed:
            findings.append(
                Finding(
                    self.name,
                    f"{len(changed)} config key(s) changed since the baseline",
                    "info",
                    "info",
                    {"keys": [c["key"] for c in changed]},
                    id="comparison.config_changed",
                )  # fmt: skip
            )
        return changed

    def _performance(self, ctx: AuditContext, base: dict, paired, mode: str, tables: list, findings: list) -> None:
        cfg = ctx.config.report.compare
        perf = ctx.results.get("performance")
        old_data = base["modules"].get("performance", {}).get("data", {})
        # a population on both sides (e.g. this month's and last month's scored file) is what drifts; else the test split
        split = "population" if perf is not None and "population" in perf.data and "population" in old_data else "test"
        old_perf = old_data.get(split)
        if perf is None or not old_perf:
            return
        rows = []
        ci_old = old_data.get(f"{split}_ci", {}) or {}
        ci_new = perf.data.get(f"{split}_ci", {}) or {}
        for m in _METRICS:
            a, b = old_perf.get(m), perf.data[split].get(m)
            if a is None or b is None:
                continue
            paired_ci = paired["metrics"].get(m) if paired and split == "test" else None
            row, noise = _change(a, b, cfg.max_metric_change, paired_ci, (ci_old.get(m), ci_new.get(m)))
            drift = m in ("roc_auc", "accuracy") and row["beyond tolerance"] and noise is not False
            rows.append({"metric": m, **row, "drift": drift})
            if drift:
                findings.append(
                    _moved(
                        f"{split.capitalize()} {m} moved {b - a:+.3f} since the baseline ({a:.3f} -> {b:.3f})",
                        a,
                        b,
                        noise,
                        cfg.max_metric_change,
                        cfg.gate,
                        id=f"comparison.{split}.{m}",
                        measure=m,
                    )  # fmt: skip
                )
        tables.append(
            Table(
                "performance",
                f"{split.capitalize()} metrics: baseline and current",
                pd.DataFrame(rows),
                f"Drift: a change beyond report.compare.max_metric_change that sampling noise does not explain "
                f"(judged by {mode}).",
            )
        )

    def _fairness(self, ctx: AuditContext, base: dict, paired, mode: str, tables: list, findings: list) -> None:
        from audit.jsonable import to_jsonable

        cfg = ctx.config.report.compare
        fair = ctx.results.get("fairness")
        old_fair = base["modules"].get("fairness", {}).get("data")
        if fair is None or not old_fair:
            return
        rows = []
        for grouping, entry in to_jsonable(fair.data).items():
            before = old_fair.get(grouping)
            if not (isinstance(entry, dict) and isinstance(before, dict) and "measures" in before):
                continue  # not a grouping (e.g. flagged_proxies), or not in the baseline
            bm = before["measures"]
            old_m = {
                m: (v, lo, hi)
                for m, v, lo, hi in zip(bm["measure"], bm["value"], bm["ci_low"], bm["ci_high"], strict=True)
            }
            em = entry["measures"]
            for m, v, lo, hi in zip(em["measure"], em["value"], em["ci_low"], em["ci_high"], strict=True):
                a, a_lo, a_hi = old_m.get(m, (None, None, None))
                if a is None or v is None:
                    continue
                paired_ci = paired["fairness"].get((grouping, m)) if paired else None
                row, noise = _change(a, v, cfg.max_fairness_change, paired_ci, ((a_lo, a_hi), (lo, hi)))
                drift = row["beyond tolerance"] and noise is not False
                rows.append({"grouping": grouping, "measure": m, **row, "drift": drift})
                if drift:
                    findings.append(
                        _moved(
                            f"{m.replace('_', ' ')} by {grouping} moved {v - a:+.3f} since the baseline",
                            a,
                            v,
                            noise,
                            cfg.max_fairness_change,
                            cfg.gate,
                            id=f"comparison.fairness.{m}.{grouping}",
                            measure=m,
                            subject=grouping,
                        )  # fmt: skip
                    )
        tables.append(
            Table(
                "fairness",
                "Fairness measures: baseline and current",
                pd.DataFrame(rows),
                f"Drift: a change beyond report.compare.max_fairness_change that sampling noise does not explain "
                f"(judged by {mode}).",
            )
        )

    def _ranks(self, ctx: AuditContext, base: dict, tables: list, findings: list) -> float | None:
        """Importance ranks, over the features that clearly matter in both runs; their Spearman correlation."""
        cfg = ctx.config.report.compare
        pi = ctx.results.get("permutation_importance")
        old_pi = base["modules"].get("permutation_importance", {}).get("data", {})
        old_rank = old_pi.get("rank_by_feature")
        if pi is None or not old_rank:
            return None
        rho = None
        cur_rank = pi.data["rank_by_feature"]
        common = sorted(set(cur_rank) & set(old_rank))
        clear = sorted(set(_important(pi.data)) & set(_important(old_pi)) & set(common))
        if len(clear) >= 3:
            rho = float(spearmanr([old_rank[f] for f in clear], [cur_rank[f] for f in clear]).statistic)
            if not np.isfinite(rho):
                rho = None
        iv_old, iv_new = _importance_intervals(old_pi), _importance_intervals(pi.data)
        moved = [f for f in clear if beyond_noise(iv_old[f][0], iv_new[f][0], iv_old[f][1:], iv_new[f][1:])]
        rows = [
            {"feature": f, "baseline_rank": old_rank.get(f), "current_rank": cur_rank.get(f), "compared": f in clear,
             "importance moved beyond noise": f in moved}
            for f in common
        ]  # fmt: skip
        tables.append(
            Table(
                "ranks",
                f"Importance ranks (Spearman correlation {rho if rho is None else round(rho, 3)} over the "
                f"{len(clear)} features clearly important in both runs)",
                pd.DataFrame(rows),
                "Compared: features whose permutation importance interval lies above 0 in both runs; the ranks "
                "of features with no measurable importance are noise and are left out.",
            )
        )
        top_old = sorted(old_rank, key=old_rank.get)[:3]
        top_new = sorted(cur_rank, key=cur_rank.get)[:3]
        top_changed = top_old[0] not in top_new or top_new[0] not in top_old
        if rho is not None and rho < cfg.min_rank_correlation and moved and top_changed:
            findings.append(
                _drift(
                    f"Importance ranking changed: Spearman {rho:.2f} against the baseline over the {len(clear)} "
                    f"features important in both runs; {', '.join(moved[:5])} moved beyond sampling noise",
                    {"spearman": rho, "features": clear, "moved": moved},
                    f"Spearman >= {cfg.min_rank_correlation}, or no importance moved beyond sampling noise, or "
                    "the most important feature stayed in the other run's top three",
                    cfg.gate,
                    id="comparison.importance_ranks",
                    value=rho,
                    limit=cfg.min_rank_correlation,
                )  # fmt: skip
            )
        return rho

    def _findings_delta(self, ctx: AuditContext, base: dict, tables: list) -> list[dict]:
        old_f = {finding_key(f): f for f in base.get("findings", []) if f["status"] == "fail"}
        new_f = {finding_key(f): f for f in _current_findings(ctx) if f["status"] == "fail"}
        delta = [{"change": "new", "finding": new_f[k]["title"]} for k in sorted(set(new_f) - set(old_f))]
        delta += [{"change": "resolved", "finding": old_f[k]["title"]} for k in sorted(set(old_f) - set(new_f))]
        tables.append(
            Table(
                "findings",
                "Failed findings that are new or resolved since the baseline",
                pd.DataFrame(delta, columns=["change", "finding"]),
            )
        )
        return delta
