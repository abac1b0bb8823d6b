"""The audit pipeline: the only place that knows the order of stages.

config -> data -> model -> scores -> modules -> findings -> report (json + html) -> exit code.

A module that raises is recorded as failed with its error and the others still run. The report is written into
a temporary folder beside its final place and renamed at the end; ``latest`` moves only after that succeeded, so
an interrupted run leaves no half-written report behind.
"""

from __future__ import annotations

import datetime as dt
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from audit.compute import Backend, ThreadPlan, apply_torch_threads, make_backend, thread_limits
from audit.config import AuditConfig
from audit.data import Dataset, dataset_fingerprint, load_dataset
from audit.errors import (
    EXIT_GATE_FAILED,
    EXIT_MODULE_ERROR,
    EXIT_OK,
    AuditInputError,
    ModelRuntimeError,
)
from audit.model.load import prepare_model
from audit.modules.base import AuditContext, AuditModule
from audit.modules.registry import default_modules
from audit.progress import Progress
from audit.report.reader import load_baseline
from audit.results import AuditRun, ModuleRecord, scores_frame

if TYPE_CHECKING:
    pass


def expected_stages(cfg: AuditConfig, modules: list[AuditModule] | None = None) -> int:
    """How many stages a run has (for the ``[k/N]`` of progress), from the config alone: nothing is imported."""
    if modules is not None:
        n_modules = sum(m.enabled(cfg) for m in modules)
    else:
        mc, lc, nc = cfg.modules, cfg.local, cfg.network
        fairness = cfg.fairness.enabled and bool(cfg.fairness.sensitive_features or cfg.fairness.derived)
        local = [lc.shap.enabled, lc.lime.enabled, lc.counterfactuals.enabled] if lc.enabled else []
        net = (
            [nc.architecture, nc.gradients.enabled, nc.activations.enabled, nc.uncertainty.enabled]
            if nc.enabled
            else []
        )
        flags = [mc.performance.enabled, mc.permutation_importance.enabled, fairness, mc.partial_dependence.enabled,
                 mc.ale.enabled, mc.interactions.enabled, *local, *net, cfg.report.compare.enabled]  # fmt: skip
        n_modules = sum(flags)
    extra = (cfg.dataset.population is not None) + (cfg.compute.backend != "local")
    return 4 + n_modules + extra  # load data, model, score, write report


def run_audit(
    cfg: AuditConfig,
    *,
    quiet: bool = False,
    modules: list[AuditModule] | None = None,
    write: bool = True,
    on_stage: Callable[[str], None] | None = None,
    baseline: str | Path | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    model: Any = None,
) -> AuditRun:
    """Run a whole audit and write its report.

    Parameters
    ----------
    cfg : AuditConfig
        The validated config.
    quiet : bool
        No progress lines on stderr.
    modules : list, optional
        Modules to run instead of :func:`default_modules` (tests use this).
    write : bool
        Write ``report.json``/``report.html`` and move ``latest``.
    on_stage : callable, optional
        Called with each stage name as it starts (tests use it to interrupt a run).
    baseline : path-like, optional
        A run folder or report.json to compare with; by default the previous run of this config (``latest``).
    clock : callable, optional
        Returns the start time (UTC); tests inject one that does not move to force equal timestamps.
    model : object, optional
        The model to audit instead of the config's ``model`` section: a function ``predict_proba(df) -> array`` of
        positive-class probabilities, or an estimator with ``predict_proba`` and ``classes_`` (scikit-learn style;
        the positive label's column is used). See :func:`audit.api.run_audit`.

    Returns
    -------
    AuditRun
        With ``exit_code`` 0 (all gates passed), 1 (a gating finding failed) or 3 (a module errored).

    Raises
    ------
    AuditInputError
        Bad data or model input (exit code 2); nothing is left under the output folder.
    """
    from audit.output import RunFolder, check_output_root

    progress = Progress(quiet)
    progress.expect(expected_stages(cfg, modules))
    started = (clock or (lambda: dt.datetime.now(dt.UTC)))()
    out_root = cfg.resolve(cfg.report.output_dir, key="report.output_dir") / cfg.name
    folder = RunFolder(out_root, started)
    run = AuditRun(cfg, folder.run_id, started)
    step = on_stage or (lambda name: None)
    if write:
        check_output_root(out_root)  # a file in the way, no permission, latest as a real folder: exit 2, first
    base_report, base_path, base_note = load_baseline(baseline, out_root)
    plan = ThreadPlan.for_threads(cfg.compute.threads)
    from audit.render import background_rendering

    pdf = write and "pdf" in cfg.report.formats
    with thread_limits(plan.compute_threads), background_rendering(plan.renderer, pdf=pdf):
        return _run(
            cfg, run, folder, progress, step, write, out_root, modules, base_report, base_path, base_note, plan, model
        )


def _run(cfg, run, folder, progress, step, write, out_root, modules, base_report, base_path, base_note, plan, model):
    """:func:`run_audit` under its thread plan."""
    from audit.output import remove_stale

    backend = Backend(plan.compute_threads)
    pop_run = None
    try:
        step("load data")
        with progress.stage("load data"):
            ds = load_dataset(cfg)
            from audit.modules._shared import check_local_config

            check_local_config(cfg, ds)
            population = None
            if cfg.dataset.population is not None:
                from audit.population import open_population

                population = open_population(cfg, ds.schema)  # checked before anything is written
            if "pdf" in cfg.report.formats:
                from audit.report.pdf import check_pdf_support

                check_pdf_support()
        run.dataset = ds
        if base_note:
            ds.notes.append(base_note)
        if cfg.compute.backend != "local":
            step("compute")
            with progress.stage(f"start {cfg.compute.backend} backend"):
                backend = make_backend(cfg.compute, plan.compute_threads)  # bad address or missing extra: exit 2
        run.compute = {**backend.describe(), **plan.describe(), "chunk_rows": cfg.compute.chunk_rows}
        tmp_dir = None
        if write:
            remove_stale(out_root)
            tmp_dir = folder.create()  # exclusive: a run id that is taken gets another suffix
            run.run_id = folder.run_id
        step("model")
        t0 = time.perf_counter()
        predictor = None  # a remote model that fails while scoring still reports what it sent
        try:
            if model is not None:
                with progress.stage("model"):
                    predictor, run.model_info = prepare_model(cfg, ds, None, progress, model=model)
            else:
                with progress.stage("train model" if cfg.model.source == "train" else "load model"):
                    predictor, run.model_info = prepare_model(cfg, ds, tmp_dir if write else None, progress)
            apply_torch_threads()  # a loaded model imported torch too
            step("score")
            with progress.stage("score"):
                codes_audit = ds.schema.to_codes(ds.X_test)
                codes_train = ds.schema.to_codes(ds.X_train)  # predict_proba(df) is predict_codes(to_codes(df))
                try:
                    proba_audit = _checked_scores(predictor.predict_codes(codes_audit), len(codes_audit))
                    proba_train = _checked_scores(predictor.predict_codes(codes_train), len(codes_train))
                except (AuditInputError, ModelScoringError, ModelRuntimeError):
                    raise
                except Exception as exc:  # noqa: BLE001 - a black-box model raising on the audit data
                    raise ModelScoringError(f"scoring the data failed: {exc.__class__.__name__}: {exc}") from exc
            if population is not None:
                pop_run = _score_population(cfg, ds, population, predictor, backend, progress, step)
                run.compute["population"] = pop_run.provenance()
        except (ModelRuntimeError, ModelScoringError) as exc:
            # The model itself failed: no module can run, but the report records what happened (exit code 3).
            _record_requests(run, predictor)
            run.modules.append(
                ModuleRecord(
                    "model", "Model", "error", time.perf_counter() - t0, str(exc), traceback.format_exc(limit=8)
                )
            )
            module_list = modules if modules is not None else default_modules()
            run.modules += [ModuleRecord(m.name, m.title, "not_run") for m in module_list]
            return _finish(run, ds, progress, folder if write else None, step)
        ctx = AuditContext(
            cfg,
            ds,
            predictor,
            ds.X_test,
            ds.y_test,
            codes_audit,
            proba_audit,
            proba_train,
            model_info=run.model_info,
            baseline=base_report,
            baseline_path=base_path,
            codes_train=codes_train,
            population=pop_run,
            backend=backend,
        )
        module_list = modules if modules is not None else default_modules()  # imported once the model is good
        budget = None
        rows_left = predictor.rows_left() if hasattr(predictor, "rows_left") else None
        if rows_left is not None:  # a remote model with a request budget: fit the sample sizes to it
            from audit.budget import BudgetPlan

            with progress.stage("plan the request budget"):
                budget = BudgetPlan(ctx, module_list, rows_left)
        for module in module_list:
            if not module.enabled(cfg):
                run.modules.append(ModuleRecord(module.name, module.title, "skipped"))
                continue
            step(module.name)
            if budget is not None:
                ctx.config = budget.config_for(module.name, predictor.rows_left())
            t0, rows0 = time.perf_counter(), predictor.rows_evaluated
            try:
                with progress.stage(module.name):
                    result = module.run(ctx)
                ctx.results[module.name] = result
                record = ModuleRecord(module.name, module.title, "ok", time.perf_counter() - t0, result=result)
            except Exception as exc:  # noqa: BLE001 - isolation is the point: record and go on
                msg = f"{exc.__class__.__name__}: {exc}"
                record = ModuleRecord(
                    module.name, module.title, "error", time.perf_counter() - t0, msg, traceback.format_exc(limit=8)
                )
            record.rows_evaluated = predictor.rows_evaluated - rows0
            run.modules.append(record)
        if budget is not None:
            ctx.config = cfg
            run.model_info["budget"] = budget.describe()
            if budget.note():
                ds.notes.append(budget.note())
        run.scores = scores_frame(ctx)
        _record_requests(run, predictor)
        return _finish(run, ds, progress, folder if write else None, step)
    except BaseException:
        folder.discard()  # only the folder this run created
        raise
    finally:
        backend.close()


def _record_requests(run: AuditRun, predictor) -> None:
    """A remote model's traffic (requests, rows, retries, the budget) and the output column its first answer decided
    into the report's provenance, and for a model that receives raw values the rows sent with a level no raw value
    could be given for (population rows only)."""
    if predictor is not None and hasattr(predictor, "describe"):
        run.model_info["requests"] = predictor.describe()
    column = getattr(predictor, "column", None)  # an endpoint's, decided from its first answer
    if column is not None and "output_column" not in run.model_info:
        run.model_info["output_column"] = column.describe()
    unknown = getattr(getattr(predictor, "raw", None), "unknown_rows", [0])[0]
    if unknown:
        run.model_info["rows_sent_with_an_unknown_level_as_missing"] = unknown


def _score_population(cfg, ds, population, predictor, backend, progress, step):
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
    for name, n in scored.unseen.items():
        ds.notes.append(
            f"population column '{name}': {n} row(s) with a level never seen in training, scored as unknown"
        )
    return PopulationRun(population, scored)


class ModelScoringError(Exception):
    """The model's predictions on the audit data are unusable."""


def _checked_scores(p, n: int) -> np.ndarray:
    p = np.asarray(p, dtype=float).reshape(-1)
    if p.shape != (n,) or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ModelScoringError(
            f"the model returned unusable scores (shape {p.shape} for {n} rows, or values outside [0, 1] or NaN)"
        )
    return p


def _finish(run: AuditRun, ds: Dataset, progress: Progress, folder, step) -> AuditRun:
    run.stages = dict(progress.durations)
    run.finished = dt.datetime.now(dt.UTC)
    if folder is None:
        _settle_figures(run)
        run.exit_code = _exit_code(run)
        return run
    step("report")
    with progress.stage("write report"):
        _settle_figures(run)  # the renderer process may still be building the last figures
        run.exit_code = _exit_code(run)
        _write(run, ds, folder)
    return run


def _settle_figures(run: AuditRun) -> None:
    """Wait for every section's figures. A figure that cannot be built or drawn fails its section, as it did when
    figures were built inside the section (:func:`audit.plotting.draw` builds them later, in the renderer process):
    the section is shown as failed with the reason, the exit code says so, and the rest of the report stands."""
    for m in run.modules:
        if m.result is None:
            continue
        for f in m.result.figures:
            try:
                f.png  # noqa: B018 - waits for the bytes (built here if the renderer failed)
            except Exception as exc:  # noqa: BLE001 - isolation, as for the section itself
                m.status, m.result = "error", None
                m.error = f"figure '{f.name}' could not be drawn: {exc.__class__.__name__}: {exc}"
                m.traceback = traceback.format_exc(limit=8)
                break


def _exit_code(run: AuditRun) -> int:
    if any(m.status == "error" for m in run.modules):
        return EXIT_MODULE_ERROR
    if any(f.gating and f.status == "fail" for f in run.findings):
        return EXIT_GATE_FAILED
    return EXIT_OK


def _write(run: AuditRun, ds: Dataset, folder) -> None:
    """Write report.json (always), scores.parquet, report.html and report.pdf into the run folder, then publish it.

    A file system error (no space, permissions changed under us) removes the folder and is bad input (exit 2)."""
    from audit.output import OutputError
    from audit.report.pdf import start_pdf
    from audit.report.writer import build_report_json, render_html, write_json

    t0 = time.perf_counter()
    formats = run.config.report.formats
    tmp_dir = folder.tmp
    try:
        if run.scores is not None:
            run.scores.to_parquet(tmp_dir / "scores.parquet", index=False)
        report = build_report_json(run, ds, dataset_fingerprint(ds), tmp_dir)
        pdf = start_pdf(render_html(report, run, medium="print"), tmp_dir / "report.pdf") if "pdf" in formats else None
        write_json(report, tmp_dir / "report.json")  # while the renderer process lays out the PDF
        if "html" in formats:
            (tmp_dir / "report.html").write_text(render_html(report, run), encoding="utf-8")
        if pdf is not None:
            pdf()
        run.run_dir = folder.publish()
        _update_history(run, folder.out_root)
    except OSError as exc:
        folder.discard()
        raise OutputError(
            f"report.output_dir: writing the report into '{folder.out_root}' failed "
            f"({exc.strerror or exc.__class__.__name__}); free some space or pick another folder; nothing was kept"
        ) from None
    run.stages["write report"] = round(time.perf_counter() - t0, 3)


def _update_history(run: AuditRun, out_root: Path) -> None:
    """Prune old runs (``report.keep_last``) and rewrite ``index.html``; a failure here leaves the published run as
    it is and says so on stderr (the report itself is complete)."""
    import sys

    from audit.history import update

    try:
        removed = update(out_root, run.config.name, run.config.report.keep_last)
    except OSError as exc:
        print(f"warning: the history page in '{out_root}' was not updated ({exc.strerror or exc})", file=sys.stderr)
        return
    run.pruned = removed
