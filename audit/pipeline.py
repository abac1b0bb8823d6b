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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audit.compute import Backend, ThreadPlan, apply_torch_threads, make_backend, thread_limits
from audit.config import AuditConfig
from audit.data import Dataset, load_dataset
from audit.errors import ModelRuntimeError
from audit.model.load import prepare_model
from audit.modules.base import AuditContext, AuditModule
from audit.modules.registry import default_modules
from audit.output import RunFolder, check_output_root, remove_stale
from audit.progress import Progress
from audit.render import background_rendering, deferred_figures
from audit.report.pdf import check_pdf_support
from audit.report.publish import write_run
from audit.report.reader import load_baseline
from audit.results import AuditRun, ModuleRecord, exit_code_of, scores_frame, settle_figures
from audit.scoring import ModelScoringError, checked_predict, record_model_traffic, score_population_run


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
    progress = Progress(quiet)
    progress.expect(expected_stages(cfg, modules))
    started = (clock or (lambda: dt.datetime.now(dt.UTC)))()
    out_root = cfg.resolve(cfg.report.output_dir, key="report.output_dir") / cfg.name
    folder = RunFolder(out_root, started)
    run = AuditRun(cfg, folder.run_id, started)
    step = on_stage or (lambda name: None)
    if write:
        check_output_root(out_root)  # a file in the way, no permission, latest as a real folder: exit 2, first
    baseline = load_baseline(baseline, out_root)
    pdf = write and "pdf" in cfg.report.formats
    shown = write and bool({"html", "pdf"} & set(cfg.report.formats))  # else no figure is drawn unless asked for
    plan = ThreadPlan.for_threads(cfg.compute.threads, figures=shown)
    with (
        thread_limits(plan.compute_threads),
        deferred_figures(not shown),
        background_rendering(plan.renderer, pdf=pdf),
    ):
        stages = _Stages(cfg, run, folder, progress, step, write, modules, baseline, plan, model)
        return stages.execute()


@dataclass
class _Stages:
    """One run's stages in order (:meth:`execute`), and what they hand each other."""

    cfg: AuditConfig
    run: AuditRun
    folder: RunFolder
    progress: Progress
    step: Callable[[str], None]
    write: bool
    modules: list[AuditModule] | None
    baseline: tuple[dict | None, str | None, str | None]
    plan: ThreadPlan
    model: Any
    backend: Backend = field(init=False)
    population: Any = None
    pop_run: Any = None

    def __post_init__(self) -> None:
        self.backend = Backend(self.plan.compute_threads)

    def execute(self) -> AuditRun:
        try:
            ds = self.load()
            tmp_dir = self.open_folder()
            ctx = self.model_and_scores(ds, tmp_dir)
            if ctx is not None:
                self.sections(ctx)
            return self.finish(ds)
        except BaseException:
            self.folder.discard()  # only the folder this run created
            raise
        finally:
            self.backend.close()

    def load(self) -> Dataset:
        """Data, the config checks that need it, the population, PDF support and the compute backend: all bad input
        (exit 2) is found here, before anything is written."""
        cfg = self.cfg
        self.step("load data")
        with self.progress.stage("load data"):
            from audit.modules._shared import check_local_config  # imported here: the sections' code is heavy

            ds = load_dataset(cfg)
            check_local_config(cfg, ds)
            if cfg.dataset.population is not None:
                from audit.population import open_population

                self.population = open_population(cfg, ds.schema)
            if "pdf" in cfg.report.formats:
                check_pdf_support()
        self.run.dataset = ds
        if self.baseline[2]:
            ds.notes.append(self.baseline[2])
        if cfg.compute.backend != "local":
            self.step("compute")
            with self.progress.stage(f"start {cfg.compute.backend} backend"):
                self.backend = make_backend(cfg.compute, self.plan.compute_threads)  # bad address, no extra: exit 2
        self.run.compute = {**self.backend.describe(), **self.plan.describe(), "chunk_rows": cfg.compute.chunk_rows}
        return ds

    def open_folder(self) -> Path | None:
        if not self.write:
            return None
        remove_stale(self.folder.out_root)
        tmp_dir = self.folder.create()  # exclusive: a run id that is taken gets another suffix
        self.run.run_id = self.folder.run_id
        return tmp_dir

    def model_and_scores(self, ds: Dataset, tmp_dir: Path | None) -> AuditContext | None:
        """Train or load the model and score the audit rows (and the population); the context the sections share.
        A model that fails here is recorded as the failed "model" section and no section runs (exit 3): None."""
        cfg, run = self.cfg, self.run
        self.step("model")
        t0 = time.perf_counter()
        predictor = None  # a remote model that fails while scoring still reports what it sent
        try:
            stage = (
                "model" if self.model is not None else "train model" if cfg.model.source == "train" else "load model"
            )
            with self.progress.stage(stage):
                predictor, run.model_info = prepare_model(cfg, ds, tmp_dir, self.progress, model=self.model)
            apply_torch_threads()  # a loaded model imported torch too
            self.step("score")
            with self.progress.stage("score"):
                codes_audit, codes_train = ds.schema.to_codes(ds.X_test), ds.schema.to_codes(ds.X_train)
                proba_audit, proba_train = (
                    checked_predict(predictor, codes_audit),
                    checked_predict(predictor, codes_train),
                )
            if self.population is not None:
                self.pop_run = score_population_run(
                    cfg, ds, self.population, predictor, self.backend, self.progress, self.step
                )
                run.compute["population"] = self.pop_run.provenance()
        except (ModelRuntimeError, ModelScoringError) as exc:
            record_model_traffic(run.model_info, predictor)
            error = ModuleRecord(
                "model", "Model", "error", time.perf_counter() - t0, str(exc), traceback.format_exc(limit=8)
            )
            run.modules += [error] + [ModuleRecord(m.name, m.title, "not_run") for m in self.module_list()]
            return None
        return AuditContext(
            cfg, ds, predictor, ds.X_test, ds.y_test, codes_audit, proba_audit, proba_train,
            model_info=run.model_info, baseline=self.baseline[0], baseline_path=self.baseline[1],
            codes_train=codes_train, population=self.pop_run, backend=self.backend,
        )  # fmt: skip

    def module_list(self) -> list[AuditModule]:
        return self.modules if self.modules is not None else default_modules()  # imported once the model is good

    def sections(self, ctx: AuditContext) -> None:
        """Every enabled section in order, each isolated: one that raises is recorded with its error, the rest run."""
        cfg, run, predictor = self.cfg, self.run, ctx.predictor
        module_list = self.module_list()
        budget = None
        rows_left = predictor.rows_left() if hasattr(predictor, "rows_left") else None
        if rows_left is not None:  # a remote model with a request budget: fit the sample sizes to it
            from audit.budget import BudgetPlan

            with self.progress.stage("plan the request budget"):
                budget = BudgetPlan(ctx, module_list, rows_left)
        for module in module_list:
            if not module.enabled(cfg):
                run.modules.append(ModuleRecord(module.name, module.title, "skipped"))
                continue
            self.step(module.name)
            if budget is not None:
                ctx.config = budget.config_for(module.name, predictor.rows_left())
            run.modules.append(self.section(module, ctx))
        if budget is not None:
            ctx.config = cfg
            run.model_info["budget"] = budget.describe()
            if budget.note():
                ctx.dataset.notes.append(budget.note())
        run.scores = scores_frame(ctx)
        record_model_traffic(run.model_info, predictor)

    def section(self, module: AuditModule, ctx: AuditContext) -> ModuleRecord:
        t0, rows0 = time.perf_counter(), ctx.predictor.rows_evaluated
        try:
            with self.progress.stage(module.name):
                result = module.run(ctx)
            ctx.results[module.name] = result
            record = ModuleRecord(module.name, module.title, "ok", time.perf_counter() - t0, result=result)
        except Exception as exc:  # noqa: BLE001 - isolation is the point: record and go on
            msg = f"{exc.__class__.__name__}: {exc}"
            record = ModuleRecord(
                module.name, module.title, "error", time.perf_counter() - t0, msg, traceback.format_exc(limit=8)
            )
        record.rows_evaluated = ctx.predictor.rows_evaluated - rows0
        return record

    def finish(self, ds: Dataset) -> AuditRun:
        run = self.run
        run.stages = dict(self.progress.durations)
        run.finished = dt.datetime.now(dt.UTC)
        if not self.write:
            settle_figures(run)
            run.exit_code = exit_code_of(run)
            return run
        self.step("report")
        with self.progress.stage("write report"):
            settle_figures(run)  # the renderer process may still be building the last figures
            run.exit_code = exit_code_of(run)
            write_run(run, ds, self.folder)
        return run
