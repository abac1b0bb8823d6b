"""Fitting the explainers to a remote model's request budget (``model.max_rows`` / ``model.max_requests``).

How many rows an audit sends depends on the data, the config and, for counterfactual search, on the model. So the
count is measured, not guessed: every enabled module is run once against a local stand-in model (a fixed logistic
function of the coded features, scored in numpy; it sends nothing) and the rows each one asks for are counted. Then,
before each module runs, :class:`BudgetPlan` compares the rows it and the later modules need with what the budget
has left and, when they do not fit (with a 15% margin), lowers that module's sample sizes (:data:`KNOBS`) by the
factor that makes them fit; pairwise interactions cost the square of their sample, so theirs is lowered by the
factor's square root. The report says which sizes were lowered, from what to what. The budget itself stays a hard
cap: a request that would still exceed it is refused before it is sent, and its module is marked failed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from audit.model.adapter import Predictor

MARGIN = 0.85


class StandIn(Predictor):
    """A local model with the remote one's schema: ``sigmoid(w . z)`` of the standardised codes, ``w`` seeded."""

    def __init__(self, schema, codes_train: np.ndarray, *, seed: int = 0) -> None:
        super().__init__()
        self.schema = schema
        self.mean = codes_train.mean(axis=0)
        self.scale = codes_train.std(axis=0) + 1e-9
        self.w = np.random.default_rng(seed).normal(size=codes_train.shape[1])

    def _predict_codes(self, X: np.ndarray) -> np.ndarray:
        z = np.nan_to_num((X - self.mean) / self.scale) @ self.w
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def count_rows(ctx, modules) -> dict[str, int]:
    """Rows each enabled module asks the model to score, measured with :class:`StandIn` in place of the model."""
    stand_in = StandIn(ctx.dataset.schema, ctx.train_codes(), seed=ctx.config.seed)
    dry = dataclasses.replace(ctx, predictor=stand_in, results={}, cache={})
    counts = {}
    for module in modules:
        if not module.enabled(ctx.config):
            continue
        before = stand_in.rows_evaluated
        try:
            dry.results[module.name] = module.run(dry)
        except Exception:  # noqa: BLE001 - a module failing on the stand-in fails again in the real run, and says why
            pass
        counts[module.name] = stand_in.rows_evaluated - before
    return counts


KNOBS: dict[str, list[tuple[str, float, int]]] = {
    # module -> the sample sizes that drive its model evaluations: (config key, exponent of the factor, floor)
    "permutation_importance": [("modules.permutation_importance.max_rows", 1.0, 100)],
    "partial_dependence": [("modules.partial_dependence.sample_size", 1.0, 20)],
    "ale": [("modules.ale.sample_size", 1.0, 50)],
    "interactions": [("modules.interactions.sample_size", 0.5, 10)],  # cost: the sample's square
    "shap": [("local.background.size", 1.0, 10), ("local.shap.n_permutations", 1.0, 1)],
    "lime": [("local.lime.num_samples", 1.0, 100)],
    "contrastive": [("modules.contrastive.max_rows", 1.0, 2)],
    "stability": [("modules.stability.max_rows", 1.0, 100)],
    # cost: rows x background rows: each lowered by the factor's square root
    "faithfulness": [("modules.faithfulness.max_rows", 0.5, 5), ("modules.faithfulness.background", 0.5, 5)],
    # counterfactuals: none. Fewer random candidates leave more rows unflipped, and those are searched again with
    # four times the candidates: measured, n_random 100 -> 65 sent 4,912 rows and -> 46 sent 6,374 (more, not fewer)
}


HEADROOM = {"counterfactuals": 1.5}
"""Modules whose rows depend on the model (the counterfactual search retries rows that did not flip with a wider
search): their count on the stand-in is multiplied by this before planning, so the modules before them leave room
(measured on the synthetic model: the real search sent 1.22 times the stand-in's rows)."""


CAPS = {  # knobs that cap a count: lowered from the count they actually allow, not from the configured cap
    "modules.permutation_importance.max_rows": "audit",
    "modules.stability.max_rows": "audit",
    "modules.contrastive.max_rows": "explained",
    "modules.faithfulness.max_rows": "explained",
}


def lowered(cfg, module: str, factor: float, n_audit: int, n_explained: int | None = None):
    """``cfg`` with ``module``'s sample sizes (:data:`KNOBS`) lowered by ``factor`` (< 1), and the changes as text.
    A cap (:data:`CAPS`) is lowered from what it lets through: 40 explained rows allowed where 26 are selected count
    as 26, or lowering it would change nothing."""
    changes = []
    counts = {"audit": n_audit, "explained": n_explained}
    for key, exponent, floor in KNOBS.get(module, []):
        value = _get(cfg, key.split("."))
        if value is None:  # permutation_importance.max_rows unset: every audit row
            value = n_audit
        if key in CAPS and counts[CAPS[key]] is not None:
            value = min(value, counts[CAPS[key]])
        new = max(floor, int(value * factor**exponent))
        if new < value:
            cfg = _set(cfg, key.split("."), new)
            changes.append(f"{key} {value:,} -> {new:,}")
    pd_cfg = cfg.modules.partial_dependence
    if pd_cfg.ice_curves > pd_cfg.sample_size:
        cfg = _set(cfg, ["modules", "partial_dependence", "ice_curves"], pd_cfg.sample_size)
    return cfg, changes


def _get(section, keys: list[str]):
    for k in keys:
        section = getattr(section, k)
    return section


def _set(section, keys: list[str], value):
    """A copy of the (frozen) config ``section`` with the value at ``keys`` replaced."""
    head, *rest = keys
    new = value if not rest else _set(getattr(section, head), rest, value)
    return section.model_copy(update={head: new})


class BudgetPlan:
    """Decides, module by module, the config each one runs with so that the audit fits the request budget.

    The rows each module needs at the configured sizes are counted once (:func:`count_rows`); before a module runs,
    the rows still needed by it and every later module are compared with what the budget has left *now* (so a module
    that sent more than its count is paid for by the later ones). Modules without sample sizes to lower
    (:data:`KNOBS`) are paid for first; the others share the rest: a module's sample sizes are lowered by
    ``MARGIN * (left - fixed) / scalable`` when that is below 1.
    """

    def __init__(self, ctx, modules, rows_left: int) -> None:
        self.base = ctx.config
        self.n_audit = len(ctx.codes_audit)
        self.n_explained = None
        if ctx.config.local.enabled:
            from audit.modules._shared import select_instances

            self.n_explained = len(select_instances(ctx)[0])
        self.start_rows = rows_left
        self.counts = count_rows(ctx, modules)
        self.needs = {m: int(c * HEADROOM.get(m, 1.0)) for m, c in self.counts.items()}
        self.pending = list(self.counts)
        self.factors: dict[str, float] = {}
        self.changes: dict[str, list[str]] = {}

    def config_for(self, module: str, rows_left: int):
        """The config ``module`` runs with, given the rows the budget has left now."""
        if module not in self.pending:
            return self.base
        fixed = sum(self.needs[m] for m in self.pending if m not in KNOBS)  # cannot be lowered: paid for first
        scalable = sum(self.needs[m] for m in self.pending if m in KNOBS)
        self.pending.remove(module)
        factor = min(1.0, max(0.0, MARGIN * (rows_left - fixed)) / scalable) if scalable else 1.0
        if factor >= 1.0 or not self.counts[module]:
            return self.base
        cfg, changes = lowered(self.base, module, factor, self.n_audit, self.n_explained)
        self.factors[module] = round(factor, 4)
        if changes:
            self.changes[module] = changes
        return cfg

    def describe(self) -> dict:
        return {
            "rows_left_after_scoring": self.start_rows,
            "planned_rows": self.counts,
            "factors": self.factors,
            "lowered": self.changes,
        }

    def note(self) -> str | None:
        if not self.changes:
            return None
        total = sum(self.counts.values())
        parts = "; ".join(f"{m}: " + ", ".join(c) for m, c in self.changes.items())
        return (
            f"Sample sizes were lowered to fit the endpoint's request budget (the sections as configured would send "
            f"{total:,} rows; the budget left {self.start_rows:,} after scoring): {parts}"
        )
