"""Issue 22: every code block of the README and docs/ that a user would run is run here, or says why not.

A block preceded by ``<!-- not run: <reason> -->`` is skipped with its reason (and must give one). Every other block
is run by its language:

- ``yaml``: a config, or a fragment of one: merged into a minimal config and validated (every key and value);
- ``python``: executed in a folder laid out as the docs assume (``configs/adult.yaml``, ``reports/adult/latest``,
  ``new_applicants.csv``), where ``configs/adult.yaml`` is a small synthetic config so that the block runs in seconds;
- ``text``: a picture or a program's output, not code: nothing to run;
- anything else is an error: a new kind of block needs a runner here, or a reason not to run it.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from tests.conftest import ROOT, base_config, synthetic_frame, write_config

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "configs" / "README.md"]
FENCE = re.compile(r"^```(\w*)\s*$")
NOT_RUN = re.compile(r"^<!-- not run: (.+?) -->\s*$")


def blocks() -> list[tuple[str, int, str, str, str | None]]:
    """(page, line, language, code, reason not to run) for every fenced block of every page."""
    out = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            m = FENCE.match(lines[i])
            if not m:
                i += 1
                continue
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            reason = NOT_RUN.match(lines[i - 1]) if i else None
            out.append((page.relative_to(ROOT).as_posix(), i + 1, m.group(1), "\n".join(lines[i + 1 : j]),
                        reason.group(1) if reason else None))  # fmt: skip
            i = j + 1
    return out


BLOCKS = blocks()


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def docs_folder(tmp_path_factory):
    """A folder as the docs assume it: configs/adult.yaml (small, synthetic), its data, one audit run of it in
    reports/adult/latest, and new_applicants.csv."""
    from audit.api import run_audit

    folder = tmp_path_factory.mktemp("docs")
    (folder / "configs").mkdir()
    synthetic_frame().to_csv(folder / "configs" / "data.csv", index=False)
    synthetic_frame(50, seed=3).drop(columns="y").to_csv(folder / "new_applicants.csv", index=False)
    cfg = base_config()
    cfg["name"] = "adult"
    cfg["report"]["output_dir"] = "../reports"
    cfg["modules"]["performance"] = {"min_roc_auc": 0.5}
    path = write_config(folder / "configs", cfg, "adult.yaml")
    assert run_audit(str(path)).exit_code in (0, 1)
    return folder


@pytest.mark.parametrize(("page", "line", "lang", "code", "reason"), BLOCKS, ids=[f"{b[0]}:{b[1]}" for b in BLOCKS])
def test_every_documented_block_runs_or_says_why_not(page, line, lang, code, reason, docs_folder):
    if reason is not None:
        assert len(reason) > 15, f"{page}:{line}: give a real reason not to run the block"
        pytest.skip(f"{page}:{line} not run: {reason}")
    if lang == "text":
        return
    if lang == "yaml":
        from audit.config import config_from_dict

        doc = yaml.safe_load(code)
        minimal = {"dataset": {"train": {"path": "data.csv"}, "target": "y", "positive_label": "yes"}}
        config_from_dict(_merge(minimal, doc), base_dir=docs_folder)  # raises ConfigError naming a bad key
    elif lang == "python":
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=docs_folder, env=env,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert res.returncode == 0, f"{page}:{line} failed:\n{res.stderr[-3000:]}"
    else:
        pytest.fail(f"{page}:{line}: a {lang or 'plain'} block with no runner: run it here or mark it not run")


def test_the_pages_link_to_pages_that_exist():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to a missing {target}"


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
