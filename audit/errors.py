"""Errors that the CLI turns into exit codes and one-line messages."""

from __future__ import annotations


class AuditInputError(Exception):
    """Bad configuration or input data (exit code 2).

    The message is one line that names the config key or column, the bad value and the fix.
    """


class ConfigError(AuditInputError):
    """The YAML configuration is malformed or does not validate."""


class DataError(AuditInputError):
    """A data file is missing, unreadable, corrupt or inconsistent with the config."""


class ModelLoadError(AuditInputError):
    """A saved model artifact cannot be loaded or does not fit the dataset."""


class ModelRuntimeError(Exception):
    """A model that passed validation failed when loaded or run (exit code 3, and the report says so)."""


EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MODULE_ERROR = 3
