"""Seeded generator of small, messy, credit-like files: the quirks real data has and Adult does not.

``messy_frame()`` is a 2,000-row table in the style of the UCI "default of credit card clients" data: integer-coded
categoricals (SEX 1/2, EDUCATION 1-6, MARRIAGE 0-3), missing values in numeric columns, a 200-level BRANCH column
independent of everything, a favourable outcome that is the negative label (``default = 0``). ``write(kind, folder)``
writes it with one quirk each:

============== ====================================================================================================
kind           the file
============== ====================================================================================================
clean          the frame as it is (missing numerics and integer codes are part of every variant)
two_headers    a second header row (X1, X2, ... then the real names), as the original UCI file has
duplicates     two columns named PAY (pandas reads them as PAY and PAY.1)
index_column   a leading unnamed column of row numbers (``DataFrame.to_csv`` with its index)
mixed_numeric  INCOME holds a few 'n/a' and 'unknown' strings among its numbers
============== ====================================================================================================

Run ``python -m tests.messy.generate OUTDIR`` to write every variant and a config for each into OUTDIR.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

KINDS = ("clean", "two_headers", "duplicates", "index_column", "mixed_numeric")


def messy_frame(n: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The base table. ``default`` depends on LIMIT_BAL, PAY, EDUCATION and AGE; BRANCH is pure noise."""
    rng = np.random.default_rng(seed)
    sex = rng.choice([1, 2], size=n, p=[0.4, 0.6])
    education = rng.choice([1, 2, 3, 4, 5, 6], size=n, p=[0.35, 0.45, 0.14, 0.02, 0.02, 0.02])
    marriage = rng.choice([0, 1, 2, 3], size=n, p=[0.02, 0.45, 0.5, 0.03])
    age = rng.integers(21, 75, size=n).astype(float)
    limit = np.round(rng.lognormal(11.5, 0.8, size=n), -3)
    pay = rng.choice([-1, 0, 1, 2, 3], size=n, p=[0.2, 0.5, 0.15, 0.1, 0.05])
    income = np.round(rng.lognormal(10, 0.5, size=n))
    branch = np.array([f"B{i:03d}" for i in rng.integers(0, 200, size=n)])
    logit = -1.2 + 0.9 * pay - 0.6 * (np.log(limit) - 11.5) + 0.25 * (education - 2) - 0.01 * (age - 40)
    default = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame = pd.DataFrame(
        {
            "LIMIT_BAL": limit,
            "SEX": sex,
            "EDUCATION": education.astype(float),
            "MARRIAGE": marriage,
            "AGE": age,
            "PAY": pay,
            "INCOME": income,
            "BRANCH": branch,
            "default": default,
        }
    )
    # missing values: numerics (AGE, LIMIT_BAL) and an integer-coded categorical (EDUCATION becomes 1.0, 2.0, NaN)
    for col, share in (("LIMIT_BAL", 0.04), ("AGE", 0.03), ("EDUCATION", 0.02)):
        frame.loc[rng.uniform(size=n) < share, col] = np.nan
    return frame


def write(kind: str, folder: Path, *, n: int = 2000, seed: int = 0) -> Path:
    """Write variant ``kind`` of :func:`messy_frame` to ``folder/<kind>.csv`` and return the path."""
    frame = messy_frame(n, seed)
    path = Path(folder) / f"{kind}.csv"
    if kind == "clean":
        frame.to_csv(path, index=False)
    elif kind == "two_headers":
        codes = ",".join([f"X{i + 1}" for i in range(frame.shape[1] - 1)] + ["Y"])
        path.write_text(codes + "\n" + frame.to_csv(index=False))
    elif kind == "duplicates":
        frame.insert(6, "PAY_2", frame["PAY"])
        text = frame.to_csv(index=False).splitlines()
        text[0] = text[0].replace("PAY_2", "PAY")
        path.write_text("\n".join(text) + "\n")
    elif kind == "index_column":
        frame.to_csv(path)  # pandas writes the index as a first column with an empty name
    elif kind == "mixed_numeric":
        frame["INCOME"] = frame["INCOME"].astype(object)
        rng = np.random.default_rng(seed + 1)
        bad = rng.choice(n, size=6, replace=False)
        frame.loc[bad[:3], "INCOME"] = "n/a"
        frame.loc[bad[3:], "INCOME"] = "unknown"
        frame.to_csv(path, index=False)
    else:
        raise ValueError(f"unknown kind {kind!r}; kinds are {KINDS}")
    return path


def config(data: str, **dataset) -> dict:
    """An audit config for a messy file: SEX, EDUCATION and MARRIAGE declared categorical with value labels, the
    favourable outcome ``default = 0``, small module settings."""
    ds = {
        "train": {"path": data},
        "target": "default",
        "positive_label": 1,
        "favourable_label": 0,
        "features": {"categorical": ["SEX", "EDUCATION", "MARRIAGE"]},
        "value_labels": {
            "SEX": {1: "male", 2: "female"},
            "MARRIAGE": {0: "other", 1: "married", 2: "single", 3: "other"},
        },
        "split": {"test_size": 0.3},
    }
    ds.update(dataset)
    return {
        "seed": 0,
        "dataset": ds,
        "model": {"hidden": [16], "max_epochs": 6, "batch_size": 128, "patience": 2},
        "modules": {
            "permutation_importance": {"n_repeats": 2},
            "partial_dependence": {"sample_size": 200, "grid_resolution": 5, "ice_curves": 10},
            "ale": {"sample_size": 300, "n_bins": 5, "n_bootstrap": 5},
            "interactions": {"top_features": 3, "sample_size": 30},
        },
        "fairness": {"sensitive_features": ["SEX", "EDUCATION", "AGE"], "bins": {"AGE": [30, 50]}, "n_bootstrap": 50},
        "local": {
            "instances": {"declined": 8, "borderline": 3, "per_group": 1, "random": 3},
            "background": {"size": 30},
            "lime": {"num_samples": 500, "stability_runs": 1},
            "counterfactuals": {"n_random": 100, "immutable": ["SEX", "AGE"]},
        },
        "network": {"uncertainty": {"passes": 5}},
        "report": {"output_dir": "reports", "formats": ["json", "html"]},
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tests.messy.generate OUTDIR", file=sys.stderr)
        return 2
    out = Path(args[0])
    out.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        path = write(kind, out)
        (out / f"{kind}.yaml").write_text(yaml.safe_dump(config(path.name), sort_keys=False))
        print(f"{path}  {out / (kind + '.yaml')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
