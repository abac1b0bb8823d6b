"""Findings: what an audit concluded, with evidence, threshold and verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["info", "low", "medium", "high"]
Status = Literal["pass", "fail", "inconclusive", "info", "not_assessable"]


@dataclass(frozen=True)
class Finding:
    """One conclusion of a module.

    Parameters
    ----------
    module : str
        The module that produced it.
    title : str
        One line a reviewer reads in the summary table.
    status : {"pass", "fail", "inconclusive", "info", "not_assessable"}
        Verdict against ``threshold``; "info" for observations without a gate; "not_assessable" when the data or the
        settings do not allow the check (the title says why).
    severity : {"info", "low", "medium", "high"}
        How much a failure matters.
    evidence : dict
        The numbers behind the verdict (JSON-serialisable).
    threshold : str, optional
        The rule applied, in words (e.g. "ROC AUC >= 0.85").
    gating : bool
        Whether a "fail" makes the audit's exit code 1.
    """

    module: str
    title: str
    status: Status
    severity: Severity = "info"
    evidence: dict[str, Any] = field(default_factory=dict)
    threshold: str | None = None
    gating: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
