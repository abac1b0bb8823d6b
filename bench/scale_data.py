"""A seeded synthetic credit-like dataset for the large-data benchmark (``make bench-scale``) and the scale tests.

Numeric, categorical and sensitive columns; the target ``outcome`` is "repaid" or "default" from a logistic model
of the features, with a group effect through ``region`` and ``income`` (which depend on ``ethnicity``), so the
fairness numbers are not trivially zero. Rows are generated and written in blocks (bounded memory at any size),
and block ``b`` is drawn from a generator seeded with ``(seed, b)``, so the first n rows of a larger file equal a
smaller file with the same seed and block size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

PURPOSES = ["car", "home", "education", "business", "medical", "travel", "debt", "other"]
HOUSING = ["own", "rent", "mortgage"]
EMPLOYMENT = ["employed", "self-employed", "unemployed", "retired", "student"]
REGIONS = [f"R{i:02d}" for i in range(10)]
ETHNICITY = ["A", "B", "C", "D"]


def block(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """``rows`` synthetic applicants."""
    sex = rng.choice(["female", "male"], rows, p=[0.48, 0.52])
    eth = rng.choice(4, rows, p=[0.6, 0.2, 0.12, 0.08])
    age = np.clip(rng.gamma(6.0, 7.0, rows) + 18, 18, 90).round()
    region = (eth * 2 + rng.integers(0, 4, rows)) % 10
    income = np.exp(rng.normal(10.6 - 0.12 * eth + 0.01 * (age - 40).clip(-20, 20), 0.55, rows)).round(-1)
    loan = np.exp(rng.normal(9.3, 0.7, rows)).round(-1)
    term = rng.choice([12, 24, 36, 60], rows, p=[0.1, 0.3, 0.4, 0.2])
    dti = np.clip(rng.beta(2.0, 5.0, rows) + loan / (income + 1) * 0.1, 0, 2)
    history = np.clip((age - 18) * rng.uniform(0.2, 1.0, rows), 0, None).round(1)
    accounts = rng.poisson(4, rows)
    util = np.clip(rng.beta(2, 3, rows) * 1.3, 0, 1.5)
    delinq = rng.poisson(0.3, rows)
    purpose = rng.integers(0, len(PURPOSES), rows)
    housing = rng.choice(3, rows, p=[0.3, 0.4, 0.3])
    employment = rng.choice(5, rows, p=[0.62, 0.15, 0.08, 0.1, 0.05])
    logit = (
        0.8
        + 0.9 * (np.log(income) - 10.5)
        - 0.35 * (np.log(loan) - 9.3)
        - 2.2 * (dti - 0.3)
        - 1.4 * (util - 0.5)
        - 0.7 * delinq
        + 0.03 * history
        - 0.012 * (term - 36)
        + np.array([0.2, 0.1, -0.9, -0.1, 0.6])[employment]
        + np.array([0.25, -0.2, 0.1])[housing]
        + np.linspace(-0.3, 0.3, 10)[region]
        + np.array([0.0, 0.1, -0.2, 0.1, -0.1, 0.0, -0.3, 0.0])[purpose]
    )
    y = rng.random(rows) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "age": age,
            "sex": sex,
            "ethnicity": np.array(ETHNICITY)[eth],
            "income": income,
            "loan_amount": loan,
            "term_months": term,
            "debt_to_income": dti.round(4),
            "credit_history_years": history,
            "open_accounts": accounts,
            "utilization": util.round(4),
            "delinquencies": delinq,
            "purpose": np.array(PURPOSES)[purpose],
            "housing": np.array(HOUSING)[housing],
            "employment": np.array(EMPLOYMENT)[employment],
            "region": np.array(REGIONS)[region],
            "applicant_id": np.zeros(rows, dtype=np.int64),
            "outcome": np.where(y, "repaid", "default"),
        }
    )


def generate(path: str | Path, rows: int, *, seed: int = 0, block_rows: int = 65536) -> Path:
    """Write ``rows`` rows to the Parquet file ``path``, one row group per block of ``block_rows``."""
    from audit.files import write_parquet

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def blocks():
        for b, start in enumerate(range(0, rows, block_rows)):
            n = min(block_rows, rows - start)
            frame = block(n, np.random.default_rng([seed, b]))
            frame["applicant_id"] = np.arange(start, start + n, dtype=np.int64) + 10_000_000
            yield frame

    write_parquet(path, blocks(), row_group_size=block_rows)
    return path
