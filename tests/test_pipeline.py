"""The pipeline and CLI end to end: report files, exit codes, failure isolation, nothing written on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from audit.cli import main
from audit.config import load_config
from audit.modules.base import ModuleResult
from audit.modules.performance import PerformanceModule
from audit.pipeline import run_audit
from tests.conftest import ROOT, base_config, light_config, with_html, write_config


def test_end_to_end_cli_run_writes_report(workdir, capsys):
    path = write_config(workdir, with_html(base_config()))
    code = main(["run", str(path), "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err
    latest = workdir / "reports" / "small" / "latest"
    assert latest.is_symlink()
    report = json.loads((latest / "report.json").read_text())
    html = (latest / "report.html").read_text()
    assert report["schema_version"] == "1.3"
    assert report["audit"]["verdict"] == report["audit"]["summary"]["headline"] in ("pass", "review")  # exit 0
    assert set(report["modules"]) == {
        "performance",
        "permutation_importance",
        "partial_dependence",
        "ale",
        "interactions",
        "shap",
        "lime",
        "counterfactuals",
        "architecture",
        "gradients",
        "activations",
        "uncertainty",
        "fairness",
        "comparison",
        "data_quality",
        "drift",
        "contrastive",
        "weak_segments",
        "stability",
        "faithfulness",
    }
    assert all(m["status"] == "ok" for m in report["modules"].values())
    prov = report["provenance"]
    assert prov["seed"] == 0 and len(prov["config_hash"]) == 64 and len(prov["model"]["hash"]) == 64
    assert prov["dataset"]["files"]["data.csv"] and prov["versions"]["torch"]
    assert {"load data", "train model", "score", "performance"} <= set(prov["stages_s"])
    # self-contained: no external resources
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert (
        html.index('id="verdict"')
        < html.index("All findings")
        < html.index("Model performance")
        < html.index('id="provenance"')
    )
    assert "data:image/png;base64," in html
    assert (latest / "model" / "weights.pt").is_file()
    assert out.out.startswith(("PASS: ", "REVIEW: Gates passed"))  # exit 0: the gates passed


def test_saved_model_is_reused_with_source_load(workdir):
    cfg = light_config()
    first = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    cfg["model"] = {"source": "load", "path": "reports/small/latest/model"}
    second = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    auc = [
        json.loads((r.run_dir / "report.json").read_text())["modules"]["performance"]["summary"]["test_roc_auc"]
        for r in (first, second)
    ]
    assert auc[0] == auc[1]
    assert second.model_info["source"] == "load" and second.model_info["hash"] == first.model_info["hash"]


def test_loaded_model_must_fit_the_data(workdir, capsys):
    run_audit(load_config(write_config(workdir, light_config())), quiet=True)
    cfg = base_config()
    cfg["model"] = {"source": "load", "path": "reports/small/latest/model"}
    cfg["dataset"]["drop"] = ["x2"]
    cfg["modules"]["partial_dependence"]["pairs"] = cfg["modules"]["ale"]["pairs"] = []
    assert main(["run", str(write_config(workdir, cfg, "other.yaml")), "-q"]) == 2
    assert "needs column(s) ['x2']" in capsys.readouterr().err
    assert not (workdir / "reports" / "other").exists()


class Boom:
    name = "boom"
    title = "A module that fails"

    def enabled(self, config):
        return True

    def run(self, ctx):
        raise RuntimeError("kaboom")


def test_failing_module_is_isolated_and_exit_code_3(workdir):
    cfg = load_config(write_config(workdir, with_html(base_config())))
    run = run_audit(cfg, quiet=True, modules=[Boom(), PerformanceModule()])
    assert run.exit_code == 3
    status = {m.name: m.status for m in run.modules}
    assert status == {"boom": "error", "performance": "ok"}
    report = json.loads((run.run_dir / "report.json").read_text())
    assert report["audit"]["verdict"] == "error" and report["audit"]["modules_failed"] == ["boom"]
    assert report["modules"]["boom"]["error"] == "RuntimeError: kaboom"
    assert "This module failed" in (run.run_dir / "report.html").read_text()


class BadFigure:
    """A section whose figure cannot be built (``draw`` defers building to the renderer process when one runs)."""

    name = "badfig"
    title = "A section with a broken figure"

    def enabled(self, config):
        return True

    def run(self, ctx):
        from audit.modules.base import Figure
        from audit.modules.global_explain import _draw_importance
        from audit.plotting import draw

        return ModuleResult(figures=[Figure("broken", "caption", draw(_draw_importance, None, "metric", set()))])


@pytest.mark.parametrize("threads", [1, 2])
def test_a_figure_that_cannot_be_built_fails_its_section_only(workdir, threads):
    cfg = with_html(base_config())
    cfg["compute"] = {"threads": threads}  # 2: built by the renderer process, after the section returned
    run = run_audit(load_config(write_config(workdir, cfg)), quiet=True, modules=[BadFigure(), PerformanceModule()])
    assert run.exit_code == 3
    assert {m.name: m.status for m in run.modules} == {"badfig": "error", "performance": "ok"}
    report = json.loads((run.run_dir / "report.json").read_text())
    assert report["audit"]["modules_failed"] == ["badfig"]
    assert "AttributeError" in report["modules"]["badfig"]["error"]
    assert "This module failed" in (run.run_dir / "report.html").read_text()
    # a run that writes report.json alone shows no figure, so draws none: the broken one is never built
    cfg["report"]["formats"] = ["json"]
    unseen = run_audit(load_config(write_config(workdir, cfg)), quiet=True, modules=[BadFigure(), PerformanceModule()])
    assert unseen.exit_code == 0 and {m.status for m in unseen.modules} == {"ok"}


def test_failed_gate_gives_exit_code_1(workdir):
    cfg = base_config()
    cfg["modules"]["performance"] = {"min_roc_auc": 0.9999}
    run = run_audit(load_config(write_config(workdir, cfg)), quiet=True, modules=[PerformanceModule()])
    assert run.exit_code == 1
    failed = [f for f in run.findings if f.status == "fail" and f.gating]
    assert failed and "ROC AUC" in failed[0].title


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c["dataset"].update(target="nope"), "dataset.target: column 'nope' not found"),
        (lambda c: c["dataset"]["train"].update(path="missing.csv"), "does not exist"),
        (lambda c: c.update(sead=1), "did you mean 'seed'?"),
        (lambda c: c["dataset"].update(positive_label="maybe"), "does not occur"),
    ],
)
def test_bad_input_exit_2_one_line_nothing_written(workdir, capsys, mutate, message):
    cfg = base_config()
    mutate(cfg)
    code = main(["run", str(write_config(workdir, cfg))])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith("error:"), err  # no progress or FAILED lines around it
    assert not (workdir / "reports").exists()


def test_module_sees_same_numbers_for_same_seed(workdir):
    cfg = load_config(write_config(workdir, base_config()))
    a = run_audit(cfg, quiet=True, write=False)
    b = run_audit(cfg, quiet=True, write=False)
    for ma, mb in zip(a.modules, b.modules, strict=True):
        assert isinstance(ma.result, ModuleResult)
        for ta, tb in zip(ma.result.tables, mb.result.tables, strict=True):
            assert ta.frame.equals(tb.frame), (ma.name, ta.name)


def test_validate_and_help_commands(capsys):
    assert main(["validate", str(ROOT / "configs" / "german_credit.yaml")]) == 0
    assert "valid (700 train rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["run", "--help"])
    assert exc.value.code == 0
    assert "exit codes" in capsys.readouterr().out


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_validates(config, capsys):
    assert main(["validate", str(ROOT / "configs" / config)]) == 0, capsys.readouterr().err


def test_python_m_audit_subprocess(workdir):
    path = write_config(workdir, base_config() | {"sead": 3})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run(
        [sys.executable, "-m", "audit", "validate", str(path)], capture_output=True, text=True, env=env
    )
    assert res.returncode == 2 and "did you mean 'seed'" in res.stderr and "Traceback" not in res.stderr


def test_the_command_ends_with_its_exit_code_after_flushing_and_exit_handlers():
    """python -m audit ends without the interpreter's teardown (audit.cli.exit_now); what it printed to a pipe
    (block-buffered) arrives, the exit handlers run, and the exit code is the command's."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"PYTHONPATH": str(ROOT)}
    code = "import atexit; from audit.cli import exit_now; atexit.register(print, 'handler'); print('out'); exit_now(3)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert res.returncode == 3 and res.stdout.split() == ["out", "handler"]
    path = ROOT / "configs" / "german_credit.yaml"
    res = subprocess.run(
        [sys.executable, "-m", "audit", "validate", str(path)], capture_output=True, text=True, env=env
    )
    assert res.returncode == 0 and "valid (" in res.stdout, res.stderr


def test_german_credit_end_to_end(tmp_path):
    """A shipped config runs end to end (German Credit is small enough for the default suite)."""
    import yaml

    data = yaml.safe_load((ROOT / "configs" / "german_credit.yaml").read_text())
    data["dataset"]["train"]["path"] = str(ROOT / "datasets" / "german_credit" / "german_credit_readable.csv")
    data["report"]["output_dir"] = str(tmp_path / "out")
    run = run_audit(load_config(write_config(tmp_path, data, "german_credit.yaml")), quiet=True)
    assert run.exit_code in (0, 1)
    assert all(m.status == "ok" for m in run.modules)
    report = json.loads((run.run_dir / "report.json").read_text())
    assert report["modules"]["performance"]["summary"]["test_roc_auc"] > 0.7
    cf = report["modules"]["counterfactuals"]["summary"]
    assert cf["constraint_violations"] == 0 and cf["rescored_flip_rate"] == 1.0 and cf["validity"] >= 0.8
    assert report["modules"]["shap"]["summary"]["max_additivity_error"] <= 1e-6


def test_strings_from_data_and_config_are_escaped(tmp_path):
    """Feature names, category values and the title carry markup; none of it reaches the HTML unescaped."""
    from tests.conftest import synthetic_frame

    evil = '<script>alert("x")</script>'
    frame = synthetic_frame().rename(columns={"colour": evil + "'col"})
    frame[evil + "'col"] = frame[evil + "'col"].replace({"red": '"><img src=x onerror=alert(1)>'})
    frame.to_csv(tmp_path / "data.csv", index=False)
    cfg = with_html(base_config())
    cfg["report"]["title"] = "<b>title</b>"
    cfg["modules"]["partial_dependence"]["pairs"] = []
    run = run_audit(load_config(write_config(tmp_path, cfg)), quiet=True)
    html = (run.run_dir / "report.html").read_text()
    assert "<script>" not in html and "<img src=x" not in html and "<b>title</b>" not in html
    assert "&lt;script&gt;" in html
