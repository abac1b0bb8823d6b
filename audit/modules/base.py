"""The module contract: a named unit of the audit that reads the shared context and returns a result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from audit.config import AuditConfig
from audit.data import Dataset
from audit.findings import Finding

if TYPE_CHECKING:  # torch is imported when a model is, not when the pipeline is
    from audit.model.adapter import Predictor
    from audit.render import DeferredPNG, PendingPNG


@dataclass
class Figure:
    """A rendered figure: PNG bytes plus a caption.

    ``data`` is what :func:`audit.plotting.draw` returned: the bytes, a pending figure the renderer process is still
    drawing, or a deferred one nothing has asked for yet; :attr:`png` gives the bytes in every case.
    """

    name: str
    caption: str
    data: bytes | PendingPNG | DeferredPNG

    @property
    def png(self) -> bytes:
        """The PNG bytes (waits for the renderer process if it is still drawing this figure)."""
        if not isinstance(self.data, bytes):
            self.data = self.data.result()
        return self.data

    @property
    def width_in(self) -> float | None:
        """The figure's own width in inches (it is shown at that size, see :mod:`audit.plotting`)."""
        from audit.plotting import png_info

        return png_info(self.png).get("width_in")


@dataclass
class Table:
    """A table for the report: a title and a DataFrame (rendered as HTML, stored as records in JSON)."""

    name: str
    title: str
    frame: pd.DataFrame
    caption: str = ""


@dataclass
class ModuleResult:
    """What a module returns: headline numbers, tables, figures and findings."""

    summary: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # full numeric results for report.json


@dataclass
class AuditContext:
    """Everything a module may read. Modules share results only through ``results``.

    ``X_audit`` / ``y_audit`` are the audit rows (the test split), ``codes_audit`` the same rows in code space;
    :meth:`train_codes` gives the training rows in code space (passed in by the pipeline, else derived once).
    ``seed_for(name)`` gives each module its own child seed of the config's seed.

    With ``dataset.population`` set, ``population`` holds the scored population (labels, scores and sensitive
    columns of every row, see :mod:`audit.population`): performance, fairness, permutation importance and partial
    dependence are computed on it; the sample-based sections (ICE, ALE, interactions, local explanations, network)
    keep using the test split.
    """

    config: AuditConfig
    dataset: Dataset
    predictor: Predictor
    X_audit: pd.DataFrame
    y_audit: np.ndarray
    codes_audit: np.ndarray
    proba_audit: np.ndarray
    proba_train: np.ndarray
    model_info: dict[str, Any] = field(default_factory=dict)
    results: dict[str, ModuleResult] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)  # shared intermediate values (e.g. selected instances)
    codes_train: np.ndarray | None = None

    def train_codes(self) -> np.ndarray:
        """The training rows in code space, converted at most once per run."""
        if self.codes_train is None:
            self.codes_train = self.dataset.schema.to_codes(self.dataset.X_train)
        return self.codes_train

    baseline: dict[str, Any] | None = None  # a previous report.json to compare with
    baseline_path: str | None = None
    population: Any = None  # audit.population.PopulationRun when dataset.population is set
    backend: Any = None  # audit.compute.Backend: where per-partition and per-block work runs (None: this process)

    @property
    def w_audit(self) -> np.ndarray | None:
        """Each audit row's ``dataset.weight`` (None without one): the weight of every estimate over audit rows."""
        return self.dataset.w_test

    def seed_for(self, name: str) -> int:
        """A child seed, stable per module name, derived from the config's seed."""
        key = [ord(c) for c in name]
        return int(np.random.SeedSequence([self.config.seed, *key]).generate_state(1)[0])


class AuditModule(Protocol):
    """What the pipeline needs from a module."""

    name: str
    title: str

    def enabled(self, config: AuditConfig) -> bool: ...

    def run(self, ctx: AuditContext) -> ModuleResult: ...
