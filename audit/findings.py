"""Findings: what an audit concluded, with evidence, threshold and verdict, as data a script can read.

Every finding has a stable ``id``: the same check on the same subject gets the same id in every run
(``fairness.disparate_impact_ratio.sex``), so runs can be compared and owners assigned. Structured fields
(``measure``, ``subject``, ``value``, ``ci_low``, ``ci_high``, ``limit``, ``rule``) carry the numbers that the
``title`` spells out for a reader, and ``plain`` says what it means in a sentence.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Severity = Literal["info", "low", "medium", "high"]
Status = Literal["pass", "fail", "inconclusive", "info", "not_assessable"]

SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2, "info": 3}
STATUS_ORDER = {"fail": 0, "inconclusive": 1, "not_assessable": 2, "pass": 3, "info": 4}


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
    id : str, optional
        Stable identity of the check and its subject (derived from module and title without numbers when not given).
    measure, subject : str, optional
        What was measured (``roc_auc``, ``disparate_impact_ratio``) and of what (a feature, a grouping, a group).
    value, ci_low, ci_high : float, optional
        The number and its interval.
    limit : float, optional
        The threshold as a number; ``rule`` names it ("four-fifths rule").
    plain : str, optional
        What the finding means, in one plain sentence.
    owner, remediation : str, optional
        From ``report.findings`` in the config: who acts on it, and how.
    """

    module: str
    title: str
    status: Status
    severity: Severity = "info"
    evidence: dict[str, Any] = field(default_factory=dict)
    threshold: str | None = None
    gating: bool = False
    id: str | None = None
    measure: str | None = None
    subject: str | None = None
    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    limit: float | None = None
    rule: str | None = None
    plain: str | None = None
    owner: str | None = None
    remediation: str | None = None

    @property
    def key(self) -> str:
        """The stable id (given, or derived from the module and the title with its numbers taken out), at most
        :data:`MAX_ID` characters (a longer one keeps its start and a hash of the whole)."""
        return short_id(self.id or derived_id(self.module, self.title))

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["id"] = self.key
        return out

    def with_notes(self, owner: str | None, remediation: str | None) -> Finding:
        return replace(self, owner=owner or self.owner, remediation=remediation or self.remediation)


MAX_ID = 80


def short_id(key: str) -> str:
    """``key`` itself when it has at most :data:`MAX_ID` characters; else its start, "~" and 8 hex digits of its
    SHA-256, so two long ids that share a start stay apart and the same id is the same in every run.

    >>> short_id("fairness.disparate_impact_ratio.sex"), len(short_id("weak_segments.slice." + "x" * 100))
    ('fairness.disparate_impact_ratio.sex', 80)
    """
    if len(key) <= MAX_ID:
        return key
    return f"{key[: MAX_ID - 9]}~{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def derived_id(module: str, title: str) -> str:
    """``module.slug`` of the title with numbers removed, e.g. ``performance.train_test_roc_auc_gap``.

    Examples
    --------
    >>> derived_id("performance", "Train-test ROC AUC gap +0.058")
    'performance.train_test_roc_auc_gap'
    """
    text = re.sub(r"[-+]?\d[\d.,]*(e[-+]?\d+)?%?", " ", title.split(":")[0] if ":" in title else title)
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return f"{module}.{slug[:80]}"


VERDICTS = ("pass", "review", "fail", "error")
"""The one verdict vocabulary: report.json's ``audit.verdict``, the headline, the CLI line, the history page."""


def verdict_of(findings: list[Finding], modules_failed: list[str]) -> str:
    """``error`` when a section or the model failed, ``fail`` when a gating finding failed, ``review`` when other
    checks failed, else ``pass`` (exit codes 3, 1, 0 and 0).

    >>> verdict_of([Finding("fairness", "gap", "fail", "high")], []), verdict_of([], ["explain"])
    ('review', 'error')
    """
    failed = [f for f in findings if f.status == "fail"]
    if modules_failed:
        return "error"
    if any(f.gating for f in failed):
        return "fail"
    return "review" if failed else "pass"


def recorded_verdict(audit: dict[str, Any]) -> Any:
    """The verdict a report.json's ``audit`` block means. From schema 1.3 it is ``audit.verdict``; before, "pass"
    could stand beside failed checks that do not gate, so such a report is read by its summary's headline (1.2) or
    its count of failed checks (1.1). Anything else found there is returned as it is.

    >>> recorded_verdict({"verdict": "pass", "summary": {"headline": "review"}}), recorded_verdict({"verdict": "pass",
    ...     "n_failed": 3}), recorded_verdict({"verdict": "fail"})
    ('review', 'review', 'fail')
    """
    verdict = audit.get("verdict")
    if verdict != "pass":
        return verdict
    headline = (audit.get("summary") or {}).get("headline")
    if headline:
        return headline
    return "review" if audit.get("n_failed") else "pass"


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Failed first, gating before not gating, then by severity (high first), then inconclusive, not assessable,
    passed and informational findings."""
    return sorted(
        findings,
        key=lambda f: (STATUS_ORDER.get(f.status, 9), not f.gating, SEVERITY_ORDER.get(f.severity, 9)),
    )
