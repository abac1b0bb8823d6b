"""Issue 22: the layering is checked by import-linter (``lint-imports`` in ``make test``), and the check can fail.

The contracts live in pyproject.toml. These tests copy the package into a temporary folder, add one import that
breaks a contract (a function-level import that climbs, a section importing another section) and show that
``lint-imports`` then fails naming it; the unchanged copy passes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LINT = Path(sys.executable).with_name("lint-imports")


def _lint(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(folder)}  # the copy, not the installed package
    return subprocess.run([str(LINT), "--no-cache"], cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "audit", tmp_path / "audit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + code, encoding="utf-8")


def test_the_unchanged_package_keeps_every_contract(copy):
    out = _lint(copy)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_a_function_level_import_that_climbs_breaks_the_layers(copy):
    _append(
        copy / "audit" / "metrics.py",
        "def _late():\n    from audit.pipeline import run_audit\n\n    return run_audit\n",
    )
    out = _lint(copy)
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout
    assert "audit.metrics -> audit.pipeline" in out.stdout


def test_a_section_importing_another_breaks_their_independence(copy):
    _append(
        copy / "audit" / "modules" / "performance.py",
        "def _late():\n    from audit.modules.fairness import FairnessModule\n\n    return FairnessModule\n",
    )
    out = _lint(copy)
    assert out.returncode != 0 and "BROKEN" in out.stdout, out.stdout
    assert "audit.modules.performance -> audit.modules.fairness" in out.stdout
