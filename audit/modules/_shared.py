"""What several report sections need, in one place (sections never import each other): the sensitive groupings
of the audit rows, the rows local explanations look at, the most important features, the counterfactual
constraints of the config and the checks of the config that need the data.
"""

from __future__ import annotations

import numpy as np

from audit.config import AuditConfig
from audit.errors import DataError
from audit.fairness import groupings
from audit.findings import Finding
from audit.modules.base import AuditContext
from audit.references import closest


def audit_groupings(ctx: AuditContext) -> dict[str, np.ndarray]:
    """:func:`groupings` of all audit rows for the schema's sensitive features, computed once per run.

    Modules that look at a subset of rows index these labels, so a numeric sensitive feature binned by quantiles
    gets the same bins in every section of the report.
    """
    if "groupings" not in ctx.cache:
        ctx.cache["groupings"] = groupings(ctx.X_audit, ctx.config, list(ctx.dataset.schema.sensitive))
    return ctx.cache["groupings"]


def no_labels_finding(module: str, what: str, instead: str) -> Finding:
    """The finding a label-needing section gives for a population without labels."""
    return Finding(
        module, f"{what[0].upper()}{what[1:]}: not assessable: no labels (shown on {instead})", "not_assessable",
        "info", {}, plain=f"The population has no labels, so {what} cannot be measured; the figures are those of "
        f"{instead}, the last labelled data.", id=f"{module}.no_labels"
    )  # fmt: skip


def labelled_population(ctx: AuditContext) -> bool:
    """Whether label-needing sections use the population (it exists and has labels); else they use the test split
    and say the population has no labels."""
    return ctx.population is not None and ctx.population.scored.y is not None


def most_important(ctx: AuditContext, k: int, *, among: list[str] | None = None) -> tuple[list[str], str]:
    """The ``k`` most important features (permutation importance when it ran, else feature order), in feature order,
    and how they were chosen. Modules whose cost grows with the feature count use it on wide data."""
    names = among if among is not None else ctx.dataset.schema.feature_names
    if len(names) <= k:
        return list(names), ""
    pi = ctx.results.get("permutation_importance")
    if pi is not None:
        rank = pi.data["rank_by_feature"]
        top = set(sorted(names, key=lambda n: rank.get(n, len(rank) + 1))[:k])
        how = f"the {k} most important (permutation importance) of {len(names)} features"
    else:
        top = set(names[:k])
        how = f"the first {k} of {len(names)} features (permutation importance did not run)"
    return [n for n in names if n in top], how


def select_instances(ctx: AuditContext) -> tuple[np.ndarray, dict[int, list[str]]]:
    """Audit-row indices to explain and why each was chosen (cached per run).

    Order: explicit ids, declined (seeded sample of rows predicted negative), borderline (closest to the threshold),
    per sensitive group (seeded sample per group), random; duplicates are merged, the list is capped at
    ``max_instances``.
    """
    if "instances" in ctx.cache:
        return ctx.cache["instances"]
    sel = ctx.config.local.instances
    thr = ctx.config.model.threshold
    p = ctx.proba_audit
    n = len(p)
    rng = np.random.default_rng(ctx.seed_for("local.instances"))
    reasons: dict[int, list[str]] = {}

    def add(idx, why):
        for i in np.asarray(idx, dtype=np.int64).tolist():
            reasons.setdefault(i, []).append(why)

    add(sel.ids, "requested")
    declined = np.flatnonzero(ctx.dataset.schema.declined(p, thr))
    if sel.declined and len(declined):
        add(np.sort(rng.choice(declined, size=min(sel.declined, len(declined)), replace=False)), "declined")
    if sel.borderline:
        add(np.argsort(np.abs(p - thr), kind="stable")[: sel.borderline], "borderline")
    if sel.per_group and ctx.dataset.schema.sensitive:
        groups = audit_groupings(ctx)
        for name in ctx.dataset.schema.sensitive:
            labels = groups[name]
            for g in sorted(set(labels.tolist())):
                rows = np.flatnonzero(labels == g)
                add(np.sort(rng.choice(rows, size=min(sel.per_group, len(rows)), replace=False)), f"{name}={g}")
    if sel.random:
        add(np.sort(rng.choice(n, size=min(sel.random, n), replace=False)), "random")
    idx = np.array(list(reasons)[: sel.max_instances], dtype=np.int64)
    out = (idx, {int(i): reasons[int(i)] for i in idx})
    ctx.cache["instances"] = out
    return out


def constraints_from_config(cfg: AuditConfig, schema):
    """The counterfactual constraints of ``local.counterfactuals``; sensitive columns that are not model inputs are
    left out of ``immutable`` (they cannot change anyway)."""
    from audit.explain.counterfactual import Constraints

    cc = cfg.local.counterfactuals
    names = set(schema.feature_names)
    return Constraints(
        immutable=tuple(f for f in cc.immutable if f in names or f not in schema.sensitive),
        ranges=dict(cc.ranges),
        monotone=dict(cc.monotone),
        transitions={k: dict(v) for k, v in cc.transitions.items()},
        integer=tuple(cc.integer) if cc.integer is not None else None,
        tied=tuple(tuple(g) for g in cfg.dataset.tied),
        support_quantile=cc.support_quantile,
        min_level_count=cc.min_level_count,
    )


def check_local_config(cfg: AuditConfig, ds) -> None:
    """Checks of ``local`` that need the data: instance ids in range, constraints naming real features and levels.

    Raises
    ------
    DataError
        Naming the key, the bad value and the fix.
    """
    refs = cfg.fairness.reference_groups
    if refs:
        groups = groupings(ds.X_test, cfg, list(ds.schema.sensitive))
        for name, label in refs.items():
            if name not in groups:
                raise DataError(
                    f"fairness.reference_groups.{name}: not a sensitive feature or intersection{closest(name, groups)};"
                    f" groupings are {list(groups)}"
                )
            have = sorted(set(groups[name].tolist()))
            if label not in have:
                raise DataError(
                    f"fairness.reference_groups.{name}: no group '{label}'{closest(label, have)}; groups are {have[:20]}"
                )
    lc = cfg.local
    if not lc.enabled:
        return
    n = len(ds.X_test)
    bad = [i for i in lc.instances.ids if i >= n]
    if bad:
        raise DataError(f"local.instances.ids: {bad[:5]} out of range; the audit (test) rows are numbered 0 to {n - 1}")
    if lc.counterfactuals.enabled:
        try:
            constraints_from_config(cfg, ds.schema).validate(ds.schema)
        except ValueError as exc:
            raise DataError(f"local.counterfactuals.{exc}") from None
