"""Batch jobs over large files outside a full audit: ``python -m audit reason-codes``."""

from __future__ import annotations

from pathlib import Path

from audit.config import AuditConfig
from audit.errors import ConfigError, ModelLoadError


def resolve_model_path(cfg: AuditConfig, model: str | Path | None) -> Path:
    """The model to use: ``--model``, else ``model.path`` of a loading config, else the latest audit run's model."""
    if model is not None:
        path = Path(model)
        key = "--model"
    elif cfg.model.source == "load":
        path = cfg.resolve(cfg.model.path or "", key="model.path")
        key = "model.path"
    else:
        path = cfg.resolve(cfg.report.output_dir, key="report.output_dir") / cfg.name / "latest" / "model"
        key = "the latest run's model"
        if not path.exists():
            raise ModelLoadError(
                f"{cfg.name}: the config trains its model and no audit run has saved one yet ('{path}' is missing); "
                "run the audit first (make audit CONFIG=...) or pass --model PATH"
            )
    if not path.exists():
        raise ModelLoadError(f"{key}: '{path}' does not exist; pass the folder of a saved model")
    return path


def reason_codes(
    cfg: AuditConfig,
    *,
    input: str | Path,
    output: str | Path,
    model: str | Path | None = None,
    top_k: int | None = None,
    background: int = 32,
    n_permutations: int = 1,
    threshold: float | None = None,
    id_column: str | None = None,
):
    """Top-k adverse features for every row of ``input`` the model scores below the threshold.

    The model is ``--model``, the config's ``model.path``, or the latest audit run's saved model. The background
    is a seeded sample of ``background`` training rows (the config's data and seed). The work runs on the config's
    ``compute`` backend, a partition at a time; see :func:`audit.population.reason_codes_population`.

    Returns
    -------
    audit.population.ReasonCodeRun
    """
    from audit.compute import make_backend
    from audit.data import load_dataset
    from audit.explain.shapley import summarize_background
    from audit.model.artifact import load_model
    from audit.population import open_population, reason_codes_population

    output = Path(output)
    if output.is_dir():
        raise ConfigError(f"--output: '{output}' is a folder; give the path of the Parquet file to write")
    if not output.parent.is_dir():
        raise ConfigError(f"--output: folder '{output.parent}' does not exist; create it or pick another path")
    if len(output.name.encode()) > 250:
        raise ConfigError("--output: the file name is longer than 250 bytes; use a shorter one")
    if Path(input).resolve() == output.resolve():
        raise ConfigError("--output: it is the input file; write the reason codes to another path")
    path = resolve_model_path(cfg, model)
    if path.is_file():
        raise ModelLoadError(
            f"reason-codes: '{path}' is a file; batch reason codes need a saved model folder of the built-in net"
        )
    predictor = load_model(path, batch_size=cfg.model.predict_batch_size)
    ds = load_dataset(cfg)
    from dataclasses import replace

    # declines and adverse reasons follow the favourable outcome of the config (dataset.favourable_label)
    predictor.schema = replace(predictor.schema, favourable_label=ds.schema.favourable_label)
    population = open_population(cfg, predictor.schema, path=input, key="--input", labelled=False)
    bg, _ = summarize_background(
        predictor.schema.to_codes(ds.X_train[predictor.schema.feature_names]),
        background,
        random_state=cfg.seed,
    )
    with make_backend(cfg.compute) as backend:
        return reason_codes_population(
            population,
            predictor,
            backend,
            background=bg,
            output=output,
            threshold=cfg.model.threshold if threshold is None else threshold,
            top_k=top_k or cfg.local.shap.reason_codes,
            n_permutations=n_permutations,
            random_state=cfg.seed,
            id_column=id_column,
        )
