"""Scoring the audit rows and the population once, for every section to share, with the checks that make a model
failure a failed "model" section (exit 3) rather than wrong numbers."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from audit.errors import AuditInputError, ModelRuntimeError


def record_model_traffic(model_info: dict, predictor) -> None:
    """A remote model's traffic (requests, rows, retries, the budget) and the output column its first answer decided
    into the report's provenance, and for a model that receives raw values the rows sent with a level no raw value
    could be given for (population rows only)."""
    if predictor is not None and hasattr(predictor, "describe"):
        model_info["requests"] = predictor.describe()
    column = getattr(predictor, "column", None)  # an endpoint's, decided from its first answer
    if column is not None and "output_column" not in model_info:
        model_info["output_column"] = column.describe()
    unknown = getattr(getattr(predictor, "raw", None), "unknown_rows", [0])[0]
    if unknown:
        model_info["rows_sent_with_an_unknown_level_as_missing"] = unknown


def score_population_run(cfg, ds, population, predictor, backend, progress, step):
    """Score every row of ``dataset.population`` (a model failure here is exit code 3, like on the test split)."""
    from audit.population import PopulationRun, score_population

    step("score population")
    with progress.stage("score population"):
        population = replace(population, schema=ds.schema)  # a loaded model's own levels
        try:
            scored = score_population(
                population, predictor, backend, unseen_categories=cfg.dataset.unseen_categories, progress=progress
            )
            _checked_scores(scored.proba, scored.rows)
        except (AuditInputError, ModelScoringError):
            raise
        except Exception as exc:  # noqa: BLE001 - a black-box model raising on the population
            raise ModelScoringError(f"scoring the population failed: {exc.__class__.__name__}: {exc}") from exc
    population = replace(population, kept=scored.kept)  # rows per partition after dataset.filter
    ds.files[str(cfg.dataset.population.path)] = population.sha256
    for name in scored.empty_features():
        ds.notes.append(
            f"population column '{name}': no row has a value (every one missing); the model saw it as missing in "
            "every row, and the data quality section names it"
        )
    for name, n in scored.unseen.items():
        ds.notes.append(
            f"population column '{name}': {n} row(s) with a level never seen in training, scored as unknown"
        )
    return PopulationRun(population, scored)


class ModelScoringError(Exception):
    """The model's predictions on the audit data are unusable."""


def checked_predict(predictor, codes: np.ndarray) -> np.ndarray:
    """The model's scores of code-space rows, checked (a black-box model raising is a model failure, exit 3)."""
    try:
        return _checked_scores(predictor.predict_codes(codes), len(codes))
    except (AuditInputError, ModelScoringError, ModelRuntimeError):
        raise
    except Exception as exc:  # noqa: BLE001 - a black-box model raising on the audit data
        raise ModelScoringError(f"scoring the data failed: {exc.__class__.__name__}: {exc}") from exc


def _checked_scores(p, n: int) -> np.ndarray:
    p = np.asarray(p, dtype=float).reshape(-1)
    if p.shape != (n,) or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ModelScoringError(
            f"the model returned unusable scores (shape {p.shape} for {n} rows, or values outside [0, 1] or NaN)"
        )
    return p
