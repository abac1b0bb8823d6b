"""False alarms and power of every check family, by simulated audits (issue 23, point 2).

The generator draws populations where, by construction, nothing is wrong: the model is the true probability function
(so it is calibrated), the sensitive groups are independent of every feature and of the label (equal base rates, equal
score distributions), the audit rows come from the training rows' distribution (no drift, no data fault: ``x2`` is
missing at random in 3% of rows of both), and no slice errs more than its scores predict. Each simulated audit runs the real pipeline (``audit.run_audit`` with that model,
nothing written) at the default settings, and a *family* raises a false alarm when any of its checks fails.

The same generator plants one effect of a stated size, and the family that should see it must fail:

- ``disparate_impact``: group B's decisive feature is shifted so that its selection rate is 0.7 times group A's (groups
  of 1,000 audit rows; the model is still calibrated and never reads the group);
- ``weak_segment``: in the slice ``colour = blue and sex = F`` (a sixth of the rows) labels are flipped so that the
  slice errs 10 points more than its scores predict;
- ``drift``: the audit rows' ``x1`` is shifted so that its PSI against the training rows is 0.25.

Usage::

    python bench/simulate.py --audits 210            # the README's tables (about 25 minutes on 2 cores)
    python bench/simulate.py --audits 14 --sizes 30,1000 --power 10

The uncertainty family needs the built-in network (its Monte Carlo dropout): it is simulated with networks trained on
null data (``--network N`` audits; the group is never an input, so groups are exchangeable given the score).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# each family: the finding id prefixes whose failure counts as the family's alarm
FAMILIES = {
    "fairness measures": ("fairness.demographic_parity", "fairness.disparate_impact", "fairness.equal_opportunity",
                          "fairness.equalized_odds"),
    "calibration gap": ("fairness.calibration_gap",),
    "proxies": ("fairness.proxy.",),
    "weak segments": ("weak_segments.",),
    "fragile decisions": ("contrastive.fragile",),
    "drift": ("drift.",),
    "data quality": ("data_quality.",),
    "uncertainty by group": ("uncertainty.by_group",),
}  # fmt: skip
SIZES = (30, 100, 300, 1000, 3000, 10000, 50000)
TRAIN_ROWS = 4000
COEF = np.array([1.2, -0.8, 0.6])  # x1, x2, x3
LEVELS = {"red": 0.4, "green": 0.0, "blue": -0.4}
# each planted effect and the group sizes it is planted on (the weak slice is a sixth of the 2m audit rows)
PLANTS = (("disparate_impact", 1000), ("weak_segment", 1000), ("weak_segment", 3000), ("drift", 1000))
PLANT_FAMILY = {"disparate_impact": "fairness measures", "weak_segment": "weak segments", "drift": "drift"}
DI_SHIFT = 0.545  # x1 shift of group B that gives a selection-rate ratio of 0.70 (see _check_plants)
DRIFT_SHIFT = 0.5125  # x1 shift of the audit rows that gives a PSI of 0.25 over 10 training-quantile bins
WEAK_EXCESS = 0.10
MISSING = 0.03  # x2 is missing at random in 3% of rows, in training and audit rows alike
EFFECTS = {
    "disparate_impact": "disparate impact ratio 0.70 (group B against A)",
    "weak_segment": "slice colour = blue & sex = F errs 10 points above its expected error",
    "drift": "x1 drifted by PSI 0.25",
}


def true_proba(frame: pd.DataFrame) -> np.ndarray:
    """The model: the probability the generator draws labels with (calibrated by construction); a missing ``x2``
    counts as 0, as it did when the label was drawn."""
    z = np.nan_to_num(frame[["x1", "x2", "x3"]].to_numpy(dtype=np.float64)) @ COEF
    z = z + frame["colour"].map(LEVELS).to_numpy(dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z))


def _rows(rng: np.random.Generator, n: int, group: np.ndarray, x1_shift: np.ndarray | float = 0.0) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n) + x1_shift,
            "x2": np.where(rng.uniform(size=n) < MISSING, np.nan, rng.normal(size=n)),
            "x3": rng.uniform(size=n),
            "colour": rng.choice(list(LEVELS), size=n),
            "grp": group,
            "sex": rng.choice(["F", "M"], size=n),
        }
    )
    frame["y"] = np.where(rng.uniform(size=n) < true_proba(frame), "yes", "no")
    return frame


def population(m: int, seed: int, plant: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows and audit rows (two groups of ``m`` each, A then B); nothing wrong unless ``plant`` says."""
    rng = np.random.default_rng(seed)
    train = _rows(rng, TRAIN_ROWS, rng.choice(["A", "B"], size=TRAIN_ROWS))
    group = np.repeat(["A", "B"], m)
    shift = np.where(group == "B", -DI_SHIFT, 0.0) if plant == "disparate_impact" else 0.0
    if plant == "drift":
        shift = DRIFT_SHIFT
    audit = _rows(rng, 2 * m, group, shift)
    if plant == "weak_segment":
        p = true_proba(audit)
        s = (audit["colour"] == "blue").to_numpy() & (audit["sex"] == "F").to_numpy()
        expected = np.minimum(p[s], 1 - p[s]).mean()
        flip = rng.uniform(size=int(s.sum())) < WEAK_EXCESS / (1 - 2 * expected)
        y = audit["y"].to_numpy().copy()
        y[np.flatnonzero(s)[flip]] = np.where(y[np.flatnonzero(s)[flip]] == "yes", "no", "yes")
        audit["y"] = y
    return train, audit


def config(folder: Path, seed: int, network: bool = False) -> dict:
    """The audit's config: the default settings of every judged section; explainers that judge nothing are off."""
    off = {"enabled": False}
    cfg = {
        "name": "simulation",
        "seed": seed,
        "dataset": {
            "train": {"path": str(folder / "train.csv")},
            "test": {"path": str(folder / "audit.csv")},
            "target": "y",
            "positive_label": "yes",
            "drop": ["grp"],
        },
        "model": {"hidden": [16], "max_epochs": 4, "batch_size": 128, "patience": 2, "dropout": 0.2},
        "fairness": {
            "derived": {"group": {"source": "grp", "regex": "(.*)"}},
            "sensitive_features": ["sex"],
            "intersections": [["group", "sex"]],
        },
        "modules": {
            m: off
            for m in (
                "permutation_importance",
                "partial_dependence",
                "ale",
                "interactions",
                "stability",
                "faithfulness",
            )
        },  # fmt: skip
        "local": off,
        "report": {"formats": ["json"]},
        "compute": {"threads": 1},
    }
    if network:  # only what the uncertainty family needs
        cfg["modules"] |= {m: off for m in ("data_quality", "drift", "weak_segments", "contrastive")}
        cfg["fairness"]["enabled"] = False
        cfg["network"] = {"gradients": off, "activations": off, "architecture": False}
    else:
        cfg["network"] = off
    return cfg


def simulate(
    m: int, seed: int, plant: str | None = None, network: bool = False, modules: dict | None = None
) -> dict[str, list[str]]:
    """One simulated audit: the ids of the failed checks per family (``modules``: settings over the defaults)."""
    from audit import run_audit

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train, audit = population(m, seed, plant)
        if network:
            train = pd.concat([train, audit.iloc[: len(audit) // 2]], ignore_index=True)
        train.to_csv(folder / "train.csv", index=False)
        audit.to_csv(folder / "audit.csv", index=False)
        cfg = config(folder, seed, network)
        for name, settings in (modules or {}).items():
            cfg["modules"][name] = {**cfg["modules"].get(name, {}), **settings}
        run = run_audit(cfg, model=None if network else true_proba, write=False)
    errors = [(r.name, r.error) for r in run.modules if r.status == "error"]
    if errors:
        raise RuntimeError(f"a section failed in the simulated audit (m={m}, seed={seed}): {errors}")
    failed: dict[str, list[str]] = defaultdict(list)
    for f in run.findings:
        for family, prefixes in FAMILIES.items():
            if f.id.startswith(prefixes) and f.status == "fail":
                failed[family].append(f.id)
    return dict(failed)


def interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a binomial proportion ``k / n``."""
    from scipy.stats import beta

    a = (1 - confidence) / 2
    low = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    high = 1.0 if k == n else float(beta.ppf(1 - a, k + 1, n - k))
    return low, high


def _cell(k: int, n: int) -> str:
    if n == 0:
        return "not run"
    low, high = interval(k, n)
    return f"{k}/{n} = {k / n:.1%} [{low:.1%}, {high:.1%}]"


def run_null(audits: int, sizes: tuple[int, ...], seed: int, network: int = 0, log=print) -> dict:
    """``audits`` null audits spread evenly over ``sizes`` (and ``network`` with the built-in network): per family,
    how many raised a failure, overall and per size, and the ids that failed."""
    alarms: Counter[str] = Counter()
    by_size: dict[int, Counter[str]] = defaultdict(Counter)
    n_size: Counter[int] = Counter()
    ids: Counter[str] = Counter()
    for i in range(audits):
        m = sizes[i % len(sizes)]
        t = time.perf_counter()
        failed = simulate(m, seed + i)
        n_size[m] += 1
        for family, fam_ids in failed.items():
            if family != "uncertainty by group":
                alarms[family] += 1
                by_size[m][family] += 1
                ids.update(fam_ids)
        log(f"null {i + 1}/{audits}: groups of {m}, {time.perf_counter() - t:.1f} s, failed {failed or 'nothing'}")
    net_alarms, net_sizes = 0, Counter()
    for i in range(network):
        m = sizes[i % len(sizes)]
        failed = simulate(m, seed + 10_000 + i, network=True)
        net_sizes[m] += 1
        if "uncertainty by group" in failed:
            net_alarms += 1
            ids.update(failed["uncertainty by group"])
        log(f"network {i + 1}/{network}: groups of {m}, failed {failed or 'nothing'}")
    return {"audits": audits, "alarms": alarms, "by_size": by_size, "n_size": n_size, "ids": ids,
            "network": network, "network_alarms": net_alarms, "network_sizes": net_sizes}  # fmt: skip


def run_power(runs: int, seed: int, log=print) -> dict[tuple[str, int], int]:
    """``runs`` audits per planted effect: how many times the family that should see it failed."""
    hits: Counter[tuple[str, int]] = Counter()
    for plant, m in PLANTS:
        for i in range(runs):
            failed = simulate(m, seed + 20_000 + i, plant=plant)
            hits[(plant, m)] += PLANT_FAMILY[plant] in failed
            log(f"{plant} (groups of {m}) {i + 1}/{runs}: {'detected' if PLANT_FAMILY[plant] in failed else 'missed'}")
    return dict(hits)


def _check_plants(n: int = 2_000_000) -> dict[str, float]:
    """The planted effects' true sizes, on a large sample (what the constants above were solved for)."""
    rng = np.random.default_rng(0)
    a = _rows(rng, n, np.repeat("A", n))
    b = _rows(rng, n, np.repeat("B", n), -DI_SHIFT)
    ratio = float((true_proba(b) >= 0.5).mean() / (true_proba(a) >= 0.5).mean())
    edges = np.quantile(a["x1"], np.linspace(0, 1, 11)[1:-1])
    e = np.bincount(np.searchsorted(edges, a["x1"]), minlength=10) / n
    c = np.bincount(np.searchsorted(edges, a["x1"] + DRIFT_SHIFT), minlength=10) / n
    return {"disparate_impact_ratio": ratio, "psi": float(np.sum((c - e) * np.log(c / e)))}


def tables(null: dict, power: dict[tuple[str, int], int], runs: int) -> str:
    """The two tables of the README, in Markdown."""
    lines = ["| Family | False alarms (95% Clopper-Pearson) | " + " | ".join(f"m={m}" for m in sorted(null["n_size"]))
             + " |", "|---|---|" + "---|" * len(null["n_size"])]  # fmt: skip
    for family in FAMILIES:
        if family == "uncertainty by group":
            if null["network"]:
                lines.append(f"| {family} (network) | {_cell(null['network_alarms'], null['network'])} |"
                             + " |" * len(null["n_size"]))  # fmt: skip
            continue
        k = null["alarms"][family]
        per = [f"{null['by_size'][m][family]}/{null['n_size'][m]}" for m in sorted(null["n_size"])]
        lines.append(f"| {family} | {_cell(k, null['audits'])} | " + " | ".join(per) + " |")
    lines += ["", "| Planted effect | Audit rows | Family | Detected (95% Clopper-Pearson) |", "|---|---|---|---|"]
    for (plant, m), hits in power.items():
        lines.append(f"| {EFFECTS[plant]} | {2 * m:,} | {PLANT_FAMILY[plant]} | {_cell(hits, runs)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--audits", type=int, default=210, help="null audits, spread over --sizes (default 210)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="audit rows per group (default %(default)s)")
    ap.add_argument("--power", type=int, default=30, help="audits per planted effect (default 30)")
    ap.add_argument("--network", type=int, default=30, help="null audits of the uncertainty family (default 30)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--check-plants", action="store_true", help="print the planted effects' true sizes and stop")
    args = ap.parse_args(argv)
    if args.check_plants:
        print(_check_plants())
        return 0
    sizes = tuple(int(s) for s in args.sizes.split(","))
    t = time.perf_counter()
    null = run_null(args.audits, sizes, args.seed, args.network, log=lambda s: print(s, file=sys.stderr))
    power = run_power(args.power, args.seed, log=lambda s: print(s, file=sys.stderr))
    print(tables(null, power, args.power))
    print(f"\nfailed ids under the null: {dict(null['ids'].most_common(20))}")
    print(f"{time.perf_counter() - t:.0f} s; python bench/simulate.py --audits {args.audits} --sizes {args.sizes} "
          f"--power {args.power} --network {args.network} --seed {args.seed}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
