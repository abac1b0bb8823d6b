"""The honest headline: what passed, what failed, what gated the exit code, in words a reviewer reads first.

The headline is never better than the findings: ``PASS`` (green) only when no check failed; ``REVIEW`` (amber) when
the gates passed but checks that do not gate the exit code failed; ``FAIL`` when a gate failed; ``ERROR`` when a
module or the model failed. The same line ends the CLI's output.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from audit.findings import SEVERITY_ORDER, Finding, sort_findings, verdict_of

HEADLINES = {"pass": "PASS", "review": "REVIEW", "fail": "FAIL", "error": "ERROR"}


def summarize(findings: list[Finding], modules: list, exit_code: int, *, top: int = 5) -> dict[str, Any]:
    """Counts, the headline and its sentence, the top failed findings and a status per section.

    Parameters
    ----------
    findings : list of Finding
    modules : list
        The run's module records (``name``, ``status``, ``result``).
    exit_code : int
    top : int
        Failed findings listed on the first screen.

    Examples
    --------
    >>> f = [Finding("fairness", "gap", "fail", "high"), Finding("performance", "auc", "pass", gating=True)]
    >>> s = summarize(f, [], 0)
    >>> s["headline"], s["text"]
    ('review', 'Gates passed · 1 high-severity issue not gated · 1 of 2 checks failed')
    """
    checks = [f for f in findings if f.status != "info"]
    status = Counter(f.status for f in findings)
    failed = [f for f in findings if f.status == "fail"]
    by_sev = Counter(f.severity for f in failed)
    gating_failed = [f for f in failed if f.gating]
    errored = [m.name for m in modules if m.status == "error"]
    high_not_gated = sum(1 for f in failed if f.severity == "high" and not f.gating)
    headline = verdict_of(findings, errored)
    parts = [f"{len(errored)} section(s) failed to run ({', '.join(errored)})"] if errored else []
    parts.insert(1 if errored else 0, f"Gates failed ({len(gating_failed)})" if gating_failed else "Gates passed")
    if high_not_gated:
        parts.append(f"{high_not_gated} high-severity issue{'s' if high_not_gated != 1 else ''} not gated")
    parts.append(f"{len(failed)} of {len(checks)} checks failed")
    if status["inconclusive"]:
        parts.append(f"{status['inconclusive']} inconclusive")
    if status["not_assessable"]:
        parts.append(f"{status['not_assessable']} not assessable")
    sections = {}
    for m in modules:
        if m.status != "ok":
            sections[m.name] = {"status": m.status, "label": m.status.replace("_", " ")}
            continue
        own = m.result.findings if m.result else []
        n_fail = sum(f.status == "fail" for f in own)
        n_inc = sum(f.status == "inconclusive" for f in own)
        if n_fail:
            sections[m.name] = {"status": "fail", "label": f"{n_fail} failed"}
        elif n_inc:
            sections[m.name] = {"status": "inconclusive", "label": f"{n_inc} inconclusive"}
        elif any(f.status == "pass" for f in own):
            sections[m.name] = {"status": "pass", "label": "passed"}
        else:
            sections[m.name] = {"status": "info", "label": "ran"}
    return {
        "headline": headline,
        "label": HEADLINES[headline],
        "text": " · ".join(parts),
        "exit_code": exit_code,
        "checks": len(checks),
        "by_status": {k: status.get(k, 0) for k in ("pass", "fail", "inconclusive", "not_assessable", "info")},
        "failed_by_severity": {k: by_sev.get(k, 0) for k in sorted(SEVERITY_ORDER, key=SEVERITY_ORDER.get)},
        "gating_failed": len(gating_failed),
        "high_not_gated": high_not_gated,
        "modules_failed": errored,
        "top": [f.key for f in sort_findings(failed)[:top]],
        "sections": sections,
    }


def cli_line(summary: dict[str, Any], where: str) -> str:
    """``REVIEW: Gates passed · 7 high-severity issues not gated · 26 of 54 checks failed -> <path>``."""
    return f"{summary['label']}: {summary['text']} -> {where}"
