"""Where the model fails and how fragile its decisions are (issue 20): weak segments and stability under noise."""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.findings import Finding
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import draw, subplots


def row_errors(y: np.ndarray, p: np.ndarray, metric: str, threshold: float) -> np.ndarray:
    """Per-row error: misclassified at ``threshold`` (0/1), log loss or Brier score."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if metric == "error":
        return ((p >= threshold) != (y == 1)).astype(np.float64)
    if metric == "brier":
        return (p - y) ** 2
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return -(y * np.log(q) + (1 - y) * np.log(1 - q))


def expected_errors(p: np.ndarray, metric: str, threshold: float) -> np.ndarray:
    """Each row's error as its own score predicts it (the row's label drawn with probability ``p``): the chance the
    decision is wrong (``1 - p`` when decided positive, else ``p``), ``p(1 - p)`` for Brier, the entropy for log loss.
    A calibrated model's observed errors average to these in every slice.

    >>> expected_errors(np.array([0.9, 0.5, 0.2]), "error", 0.5).round(3).tolist()
    [0.1, 0.5, 0.2]
    """
    p = np.asarray(p, dtype=np.float64)
    if metric == "error":
        return np.where(p >= threshold, 1 - p, p)
    if metric == "brier":
        return p * (1 - p)
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return -(q * np.log(q) + (1 - q) * np.log(1 - q))


def share_by_group(ctx: AuditContext, idx: np.ndarray, values: np.ndarray, column: str, everyone: str) -> pd.DataFrame:
    """The mean of per-row ``values`` (audit rows ``idx``) over all of them, then per group of every sensitive
    grouping: columns group, grouping ("" for all rows), rows, ``column``."""
    from audit.modules._shared import audit_groupings

    values = np.asarray(values, dtype=np.float64)
    rows = [{"group": everyone, "grouping": "", "rows": len(idx), column: float(values.mean())}]
    for name, labels in audit_groupings(ctx).items():
        lab = labels[idx]
        for g in pd.unique(lab[pd.notna(lab)]):
            m = lab == g
            rows.append({"group": str(g), "grouping": name, "rows": int(m.sum()), column: float(values[m].mean())})
    return pd.DataFrame(rows)


class WeakSegmentsModule:
    name = "weak_segments"
    title = "Weak segments: where the model errs most"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.weak_segments.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        from audit.explain.slices import weak_segments

        cfg = ctx.config.modules.weak_segments
        thr = ctx.config.model.threshold
        observed = row_errors(ctx.y_audit, ctx.proba_audit, cfg.metric, thr)
        expected = expected_errors(ctx.proba_audit, cfg.metric, thr)
        # against the model's own scores: each row's error less what its score predicts, plus the overall expected
        # error (so the overall mean stays the observed one); a slice near 50/50 is hard, not weak
        e = observed - expected + expected.mean() if cfg.against == "expected" else observed
        res = weak_segments(
            ctx.codes_audit, e, ctx.dataset.schema, n_bins=cfg.n_bins, max_level=cfg.max_level,
            min_support=cfg.min_support, alpha=cfg.alpha, significance=cfg.significance, correction=cfg.correction,
            min_effect=cfg.min_effect, top_k=cfg.top_k, parts={"observed": observed, "expected": expected},
        )  # fmt: skip
        what = {"error": "error rate", "log_loss": "mean log loss", "brier": "mean Brier score"}[cfg.metric]
        vs = cfg.against == "expected"
        findings = [
            self._slice_finding(row, res, cfg, what) for row in res.weak.head(cfg.max_findings).itertuples(index=False)
        ]
        if len(res.weak) > cfg.max_findings:
            findings.append(
                Finding(
                    self.name,
                    f"{len(res.weak) - cfg.max_findings} more weak segment(s) in the table",
                    "info",
                    "info",
                    {"weak_segments": len(res.weak)},
                    id="weak_segments.more",
                )  # fmt: skip
            )
        if not len(res.weak):
            findings.append(
                Finding(
                    self.name,
                    f"No weak segment among {res.evaluated} slices",
                    "pass",
                    "medium",
                    {"slices": res.evaluated},
                    f"no slice with {what} above overall by more than {cfg.min_effect}",
                    id="weak_segments.none",
                    measure=cfg.metric,
                    value=0.0,
                    limit=0.0,
                    plain=f"No conjunction of up to {cfg.max_level} feature conditions with at least "
                    f"{cfg.min_support} rows has a significantly higher {what} than all rows.",
                )  # fmt: skip
            )
        top = res.table.head(cfg.top_k * 3)
        figures = [self._figure(res, what)] if len(res.weak) else []
        return ModuleResult(
            summary={"weak_segments": len(res.weak), "slices_evaluated": res.evaluated, "overall": res.overall_error},
            tables=[
                Table(
                    "weak",
                    "Weak segments",
                    res.weak,
                    (
                        f"Slices whose {what} beyond what the model's own scores predict there (observed less "
                        "expected, plus the overall expected: the error column) exceeds the rest's"
                        if vs
                        else f"Slices whose {what} exceeds the rest's"
                    )
                    + f" (one-sided test, {cfg.correction}-adjusted over all "
                    f"{res.evaluated} slices), ranked by excess errors (rows x effect); a slice is listed only if, "
                    "without the rows of the slices above it, it still errs more than overall. Intervals: Wilson "
                    "(0/1 errors) or t.",
                ),  # fmt: skip
                Table(
                    "slices",
                    "Slices with the most excess errors",
                    top,
                    f"score: SliceLine's (alpha {cfg.alpha}); numerics in {cfg.n_bins} quantile bins.",
                ),  # fmt: skip
            ],
            figures=figures,
            findings=findings,
            data={
                "weak": res.weak.to_dict(orient="list"),
                "overall": res.overall_error,
                "settings": res.settings,
                "evaluated": res.evaluated,
                "rows_evaluated": 0,
            },  # fmt: skip
        )

    @staticmethod
    def _figure(res, what: str) -> Figure:
        return Figure(
            "weak_segments", f"{what.capitalize()} of each weak segment with its 95% interval; dashed: all audit rows.",
            draw(_draw_weak_segments, res.weak, res.overall_error, what),
        )  # fmt: skip

    def _slice_finding(self, row, res, cfg, what: str) -> Finding:
        """One weak slice's finding, against the expected error (``against: expected``) or against all rows."""
        vs = cfg.against == "expected"
        if vs:
            title = (
                f"Weak segment: {row.slice} ({row.rows} rows): {what} {row.observed:.3f} where its scores "
                f"predict {row.expected:.3f} ({row.effect:+.3f} beyond the rest's)"
            )
            plain = (
                f"On the {row.rows} audit rows where {row.slice}, the model's {what} is {row.observed:.3f} "
                f"while its own scores there predict {row.expected:.3f}: it errs {row.effect:+.3f} more than "
                f"its scores admit, compared with the other rows; more than chance explains among the "
                f"{res.evaluated} slices examined."
            )
        else:
            title = (
                f"Weak segment: {row.slice} ({row.rows} rows): {what} {row.error:.3f} "
                f"[{row.error_low:.3f}, {row.error_high:.3f}] against {res.overall_error:.3f} overall"
            )
            plain = (
                f"On the {row.rows} audit rows where {row.slice}, the model's {what} is {row.error:.3f}, "
                f"{row.effect:+.3f} against all rows; more than chance explains among the {res.evaluated} "
                "slices examined."
            )
        return Finding(
                self.name, title, "fail", "high" if row.effect >= 0.1 else "medium",
                {"rows": int(row.rows), "error": row.observed, "expected": row.expected, "effect": row.effect,
                 "overall": res.overall_error, "p_adjusted": row.p_adjusted},
                (f"{what} beyond what the scores predict, not above the rest's by more than {cfg.min_effect}" if vs
                 else f"{what} not above overall by more than {cfg.min_effect}")
                + f" ({cfg.correction}-adjusted p < {cfg.significance})",
                id=f"weak_segments.slice.{row.key}",
                measure=f"{cfg.metric}_beyond_expected" if vs else cfg.metric,
                subject=row.slice,
                value=float(row.error),
                ci_low=float(row.error_low),
                ci_high=float(row.error_high),
                limit=res.overall_error + cfg.min_effect,
                plain=plain,
        )  # fmt: skip


class StabilityModule:
    name = "stability"
    title = "Stability of decisions under small noise"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.stability.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        from audit.metrics import wilson_interval

        cfg = ctx.config.modules.stability
        thr = ctx.config.model.threshold
        schema = ctx.dataset.schema
        rng = np.random.default_rng(ctx.seed_for(self.name))
        n_all = len(ctx.codes_audit)
        idx = np.sort(rng.choice(n_all, cfg.max_rows, replace=False)) if n_all > cfg.max_rows else np.arange(n_all)
        X = ctx.codes_audit[idx]
        train = ctx.train_codes()
        base = ctx.proba_audit[idx] >= thr
        flips = np.zeros(len(idx))
        for _ in range(cfg.repeats):
            flips += (ctx.predictor.predict_codes(perturb(X, train, schema, cfg, rng)) >= thr) != base
        rate_row = flips / cfg.repeats
        overall = float(rate_row.mean())
        table = share_by_group(ctx, idx, rate_row, "flip_rate", "all audit rows")
        table["low"], table["high"] = wilson_interval(table["flip_rate"], table["rows"] * cfg.repeats)
        findings = [
            Finding(
                self.name,
                f"{overall:.1%} of decisions flip under small noise",
                "pass" if overall <= cfg.max_flip_rate else "fail",
                "medium",
                {"flip_rate": overall},
                f"flip rate <= {cfg.max_flip_rate}",
                id="stability.overall",
                measure="flip_rate",
                value=overall,
                limit=cfg.max_flip_rate,
                plain=f"Moving each numeric by up to {cfg.numeric_scale:g} of its median absolute deviation and "
                f"each categorical to another level with probability {cfg.categorical_swap:g} changes "
                f"{overall:.1%} of the decisions.",
            )  # fmt: skip
        ]
        groups = table[table["grouping"] != ""]
        if len(groups):
            worst = groups.sort_values("flip_rate", ascending=False).iloc[0]
            same = groups[groups["grouping"] == worst["grouping"]]
            best = same.sort_values("flip_rate").iloc[0]
            apart = worst["low"] > best["high"]
            findings.append(
                Finding(
                    self.name,
                    f"Decisions of {worst['group']} ({worst['grouping']}) flip most under noise: "
                    f"{worst['flip_rate']:.1%} [{worst['low']:.1%}, {worst['high']:.1%}] against "
                    f"{best['flip_rate']:.1%} for {best['group']}",
                    "fail" if worst["flip_rate"] > cfg.max_flip_rate else "pass",
                    "medium" if apart else "low",
                    {
                        "worst": worst["group"],
                        "worst_rate": worst["flip_rate"],
                        "best": best["group"],
                        "best_rate": best["flip_rate"],
                        "intervals_apart": bool(apart),
                    },
                    f"flip rate <= {cfg.max_flip_rate} in every group",
                    id="stability.groups",
                    measure="flip_rate",
                    subject=str(worst["grouping"]),
                    value=float(worst["flip_rate"]),
                    ci_low=float(worst["low"]),
                    ci_high=float(worst["high"]),
                    limit=cfg.max_flip_rate,
                    plain=f"Of all sensitive groups, the decisions of {worst['group']} are the least stable under "
                    "small noise"
                    + (
                        " (its interval and the most stable group's do not overlap)."
                        if apart
                        else " (within noise of the others)."
                    ),
                )  # fmt: skip
            )
        return ModuleResult(
            summary={"flip_rate": overall, "rows": len(idx), "repeats": cfg.repeats},
            tables=[
                Table(
                    "flips",
                    "Share of decisions that flip under small noise",
                    table,
                    f"{cfg.repeats} noisy copies of {len(idx)} audit rows; 95% Wilson intervals.",
                )
            ],  # fmt: skip
            findings=findings,
            data={"flip_rate": overall, "groups": table.to_dict(orient="list")},
        )


def perturb(X: np.ndarray, train: np.ndarray, schema, cfg, rng) -> np.ndarray:
    """A noisy copy of code-space rows: numerics + U(-s, s) x MAD (training's; a numeric whose MAD is 0, mostly one
    value, is left as it is), categoricals moved with probability ``categorical_swap`` to another level drawn with the
    training frequencies; missing values stay missing."""
    out = X.copy()
    n = len(X)
    for j, f in enumerate(schema.features):
        col = out[:, j]
        if f.is_categorical:
            counts = np.bincount(train[:, j].astype(np.int64), minlength=len(f.levels) + 1)[: len(f.levels)]
            if counts.sum() == 0 or len(f.levels) < 2:
                continue
            move = rng.uniform(size=n) < cfg.categorical_swap
            new = rng.choice(len(f.levels), size=int(move.sum()), p=counts / counts.sum())
            same = new == col[move]
            new[same] = (new[same] + 1 + rng.integers(0, len(f.levels) - 1, int(same.sum()))) % len(f.levels)
            col[move] = new
        else:
            t = train[:, j][np.isfinite(train[:, j])]
            if not len(t):
                continue
            mad = float(np.median(np.abs(t - np.median(t))))
            if mad == 0:  # mostly one value (capital-gain: 92% zero): no small noise is plausible, left as it is
                continue
            col += rng.uniform(-1, 1, size=n) * cfg.numeric_scale * mad  # NaN stays NaN
    return out


class FaithfulnessModule:
    name = "faithfulness"
    title = "Faithfulness of the explanations"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.faithfulness.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        from audit.explain.faithfulness import randomisation_similarity, randomised_copy

        cfg = ctx.config.modules.faithfulness
        methods = self._attributions(ctx)
        if not methods:
            return ModuleResult(
                summary={"applicable": False},
                findings=[Finding(self.name, "not assessable: no attribution method ran (SHAP, LIME, IG)",
                                  "not_assessable", "info", {}, id="faithfulness.no_attributions")],
            )  # fmt: skip
        rows = sorted(set.intersection(*(set(r.tolist()) for r, _ in methods.values())))[: cfg.max_rows]
        rows = np.asarray(rows, dtype=np.int64)
        X = ctx.codes_audit[rows]
        rng = np.random.default_rng(ctx.seed_for(self.name))
        train = ctx.train_codes()
        B = train[rng.choice(len(train), min(cfg.background, len(train)), replace=False)]
        attrs = {m: a[np.searchsorted(r, rows)] if np.all(np.diff(r) > 0) else a[[list(r).index(i) for i in rows]]
                 for m, (r, a) in methods.items()}  # fmt: skip
        findings: list[Finding] = []
        curves, rand, usable, table = self._curves(ctx, X, B, attrs, rng, findings)
        names = list(attrs)
        agreement = self._agreement(attrs, findings)
        random_rows = self._randomisation(ctx, X, B, attrs, cfg, randomised_copy, randomisation_similarity)
        findings += [self._randomisation_finding(r, cfg) for r in random_rows]
        if len(table):
            findings.append(_most_faithful(table, curves, usable, random_rows, cfg.max_similarity))
        evaluated = sum(c.rows_evaluated for c in curves.values()) + sum(c.rows_evaluated for c in rand)
        return ModuleResult(
            summary={"methods": names, "rows": len(rows), "rows_evaluated": int(evaluated)},
            tables=[
                Table(
                    "curves",
                    "Deletion and insertion against a random order",
                    table,
                    f"Areas under the curves (means over the {int(usable.sum())} rows whose score differs from the "
                    f"background mean, in units of their mean deviation from it), {cfg.background} background rows, "
                    "random order averaged over "
                    f"{cfg.random_orders}; difference: method minus random, paired over rows, 95% bootstrap interval. "
                    "Deletion: lower is more faithful; insertion: higher.",
                ),  # fmt: skip
                Table("agreement", "Rank agreement between methods (Kendall's tau per row)", pd.DataFrame(agreement)),
                Table("randomisation", "Model-parameter randomisation check", pd.DataFrame(random_rows)),
            ],
            figures=[self._figure(curves, rand, usable)],
            findings=findings,
            data={"curves": table.to_dict(orient="list"), "agreement": agreement, "randomisation": random_rows},
        )

    def _curves(self, ctx: AuditContext, X, B, attrs: dict, rng, findings: list[Finding]):
        """Deletion and insertion curves of each method against random orders: the curves, the random ones, the rows
        whose score differs from the background's, the table, and a finding per method (appended)."""
        from audit.explain.faithfulness import deletion_insertion, paired_interval

        cfg = ctx.config.modules.faithfulness
        predict = ctx.predictor.predict_codes
        curves = {m: deletion_insertion(predict, X, a, B) for m, a in attrs.items()}
        rand = [deletion_insertion(predict, X, rng.normal(size=X.shape), B) for _ in range(cfg.random_orders)]
        rand_del = np.mean([c.deletion_auc for c in rand], axis=0)
        rand_ins = np.mean([c.insertion_auc for c in rand], axis=0)
        usable = rand[0].usable
        table_rows = []
        scale = float(np.mean(rand[0].deviation[usable]))  # areas in units of the rows' mean deviation
        for m, c in curves.items():
            d, dlo, dhi = (v / scale for v in paired_interval(c.deletion_auc[usable], rand_del[usable], seed=1))
            i, _, _ = (v / scale for v in paired_interval(c.insertion_auc[usable], rand_ins[usable], seed=2))
            area, r_area = c.normalised(c.deletion_auc), float(np.mean(rand_del[usable])) / scale
            table_rows.append({
                "method": m, "rows": int(usable.sum()), "deletion_auc": area, "random_deletion_auc": r_area,
                "deletion_vs_random": d, "deletion_vs_random_low": dlo, "deletion_vs_random_high": dhi,
                "insertion_auc": c.normalised(c.insertion_auc),
                "random_insertion_auc": float(np.mean(rand_ins[usable])) / scale, "insertion_vs_random": i,
            })  # fmt: skip
            better = dhi < 0
            findings.append(
                Finding(
                    self.name,
                    f"{m} ordering {'beats' if better else 'is no better than'} random order on deletion: area "
                    f"{area:.3f} against {r_area:.3f} (difference {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}])",
                    "pass" if better else "fail",
                    "medium",
                    {"deletion_auc": area, "random": r_area},
                    "deletion area significantly below a random order's",
                    id=f"faithfulness.deletion.{m}",
                    measure="deletion_auc_vs_random",
                    subject=m,
                    value=d,
                    ci_low=dlo,
                    ci_high=dhi,
                    limit=0.0,
                    plain=f"Removing the features {m} ranks first moves the score back toward the background "
                    + (
                        "faster than removing them in random order: its ranking reflects what drives the model."
                        if better
                        else "no faster than a random order: its ranking does not show what drives the model."
                    ),
                )  # fmt: skip
            )
        return curves, rand, usable, pd.DataFrame(table_rows)

    def _agreement(self, attrs: dict, findings: list[Finding]) -> list[dict]:
        """Kendall's tau between each pair of methods' rankings, per row (a finding per pair, appended)."""
        from audit.explain.faithfulness import rank_agreement

        agreement = []
        names = list(attrs)
        for a in range(len(names)):
            for b in range(a + 1, len(names)):
                tau = rank_agreement(attrs[names[a]], attrs[names[b]])
                agreement.append({"methods": f"{names[a]} / {names[b]}", "median_tau": float(np.nanmedian(tau)),
                                  "q25": float(np.nanquantile(tau, 0.25)), "q75": float(np.nanquantile(tau, 0.75))})  # fmt: skip
        for row in agreement:
            findings.append(
                Finding(
                    self.name,
                    f"Rank agreement {row['methods']}: Kendall's tau median {row['median_tau']:.2f} "
                    f"(quartiles {row['q25']:.2f} to {row['q75']:.2f})",
                    "info",
                    "info",
                    row,
                    measure="kendall_tau",
                    subject=row["methods"],
                    value=row["median_tau"],
                    id=f"faithfulness.rank_agreement.{row['methods'].replace(' / ', '_')}",
                )  # fmt: skip
            )
        return agreement

    def _randomisation_finding(self, r: dict, cfg) -> Finding:
        ok = r["median_spearman"] < cfg.max_similarity
        return Finding(
            self.name,
            f"{r['method']} {'changes' if ok else 'hardly changes'} when the network's weights are randomised "
            f"(Spearman {r['median_spearman']:.2f} between the rankings)",
            "pass" if ok else "fail",
            "medium" if not ok else "info",
            r,
            f"median Spearman < {cfg.max_similarity}",
            id=f"faithfulness.randomisation.{r['method']}", measure="randomisation_spearman", subject=r["method"],
            value=r["median_spearman"], limit=cfg.max_similarity,
            plain=f"The model-parameter randomisation check (Adebayo et al. 2018): {r['method']} on a network "
            "with re-initialised weights "
            + (
                "ranks the features differently, as it should."
                if ok
                else "ranks them almost as before, so its rankings reflect the inputs more than what the model learnt."
            ),
        )  # fmt: skip

    @staticmethod
    def _attributions(ctx: AuditContext) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {}
        shap = ctx.results.get("shap")
        if shap is not None and "values" in shap.data:
            out["SHAP"] = (np.asarray(shap.data["rows"]), np.asarray(shap.data["values"]))
        lime = ctx.results.get("lime")
        if lime is not None and np.ndim(lime.data.get("weights")) == 2:
            out["LIME"] = (np.asarray(lime.data["rows"]), np.asarray(lime.data["weights"]))
        grads = ctx.results.get("gradients")
        if grads is not None and "attributions" in grads.data:
            out["IG"] = (np.asarray(grads.data["rows"]), np.asarray(grads.data["attributions"]))
        if grads is not None and "lrp" in grads.data:
            out["LRP"] = (np.asarray(grads.data["rows"]), np.asarray(grads.data["lrp"]))
        return out

    @staticmethod
    def _randomisation(ctx, X, B, attrs, cfg, randomised_copy, similarity) -> list[dict]:
        net = getattr(ctx.predictor, "net", None)
        if not cfg.randomisation or net is None:
            return []
        from audit.model.adapter import NetPredictor

        other = NetPredictor(randomised_copy(net, seed=ctx.seed_for("randomise")), ctx.predictor.preprocessing,
                             ctx.predictor.schema)  # fmt: skip
        out = []
        n = min(len(X), cfg.randomisation_rows)
        if "IG" in attrs:
            from audit.explain.neural import integrated_gradients, reference_row

            base = reference_row(ctx.train_codes(), ctx.dataset.schema.categorical_mask)
            steps = ctx.config.network.gradients.steps
            rand = integrated_gradients(other, X[:n], base, steps=steps).attributions
            s = similarity(attrs["IG"][:n], rand)
            out.append({"method": "IG", "rows": n, "median_spearman": float(np.median(s))})
        if "LRP" in attrs:
            from audit.explain.lrp import lrp

            rand = lrp(other, X[:n], rule="epsilon", epsilon=ctx.config.network.gradients.lrp_epsilon).attributions
            s = similarity(attrs["LRP"][:n], rand)
            out.append({"method": "LRP", "rows": n, "median_spearman": float(np.median(s))})
        if "SHAP" in attrs:
            from audit.explain.shapley import shapley_values

            sv = shapley_values(other.predict_codes, X[:n], B, feature_names=ctx.dataset.schema.feature_names,
                                n_permutations=2, random_state=ctx.seed_for("randomise") + 1)  # fmt: skip
            s = similarity(attrs["SHAP"][:n], sv.values)
            out.append({"method": "SHAP", "rows": n, "median_spearman": float(np.median(s))})
        return out

    @staticmethod
    def _figure(curves, rand, usable) -> Figure:
        scale = float(np.mean(rand[0].deviation[usable]))
        panels = []
        for key in ("deletion", "insertion"):
            lines = [(m, getattr(c, key)[usable].mean(axis=0) / scale) for m, c in curves.items()]
            r = np.mean([getattr(c, key)[usable].mean(axis=0) for c in rand], axis=0) / scale
            panels.append((key, lines, r))
        return Figure("faithfulness", "Mean deletion and insertion curves of each method against a random order.",
                      draw(_draw_faithfulness, panels))  # fmt: skip


class ContrastiveModule:
    name = "contrastive"
    title = "Contrastive explanations (CEM) and fragile decisions"

    def enabled(self, config: AuditConfig) -> bool:
        return config.local.enabled and config.modules.contrastive.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        from audit.explain.contrastive import contrastive
        from audit.explain.neural import reference_row
        from audit.modules._shared import constraints_from_config, select_instances
        from audit.schema import UNKNOWN_LEVEL

        cfg = ctx.config.modules.contrastive
        schema = ctx.dataset.schema
        idx, reasons = select_instances(ctx)
        idx = np.asarray(idx)[: cfg.max_rows]
        # rows picked for being close to the threshold (or by id) are fragile by choice: the verdict is on the rows
        # drawn at random (declined, per group, random), the chosen ones are reported apart
        chosen = np.array([bool({"borderline", "requested"} & set(reasons[int(i)])) for i in idx], dtype=bool)
        train = ctx.train_codes()
        ref = reference_row(train, schema.categorical_mask)
        res = contrastive(
            ctx.predictor.predict_codes, ctx.codes_audit[idx], ref, train, schema,
            constraints=constraints_from_config(ctx.config, schema), threshold=ctx.config.model.threshold,
            max_changes=cfg.max_changes, n_grid=cfg.n_grid,
        )  # fmt: skip

        def text(j, v):
            f = schema.features[j]
            if f.is_categorical:
                return f"{f.name} = {f.levels[int(v)] if int(v) < len(f.levels) else UNKNOWN_LEVEL}"
            return f"{f.name} = {v:g}"

        rows = []
        for k, i in enumerate(idx):
            x = ctx.codes_audit[i]
            pn = res.pn[k]
            rows.append({
                "row": int(i), "score": float(res.predictions[k]),
                "pertinent positive": "; ".join(text(j, x[j]) for j in res.pp[k]) or "(the reference row's decision)",
                "pp score": float(res.pp_prediction[k]),
                "pertinent negative": "; ".join(f"{text(j, x[j])} -> {text(j, v).split(' = ', 1)[1]}"
                                                for j, v in pn.items()) if pn else f"none within {cfg.max_changes} changes",
                "pn score": float(res.pn_prediction[k]) if pn else None,
                "distance": float(res.pn_distance[k]) if pn else None,
            })  # fmt: skip
        table = pd.DataFrame(rows)
        fragile = np.isfinite(res.pn_distance) & (res.pn_distance <= cfg.fragile_distance)
        found = np.isfinite(res.pn_distance)
        sizes = np.array([len(s) for s in res.pp])
        findings = [
            Finding(
                self.name,
                f"Pertinent positives: a median of {np.median(sizes):g} feature value(s) alone keep each decision; "
                f"pertinent negatives found for {found.sum()} of {len(idx)} rows within {cfg.max_changes} changes",
                "info",
                "info",
                {"median_pp_size": float(np.median(sizes)), "pn_found": int(found.sum())},
                plain="For each explained row: the fewest of its values that, with everything else at a typical "
                "applicant's, still give the same decision; and the smallest allowed change that reverses it.",
                id="contrastive.pertinent",
            )  # fmt: skip
        ]
        drawn = ~chosen
        chosen_share = float(fragile[chosen].mean()) if chosen.any() else None
        groups, finding = self._fragile(ctx, idx, fragile, chosen)
        findings.append(finding)
        return ModuleResult(
            summary={
                "rows": len(idx),
                "median_pp_size": float(np.median(sizes)),
                "pn_found": int(found.sum()),
                "fragile_share": float(fragile[drawn].mean()) if drawn.any() else None,
                "fragile_share_chosen_rows": chosen_share,
                "rows_evaluated": res.rows_evaluated,
            },  # fmt: skip
            tables=[
                Table(
                    "cem",
                    "Pertinent positives and negatives of the explained rows",
                    table,
                    "Pertinent positive: the fewest feature values that alone keep the decision, the others at the "
                    "reference row (training medians, most frequent levels); exhaustive over all subsets. Pertinent "
                    f"negative: the fewest changes (at most {cfg.max_changes}) that reverse it, within the "
                    "counterfactual constraints, then the smallest distance (numerics in MADs of training, a level "
                    "change 1); exhaustive over the candidate values.",
                ),  # fmt: skip
                Table("fragile", f"Fragile decisions (reversed within {cfg.fragile_distance:g}) per group", groups),
            ],
            findings=findings,
            data={"rows": idx, "pn_distance": res.pn_distance, "pp_size": sizes},
        )

    def _fragile(self, ctx: AuditContext, idx: np.ndarray, fragile: np.ndarray, chosen: np.ndarray):
        """The fragile share per group over the rows drawn at random, and its finding (the rows chosen near the
        threshold or by id reported apart)."""
        drawn = ~chosen
        groups = share_by_group(ctx, idx[drawn], fragile[drawn], "fragile", "rows drawn at random")
        cfg = ctx.config.modules.contrastive
        chosen_share = float(fragile[chosen].mean()) if chosen.any() else None
        apart = (
            f"; the {int(chosen.sum())} rows chosen near the threshold or by id, reported apart: {chosen_share:.0%}"
            if chosen_share is not None
            else ""
        )
        if not drawn.any():
            return groups, Finding(
                self.name,
                "fragile decisions: not assessable, no explained row was drawn at random (only borderline or "
                "requested rows)" + apart,
                "not_assessable",
                "info",
                {"chosen_rows": int(chosen.sum()), "chosen_fragile_share": chosen_share},
                id="contrastive.fragile",
                plain="Rows chosen because they sit at the threshold are fragile by construction; set "
                "local.instances.random (or declined, per_group) so the share is measured on drawn rows.",
            )
        share = float(fragile[drawn].mean())
        sizable = groups.iloc[1:][groups["rows"].iloc[1:] >= cfg.min_group_rows]  # a share of 2 rows is noise
        worst = sizable.sort_values("fragile", ascending=False).head(1)
        worst_share = float(worst["fragile"].iloc[0]) if len(worst) else share
        p = _fragile_p(pd.concat([groups.iloc[:1], sizable]), cfg.max_fragile_share)
        beyond = worst_share > cfg.max_fragile_share and p < cfg.alpha
        return groups, Finding(
            self.name,
            f"{share:.0%} of {int(drawn.sum())} decisions drawn at random are fragile (reversed by an allowed "
            f"change of at most {cfg.fragile_distance:g} MAD)"
            + (f"; most in {worst['group'].iloc[0]} ({worst_share:.0%})" if len(worst) else "")
            + apart
            + f"; binomial p = {p:.2g}",
            "fail" if beyond else "pass",
            "medium",
            {
                "p_value": p,
                "fragile_share": share,
                "worst_group_share": worst_share,
                "drawn_rows": int(drawn.sum()),
                "chosen_rows": int(chosen.sum()),
                "chosen_fragile_share": chosen_share,
            },
            f"fragile share <= {cfg.max_fragile_share} in every group, over rows drawn at random, or within chance "
            f"(one-sided binomial p >= {cfg.alpha}, Bonferroni over all rows and the groups)",
            id="contrastive.fragile",
            measure="fragile_share",
            value=worst_share,
            limit=cfg.max_fragile_share,
            plain="A decision is fragile when the smallest change the constraints allow (the pertinent "
            "negative) is tiny: a measurement error could reverse it. Measured on rows drawn at random; rows "
            "picked because they sit at the threshold are fragile by choice and are counted apart.",
        )


def _most_faithful(
    table: pd.DataFrame, curves: dict, usable: np.ndarray, random_rows: list[dict], max_similarity: float
) -> Finding:
    """The conclusion of the faithfulness section: which explainer's ranking removes the score fastest on deletion
    (the most negative difference from a random order) among those that passed the randomisation check, and whether
    the reason codes' explainer (SHAP) is significantly less faithful than it (paired bootstrap over the same rows)."""
    from audit.explain.faithfulness import paired_interval

    failed_random = {r["method"] for r in random_rows if not r["median_spearman"] < max_similarity}
    ranked = table.sort_values("deletion_vs_random", kind="stable")
    trusted = ranked[~ranked["method"].isin(failed_random)]
    best = str((trusted if len(trusted) else ranked)["method"].iloc[0])
    order = ", ".join(f"{r.method} {r.deletion_vs_random:+.3f}" for r in ranked.itertuples())
    evidence = {"most_faithful": best, "order": ranked["method"].tolist(), "reason_codes_from": "SHAP"}
    status, severity, tail = "info", "info", ""
    if "SHAP" in curves and best != "SHAP":
        d, lo, hi = paired_interval(curves["SHAP"].deletion_auc[usable], curves[best].deletion_auc[usable], seed=3)
        evidence |= {"shap_minus_best": d, "ci_low": lo, "ci_high": hi}
        worse = lo > 0
        status, severity = ("fail", "medium") if worse else ("pass", "info")
        tail = f"; the reason codes rest on SHAP, whose deletion area is larger by {d:.3g} [{lo:.3g}, {hi:.3g}]" + (
            ": significantly less faithful" if worse else ", within noise of it"
        )
    elif "SHAP" in curves:
        status, tail = "pass", "; the reason codes rest on it"
    return Finding(
        "faithfulness",
        f"Most faithful explainer of this model: {best} (deletion against random: {order}){tail}",
        status,
        severity,
        evidence,
        "the reason codes' explainer (SHAP) is not significantly less faithful on deletion than the most faithful "
        "one (paired 95% bootstrap interval)"
        if status != "info"
        else None,
        id="faithfulness.most_faithful",
        plain=f"Of the explainers compared, {best}'s ranking of the features tracks what drives this model best "
        "(its top features, removed first, move the score furthest); a method that failed the randomisation check "
        "is not chosen." + (" The reason codes come from SHAP." if "SHAP" in curves else ""),
    )


def _fragile_p(groups: pd.DataFrame, limit: float) -> float:
    """The Bonferroni-adjusted p-value that some row of ``groups`` (all rows, then each group large enough to judge)
    has a fragile share above ``limit``: each share's one-sided binomial test against ``limit``. A group of 15 drawn
    rows with 4 fragile ones (27%) is what a true share of 20% gives one time in three; it is no evidence.

    >>> round(_fragile_p(pd.DataFrame({"rows": [30, 15], "fragile": [0.2, 4 / 15]}), 0.2), 3)
    0.704
    """
    from audit.metrics import adjust_pvalues, excess_p

    p = [excess_p(float(r.fragile), int(r.rows), limit) for r in groups.itertuples()]
    return float(np.nanmin(adjust_pvalues(p, "bonferroni")))


# ------------------------------------------------------------------------------------ figures (see plotting.draw)
def _draw_weak_segments(weak: pd.DataFrame, overall: float, what: str):
    w = weak.iloc[::-1]
    fig, ax = subplots(figsize=(6.2, 0.38 * len(w) + 1.2))
    y = np.arange(len(w))
    ax.errorbar(
        w["error"], y, xerr=[w["error"] - w["error_low"], w["error_high"] - w["error"]], fmt="o", color="#b2182b"
    )
    ax.axvline(overall, ls="--", color="grey", lw=1)
    ax.set_yticks(y, [f"{s} ({r})" for s, r in zip(w["slice"], w["rows"], strict=True)], fontsize=7)
    ax.set(xlabel=what, title="Weak segments")
    return fig


def _draw_faithfulness(panels):
    """``panels``: ("deletion" or "insertion", [(method, mean curve)], random order's mean curve), scaled."""
    fig, axes = subplots(1, 2, figsize=(9.5, 3.2))
    titles = {"deletion": "Deletion (lower is better)", "insertion": "Insertion (higher is better)"}
    for ax, (key, lines, r) in zip(axes, panels, strict=True):
        for m, v in lines:
            ax.plot(np.arange(len(v)), v, label=m)
        ax.plot(np.arange(len(r)), r, ls="--", color="grey", label="random order")
        ax.set(xlabel="features removed" if key == "deletion" else "features inserted", ylabel="score moved / mean deviation",
               title=titles[key])  # fmt: skip
        ax.legend(fontsize=7)
    return fig
