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
from audit.findings import Finding
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


def _drift(title: str, evidence: dict[str, Any], rule: str, gate: bool) -> Finding:
    """A change beyond its tolerance since the baseline."""
    return Finding(ComparisonModule.name, title, "fail", "medium", evidence, rule, gating=gate)


def _current_findings(ctx: AuditContext) -> list[dict[str, Any]]:
    return [f.to_json() for r in ctx.results.values() for f in r.findings]


class ComparisonModule:
    name = "comparison"
    title = "Comparison with the baseline run"

    def enabled(self, config: AuditConfig) -> bool:
        return config.report.compare.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        from audit.pipeline import to_jsonable

        cfg = ctx.config.report.compare
        base = ctx.baseline
        if base is None:
            return ModuleResult(summary={"baseline": "none (first run of this config)"})
        findings: list[Finding] = []
        tables: list[Table] = []
        meta = {"baseline_run": base["audit"]["run_id"], "baseline_path": ctx.baseline_path}

        # config changes
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
                )
            )

        # performance
        perf = ctx.results.get("performance")
        old_data = base["modules"].get("performance", {}).get("data", {})
        # a population on both sides (e.g. this month's and last month's scored file) is what drifts; else the test split
        split = "population" if perf is not None and "population" in perf.data and "population" in old_data else "test"
        old_perf = old_data.get(split)
        if perf is not None and old_perf:
            rows = []
            for m in _METRICS:
                a, b = old_perf.get(m), perf.data[split].get(m)
                if a is None or b is None:
                    continue
                rows.append({"metric": m, "baseline": a, "current": b, "change": b - a})
                if m in ("roc_auc", "accuracy") and abs(b - a) > cfg.max_metric_change:
                    findings.append(
                        _drift(
                            f"{split.capitalize()} {m} moved {b - a:+.3f} since the baseline ({a:.3f} -> {b:.3f})",
                            {"baseline": a, "current": b},
                            f"|change| <= {cfg.max_metric_change}",
                            cfg.gate,
                        )
                    )
            tables.append(
                Table("performance", f"{split.capitalize()} metrics: baseline and current", pd.DataFrame(rows))
            )

        # fairness measures
        fair = ctx.results.get("fairness")
        old_fair = base["modules"].get("fairness", {}).get("data")
        if fair is not None and old_fair:
            rows = []
            cur = to_jsonable(fair.data)
            for grouping, entry in cur.items():
                before = old_fair.get(grouping)
                if not before:
                    continue
                old_m = dict(zip(before["measures"]["measure"], before["measures"]["value"], strict=True))
                for m, v in zip(entry["measures"]["measure"], entry["measures"]["value"], strict=True):
                    a = old_m.get(m)
                    if a is None or v is None:
                        continue
                    rows.append({"grouping": grouping, "measure": m, "baseline": a, "current": v, "change": v - a})
                    if abs(v - a) > cfg.max_fairness_change:
                        findings.append(
                            _drift(
                                f"{m.replace('_', ' ')} by {grouping} moved {v - a:+.3f} since the baseline",
                                {"baseline": a, "current": v},
                                f"|change| <= {cfg.max_fairness_change}",
                                cfg.gate,
                            )
                        )
            tables.append(Table("fairness", "Fairness measures: baseline and current", pd.DataFrame(rows)))

        # importance ranks
        pi = ctx.results.get("permutation_importance")
        old_rank = base["modules"].get("permutation_importance", {}).get("data", {}).get("rank_by_feature")
        rho = None
        if pi is not None and old_rank:
            cur_rank = pi.data["rank_by_feature"]
            common = sorted(set(cur_rank) & set(old_rank))
            if len(common) >= 3:
                rho = float(spearmanr([old_rank[f] for f in common], [cur_rank[f] for f in common]).statistic)
                if not np.isfinite(rho):
                    rho = None
            rows = [{"feature": f, "baseline_rank": old_rank.get(f), "current_rank": cur_rank.get(f)} for f in common]
            tables.append(
                Table(
                    "ranks",
                    f"Importance ranks (Spearman correlation {rho if rho is None else round(rho, 3)})",
                    pd.DataFrame(rows),
                )
            )
            if rho is not None and rho < cfg.min_rank_correlation:
                findings.append(
                    _drift(
                        f"Importance ranking changed: Spearman {rho:.2f} against the baseline",
                        {"spearman": rho},
                        f"Spearman >= {cfg.min_rank_correlation}",
                        cfg.gate,
                    )
                )

        # findings appeared / resolved
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
        return ModuleResult(
            summary={
                "baseline_run": meta["baseline_run"],
                "config_changes": len(changed),
                "new_failures": sum(d["change"] == "new" for d in delta),
                "resolved_failures": sum(d["change"] == "resolved" for d in delta),
                "rank_correlation": rho,
            },
            tables=tables,
            findings=findings,
            data={**meta, "config_changes": changed, "findings_delta": delta, "rank_correlation": rho},
        )
