"""Read an audit's ``report.json`` back: validated against the published schema, with typed accessors.

Examples
--------
>>> from audit.report import read_report  # doctest: +SKIP
>>> rep = read_report("reports/adult/latest")  # doctest: +SKIP
>>> rep.verdict, [f.title for f in rep.failed(gating_only=True)]  # doctest: +SKIP
('pass', [])
>>> rep.table("permutation_importance", "importance").head()  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd

from audit.findings import Finding, recorded_verdict

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


class ReportSchemaError(ValueError):
    """A report.json does not match the published schema."""


@cache
def report_schema() -> dict[str, Any]:
    """The JSON Schema of report.json (``audit/report/report.schema.json``)."""
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def validate_report(report: dict[str, Any]) -> None:
    """Raise :class:`ReportSchemaError` naming the first place where ``report`` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(report_schema())
    errors = sorted(validator.iter_errors(report), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ReportSchemaError(f"report.json does not match the schema at {where}: {e.message}")


@dataclass(frozen=True)
class AuditReport:
    """One run's report.json, with accessors for what a scheduler or a reviewer's script reads."""

    raw: dict[str, Any]
    path: Path | None = None

    @property
    def verdict(self) -> str:
        """``pass`` (no check failed), ``review`` (the gates passed, other checks failed), ``fail`` (a gating finding
        failed) or ``error`` (a module or the model failed): the report's headline, in one word. Reports before
        schema 1.3 wrote ``pass`` beside failed checks that do not gate; for them it is derived here."""
        return self.headline

    @property
    def exit_code(self) -> int:
        return self.raw["audit"]["exit_code"]

    @property
    def run_id(self) -> str:
        return self.raw["audit"]["run_id"]

    @property
    def schema_version(self) -> str:
        return self.raw["schema_version"]

    @property
    def findings(self) -> list[Finding]:
        """Every finding (a 1.1 report's findings get their id derived from module and title)."""
        known = set(Finding.__dataclass_fields__)
        return [Finding(**{k: v for k, v in f.items() if k in known}) for f in self.raw["findings"]]

    def finding(self, id: str) -> Finding:
        """The finding with this stable id; KeyError says which ids there are."""
        for f in self.findings:
            if f.key == id:
                return f
        raise KeyError(f"no finding {id!r}; ids are {[f.key for f in self.findings][:20]}")

    def failed(self, *, gating_only: bool = False) -> list[Finding]:
        """Failed findings, most severe first (gating first, then high, medium, low); with ``gating_only`` only those
        that gate the exit code."""
        from audit.findings import sort_findings

        return sort_findings([f for f in self.findings if f.status == "fail" and (f.gating or not gating_only)])

    @property
    def headline(self) -> str:
        """The same as :attr:`verdict` (kept for scripts written against schema 1.2)."""
        return recorded_verdict(self.raw["audit"])

    @property
    def modules(self) -> list[str]:
        return list(self.raw["modules"])

    def module(self, name: str) -> dict[str, Any]:
        """One module's entry (status, summary, tables, data); KeyError lists the modules there are."""
        try:
            return self.raw["modules"][name]
        except KeyError:
            raise KeyError(f"no module {name!r} in this report; it has {self.modules}") from None

    def summary(self, name: str) -> dict[str, Any]:
        return self.module(name).get("summary", {})

    def table(self, module: str, name: str) -> pd.DataFrame:
        """A module's table as a DataFrame."""
        tables = self.module(module).get("tables", {})
        if name not in tables:
            raise KeyError(f"module {module!r} has no table {name!r}; it has {list(tables)}")
        return pd.DataFrame(tables[name]["rows"])

    @property
    def model_card(self) -> dict[str, str]:
        return self.raw["model_card"]

    @property
    def provenance(self) -> dict[str, Any]:
        return self.raw["provenance"]


def read_report(path: str | Path, *, validate: bool = True) -> AuditReport:
    """Load a report from a run folder (``reports/adult/latest``) or a report.json path.

    Parameters
    ----------
    path : str or Path
    validate : bool, default True
        Check it against the published JSON Schema first (:class:`ReportSchemaError` if it does not match).
    """
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    raw = json.loads(p.read_text(encoding="utf-8"))
    if validate:
        validate_report(raw)
    return AuditReport(raw, p)


def load_baseline(baseline: str | Path | None, out_root: Path) -> tuple[dict | None, str | None, str | None]:
    """The baseline report, its path and a note: an explicit run folder or report.json, else the config's ``latest``
    run if any. A previous run whose report.json is unreadable or not an audit report is ignored with a note (it is
    no reason to stop this run); an explicit ``--baseline`` that is unreadable is bad input."""
    from audit.errors import ConfigError

    def read(path: Path) -> dict:
        report = json.loads(path.read_text(encoding="utf-8"))
        if not (
            isinstance(report, dict)
            and isinstance(report.get("audit"), dict)
            and isinstance(report["audit"].get("run_id"), str)
            and isinstance(report.get("provenance"), dict)
            and isinstance(report["provenance"].get("config"), dict)
            and isinstance(report.get("modules"), dict)
            and isinstance(report.get("findings"), list)
        ):
            raise TypeError("not an audit report")
        return report

    if baseline is None:
        path = out_root / "latest" / "report.json"
        if not path.is_file():
            return None, None, None
        try:
            return read(path), str(path.resolve()), None
        except (OSError, ValueError, TypeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:80]
            return None, None, f"the previous run's '{path}' is unreadable ({why}); this run has no baseline"
    path = Path(baseline)
    if path.is_dir():
        path = path / "report.json"
    try:
        return read(path), str(path.resolve()), None
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"--baseline: '{path}' is not a readable audit report.json ({exc.__class__.__name__}); "
            "pass a run folder such as reports/adult/latest"
        ) from None
