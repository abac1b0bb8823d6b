"""audit: audit tabular machine-learning models from one YAML config.

``from audit import run_audit`` is the Python API (:func:`audit.api.run_audit`); it is imported on first use, so
that ``import audit`` stays light.
"""

from __future__ import annotations

from typing import Any

from audit._version import __version__ as __version__

__all__ = ["run_audit", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "run_audit":
        from audit.api import run_audit

        return run_audit
    if name == "load_config":
        from audit.config import load_config

        return load_config
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
