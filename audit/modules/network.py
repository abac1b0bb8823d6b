"""Modules that look inside the built-in network: architecture and training, gradients, activations, uncertainty.

Each needs the network itself; for another model (a trusted pickle, a wrapped function) it reports that it does not
apply instead of failing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from audit.config import AuditConfig
from audit.findings import Finding
from audit.modules._shared import select_instances
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import draw, subplots


def _not_applicable(name: str, ctx: AuditContext) -> ModuleResult | None:
    """These sections need the net's layers: the built-in net, or a loaded file with a gradient handle (see
    :mod:`audit.model.formats`); any other model gets an info finding saying why not."""
    from audit.model.adapter import NetPredictor  # torch: imported here, so that the renderer process need not

    pred = ctx.predictor

    if isinstance(pred, NetPredictor) or getattr(pred, "net", None) is not None:
        return None
    fmt = getattr(pred, "format", "") or type(pred).__name__
    why = getattr(pred, "gradient_handle", "the model is not a network this audit can open")
    return ModuleResult(
        summary={"applicable": False},
        findings=[
            Finding(
                name,
                f"not applicable to this model format ({fmt}): gradient handle {why}",
                "info",
                id=f"{name}.not_applicable",
            )
        ],
    )


class ArchitectureModule:
    name = "architecture"
    title = "Network architecture and training"

    def enabled(self, config: AuditConfig) -> bool:
        return config.network.enabled and config.network.architecture

    def run(self, ctx: AuditContext) -> ModuleResult:
        na = _not_applicable(self.name, ctx)
        if na:
            return na
        net = ctx.predictor.net
        pre = ctx.predictor.preprocessing
        schema = ctx.dataset.schema
        rows = []
        width = len(pre.numeric_idx) + sum(e.embedding_dim for e in net.embeddings)
        rows.append({"layer": "input", "type": "numerics + embeddings", "shape": f"(n, {width})", "parameters": 0})
        for i, m in enumerate([*net.body, net.head]):
            kind = type(m).__name__
            shape = f"(n, {m.out_features})" if hasattr(m, "out_features") else ""
            extra = f" p={m.p}" if kind == "Dropout" else ""
            rows.append(
                {
                    "layer": "output (logit)" if m is net.head else f"body.{i}",
                    "type": kind + extra,
                    "shape": shape,
                    "parameters": sum(p.numel() for p in m.parameters()),
                }
            )
        emb_rows = [
            {
                "feature": schema.features[j].name,
                "levels (+ unknown)": e.num_embeddings,
                "embedding dim": e.embedding_dim,
                "parameters": e.num_embeddings * e.embedding_dim,
            }
            for j, e in zip(pre.categorical_idx, net.embeddings, strict=True)
        ]
        total = sum(p.numel() for p in net.parameters())
        history = pd.DataFrame(ctx.model_info.get("history") or [])
        best = ctx.model_info.get("best_epoch")
        figures, findings = [], []
        summary = {"parameters": total, "hidden_layers": len([m for m in net.body if hasattr(m, "out_features")])}
        if len(history):
            summary |= {"epochs_run": int(len(history)), "best_epoch": best}
            figures.append(
                Figure(
                    "training_history",
                    "Training history; early stopping kept the best epoch.",
                    draw(_draw_history, history, best),
                )
            )
            findings.append(
                Finding(
                    self.name,
                    f"{total:,} parameters; trained {len(history)} epochs, best validation loss at epoch {best}",
                    "info",
                    evidence={"parameters": total, "epochs": int(len(history)), "best_epoch": best},
                    id="architecture.training",
                )
            )
        tables = [Table("layers", "Layers", pd.DataFrame(rows), f"{total:,} trainable parameters in all.")]
        if emb_rows:
            tables.append(Table("embeddings", "Categorical embeddings", pd.DataFrame(emb_rows)))
        return ModuleResult(summary=summary, tables=tables, figures=figures, findings=findings)


class GradientsModule:
    name = "gradients"
    title = "Gradient attributions (Integrated Gradients, saliency, LRP)"

    def enabled(self, config: AuditConfig) -> bool:
        return config.network.enabled and config.network.gradients.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        na = _not_applicable(self.name, ctx)
        if na:
            return na
        gc = ctx.config.network.gradients
        schema = ctx.dataset.schema
        names = schema.feature_names
        from audit.explain.neural import integrated_gradients, reference_row

        idx, _ = select_instances(ctx)
        base = reference_row(ctx.train_codes(), schema.categorical_mask)
        res = integrated_gradients(ctx.predictor, ctx.codes_audit[idx], base, steps=gc.steps)
        err = res.completeness_error
        mean_ig = np.abs(res.attributions).mean(axis=0)
        mean_sal = res.saliency.mean(axis=0)
        table = pd.DataFrame({"feature": names, "mean |IG|": mean_ig, "mean saliency": mean_sal})
        findings = [
            Finding(
                self.name,
                f"Integrated Gradients completeness: max relative error {err.max():.1e} over {len(err)} rows",
                "pass" if err.max() <= gc.max_completeness_error else "fail",
                "info" if err.max() <= gc.max_completeness_error else "medium",
                {"max_completeness_error": float(err.max()), "median": float(np.median(err))},
                f"|sum(IG) - (f(x) - f(baseline))| / |f(x) - f(baseline)| <= {gc.max_completeness_error:g}",
                id="gradients.ig_completeness",
            )
        ]
        summary = {
            "instances": len(idx),
            "baseline_prediction": res.baseline_prediction,
            "max_completeness_error": float(err.max()),
            "mean_path_points": float(res.steps.mean()),
        }
        data = {"rows": idx, "attributions": res.attributions, "completeness_error": err}
        if gc.lrp:
            self._lrp(ctx, ctx.codes_audit[idx], table, summary, data, findings)
        shap_res = ctx.results.get("shap")
        if shap_res is not None and np.array_equal(shap_res.data["rows"], idx):
            phi = np.abs(np.asarray(shap_res.data["values"]))
            table["mean |SHAP|"] = phi.mean(axis=0)
            rho = [stats.spearmanr(np.abs(a), b).statistic for a, b in zip(res.attributions, phi, strict=True)]
            rho = np.array([r for r in rho if np.isfinite(r)])
            summary["mean_rank_correlation_with_shap"] = float(rho.mean()) if len(rho) else None
            findings.append(
                Finding(
                    self.name,
                    f"IG and SHAP rank features alike: mean per-row Spearman correlation {rho.mean():.2f}",
                    "info",
                    evidence={"mean_spearman": float(rho.mean()) if len(rho) else None},
                    id="gradients.ig_shap_agreement",
                )
            )
        table = table.sort_values("mean |IG|", ascending=False, kind="stable")
        return ModuleResult(
            summary=summary,
            tables=[
                Table(
                    "gradient_attributions",
                    "Gradient attributions per feature",
                    table,
                    "Integrated Gradients from a reference row (training medians, most frequent levels) through the "
                    "embeddings, summed back to one value per raw feature, computed exactly on each linear piece of "
                    "the ReLU network; saliency is the gradient norm at the row. LRP redistributes each row's logit "
                    "backwards layer by layer (epsilon rule; alpha=1, beta=0 rule), through the embeddings.",
                )
            ],
            figures=[
                Figure(
                    "gradients",
                    "Mean |IG| per feature, beside mean |SHAP| when both ran.",
                    draw(_draw_attributions, table, len(names)),
                )
            ],
            findings=findings,
            data=data,
        )

    def _lrp(self, ctx: AuditContext, X, table: pd.DataFrame, summary: dict, data: dict, findings: list) -> None:
        """LRP with the epsilon and the alpha=1, beta=0 rules: their columns of the table, the summary, the data and
        a finding on conservation (each added in place)."""
        from audit.explain.lrp import lrp

        gc = ctx.config.network.gradients
        eps = lrp(ctx.predictor, X, rule="epsilon", epsilon=gc.lrp_epsilon)
        ab = lrp(ctx.predictor, X, rule="alpha-beta", alpha=1.0, beta=0.0)
        table["mean |LRP epsilon|"] = np.abs(eps.attributions).mean(axis=0)
        table["mean |LRP alpha1-beta0|"] = np.abs(ab.attributions).mean(axis=0)
        absorbed = np.abs(eps.attributions.sum(axis=1) - eps.logits)
        data |= {"lrp": eps.attributions, "lrp_alpha_beta": ab.attributions, "logits": eps.logits}
        summary |= {
            "lrp_alpha_beta_max_conservation_error": float(ab.conservation_error.max()),
            "lrp_epsilon_median_absorbed": float(np.median(absorbed)),
        }
        findings.append(
            Finding(
                self.name,
                f"LRP (alpha=1, beta=0) conserves the logit: max relative error "
                f"{ab.conservation_error.max():.1e}; epsilon-LRP leaves a median {np.median(absorbed):.3f} of "
                "the logit in the biases",
                "pass" if ab.conservation_error.max() <= 1e-6 else "fail",
                "info",
                {
                    "alpha_beta_max_error": float(ab.conservation_error.max()),
                    "epsilon_median_absorbed": float(np.median(absorbed)),
                },  # fmt: skip
                "sum of alpha-beta relevances = logit (relative error <= 1e-6)",
                plain="Layer-wise relevance propagation splits each row's logit over the features; the "
                "alpha-beta rule keeps all of it, the epsilon rule lets the layers' biases take a share.",
                id="gradients.lrp_conservation",
            )
        )


class ActivationsModule:
    name = "activations"
    title = "Hidden-layer activations and representation"

    def enabled(self, config: AuditConfig) -> bool:
        return config.network.enabled and config.network.activations.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        na = _not_applicable(self.name, ctx)
        if na:
            return na
        ac = ctx.config.network.activations
        rng = np.random.default_rng(ctx.seed_for(self.name))
        n = len(ctx.codes_audit)
        rows_used = np.sort(rng.choice(n, size=min(n, 50_000), replace=False))  # bounds memory on large audits
        from audit.explain.neural import hidden_activations

        layers = hidden_activations(ctx.predictor, ctx.codes_audit[rows_used])
        rows = [
            {
                "layer": a.name,
                "units": len(a.active_share),
                "dead (never active)": int(a.dead.sum()),
                "always active": int(a.always_active.sum()),
                "mean active share": float(a.active_share.mean()),
            }
            for a in layers
        ]
        table = pd.DataFrame(rows)
        dead_share = table["dead (never active)"].sum() / max(table["units"].sum(), 1)
        findings = [
            Finding(
                self.name,
                f"{table['dead (never active)'].sum()} of {table['units'].sum()} hidden units are dead on the audit rows",
                "pass" if dead_share <= ac.max_dead_share else "fail",
                "info" if dead_share <= ac.max_dead_share else "low",
                {"dead_share": float(dead_share)},
                f"dead share <= {ac.max_dead_share:g}",
                id="activations.dead_units",
            )
        ]
        figures = [self._distributions(layers)]
        data = {"layers": rows}
        if layers:
            pick = np.sort(rng.choice(len(rows_used), size=min(ac.sample_size, len(rows_used)), replace=False))
            sample = rows_used[pick]
            H = layers[-1].values[pick]
            fig, probe = self._projection(ctx, H, sample, ac.tsne, rng)
            figures.append(fig)
            if probe:
                findings += [
                    Finding(
                        self.name,
                        f"{feat} is linearly decodable from the last hidden layer with ROC AUC {auc:.2f}",
                        "info",
                        evidence={"probe_auc": auc},
                        id=f"activations.decodable.{feat}",
                    )
                    for feat, auc in probe.items()
                ]
                data["probe_auc"] = probe
        return ModuleResult(
            summary={"dead_share": float(dead_share), "layers": len(layers)},
            tables=[
                Table(
                    "activations",
                    "Hidden units",
                    table,
                    f"ReLU outputs on {len(rows_used)} audit rows (all, up to 50,000). Dead: never above 0; always "
                    "active: never "
                    "cut by the ReLU (the unit acts linearly).",
                )
            ],
            figures=figures,
            findings=findings,
            data=data,
        )

    @staticmethod
    def _distributions(layers) -> Figure:
        panels = [(a.name, a.active_share, a.values.ravel()[a.values.ravel() > 0]) for a in layers]
        return Figure(
            "activation_distributions",
            "Per-unit activity and activation values per hidden layer.",
            draw(_draw_activations, panels),
        )

    def _projection(self, ctx: AuditContext, H, sample, tsne: bool, rng):
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import cross_val_score

        from audit.modules._shared import audit_groupings

        schema = ctx.dataset.schema
        proj = PCA(n_components=2, random_state=0).fit_transform(H) if H.shape[1] >= 2 else np.c_[H, H]
        methods = [("PCA", proj)]
        if tsne:
            from sklearn.manifold import TSNE

            methods.append(("t-SNE", TSNE(n_components=2, random_state=int(rng.integers(2**31 - 1))).fit_transform(H)))
        sens = list(schema.sensitive)
        groups = {name: labels[sample] for name, labels in audit_groupings(ctx).items()}
        first = (sens[0], groups[sens[0]]) if sens else None
        fig = draw(_draw_projection, methods, ctx.y_audit[sample], ctx.proba_audit[sample], first)
        probe = {}
        for s in sens:
            lab = groups[s]
            values, counts = np.unique(lab, return_counts=True)
            target = (lab == values[np.argmax(counts)]).astype(int)
            if 10 <= target.sum() <= len(target) - 10:
                clf = LogisticRegression(max_iter=500)
                probe[s] = float(cross_val_score(clf, H, target, cv=3, scoring="roc_auc").mean())
        return (
            Figure(
                "representation",
                "The last hidden layer projected to 2-D, coloured by label, prediction and the first sensitive feature. "
                "Probe: a logistic regression on the layer predicting the largest group vs the rest (3-fold ROC AUC).",
                fig,
            ),
            probe,
        )


def _matched_spread(std: np.ndarray, score: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Each row's MC-dropout spread over the mean spread of rows with a similar score (the same of ``n_bins``
    quantile bins of the mean score): 1 where a row is as uncertain as others scored alike. Groups compared on it
    differ only where the model is less certain about them at the same score.

    >>> s = np.array([0.01, 0.01, 0.2, 0.2]); p = np.array([0.02, 0.03, 0.5, 0.51])
    >>> _matched_spread(s, p, n_bins=2).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    edges = np.unique(np.quantile(score, np.linspace(0, 1, n_bins + 1)[1:-1]))
    b = np.searchsorted(edges, score, side="right")
    total = np.bincount(b, weights=std, minlength=len(edges) + 1)
    count = np.bincount(b, minlength=len(edges) + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_mean = total / count
        out = std / bin_mean[b]
    return np.where(np.isfinite(out), out, 1.0)


_PERMUTATIONS = 199


def _ratio_p(matched: np.ndarray, labels: np.ndarray, ratio: float, seed: int) -> float:
    """Permutation p-value of a max/min ratio of group means of ``matched`` at least ``ratio``: the share of
    :data:`_PERMUTATIONS` shuffles of the group labels (and the observed one) that give as large a ratio. Where the
    group tells nothing about the spread at a given score, the labels are exchangeable and the test is exact: a group
    of 30 rows reaches a ratio of 1.5 by chance alone often enough to need it.

    >>> rng = np.random.default_rng(0)
    >>> bool(_ratio_p(rng.lognormal(size=400), np.repeat(["a", "b"], 200), 1.01, 0) > 0.05)
    True
    """
    _, codes = np.unique(labels, return_inverse=True)
    k = codes.max() + 1
    counts = np.bincount(codes, minlength=k)
    rng = np.random.default_rng(seed)
    hits = 1
    for _ in range(_PERMUTATIONS):
        means = np.bincount(rng.permutation(codes), weights=matched, minlength=k) / counts
        hits += means.max() / max(means.min(), 1e-12) >= ratio * (1 - 1e-12)
    return float(hits / (_PERMUTATIONS + 1))


class UncertaintyModule:
    name = "uncertainty"
    title = "Predictive uncertainty (Monte Carlo dropout)"

    def enabled(self, config: AuditConfig) -> bool:
        return config.network.enabled and config.network.uncertainty.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        na = _not_applicable(self.name, ctx)
        if na:
            return na

        uc = ctx.config.network.uncertainty
        thr = ctx.config.model.threshold
        from audit.explain.neural import mc_dropout

        u = mc_dropout(
            ctx.predictor, ctx.codes_audit, passes=uc.passes, level=uc.level, random_state=ctx.seed_for(self.name)
        )
        straddle = (u.low < thr) & (u.high >= thr)
        findings = []
        if u.dropout == 0:
            findings.append(
                Finding(
                    self.name,
                    "the network has no dropout, so Monte Carlo dropout shows no spread; train with model.dropout > 0",
                    "info",
                    id="uncertainty.no_dropout",
                )
            )
        findings.append(
            Finding(
                self.name,
                f"{straddle.mean():.1%} of decisions have a {uc.level:.0%} MC-dropout interval that straddles the "
                f"threshold {thr:g}",
                "info",
                evidence={"straddle_share": float(straddle.mean()), "mean_std": float(u.std.mean())},
                id="uncertainty.straddling",
            )
        )
        rows = self._by_group(ctx, u, straddle, findings)
        tables = []
        if rows:
            tables.append(
                Table(
                    "uncertainty_by_group",
                    "Uncertainty by sensitive group",
                    pd.DataFrame(rows),
                    "Groups smaller than fairness.min_group_size are left out.",
                )
            )
        return ModuleResult(
            summary={
                "method": f"MC dropout, {uc.passes} passes, p={u.dropout:g}",
                "mean_std": float(u.std.mean()),
                "straddle_share": float(straddle.mean()),
            },
            tables=tables,
            figures=[
                Figure(
                    "uncertainty",
                    "Distribution of MC-dropout spread and interval width by score.",
                    draw(_draw_uncertainty, u.std, u.mean, u.high - u.low, thr, uc.passes, uc.level),
                )
            ],
            findings=findings,
            data={"std": u.std, "low": u.low, "high": u.high},
        )

    def _by_group(self, ctx: AuditContext, u, straddle: np.ndarray, findings: list[Finding]) -> list[dict]:
        """The spread per sensitive group (a table row each) and, per grouping, its finding (appended), compared at
        matched scores (see :func:`_matched_spread`)."""
        from audit.modules._shared import audit_groupings

        rows: list[dict] = []
        sens = list(ctx.dataset.schema.sensitive)
        if not sens:
            return rows
        uc = ctx.config.network.uncertainty
        matched = _matched_spread(u.std, u.mean)
        groups = audit_groupings(ctx)
        for s in sens:
            lab = groups[s]
            sub = []
            for g in sorted(set(lab.tolist())):
                m = lab == g
                if m.sum() < ctx.config.fairness.min_group_size:
                    continue
                sub.append(
                    {
                        "feature": s,
                        "group": g,
                        "rows": int(m.sum()),
                        "mean std": float(u.std[m].mean()),
                        "spread at matched scores": float(matched[m].mean()),
                        "mean interval width": float((u.high - u.low)[m].mean()),
                        "straddling share": float(straddle[m].mean()),
                    }
                )
            rows += sub
            if len(sub) >= 2 and u.dropout > 0:
                # compared at matched scores: a probability's spread shrinks towards 0 and 1 (and a logit's grows
                # with its size) whatever the model knows, so a group was flagged for the level of its scores
                stds = [r["spread at matched scores"] for r in sub]
                ratio = max(stds) / max(min(stds), 1e-12)
                hi = sub[int(np.argmax(stds))]["group"]
                lo_group = sub[int(np.argmin(stds))]["group"]
                judged = np.isin(lab, [r["group"] for r in sub])
                p = _ratio_p(matched[judged], lab[judged], ratio, ctx.seed_for(f"{self.name}.{s}"))
                beyond = ratio > uc.max_group_ratio and p < uc.alpha
                findings.append(
                    Finding(
                        self.name,
                        f"uncertainty by {s}: group {hi} has {ratio:.2f}x the spread of group {lo_group} at matched "
                        f"scores (permutation p = {p:.2g})",
                        "fail" if beyond else "pass",
                        "low" if beyond else "info",
                        {
                            "p_value": p,
                            "ratio": ratio,
                            "most_uncertain": hi,
                            "least_uncertain": lo_group,
                            "ratio_on_probability_scale": max(r["mean std"] for r in sub)
                            / max(min(r["mean std"] for r in sub), 1e-12),
                        },
                        f"max/min mean MC-dropout spread at matched scores across groups <= {uc.max_group_ratio:g}, "
                        f"or within chance (p >= {uc.alpha} over {_PERMUTATIONS} shuffles of the group labels)",
                        id=f"uncertainty.by_group.{s}",
                    )
                )
        return rows


# ------------------------------------------------------------------------------------ figures (see plotting.draw)
def _draw_history(history: pd.DataFrame, best):
    fig, (a1, a2) = subplots(1, 2, figsize=(10, 3))
    a1.plot(history["epoch"], history["train_loss"], marker="o", label="train loss")
    a1.plot(history["epoch"], history["val_loss"], marker="o", label="validation loss")
    if "val_auc" in history:
        a2.plot(history["epoch"], history["val_auc"], marker="o", color="#27ae60")
    for ax in (a1, a2):
        if best is not None and best >= 0:
            ax.axvline(best, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("epoch")
    a1.set(title="Loss (dashed: best epoch, weights restored)")
    a1.legend(fontsize=8)
    a2.set(title="Validation ROC AUC")
    return fig


def _draw_attributions(table: pd.DataFrame, n_features: int):
    fig, ax = subplots(figsize=(7, 0.32 * n_features + 1.2))
    t = table.iloc[::-1]
    y = np.arange(len(t))
    cols = [c for c in ("mean |IG|", "mean |SHAP|") if c in t]
    for k, c in enumerate(cols):
        v = t[c].to_numpy()
        ax.barh(y + 0.4 * k - 0.2 * (len(cols) - 1), v / max(v.max(), 1e-12), height=0.4, label=c)
    ax.set_yticks(y, t["feature"])
    ax.set(xlabel="share of the largest value", title="Attribution magnitude per feature")
    ax.legend(fontsize=8)
    return fig


def _draw_activations(panels):
    """``panels``: (layer name, active share per unit, positive activation values) per layer."""
    fig, axes = subplots(1, 2, figsize=(10, 3))
    for name, active_share, positive in panels:
        axes[0].hist(active_share, bins=20, range=(0, 1), alpha=0.6, label=name)
        axes[1].hist(positive, bins=40, alpha=0.6, label=name, log=True)
    axes[0].set(xlabel="share of rows where the unit is active", ylabel="units", title="Unit activity")
    axes[1].set(xlabel="activation (when > 0)", ylabel="count (log)", title="Activation values")
    axes[0].legend(fontsize=8)
    return fig


def _draw_projection(methods, y: np.ndarray, proba: np.ndarray, first):
    """``methods``: (name, 2-D projection) pairs; ``first``: (sensitive feature, group labels) or None."""
    ncol = 3
    fig, axes = subplots(len(methods), ncol, figsize=(12, 3.6 * len(methods)), squeeze=False)
    for r, (mname, P) in enumerate(methods):
        axes[r, 0].scatter(P[:, 0], P[:, 1], c=y, cmap="coolwarm", s=5)
        axes[r, 0].set(title=f"{mname}: coloured by label")
        axes[r, 1].scatter(P[:, 0], P[:, 1], c=proba, cmap="viridis", s=5)
        axes[r, 1].set(title=f"{mname}: coloured by predicted probability")
        if first is not None:
            name, lab = first
            for g in sorted(set(lab.tolist())):
                m = lab == g
                axes[r, 2].scatter(P[m, 0], P[m, 1], s=5, label=str(g)[:20], alpha=0.6)
            axes[r, 2].legend(fontsize=7, markerscale=2)
            axes[r, 2].set(title=f"{mname}: coloured by {name}")
        else:
            axes[r, 2].axis("off")
    return fig


def _draw_uncertainty(std, mean, width, thr: float, passes: int, level: float):
    fig, (a1, a2) = subplots(1, 2, figsize=(10, 3))
    a1.hist(std, bins=40, color="#8e44ad")
    a1.set(xlabel="std of the predicted probability", ylabel="rows", title=f"MC dropout spread ({passes} passes)")
    a2.scatter(mean, width, s=3, alpha=0.4)
    a2.axvline(thr, color="black", lw=0.8)
    a2.set(xlabel="mean predicted probability", ylabel=f"{level:.0%} interval width", title="Spread vs score")
    return fig
