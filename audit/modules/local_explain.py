"""Local explanation modules: SHAP values and reason codes, LIME surrogates, counterfactuals.

All three explain the same selected audit rows (:func:`select_instances`), in the raw feature space, through the
predictor's code-space fast path.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.explain.counterfactual import constraint_violations, counterfactual_metrics, counterfactuals
from audit.explain.local_surrogate import lime_explanations, lime_explanations_lime, top_k_jaccard
from audit.explain.shapley import reason_codes, shapley_values, shapley_values_shap, summarize_background
from audit.findings import Finding
from audit.modules._shared import audit_groupings, constraints_from_config, most_important, select_instances
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import draw, subplots
from audit.schema import Schema


def _shap_versus_importance(ctx: AuditContext, mean_abs: pd.Series, n_rows: int) -> str:
    """Which rows the SHAP summary describes, and how its ranking compares with permutation importance."""
    text = (
        f"Computed on the {n_rows} explained rows (declined, borderline, per group and random; see local.instances), "
        "not on all audit rows."
    )
    pi = ctx.results.get("permutation_importance")
    if pi is None:
        return text
    from scipy.stats import spearmanr

    rank = pi.data["rank_by_feature"]
    common = [f for f in mean_abs.index if f in rank]
    if len(common) < 3:
        return text
    rho = float(spearmanr(range(len(common)), [rank[f] for f in common]).statistic)
    top_shap = list(mean_abs.index[:3])
    top_pi = sorted(rank, key=rank.get)[:3]
    if set(top_shap) == set(top_pi):
        return text + f" Its top three features are permutation importance's too (Spearman {rho:.2f} over all ranks)."
    return text + (
        f" Its top three ({', '.join(top_shap)}) differ from permutation importance's ({', '.join(top_pi)}; Spearman "
        f"{rho:.2f}): SHAP measures how much a feature moves these rows' scores away from the background's average, "
        "permutation importance how much the ranking quality (ROC AUC) of all audit rows drops without it; a feature "
        "can move scores a lot where it rarely changes the ranking, and the explained rows over-represent declines."
    )


def _shap_budget(
    n: int, m: int, background: int, permutations: int, method: str, exact_max: int, max_rows: int
) -> tuple[int, int, str]:
    """Background size and pairs of orders that keep the model evaluations within ``max_rows`` (wide data), and a
    note saying what was reduced. Cost: exact ``n (2^m - 2) B``, permutation about ``n 2P (m - 1) B`` rows; each row
    costs in proportion to its width, so beyond 20 features the budget shrinks as 20 / m."""
    exact = method == "exact" or (method == "auto" and m <= exact_max)
    max_rows = int(max_rows * min(1.0, 20 / max(m, 1)))

    def cost(b: int, p: int) -> int:
        return n * b * ((2**m - 2) if exact else 2 * p * max(m - 1, 1))

    b, p = background, permutations
    while cost(b, p) > max_rows and b > 20:
        b = max(20, b // 2)
    while not exact and cost(b, p) > max_rows and p > 1:
        p = max(1, p // 2)
    if (b, p) == (background, permutations):
        return b, p, ""
    return (
        b,
        p,
        (
            f"to stay within local.shap.max_model_rows={max_rows:,} model evaluations for {m} features, the background "
            f"was reduced to {b} rows" + (f" and the orders to {p} antithetic pairs" if p != permutations else "")
        ),
    )


def _raw_records(schema: Schema, codes: np.ndarray) -> list[dict]:
    """Code-space rows as records of raw values (level names; a missing number as None)."""
    out = []
    for row in codes:
        rec = {}
        for f, v in zip(schema.features, row, strict=True):
            if f.is_categorical:
                rec[f.name] = f.levels[int(v)] if int(v) < len(f.levels) else "<unknown>"
            else:
                rec[f.name] = None if np.isnan(v) else float(v)
        out.append(rec)
    return out


def _counterfactual_records(schema: Schema, res) -> list[list[dict]]:
    """Per explained row and counterfactual slot: ``found``, the changed features in raw values (``from``, ``to``),
    the full counterfactual row in raw values, its score and cost. "Not found" is ``found: false``, never a row of
    missing values."""
    out = []
    for i in range(len(res.instances)):
        slots = []
        for r in range(res.counterfactuals.shape[1]):
            if np.isnan(res.cost[i, r]):
                slots.append({"found": False})
                continue
            row = _raw_records(schema, res.counterfactuals[i, r][None, :])[0]
            before = _raw_records(schema, res.instances[i][None, :])[0]
            slots.append(
                {
                    "found": True,
                    "changes": {f: {"from": before[f], "to": row[f]} for f, _, _ in res.changes(i, r)},
                    "row": row,
                    "score": float(res.prediction[i, r]),
                    "cost": float(res.cost[i, r]),
                }
            )
        out.append(slots)
    return out


def _value_text(feat, code: float) -> str:
    if feat.is_categorical:
        i = int(code)
        return feat.levels[i] if i < len(feat.levels) else "<unknown>"
    return "missing" if np.isnan(code) else f"{code:g}"


class ShapModule:
    name = "shap"
    title = "SHAP values and reason codes"

    def enabled(self, config: AuditConfig) -> bool:
        return config.local.enabled and config.local.shap.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        lc = ctx.config.local
        sc = lc.shap
        schema = ctx.dataset.schema
        names = schema.feature_names
        idx, why = select_instances(ctx)
        X = ctx.codes_audit[idx]
        sv, B, w, bg_rows, method_note = self._values(ctx, X, len(idx))
        err = sv.additivity_error
        findings = [
            Finding(
                self.name,
                f"SHAP additivity: max |base + sum(phi) - f(x)| = {err.max():.1e} over {len(err)} explained rows",
                "pass" if err.max() <= sc.additivity_tolerance else "fail",
                "info" if err.max() <= sc.additivity_tolerance else "medium",
                {"max_additivity_error": float(err.max()), "rows": len(err)},
                f"additivity error <= {sc.additivity_tolerance:g}",
                id="shap.additivity",
            )
        ]
        thr = ctx.config.model.threshold
        declined = np.flatnonzero(schema.declined(sv.predictions, thr))
        rc = self._reason_codes(ctx, sv, X, idx, declined, findings)
        per_row = pd.DataFrame(sv.values, columns=names)
        per_row.insert(0, "row", idx)
        per_row.insert(1, "selected as", [", ".join(why[int(i)]) for i in idx])
        per_row.insert(2, "f(x)", sv.predictions)
        per_row["additivity error"] = err
        mean_abs = pd.Series(np.abs(sv.values).mean(axis=0), index=names).sort_values(ascending=False)
        versus = _shap_versus_importance(ctx, mean_abs, len(idx))
        figures = [self._summary_figure(sv.values, X, names, mean_abs, schema)]
        figures[0].caption += " " + versus
        if sc.waterfalls and len(declined):
            figures.append(self._waterfalls(sv, X, idx, declined[: sc.waterfalls], schema))
        return ModuleResult(
            summary={
                "method": sv.method,
                "instances": len(idx),
                "background_rows": len(B),
                "base_value": sv.base_value,
                "max_additivity_error": float(err.max()),
                "top_feature": mean_abs.index[0],
                "rows_evaluated": sv.rows_evaluated,
            },
            tables=[
                Table(
                    "reason_codes",
                    "Reason codes for declined applicants (from SHAP)",
                    rc,
                    f"For each explained row predicted below the threshold {thr:g}: the {sc.reason_codes} features "
                    "whose values push the score down most, with the value and its SHAP contribution. The reasons "
                    "come from SHAP; the faithfulness section says whether SHAP is the most faithful explainer of "
                    "this model (finding faithfulness.most_faithful).",
                ),
                Table(
                    "shap_values",
                    "SHAP values per explained row",
                    per_row,
                    f"Method: {method_note}. Background: {len(B)} training rows ({lc.background.method}); base value "
                    f"{sv.base_value:.4f}. Each row's values add up to f(x) - base.",
                ),
            ],
            figures=figures,
            findings=findings,
            data={
                "rows": idx,
                "feature_names": names,
                "values": sv.values,
                "background_rows": bg_rows,
                "background_weights": w,
                "background": _raw_records(schema, B),
                "base_value": sv.base_value,
                "predictions": sv.predictions,
                "additivity_error": err,
                "method": sv.method,
                "method_note": method_note,
            },
        )

    def _values(self, ctx: AuditContext, X: np.ndarray, n_rows: int):
        """SHAP values of the rows ``X`` against a summarised background, by our engine or the shap library's; with
        the background, its weights and rows, and a note on the method."""
        lc = ctx.config.local
        sc = lc.shap
        schema = ctx.dataset.schema
        names = schema.feature_names
        seed = ctx.seed_for(self.name)
        bg_size, n_perm, budget_note = _shap_budget(
            n_rows, len(names), lc.background.size, sc.n_permutations, sc.method, sc.exact_max_features,
            sc.max_model_rows,
        )  # fmt: skip
        B, w, bg_rows = summarize_background(
            ctx.train_codes(), bg_size, method=lc.background.method, categorical_mask=schema.categorical_mask,
            random_state=seed, return_index=True, sample_weight=ctx.dataset.w_train,
        )  # fmt: skip
        common = dict(feature_names=names, method=sc.method, n_permutations=n_perm,
                      exact_max_features=sc.exact_max_features, random_state=seed + 1)  # fmt: skip
        if sc.engine == "shap":
            sv = shapley_values_shap(ctx.predictor.predict_codes, X, B, **common)
        else:
            sv = shapley_values(ctx.predictor.predict_codes, X, B, background_weights=w, **common)
        method_note = (
            f"exact Shapley values over all 2^{len(names)} coalitions (at most {sc.exact_max_features} features)"
            if sv.method.startswith("exact")
            else f"antithetic permutation sampling, {sv.n_permutations} feature orders per row ({len(names)} features "
            f"> {sc.exact_max_features}, too many for all coalitions); exact for interactions up to second order"
        )
        if sc.engine == "shap":
            method_note += "; computed by the shap library's own explainer (engine: shap)"
        if budget_note:
            method_note += "; " + budget_note
        return sv, B, w, bg_rows, method_note

    def _reason_codes(self, ctx: AuditContext, sv, X, idx, declined, findings: list[Finding]) -> pd.DataFrame:
        """The declined rows' top adverse features, marked when one is a sensitive feature or a flagged proxy (a
        finding says how many rows cite one)."""
        sc = ctx.config.local.shap
        schema = ctx.dataset.schema
        names = schema.feature_names
        direction = "negative" if schema.favourable_is_positive else "positive"
        codes = reason_codes(sv.values[declined], feature_names=names, k=sc.reason_codes, direction=direction)
        fair = ctx.results.get("fairness")
        watched = {s: "sensitive" for s in schema.sensitive} | {
            p: "proxy" for p in (fair.data.get("flagged_proxies", []) if fair is not None else [])
        }
        rc_rows, citing = [], {}
        for r, reasons in zip(declined, codes, strict=True):
            row = {"row": int(idx[r]), "probability": float(sv.predictions[r])}
            cited = []
            for k, (f, phi) in enumerate(reasons, start=1):
                mark = f" [{watched[f]}]" if f in watched else ""
                row[f"reason {k}"] = f"{f} = {_value_text(schema.feature(f), X[r, names.index(f)])} ({phi:+.3f}){mark}"
                if f in watched:
                    cited.append(f)
            row["cites sensitive or proxy"] = ", ".join(cited) if cited else "no"
            for f in cited:
                citing[f] = citing.get(f, 0) + 1
            rc_rows.append(row)
        n_citing = sum(r["cites sensitive or proxy"] != "no" for r in rc_rows)
        # one fact, one finding: the reasons cite what other sections judge, and the finding points to those ids
        pairs = fair.data.get("flagged_proxy_pairs", []) if fair is not None else []
        related = [f"permutation_importance.sensitive_input.{f}" for f in sorted(citing) if f in schema.sensitive]
        related += [f"fairness.proxy.{f}.{s}" for f, s in pairs if f in citing]
        if rc_rows:
            findings.append(
                Finding(
                    self.name,
                    f"Reason codes of {n_citing} of {len(rc_rows)} declined rows cite a sensitive feature or a "
                    f"flagged proxy"
                    + (f" ({', '.join(f'{f} {n}x' for f, n in sorted(citing.items()))})" if citing else ""),
                    "fail" if n_citing else "pass",
                    "medium" if n_citing else "info",
                    {"rows": len(rc_rows), "citing": n_citing, "features": citing, "related": related},
                    "no adverse-action reason names a sensitive feature or a likely proxy of one",
                    id="shap.reason_codes_cite_sensitive",
                    value=n_citing / len(rc_rows),
                    plain=(
                        f"{n_citing} of {len(rc_rows)} declined applicants' top reasons include a sensitive feature or "
                        "a likely proxy of one: an adverse-action notice would cite it."
                        if n_citing
                        else "No declined applicant's top reasons cite a sensitive feature or a likely proxy."
                    ),
                )
            )
        return pd.DataFrame(rc_rows)

    @staticmethod
    def _summary_figure(values, X, names, mean_abs, schema) -> Figure:
        return Figure(
            "shap_summary",
            "Mean |SHAP| per feature and every explained row's SHAP value (categoricals grey).",
            draw(_draw_shap_summary, values, X, names, mean_abs, schema),
        )

    @staticmethod
    def _waterfalls(sv, X, idx, rows, schema) -> Figure:
        return Figure(
            "shap_waterfalls",
            "Waterfalls for declined rows: from the base value (dashed) to the prediction (solid), feature by feature.",
            draw(_draw_waterfalls, sv, X, idx, rows, schema),
        )


class LimeModule:
    name = "lime"
    title = "LIME local surrogates"

    def enabled(self, config: AuditConfig) -> bool:
        return config.local.enabled and config.local.lime.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        lc = ctx.config.local.lime
        names = ctx.dataset.schema.feature_names
        idx, _ = select_instances(ctx)
        main, reruns, how, perturbed_only = self._explain(ctx, idx)
        k = min(lc.top_k, len(names))
        top = main.top_features(k)
        # with top_k >= the number of features every top-k set is all features: overlap 1 by construction
        assessable = lc.top_k < len(names)
        stability = (
            np.mean([top_k_jaccard(top, e.top_features(k)) for e in reruns], axis=0)
            if reruns
            else np.full(len(idx), np.nan)
        )
        agreement = np.full(len(idx), np.nan)
        shap_res = ctx.results.get("shap")
        if assessable and shap_res is not None and np.array_equal(shap_res.data["rows"], idx):
            phi = np.asarray(shap_res.data["values"])
            shap_top = [list(r[:k]) for r in np.argsort(-np.abs(phi), axis=1, kind="stable")]
            agreement = top_k_jaccard(top, shap_top)
        rows = [
            {"row": int(r), "f(x)": float(main.prediction[i]), "surrogate at x": float(main.local_prediction[i]),
             "fidelity R2": float(main.score[i]), f"stability (top-{k} Jaccard)": float(stability[i]),
             f"agreement with SHAP (top-{k})": float(agreement[i]),
             "top features": "; ".join(f"{main.conditions[i][j]} ({main.weights[i, j]:+.3f})" for j in top[i])}
            for i, r in enumerate(idx)
        ]  # fmt: skip
        table = pd.DataFrame(rows)
        findings = self._findings(lc, main, stability, agreement, reruns, assessable, k, len(names))
        return ModuleResult(
            summary={
                "instances": len(idx),
                "num_samples": lc.num_samples,
                "kernel_width": main.kernel_width,
                "mean_fidelity": float(np.mean(main.score)),
                "mean_stability": float(np.nanmean(stability)) if reruns else None,
                "mean_shap_agreement": float(np.nanmean(agreement)) if not np.isnan(agreement).all() else None,
                "rows_evaluated": main.rows_evaluated * (1 + len(reruns)),
            },
            tables=[
                Table(
                    "lime",
                    "LIME explanations per row (sorted by agreement with SHAP, lowest first)",
                    table.sort_values(f"agreement with SHAP (top-{k})", kind="stable"),
                    f"Surrogate: weighted ridge on {lc.num_samples} neighbours (quartile bins for numerics, levels for "
                    f"categoricals), kernel width {main.kernel_width:.2f}. Stability: top-{k} overlap with "
                    f"{len(reruns)} reruns under other seeds."
                    + (
                        f" The neighbourhood varies {how} (local.lime.max_features); the others keep the row's values."
                        if perturbed_only
                        else ""
                    ),
                )
            ],
            figures=[
                Figure(
                    "lime_quality",
                    "Distribution of LIME fidelity, stability and SHAP agreement.",
                    draw(_draw_lime_quality, main.score, stability, agreement, bool(reruns), k),
                )
            ],
            findings=findings,
            data={
                "rows": idx,
                "weights": main.weights,
                "fidelity": main.score,
                "stability": stability,
                "shap_agreement": agreement,
            },
        )

    def _explain(self, ctx: AuditContext, idx: np.ndarray):
        """The LIME explanations of the rows (by our engine or the lime library's) and, when stability can be
        assessed, reruns under other seeds; with how the perturbed features were chosen on wide data."""
        lc = ctx.config.local.lime
        schema = ctx.dataset.schema
        names = schema.feature_names
        X = ctx.codes_audit[idx]
        seed = ctx.seed_for(self.name)
        levels = [list(f.levels) if f.is_categorical else None for f in schema.features]
        chosen, how = most_important(ctx, lc.max_features)
        extra = {"perturbed": [names.index(f) for f in chosen]} if how and lc.engine == "audit" else {}

        def explain(s):
            fn = lime_explanations_lime if lc.engine == "lime" else lime_explanations
            return fn(
                ctx.predictor.predict_codes, X, ctx.train_codes(), feature_names=names,
                categorical_mask=schema.categorical_mask, level_names=levels, num_samples=lc.num_samples,
                num_features=lc.num_features, kernel_width=lc.kernel_width, random_state=s, **extra,
            )  # fmt: skip

        main = explain(seed)
        assessable = lc.top_k < len(names)
        reruns = [explain(seed + 1 + r) for r in range(lc.stability_runs)] if assessable else []
        return main, reruns, how, bool(extra)

    def _findings(self, lc, main, stability, agreement, reruns, assessable: bool, k: int, n_features: int):
        findings = []
        low_fid = float(np.mean(main.score < lc.min_fidelity))
        findings.append(
            Finding(
                self.name,
                f"LIME fidelity: mean R^2 {np.mean(main.score):.2f}; {low_fid:.0%} of rows below {lc.min_fidelity:g}",
                "pass" if low_fid <= 0.5 else "fail",
                "info" if low_fid <= 0.5 else "low",
                {"mean_fidelity": float(np.mean(main.score)), "share_low_fidelity": low_fid},
                f"at most half the rows with surrogate R^2 < {lc.min_fidelity:g}",
                id="lime.fidelity",
            )
        )
        if not assessable:
            findings.append(
                Finding(
                    self.name,
                    f"LIME stability and SHAP-LIME agreement not assessable: lime.top_k {lc.top_k} >= the "
                    f"{n_features} features, so every top-{k} set holds all features (overlap 1 by construction); "
                    f"lower local.lime.top_k below {n_features}",
                    "not_assessable",
                    "low",
                    {"top_k": lc.top_k, "features": n_features},
                    id="lime.stability",
                )
            )
        if reruns:
            unstable = float(np.mean(stability < lc.min_stability))
            findings.append(
                Finding(
                    self.name,
                    f"LIME stability: mean top-{k} Jaccard {np.mean(stability):.2f} over {len(reruns)} reruns; "
                    f"{unstable:.0%} of rows unstable",
                    "pass" if unstable <= 0.2 else "fail",
                    "info" if unstable <= 0.2 else "low",
                    {"mean_stability": float(np.mean(stability)), "share_unstable": unstable},
                    f"at most 20% of rows with top-{k} Jaccard < {lc.min_stability:g} across seeds",
                    id="lime.stability",
                )
            )
        if not np.isnan(agreement).all():
            findings.append(
                Finding(
                    self.name,
                    f"SHAP and LIME agree on {np.mean(agreement):.0%} of their top-{k} features on average "
                    f"(fully on {np.mean(agreement == 1):.0%} of rows)",
                    "info",
                    evidence={"mean_agreement": float(np.mean(agreement))},
                    id="lime.shap_agreement",
                    value=float(np.mean(agreement)),
                    plain=(
                        f"SHAP and LIME share {np.mean(agreement):.0%} of their top-{k} features. They answer different "
                        "questions: SHAP splits the exact gap between the row's score and the background's average, "
                        "LIME fits a line to the scores of random neighbours described by 'same bin as the row or "
                        "not'; they part where a feature acts non-linearly inside a bin, through interactions, or "
                        "where the surrogate fits poorly (low fidelity)."
                    ),
                )
            )
        return findings


class CounterfactualModule:
    name = "counterfactuals"
    title = "Counterfactuals and recourse"

    def enabled(self, config: AuditConfig) -> bool:
        return config.local.enabled and config.local.counterfactuals.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        schema = ctx.dataset.schema
        thr = ctx.config.model.threshold
        idx, why = select_instances(ctx)
        res, cons, cap_note = self._search(ctx, idx)
        metrics = counterfactual_metrics(res)
        violations = constraint_violations(res, ctx.train_codes(), schema=schema, constraints=cons)
        # independent re-scoring through the DataFrame path
        flat = res.counterfactuals[~np.isnan(res.cost)]
        rescored = ctx.predictor.predict_proba(schema.from_codes(flat)) if len(flat) else np.empty(0)
        orig = np.repeat(res.original_prediction >= thr, (~np.isnan(res.cost)).sum(axis=1))
        flipped = float(np.mean((rescored >= thr) != orig)) if len(flat) else float("nan")
        table = self._table(ctx, res, idx, why)
        findings = self._findings(ctx, res, table, metrics, violations, flipped, len(idx))
        tables = [
            Table(
                "counterfactuals",
                "Counterfactuals: what would change the decision",
                table,
                "Cost: scaled L1 distance (numerics divided by their median absolute deviation on the training rows, "
                "or standard deviation where that is 0; 1 per changed category). Immutable: "
                f"{', '.join(cons.immutable) or 'none'}; monotone: {dict(cons.monotone) or 'none'}." + cap_note,
            )
        ]
        self._recourse(ctx, res, idx, tables, findings)
        return ModuleResult(
            summary={
                **{key: (round(v, 4) if isinstance(v, float) else v) for key, v in metrics.items()},
                "constraint_violations": sum(violations.values()),
                "rescored_flip_rate": flipped,
                "rows_evaluated": res.rows_evaluated,
            },
            tables=tables,
            findings=findings,
            data={
                "rows": idx,
                "counterfactuals": _counterfactual_records(schema, res),
                "cost": res.cost,
                "metrics": metrics,
                "violations": violations,
            },
        )

    def _search(self, ctx: AuditContext, idx: np.ndarray):
        """The counterfactuals of the rows under the config's constraints (on wide data, changing only the most
        important mutable features), the constraints used and a note on that cap."""
        from dataclasses import replace

        cc = ctx.config.local.counterfactuals
        schema = ctx.dataset.schema
        cons = constraints_from_config(ctx.config, schema)
        mutable = [f for f in schema.feature_names if f not in cons.immutable]
        searched, how = most_important(ctx, cc.max_features, among=mutable)
        cap_note = ""
        if how:  # wide data: the search's cost grows with the features it may change
            cons = replace(cons, immutable=tuple(f for f in schema.feature_names if f not in searched))
            cap_note = (
                f" The search changes only {how.replace('features', 'mutable features')} "
                "(local.counterfactuals.max_features)."
            )
        res = counterfactuals(
            ctx.predictor.predict_codes, ctx.codes_audit[idx], ctx.train_codes(), schema=schema, constraints=cons,
            threshold=ctx.config.model.threshold, k=cc.per_instance, max_changes=cc.max_changes,
            n_random=cc.n_random, sparsity_weight=cc.sparsity_weight, plausibility_quantile=cc.plausibility_quantile,
            random_state=ctx.seed_for(self.name),
        )  # fmt: skip
        return res, cons, cap_note

    @staticmethod
    def _table(ctx: AuditContext, res, idx, why) -> pd.DataFrame:
        cc = ctx.config.local.counterfactuals
        schema = ctx.dataset.schema
        thr = ctx.config.model.threshold
        rows = []
        for i, r in enumerate(idx):
            for slot in range(res.counterfactuals.shape[1]):
                if np.isnan(res.cost[i, slot]) and slot > 0:
                    continue
                changes = [
                    f"{f}: {_value_text(schema.feature(f), a)} -> {_value_text(schema.feature(f), b)}"
                    for f, a, b in res.changes(i, slot)
                ]
                rows.append(
                    {"row": int(r), "selected as": ", ".join(why[int(r)]), "f(x)": float(res.original_prediction[i]),
                     "counterfactual f": float(res.prediction[i, slot]),
                     "changes": "; ".join(changes) if changes else "none found within the constraints",
                     "cost": float(res.cost[i, slot]), "features changed": float(res.n_changed[i, slot]),
                     "fragile": bool(abs(res.prediction[i, slot] - thr) < cc.fragile_margin)}
                )  # fmt: skip
        return pd.DataFrame(rows)

    def _findings(self, ctx: AuditContext, res, table, metrics, violations, flipped: float, n_rows: int):
        cc = ctx.config.local.counterfactuals
        found = res.found
        n_fragile = int(table["fragile"].sum()) if len(table) else 0
        n_cf = int((~np.isnan(res.cost)).sum())
        not_found = 1.0 - metrics["validity"]
        n_viol = sum(violations.values())
        diag = res.diagnostics
        none_flipped = int(((diag["flipped"] == 0) & ~found).sum())
        implausible = int(((diag["flipped"] > 0) & (diag["plausible"] == 0) & ~found).sum())
        why = (
            f" ({none_flipped} with no change within the constraints that flips the decision, {implausible} whose "
            "flipping changes were all farther from the training data than the plausibility limit)"
            if not found.all()
            else ""
        )
        return [
            Finding(
                self.name,
                f"Counterfactuals found for {found.mean():.0%} of {n_rows} rows; {not_found:.0%} have none within "
                "the constraints" + why,
                "pass" if not_found <= cc.max_not_found else "fail",
                "info" if not_found <= cc.max_not_found else "medium",
                {
                    "share_not_found": not_found,
                    "rescored_flip_rate": flipped,
                    "none_flip": none_flipped,
                    "rejected_as_implausible": implausible,
                },
                f"share without a counterfactual <= {cc.max_not_found:g}",
                id="counterfactuals.found",
            ),  # fmt: skip
            Finding(
                self.name,
                f"{n_fragile} of {n_cf} counterfactuals land within {cc.fragile_margin:g} of the threshold (fragile)",
                "info",
                "low" if n_fragile else "info",
                {"fragile": n_fragile, "counterfactuals": n_cf, "margin": cc.fragile_margin},
                id="counterfactuals.fragile",
                value=n_fragile / n_cf if n_cf else None,
                plain=(
                    f"{n_fragile} of {n_cf} counterfactuals only just cross the threshold (score within "
                    f"{cc.fragile_margin:g} of it): a small change of the model or the data could undo them."
                ),
            ),
            Finding(
                self.name,
                f"Constraint violations in returned counterfactuals: {n_viol}",
                "pass" if n_viol == 0 and (np.isnan(flipped) or flipped == 1.0) else "fail",
                "info" if n_viol == 0 else "high",
                {**violations, "rescored_flip_rate": flipped},
                "0 violations; every counterfactual re-scored through predict_proba flips the decision",
                id="counterfactuals.constraint_violations",
            ),
        ]

    def _recourse(self, ctx: AuditContext, res, idx, tables: list, findings: list) -> None:
        """Recourse gap: the cost of the cheapest counterfactual of the declined rows, by sensitive group."""
        schema = ctx.dataset.schema
        declined = schema.declined(res.original_prediction, ctx.config.model.threshold) & res.found
        gap_rows = []
        if schema.sensitive and declined.any():
            groups = {name: labels[idx] for name, labels in audit_groupings(ctx).items()}
            for name in schema.sensitive:
                lab = groups[name]
                for g in sorted(set(lab[declined].tolist())):
                    m = declined & (lab == g)
                    gap_rows.append({"feature": name, "group": g, "declined rows": int(m.sum()),
                                     "mean cost": float(res.cost[m, 0].mean())})  # fmt: skip
        if not gap_rows:
            return
        gaps = pd.DataFrame(gap_rows)
        tables.append(
            Table(
                "recourse",
                "Recourse cost by sensitive group (declined rows)",
                gaps,
                "Mean cost of the cheapest counterfactual per group: a higher cost means the group needs larger "
                "changes to be approved. Groups with few explained rows are noisy.",
            )
        )
        for name, sub in gaps[gaps["declined rows"] >= 3].groupby("feature", sort=False):
            if len(sub) >= 2:
                findings.append(
                    Finding(
                        self.name,
                        f"Recourse gap by {name}: mean counterfactual cost {sub['mean cost'].min():.2f} to "
                        f"{sub['mean cost'].max():.2f}",
                        "info",
                        evidence={"gap": float(sub["mean cost"].max() - sub["mean cost"].min())},
                        id=f"counterfactuals.recourse_gap.{name}",
                    )
                )


# ------------------------------------------------------------------------------------ figures (see plotting.draw)
def _draw_shap_summary(values, X, names, mean_abs, schema):
    order = list(mean_abs.index)
    fig, (a1, a2) = subplots(1, 2, figsize=(11, 0.34 * len(names) + 1.5), sharey=True)
    ypos = np.arange(len(order))[::-1]
    a1.barh(ypos, mean_abs.to_numpy(), color="#2e6db4")
    a1.set(yticks=ypos, yticklabels=order, xlabel="mean |SHAP value|", title="Global importance (explained rows)")
    a1.set_xlabel("mean |SHAP value| (probability)")
    a1.set_title("Global importance (explained rows)")
    rng = np.random.default_rng(0)
    mappable = None
    for y, f in zip(ypos, order, strict=True):
        j = names.index(f)
        v = values[:, j]
        jitter = y + rng.uniform(-0.3, 0.3, len(v))
        col = X[:, j]
        if schema.feature(f).is_categorical or np.isnan(col).all() or np.nanmax(col) == np.nanmin(col):
            a2.scatter(v, jitter, color="#7f8c8d", s=9)
        else:
            rank = pd.Series(col).rank(pct=True).to_numpy()
            mappable = a2.scatter(v, jitter, c=rank, cmap="coolwarm", s=9, vmin=0, vmax=1)
    a2.axvline(0, color="black", lw=0.8)
    a2.tick_params(axis="y", labelleft=True)
    a2.set_yticks(ypos, order)
    a2.set(xlabel="SHAP value (change in probability)", title="Per explained row")
    if mappable is not None:
        cb = a2.figure.colorbar(mappable, ax=a2, fraction=0.05, pad=0.02)
        cb.set_label("feature value (percentile; grey: categorical)")
    return fig


def _draw_waterfalls(sv, X, idx, rows, schema):
    names = sv.feature_names
    fig, axes = subplots(len(rows), 1, figsize=(8, len(rows) * (0.28 * len(names) + 1.2)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        v = sv.values[r]
        order = np.argsort(-np.abs(v), kind="stable")
        start = sv.base_value
        labels = []
        for pos, j in enumerate(order):
            ax.barh(pos, v[j], left=start, color="#c0392b" if v[j] < 0 else "#27ae60")
            start += v[j]
            labels.append(f"{names[j]} = {_value_text(schema.feature(names[j]), X[r, j])}"[:32])
        ax.set_yticks(range(len(order)), labels)
        ax.invert_yaxis()
        ax.axvline(sv.base_value, color="grey", lw=0.8, ls="--")
        ax.axvline(sv.predictions[r], color="black", lw=0.8)
        ax.set(title=f"row {idx[r]}: f(x) = {sv.predictions[r]:.3f}", xlabel="probability")
    return fig


def _draw_lime_quality(score, stability, agreement, reruns: bool, k: int):
    fig, (a1, a2) = subplots(1, 2, figsize=(10, 3))
    a1.hist(score, bins=20, range=(0, 1), color="#2e6db4")
    a1.set(xlabel="surrogate R^2 (fidelity)", ylabel="rows", title="Fidelity")
    if reruns:
        a2.hist(stability, bins=10, range=(0, 1), color="#8e44ad", alpha=0.7, label="stability across seeds")
    if not np.isnan(agreement).all():
        a2.hist(agreement, bins=10, range=(0, 1), color="#e67e22", alpha=0.6, label="agreement with SHAP")
    a2.set(xlabel=f"top-{k} Jaccard", title="Stability and SHAP agreement")
    if a2.get_legend_handles_labels()[0]:
        a2.legend(fontsize=8)
    else:
        a2.text(0.5, 0.5, "not assessable", ha="center", va="center", transform=a2.transAxes)
    return fig
