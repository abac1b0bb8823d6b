"""The Python API: audit a model from a notebook or another tool, with the same report as the CLI.

>>> from audit import run_audit                                                  # doctest: +SKIP
>>> run = run_audit("configs/adult.yaml", model=my_pipeline)                     # doctest: +SKIP
>>> run.exit_code, run.run_dir / "report.html"                                   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from audit.config import AuditConfig
    from audit.results import AuditRun


def run_audit(
    config: str | Path | dict | AuditConfig,
    *,
    model: Any = None,
    quiet: bool = True,
    write: bool = True,
    baseline: str | Path | None = None,
    base_dir: str | Path = ".",
) -> AuditRun:
    """Run an audit and write its report (``report.json``, ``report.html``, and the PDF if configured).

    Parameters
    ----------
    config : path, mapping or AuditConfig
        A YAML config file, the same keys as a mapping (relative paths resolve against ``base_dir``), or a config
        from :func:`audit.config.load_config`. Validated here: a mistake raises :class:`audit.errors.ConfigError`
        naming the key, before anything runs.
    model : object, optional
        The model to audit, instead of the config's ``model`` section (which is then not used): a fitted estimator
        with ``predict_proba(df)`` and ``classes_`` (scikit-learn style; the column of ``dataset.positive_label``
        is used), or any function ``predict_proba(df) -> array`` of positive-class probabilities. It receives
        DataFrames of the raw feature columns (as the data file has them, after ``dataset.drop``), in batches of
        ``model.predict_batch_size`` rows. The sections that need the built-in network's internals (architecture,
        gradients, activations, uncertainty) say "not applicable"; every other section runs.
    quiet : bool, default True
        No progress lines on stderr.
    write : bool, default True
        Write the report under ``report.output_dir/<name>/<run id>/`` and move ``latest`` there.
    baseline : path, optional
        A run folder or report.json to compare with (default: the previous run of this config).
    base_dir : path, default "."
        Folder against which a mapping's relative paths resolve.

    Returns
    -------
    audit.results.AuditRun
        ``exit_code`` (0 gates passed, 1 a gating finding failed, 3 a module errored), ``findings``, ``modules``
        and ``run_dir`` (the written report's folder).

    Raises
    ------
    audit.errors.AuditInputError
        Bad config or data (the CLI's exit code 2); nothing is written.

    Examples
    --------
    Any function of a DataFrame can be audited:

    >>> import numpy as np
    >>> def predict_proba(df):
    ...     return 1 / (1 + np.exp(-(df["age"].to_numpy() - 40) / 10))
    >>> run = run_audit("configs/adult.yaml", model=predict_proba)              # doctest: +SKIP
    """
    from audit.config import AuditConfig, config_from_dict, load_config
    from audit.pipeline import run_audit as _run_audit

    if isinstance(config, AuditConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = config_from_dict(config, base_dir=Path(base_dir).resolve())
    else:
        cfg = load_config(config)
    return _run_audit(cfg, quiet=quiet, write=write, baseline=baseline, model=model)
