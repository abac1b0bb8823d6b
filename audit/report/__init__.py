"""The audit report: writing it (:mod:`audit.report.writer`) and reading it back (:func:`read_report`)."""

from audit.report.reader import AuditReport, ReportSchemaError, read_report, report_schema, validate_report

__all__ = ["AuditReport", "ReportSchemaError", "read_report", "report_schema", "validate_report"]
