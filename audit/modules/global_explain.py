"""Global explanation modules: permutation importance, PD + ICE, ALE, H-statistic interactions.

They all work in the raw feature space (a categorical is one feature) and call the predictor's code-space fast
path, so no DataFrame is rebuilt per perturbation.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.explain.ale import ale_2d, ale_categorical, ale_numeric
from audit.explain.interaction import h_statistic
from audit.explain.partial_dependence import partial_dependence, partial_dependence_2d, quantile_grid
from audit.explain.permutation import permutation_importance
from audit.findings import Finding
from audit.modules._shared import most_important, no_labels_finding
from audit.modules.base import AuditContext, Figure, ModuleResult, Table
from audit.plotting import draw, subplots
from audit.schema import Schema


def _short(label: str, width: int = 22) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _sample(n: int, size: int, seed: int) -> np.ndarray:
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def _check_features(names: list[str] | None, schema: Schema, key: str) -> list[str]:
    if names is None:
        return schema.feature_names
    unknown = [n for n in names if n not in schema.feature_names]
    if unknown:
        raise ValueError(f"{key}: unknown feature(s) {unknown}; features are {schema.feature_names}")
    return list(names)


def _capped(ctx: AuditContext, module: str, names: list[str] | None, cap: int, key: str):
    """``names`` as configured, or (unset, on wide data) the ``cap`` most important features, with a finding that
    says so."""
    schema = ctx.dataset.schema
    if names is not None:
        return _check_features(names, schema, f"modules.{module}.features"), []
    chosen, how = most_important(ctx, cap)
    if not how:
        return chosen, []
    note = Finding(
        module,
        f"{module.replace('_', ' ')} computed for {how}: its cost grows with the number of features; list them in "
        f"modules.{module}.features or raise {key}",
        "info",
        "low",
        {"features": len(chosen), "of": len(schema.feature_names)},
        id=f"{module}.features_capped",
    )
    return chosen, [note]


def _pages(items: list, levels: list[int], cols: int = 2, max_height: float = 9.0) -> list[list]:
    """Split panels with category levels into figures no taller than ``max_height`` inches (see
    :func:`_panel_grid`), so no figure is shrunk to fit a page and its labels stay legible."""
    groups, current, height = [], [], 0.0
    for start in range(0, len(items), cols):
        row = items[start : start + cols]
        h = 0.23 * max(levels[start : start + cols]) + 1.0
        if current and height + h > max_height:
            groups.append(current)
            current, height = [], 0.0
        current += row
        height += h
    if current:
        groups.append(current)
    return groups


def _paged_figures(name: str, caption: str, drawer, panels: list, levels: list[int]) -> list[Figure]:
    """Categorical panels split into figures no taller than a page (:func:`_pages`), named ``name``, ``name_2``..."""
    groups = _pages(panels, levels)
    return [
        Figure(name + (f"_{g + 1}" if len(groups) > 1 else ""), caption, draw(drawer, part))
        for g, part in enumerate(groups)
    ]


def _panel_grid(count: int, cols: int, *, levels: list[int] | None = None):
    """A figure of ``count`` panels in ``cols`` columns; unused axes are hidden.

    Numeric panels get a fixed height; with ``levels`` (one count per panel), each row is as tall as its panel with
    the most category levels, so level labels never overlap.
    """
    nrows = math.ceil(count / cols)
    if levels is None:
        fig, axes = subplots(nrows, cols, figsize=(11, 3.0 * nrows), squeeze=False)
    else:
        heights = [max(levels[i * cols : (i + 1) * cols]) for i in range(nrows)]
        fig, axes = subplots(
            nrows,
            cols,
            figsize=(11, sum(0.23 * h + 1.0 for h in heights)),
            squeeze=False,
            gridspec_kw={"height_ratios": heights},
        )
    flat = list(axes.flat)
    for ax in flat[count:]:
        ax.axis("off")
    return fig, flat[:count]


def tied_groups(groups: dict[str, list[str]], tied) -> dict[str, list[str]]:
    """``groups`` plus one group per ``dataset.tied`` set not already grouped (named by its members joined by
    " + "): features that encode the same thing are permuted together, else each looks unimportant."""
    out = {k: list(v) for k, v in groups.items()}
    grouped = {m for members in out.values() for m in members}
    for g in tied:
        if not set(g) & grouped:
            out[" + ".join(g)] = list(g)
    return out


class PermutationModule:
    name = "permutation_importance"
    title = "Permutation importance"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.permutation_importance.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        cfg = ctx.config.modules.permutation_importance
        schema = ctx.dataset.schema
        res, rows_note = self._importance(ctx)
        table = res.to_frame()
        findings = []
        if ctx.population is not None and ctx.population.scored.y is None:
            findings.append(no_labels_finding(self.name, "permutation importance on the population", "the test split"))
        findings += self._input_findings(table, list(schema.sensitive), cfg)
        return ModuleResult(
            summary={
                "metric": cfg.metric,
                "baseline_score": res.baseline_score,
                "top_feature": table["feature"][0],
                "rows_evaluated": res.rows_evaluated,
            },
            tables=[
                Table(
                    "importance",
                    f"Permutation importance (drop in {cfg.metric})",
                    table,
                    f"{cfg.n_repeats} repeats on {rows_note}; ci: 95% Student-t over repeats (permutation noise "
                    "only)"
                    + (
                        f"; data: 95% interval over {cfg.n_bootstrap} bootstrap resamples of the rows (how much the "
                        "importance would move with other data)."
                        if res.sampling_interval is not None
                        else "."
                    )
                    + (
                        " Tied features (dataset.tied) are permuted together: "
                        + "; ".join(" + ".join(g) for g in ctx.dataset.tied)
                        + "."
                        if ctx.dataset.tied
                        else ""
                    ),
                )
            ],
            figures=[self._figure(table, cfg.metric, {*schema.sensitive, *cfg.proxies})],
            findings=findings,
            data={
                "rank_by_feature": {m: int(r.rank) for r in table.itertuples() for m in r.members.split(", ")},
                "names": res.names,
                "members": res.members,
                "importances": res.importances,
                "data_interval": None if res.sampling_interval is None else [list(a) for a in res.sampling_interval],
                "baseline_score": res.baseline_score,
                "metric": res.metric,
            },
        )

    @staticmethod
    def _input_findings(table: pd.DataFrame, sensitive: list[str], cfg) -> list[Finding]:
        """One finding per sensitive attribute: is it a model input, and how important (issue 23, point 9); declared
        proxies get their rank as a note, since the fairness section's proxy finding is the one verdict on each
        (feature, sensitive attribute) pair."""
        rank = {}
        for _, row in table.iterrows():
            for m in row["members"].split(", "):
                rank[m] = row
        out = []
        for s in sensitive:
            row = rank.get(s)
            if row is None:
                out.append(Finding(
                    "permutation_importance", f"{s} (sensitive) is not a model input", "pass", "info", {"input": False},
                    "a sensitive attribute is not a model input", id=f"permutation_importance.sensitive_input.{s}",
                    subject=s, plain=f"The model does not read {s}; it may still learn it from proxies (see the "
                    "fairness section's proxy screening).",
                ))  # fmt: skip
                continue
            top = row["rank"] <= cfg.top_k
            out.append(Finding(
                "permutation_importance",
                f"{s} (sensitive) is a model input, ranked #{row['rank']} of {len(table)} in importance",
                "fail", "high" if top else "medium",
                {"input": True, "importance": row["importance"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
                 "rank": int(row["rank"])},
                "a sensitive attribute is not a model input", id=f"permutation_importance.sensitive_input.{s}",
                subject=s, measure="importance_rank", value=float(row["rank"]),
                plain=f"The model reads {s} directly (rank {row['rank']} of {len(table)} by permutation importance"
                f"{', in the top ' + str(cfg.top_k) if top else ''}): its decisions can differ for two applicants who "
                "differ only in it, which rules such as ECOA's prohibit for a protected attribute.",
            ))  # fmt: skip
        for p in cfg.proxies:
            row = rank.get(p)
            if row is None:
                continue
            out.append(Finding(
                "permutation_importance", f"{p} (declared proxy) ranks #{row['rank']} of {len(table)} in importance",
                "info", "info", {"importance": row["importance"], "rank": int(row["rank"])},
                id=f"permutation_importance.proxy_rank.{p}", subject=p,
                plain="Its association with a sensitive attribute is judged once, by the fairness section's proxy "
                "screening (fairness.proxy.*); this note gives its weight in the model.",
            ))  # fmt: skip
        return out

    def _importance(self, ctx: AuditContext):
        """Permutation importance on every row of a labelled population (permuted within partitions), else on the
        test rows; with a note on the rows used."""
        cfg = ctx.config.modules.permutation_importance
        groups = tied_groups(cfg.groups, ctx.dataset.tied)
        if ctx.population is not None and ctx.population.scored.y is not None:
            from audit.population import permutation_importance_population

            pop = ctx.population
            res = permutation_importance_population(
                pop.population, ctx.predictor, ctx.backend, y=pop.scored.y, proba=pop.scored.proba, groups=groups,
                metric=cfg.metric, n_repeats=cfg.n_repeats, threshold=ctx.config.model.threshold,
                random_state=ctx.seed_for(self.name),
            )  # fmt: skip
            return res, f"{res.n_rows} population rows (each feature permuted within partitions)"
        res = permutation_importance(
            ctx.predictor.predict_codes, ctx.codes_audit, ctx.y_audit, feature_names=ctx.dataset.schema.feature_names,
            groups=groups, metric=cfg.metric, n_repeats=cfg.n_repeats, max_rows=cfg.max_rows,
            threshold=ctx.config.model.threshold, chunk_rows=ctx.config.compute.chunk_rows,
            random_state=ctx.seed_for(self.name), n_bootstrap=cfg.n_bootstrap, sample_weight=ctx.w_audit,
        )  # fmt: skip
        weighted = f", weighted by dataset.weight '{ctx.config.dataset.weight}'" if ctx.w_audit is not None else ""
        return res, f"{res.n_rows} test rows{weighted}"

    @staticmethod
    def _figure(table: pd.DataFrame, metric: str, flagged: set[str]) -> Figure:
        return Figure(
            "permutation_importance",
            "Mean score drop with 95% interval bars; red bars are sensitive or proxy features.",
            draw(_draw_importance, table, metric, flagged),
        )


class PartialDependenceModule:
    name = "partial_dependence"
    title = "Partial dependence and ICE"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.partial_dependence.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        cfg = ctx.config.modules.partial_dependence
        schema = ctx.dataset.schema
        names, cap_notes = _capped(
            ctx, self.name, cfg.features, cfg.max_features, "modules.partial_dependence.max_features"
        )
        seed = ctx.seed_for(self.name)
        sample = _sample(len(ctx.codes_audit), cfg.sample_size, seed)
        X = ctx.codes_audit[sample]
        ice_rows = _sample(len(X), cfg.ice_curves, seed + 1)
        predict = ctx.predictor.predict_codes
        w = None if ctx.w_audit is None else ctx.w_audit[sample]  # dataset.weight: the PD is a weighted average
        results, rows, population_pd = self._curves(ctx, X, names, ice_rows, w)
        table = pd.DataFrame(rows).sort_values("pd_range", ascending=False, kind="stable")
        findings = list(cap_notes)
        for r in table.itertuples():
            if r.opposite_share >= 0.2 and r.ice_spread > 0.5 * max(r.pd_range, 1e-9):
                findings.append(
                    Finding(
                        self.name,
                        f"PD of {r.feature} hides opposite effects: {r.opposite_share:.0%} of rows move "
                        "against the average",
                        "info",
                        "low",
                        {"opposite_share": r.opposite_share, "ice_spread": r.ice_spread, "pd_range": r.pd_range},
                        id=f"partial_dependence.opposite_effects.{r.feature}",
                    )
                )
        figures = self._figures(results, cfg.centered)
        # the full grid in raw values (level names), undisplayed levels included; rows: the audit rows averaged over
        data = {
            "rows": sample,
            "ice_rows": sample[ice_rows],
            "average_over": "population" if population_pd is not None else "rows",
            "features": {r[0]: {"grid": _raw_grid(r[1], r[6].grid), "values": r[6].average} for r in results},
        }
        for a, b in cfg.pairs:
            _check_features([a, b], schema, "modules.partial_dependence.pairs")
            figures.append(self._pair(predict, X, schema, a, b, min(cfg.grid_resolution, 12), data, w))
        return ModuleResult(
            summary={
                "features": len(names),
                "rows": len(X),
                "ice_curves_shown": len(ice_rows),
                "average_over": "population" if population_pd is not None else "sample",
            },
            tables=[
                Table(
                    "heterogeneity",
                    "PD range and ICE heterogeneity per feature",
                    table,
                    (
                        f"PD averaged over all {ctx.population.population.n_rows} population rows; "
                        if population_pd is not None
                        else f"PD averaged over {len(X)} sampled test rows; "
                    )
                    + f"ICE from {len(X)} sampled test rows. ice_spread: mean std of mean-centred ICE curves; "
                    "opposite_share: rows whose ICE moves against the PD's direction.",
                )
            ],
            figures=figures,
            findings=findings,
            data=data,
        )

    def _curves(self, ctx: AuditContext, X: np.ndarray, names: list[str], ice_rows: np.ndarray, w=None):
        """PD and ICE of each feature over its grid (levels seen in the sample, or quantiles); with a population the
        PD is the average over all its rows, with ``w`` (``dataset.weight``) a weighted average. Returns per feature what the figures draw, the table rows, and the
        population PD (or None)."""
        cfg = ctx.config.modules.partial_dependence
        schema = ctx.dataset.schema
        cols = [schema.feature_names.index(name) for name in names]
        grids, freqs = [], []
        for name, j in zip(names, cols, strict=True):
            if schema.feature(name).is_categorical:
                grid, freq = np.unique(X[:, j], return_counts=True)
            else:
                grid, freq = quantile_grid(X[:, j], cfg.grid_resolution), None
            grids.append(grid)
            freqs.append(freq)
        population_pd = None
        if ctx.population is not None:  # the average over every row of the population; ICE from the sample
            from audit.population import partial_dependence_population

            population_pd = partial_dependence_population(
                ctx.population.population, ctx.predictor, ctx.backend, columns=cols, grids=grids,
                chunk_rows=ctx.config.compute.chunk_rows,
            )  # fmt: skip
        results, rows = [], []
        for i, (name, j) in enumerate(zip(names, cols, strict=True)):
            feat, grid, freq = schema.feature(name), grids[i], freqs[i]
            pd_ = partial_dependence(ctx.predictor.predict_codes, X, j, grid, feature=name, sample_weight=w)
            if population_pd is not None:
                pd_ = replace(pd_, average=population_pd[i])
            labels, avg, ice = self._display(pd_, feat, freq, cfg.max_levels)
            het = pd_.heterogeneity()
            results.append((name, feat, labels, avg, ice[ice_rows], het, pd_))
            rows.append({"feature": name, "kind": feat.kind, "grid_points": len(grid), "pd_min": float(avg.min()),
                         "pd_max": float(avg.max()), **het})  # fmt: skip
        return results, rows, population_pd

    @staticmethod
    def _display(pd_, feat, counts: np.ndarray | None, max_levels: int):
        """Labels, PD and ICE for plotting; rare categorical levels beyond ``max_levels`` are pooled by frequency.

        ``counts`` holds the rows per grid level (categoricals only).
        """
        if not feat.is_categorical:
            return [float(g) for g in pd_.grid], pd_.average, pd_.individual
        codes = pd_.grid.astype(int)
        freq = np.asarray(counts, dtype=float)
        names = [feat.levels[c] if c < len(feat.levels) else "<unknown>" for c in codes]
        order = np.argsort(-freq, kind="stable")
        keep, rest = order[: max_levels - 1], order[max_levels - 1 :]
        if len(order) <= max_levels:
            keep, rest = order, order[:0]
        labels = [names[i] for i in keep]
        avg = list(pd_.average[keep])
        ice = [pd_.individual[:, i] for i in keep]
        if len(rest):
            w = freq[rest] / freq[rest].sum()
            labels.append(f"other ({len(rest)} levels)")
            avg.append(float(pd_.average[rest] @ w))
            ice.append(pd_.individual[:, rest] @ w)
        return labels, np.array(avg), np.column_stack(ice)

    @staticmethod
    def _figures(results, centered: bool) -> list[Figure]:
        figs = []
        panels = [(r[0], r[2], r[3], r[4]) for r in results]  # name, labels, PD, ICE: what the figures draw
        num = [p for p, r in zip(panels, results, strict=True) if not r[1].is_categorical]
        cat = [p for p, r in zip(panels, results, strict=True) if r[1].is_categorical]
        if num:
            figs.append(
                Figure(
                    "pd_numeric",
                    "Numeric features: PD on a quantile grid (with observed min/max); grey "
                    "lines are ICE curves of sampled rows"
                    + (", anchored at the PD's first point (c-ICE)." if centered else "."),
                    draw(_draw_pd_numeric, num, centered),
                )
            )
        return figs + _paged_figures(
            "pd_categorical",
            "Categorical features: PD per level (red) and the 10–90% range of ICE values (grey); rare levels pooled "
            "as 'other'.",
            _draw_pd_categorical, cat, [len(p[1]) for p in cat],
        )  # fmt: skip

    @staticmethod
    def _pair(predict, X, schema: Schema, a: str, b: str, res: int, data: dict, w=None) -> Figure:
        j, k = schema.feature_names.index(a), schema.feature_names.index(b)
        grids = []
        for c, name in ((j, a), (k, b)):
            f = schema.feature(name)
            grids.append(
                np.unique(X[:, c]) if f.is_categorical else quantile_grid(X[:, c], res, include_extremes=False)
            )
        pd2 = partial_dependence_2d(predict, X, j, k, grids[0], grids[1], features=(a, b), sample_weight=w)
        data.setdefault("pairs", {})[f"{a} x {b}"] = {
            "grid_1": _raw_grid(schema.feature(a), pd2.grid_1),
            "grid_2": _raw_grid(schema.feature(b), pd2.grid_2),
            "values": pd2.average,
        }
        lab = [[_tick(schema, name, v) for v in g] for name, g in ((a, grids[0]), (b, grids[1]))]
        return Figure(
            f"pd2_{a}_{b}",
            f"Two-way PD of {a} and {b} (quantile grid of each).",
            draw(_draw_pd2, pd2.average, lab, a, b),
        )


def _raw_grid(feat, grid: np.ndarray) -> list:
    """Grid values as the data has them: level names for a categorical, numbers otherwise."""
    if feat.is_categorical:
        return [feat.levels[int(c)] if int(c) < len(feat.levels) else "<unknown>" for c in grid]
    return [float(g) for g in grid]


def _most_supported(a, k: int) -> np.ndarray:
    """Indices of the ``k`` levels of a categorical ALE with the most rows, in their similarity order."""
    if len(a.grid) <= k:
        return np.arange(len(a.grid))
    return np.sort(np.argsort(-np.asarray(a.counts), kind="stable")[:k])


def _tick(schema: Schema, name: str, v: float) -> str:
    f = schema.feature(name)
    if f.is_categorical:
        return _short(f.levels[int(v)] if int(v) < len(f.levels) else "<unknown>", 16)
    return f"{v:.4g}"


class AleModule:
    name = "ale"
    title = "Accumulated local effects"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.ale.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        cfg = ctx.config.modules.ale
        schema = ctx.dataset.schema
        names, cap_notes = _capped(ctx, self.name, cfg.features, cfg.max_features, "modules.ale.max_features")
        seed = ctx.seed_for(self.name)
        sample = _sample(len(ctx.codes_audit), cfg.sample_size, seed)
        X = ctx.codes_audit[sample]
        predict = ctx.predictor.predict_codes
        mask = schema.categorical_mask
        results, rows, findings = [], [], list(cap_notes)
        rng = np.random.default_rng(seed)
        for name in names:
            j = schema.feature_names.index(name)
            if not mask[j] and np.isnan(X[:, j]).all():
                findings.append(
                    Finding(
                        self.name,
                        f"ALE of {name} not assessable: it is missing in every sampled audit row",
                        "not_assessable",
                        "low",
                        {"rows": len(X)},
                        id=f"ale.empty_feature.{name}",
                    )  # fmt: skip
                )
                continue
            common = dict(min_rows=cfg.min_rows_per_bin, n_bootstrap=cfg.n_bootstrap, random_state=rng, feature=name)
            if mask[j]:
                a = ale_categorical(predict, X, j, categorical=mask, **common)
            else:
                a = ale_numeric(predict, X, j, n_bins=cfg.n_bins, **common)
            results.append(a)
            rows.append({"feature": name, "kind": a.kind, "points": len(a.grid),
                         "ale_range": float(a.values.max() - a.values.min()),
                         "low_support_bins": int(a.low_support.sum())})  # fmt: skip
        table = pd.DataFrame(rows).sort_values("ale_range", ascending=False, kind="stable")
        figures = self._figures(results, schema)
        data = {
            "rows": sample,
            "features": {
                a.feature: {
                    "kind": a.kind,
                    "grid": _raw_grid(schema.feature(a.feature), a.grid) if a.kind == "categorical" else a.grid,
                    "values": a.values,
                    "counts": a.counts,
                    "lower": a.lower,
                    "upper": a.upper,
                }
                for a in results
            },
        }
        notes = self._pairs(ctx, X, figures, data)
        return ModuleResult(
            findings=findings,
            summary={"features": len(results), "rows": len(X), "bootstrap": cfg.n_bootstrap},
            tables=[
                Table(
                    "ale_range",
                    "ALE range per feature",
                    table,
                    "Categorical levels ordered by similarity on the other features (1-D MDS of KS / "
                    "total-variation distances, as in ALEPlot/iml). " + " ".join(notes),
                )
            ],
            figures=figures,
            data=data,
        )

    def _pairs(self, ctx: AuditContext, X: np.ndarray, figures: list, data: dict) -> list[str]:
        """Second-order ALE of the configured numeric pairs (figures and data appended); notes on pairs skipped."""
        cfg = ctx.config.modules.ale
        schema = ctx.dataset.schema
        mask = schema.categorical_mask
        notes = []
        for a_name, b_name in cfg.pairs:
            _check_features([a_name, b_name], schema, "modules.ale.pairs")
            j, k = schema.feature_names.index(a_name), schema.feature_names.index(b_name)
            if mask[j] or mask[k]:
                notes.append(f"2-D ALE of {a_name} x {b_name} skipped: implemented for numeric pairs only")
                continue
            if (np.isnan(X[:, j]) | np.isnan(X[:, k])).all():
                notes.append(f"2-D ALE of {a_name} x {b_name} not assessable: no sampled row has both values")
                continue
            a2 = ale_2d(ctx.predictor.predict_codes, X, j, k, n_bins=min(cfg.n_bins, 10), features=(a_name, b_name))
            data.setdefault("pairs", {})[f"{a_name} x {b_name}"] = {
                "edges_1": a2.edges_1,
                "edges_2": a2.edges_2,
                "values": a2.values,
            }
            figures.append(self._pair(a2))
        return notes

    @staticmethod
    def _figures(results, schema: Schema) -> list[Figure]:
        figs = []
        num = [a for a in results if a.kind == "numeric"]
        cat = [a for a in results if a.kind == "categorical"]
        if num:
            figs.append(
                Figure(
                    "ale_numeric",
                    "Numeric features: centred ALE over quantile bins; shaded: 95% "
                    "bootstrap band; red ×: bins below the minimum rows per bin.",
                    draw(_draw_ale_numeric, num),
                )
            )
        shown = [_most_supported(a, 20) for a in cat]  # at most 20 levels a panel; report.json has them all
        panels = []
        for a, keep in zip(cat, shown, strict=True):
            f = schema.feature(a.feature)
            labels = [_short(f.levels[int(c)] if int(c) < len(f.levels) else "<unknown>") for c in a.grid[keep]]
            panels.append((a, keep, labels))
        return figs + _paged_figures(
            "ale_categorical",
            "Categorical features: ALE per level in similarity order, 95% bootstrap interval; red points: levels with "
            "few rows. Features with more than 20 levels show their 20 most frequent.",
            _draw_ale_categorical, panels, [len(k) for k in shown],
        )  # fmt: skip

    @staticmethod
    def _pair(a2) -> Figure:
        return Figure(
            f"ale2_{a2.features[0]}_{a2.features[1]}",
            "Second-order ALE: the pure interaction of the pair "
            "(main effects removed); 0 everywhere means no interaction.",
            draw(_draw_ale2, a2),
        )


class InteractionModule:
    name = "interactions"
    title = "Interaction strength (Friedman's H)"

    def enabled(self, config: AuditConfig) -> bool:
        return config.modules.interactions.enabled

    def run(self, ctx: AuditContext) -> ModuleResult:
        cfg = ctx.config.modules.interactions
        schema = ctx.dataset.schema
        pi = ctx.results.get("permutation_importance")
        if pi is not None:
            rank = pi.data["rank_by_feature"]
            ranked = sorted(rank, key=rank.__getitem__)
            source = "permutation importance"
        else:
            ranked = schema.feature_names
            source = "feature order (permutation importance was not run)"
        top = ranked[: cfg.top_features]
        idx = [schema.feature_names.index(n) for n in top]
        res = h_statistic(
            ctx.predictor.predict_codes,
            ctx.codes_audit,
            idx,
            feature_names=top,
            sample_size=cfg.sample_size,
            random_state=ctx.seed_for(self.name),
        )
        pairs = pd.DataFrame(res.pairs(), columns=["feature_1", "feature_2", "H"])
        findings = [
            Finding(
                self.name,
                f"Strong interaction {a} × {b} (H = {h:.2f}); see a 2-D PD/ALE plot",
                "info",
                "low",
                {"H": h},
                f"H > {cfg.flag_above} flagged",
                id=f"interactions.strong.{a}.{b}",
            )
            for a, b, h in res.pairs()
            if h > cfg.flag_above
        ]
        return ModuleResult(
            summary={"features": len(top), "sample_size": res.sample_size, "rows_evaluated": res.rows_evaluated},
            tables=[
                Table(
                    "h",
                    "Pairwise interaction strength",
                    pairs,
                    f"Top {len(top)} features by {source}; H = sqrt(H²) of Friedman & Popescu on a seeded "
                    f"sample of {res.sample_size} rows (cost {res.rows_evaluated} model evaluations).",
                )
            ],
            figures=[
                Figure(
                    "h_statistic",
                    "Friedman's H for each pair of the top features: 0 means additive.",
                    draw(_draw_h, res.h, top),
                )
            ],
            findings=findings,
            data={"features": top, "h": res.h, "rows": res.rows},
        )


# ------------------------------------------------------------------------------------ figures (see plotting.draw)
def _draw_importance(table: pd.DataFrame, metric: str, flagged: set[str]):
    t = table.iloc[::-1]
    fig, ax = subplots(figsize=(7, 0.32 * len(t) + 1.2))
    colors = ["#c0392b" if set(m.split(", ")) & flagged else "#2e6db4" for m in t["members"]]
    err = np.vstack([t["importance"] - t["ci_low"], t["ci_high"] - t["importance"]])
    ax.barh([_short(f, 30) for f in t["feature"]], t["importance"], xerr=err, color=colors, capsize=2)
    ax.axvline(0, color="black", lw=0.8)
    ax.set(xlabel=f"drop in {metric} when shuffled", title="Permutation importance (red: sensitive or proxy)")
    return fig


def _draw_pd_numeric(panels, centered: bool):
    """``panels``: (name, grid, PD, ICE matrix) per numeric feature."""
    fig, axes = _panel_grid(len(panels), 3)
    for ax, (name, labels, avg, ice) in zip(axes, panels, strict=True):
        x = np.asarray(labels)
        ice_plot = ice - ice[:, :1] + avg[0] if centered else ice
        ax.plot(x, ice_plot.T, color="#7f8c8d", alpha=0.25, lw=0.7)
        ax.plot(x, avg, color="#c0392b", lw=2.2, label="PD")
        ax.set(xlabel=name, ylabel="P(positive)")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Partial dependence (red) with " + ("centred " if centered else "") + "ICE curves (grey)")
    fig.tight_layout()
    return fig


def _draw_pd_categorical(panels):
    """``panels``: (name, level labels, PD, ICE matrix) per categorical feature of one page."""
    fig, axes = _panel_grid(len(panels), 2, levels=[len(p[1]) for p in panels])
    for ax, (name, labels, avg, ice) in zip(axes, panels, strict=True):
        y = np.arange(len(labels))
        lo, hi = np.percentile(ice, [10, 90], axis=0)
        ax.hlines(y, lo, hi, color="#95a5a6", lw=3, label="ICE 10–90%")
        ax.plot(avg, y, "o", color="#c0392b", label="PD")
        ax.set_yticks(y, [_short(lab) for lab in labels], fontsize=8)
        ax.invert_yaxis()
        ax.set(xlabel="P(positive), probability", title=name)
    return fig


def _draw_pd2(average: np.ndarray, lab: list[list[str]], a: str, b: str):
    fig, ax = subplots(figsize=(6.5, 5))
    im = ax.imshow(average.T, origin="lower", aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(lab[0])), lab[0], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(lab[1])), lab[1], fontsize=8)
    ax.set(xlabel=a, ylabel=b, title=f"Two-way partial dependence: {a} × {b}")
    fig.colorbar(im, ax=ax, label="P(positive)")
    return fig


def _draw_ale_numeric(results):
    fig, axes = _panel_grid(len(results), 3)
    for ax, a in zip(axes, results, strict=True):
        if a.lower is not None:
            ax.fill_between(a.grid, a.lower, a.upper, color="#2e6db4", alpha=0.2, lw=0)
        ax.plot(a.grid, a.values, color="#2e6db4", lw=2)
        low = np.flatnonzero(a.low_support)
        if low.size:
            mids = (a.grid[low] + a.grid[low + 1]) / 2
            ax.plot(mids, np.interp(mids, a.grid, a.values), "x", color="#c0392b", ms=6)
        ax.axhline(0, color="grey", lw=0.7)
        ax.set(xlabel=a.feature, ylabel="ALE (Δ P(positive))")
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("Accumulated local effects with 95% bootstrap bands (red ×: bins with few rows)")
    fig.tight_layout()
    return fig


def _draw_ale_categorical(panels):
    """``panels``: (ALE result, shown level positions, their labels) per categorical feature of one page."""
    fig, axes = _panel_grid(len(panels), 2, levels=[len(p[1]) for p in panels])
    for ax, (a, keep, labels) in zip(axes, panels, strict=True):
        y = np.arange(len(labels))
        if a.lower is not None:
            ax.hlines(y, a.lower[keep], a.upper[keep], color="#9bb7dd", lw=3)
        colors = np.where(a.low_support[keep], "#c0392b", "#2e6db4")
        ax.scatter(a.values[keep], y, c=colors, zorder=3, s=18)
        ax.axvline(0, color="grey", lw=0.7)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        more = f" ({len(keep)} of {len(a.grid)} levels)" if len(keep) < len(a.grid) else ""
        ax.set(xlabel="ALE (Δ P(positive))", title=a.feature + more)
    return fig


def _draw_ale2(a2):
    fig, ax = subplots(figsize=(6.5, 5))
    lim = float(np.abs(a2.values).max()) or 1e-9
    mesh = ax.pcolormesh(a2.edges_1, a2.edges_2, a2.values.T, cmap="RdBu_r", vmin=-lim, vmax=lim, shading="gouraud")
    ax.set(xlabel=a2.features[0], ylabel=a2.features[1], title=f"Second-order ALE: {a2.features[0]} × {a2.features[1]}")
    fig.colorbar(mesh, ax=ax, label="interaction effect on P(positive)")
    return fig


def _draw_h(h: np.ndarray, top: list[str]):
    import seaborn as sns

    fig, ax = subplots(figsize=(4.6, 3.9))
    sns.heatmap(
        pd.DataFrame(h, index=top, columns=top),
        annot=True,
        fmt=".2f",
        cmap="Reds",
        vmin=0,
        vmax=max(0.5, float(np.nanmax(h)) if np.isfinite(h).any() else 0.5),
        ax=ax,
        cbar_kws={"label": "H"},
    )
    ax.set_title("Pairwise H-statistic (top features)")
    ax.tick_params(axis="x", rotation=45)
    return fig
