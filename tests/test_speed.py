"""Issue 17: the fast paths give exactly what the slow ones give.

Speed itself is measured in ``bench/`` (``make bench-audit``), never asserted here.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from audit import render as figure_renderer
from audit.plotting import subplots, to_png


def _figures():
    """Figures of the kinds the report draws: lines and bands, a seaborn bar chart, a scatter, a heatmap, text."""
    import pandas as pd
    import seaborn as sns

    rng = np.random.default_rng(0)
    fig1, ax = subplots(figsize=(6, 3))
    x = np.linspace(0, 1, 30)
    for _ in range(20):
        ax.plot(x, rng.normal(size=30).cumsum(), lw=0.6, alpha=0.5)
    ax.fill_between(x, -1, 1, alpha=0.2)
    ax.set_title("ICE curves")
    fig2, ax = subplots(figsize=(5, 3))
    sns.barplot(data=pd.DataFrame({"g": list("abcd"), "v": [0.1, 0.3, 0.2, 0.4]}), x="v", y="g", ax=ax)
    fig3, (a, b) = subplots(1, 2, figsize=(8, 3))  # capped at the page width
    a.scatter(rng.normal(size=2000), rng.normal(size=2000), s=3, c=rng.uniform(size=2000), cmap="coolwarm")
    im = b.imshow(rng.uniform(size=(12, 12)), cmap="viridis")
    fig3.colorbar(im, ax=b)
    b.text(2, 2, "tiny", fontsize=4)  # raised to the minimum font
    return [fig1, fig2, fig3]


def test_renderer_process_draws_the_bytes_drawing_here_gives():
    here = [to_png(f) for f in _figures()]
    with figure_renderer.background_rendering():
        pending = [to_png(f) for f in _figures()]
        assert all(isinstance(p, figure_renderer.PendingPNG) for p in pending)
        there = [p.result() for p in pending]
    assert all(isinstance(b, bytes) and b.startswith(b"\x89PNG") for b in there)
    assert there == here


def test_a_failed_renderer_or_an_unpicklable_figure_is_drawn_here():
    from matplotlib.ticker import FuncFormatter

    here = [to_png(f) for f in _figures()]
    with figure_renderer.background_rendering():
        renderer = figure_renderer.active()
        renderer._proc.kill()  # the renderer dies: every figure is still drawn, here
        renderer._proc.wait()
        got = [to_png(f) for f in _figures()]
        assert [g.result() if not isinstance(g, bytes) else g for g in got] == here
        fig, ax = subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, 1])
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0%}"))  # a lambda does not pickle
        with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises for it
            pickle.dumps(fig)
        assert isinstance(to_png(fig), bytes)
    assert figure_renderer.active() is None


def _draw_lines(n: int, seed: int):
    """A figure-building function for :func:`audit.plotting.draw` (module level: pickled by name)."""
    rng = np.random.default_rng(seed)
    fig, ax = subplots(figsize=(6, 3))
    for _ in range(n):
        ax.plot(rng.normal(size=30).cumsum(), marker="o", ms=2, lw=0.6)
    ax.text(1, 1, "tiny", fontsize=4)  # raised to the minimum font there too
    ax.set_title("built where it is drawn")
    return fig


def test_a_figure_built_by_the_renderer_is_the_one_built_here():
    from audit.plotting import draw

    here = draw(_draw_lines, 12, seed=3)
    assert isinstance(here, bytes) and here == to_png(_draw_lines(12, seed=3))
    with figure_renderer.background_rendering():
        pending = draw(_draw_lines, 12, seed=3)
        assert isinstance(pending, figure_renderer.PendingPNG)
        assert pending.result() == here
        unpicklable = draw(lambda: _draw_lines(12, 3))  # a lambda does not pickle: built here (then drawn there)
        assert (unpicklable if isinstance(unpicklable, bytes) else unpicklable.result()) == here
        renderer = figure_renderer.active()
        renderer._proc.kill()  # the renderer dies: the call is built and drawn here
        renderer._proc.wait()
        late = draw(_draw_lines, 12, seed=3)
        assert (late if isinstance(late, bytes) else late.result()) == here


def test_figure_waits_for_its_bytes():
    from audit.modules.base import Figure

    with figure_renderer.background_rendering():
        f = Figure("x", "caption", to_png(_figures()[0]))
        assert f.png.startswith(b"\x89PNG") and isinstance(f.data, bytes)
        assert f.width_in == pytest.approx(6.0)


def test_renderer_writes_the_pdf_this_process_writes(tmp_path):
    """The PDF written by the renderer process is byte for byte the one written here; a dead renderer's PDF is
    written here."""
    from audit.report.html import print_warmup_page
    from audit.report.pdf import write_pdf, write_pdf_here

    html = print_warmup_page()
    assert write_pdf_here(html, tmp_path / "here.pdf") == 1
    with figure_renderer.background_rendering(pdf=True):
        renderer = figure_renderer.active()
        assert renderer.pdf
        assert write_pdf(html, tmp_path / "there.pdf") == 1
        renderer._proc.kill()
        renderer._proc.wait()
        assert write_pdf(html, tmp_path / "fallback.pdf") == 1
    here = (tmp_path / "here.pdf").read_bytes()
    assert here.startswith(b"%PDF")
    assert (tmp_path / "there.pdf").read_bytes() == here
    assert (tmp_path / "fallback.pdf").read_bytes() == here


def test_training_does_not_load_the_compiler():
    """Training uses torch's own Adam update (tested bit-identical to Lightning's ``torch.optim.Adam``) without the
    Optimizer class and sets the eager determinism flag directly: neither TorchDynamo nor SymPy gets imported."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
from audit.config import ModelConfig
from audit.schema import Feature, Schema
from audit.model.training import train_model
schema = Schema((Feature("a", "numeric"), Feature("b", "categorical", levels=("x", "y"))), "t", "1", "0")
rng = np.random.default_rng(0)
X = np.column_stack([rng.normal(size=300), rng.integers(0, 2, 300)]).astype(float)
train_model(schema, X, (X[:, 0] > 0).astype(int), ModelConfig(hidden=[4], max_epochs=2), validation_size=0.2, seed=0)
print(sorted(m for m in ("torch._dynamo", "sympy", "torch._inductor") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_with_the_renderer_the_audit_process_imports_no_matplotlib(workdir):
    """Figures are built by the renderer process (``plotting.draw``): the audit's own process never imports
    matplotlib or seaborn (0.7 s of imports), and the report still has its figures."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = f"""
import sys
from pathlib import Path
from audit.config import config_from_dict
from audit.pipeline import run_audit
from tests.conftest import base_config, with_html
cfg = with_html(base_config())
cfg["compute"] = {{"threads": 2}}
run = run_audit(config_from_dict(cfg, base_dir=Path({str(workdir)!r}), name="m"), quiet=True)
figures = sum(len(m.result.figures) for m in run.modules if m.result is not None)
print(sorted(m for m in ("matplotlib", "seaborn") if m in sys.modules), figures)
"""
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=root, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded, figures = out.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    assert loaded == "[]" and int(figures) > 10


def test_thread_plan_and_limits_are_restored():
    import torch
    from threadpoolctl import threadpool_info

    from audit.compute import ThreadPlan, apply_torch_threads, available_cpus, thread_limits

    assert ThreadPlan.for_threads(None).threads == available_cpus()
    assert ThreadPlan.for_threads(1) == ThreadPlan(1, 1, False)
    assert ThreadPlan.for_threads(4) == ThreadPlan(4, 3, True)
    assert ThreadPlan.for_threads(4, figures=False) == ThreadPlan(4, 4, False)  # report.json alone: no renderer
    before = torch.get_num_threads()
    with thread_limits(1):
        apply_torch_threads()
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert torch.get_num_threads() == before


def test_thread_count_changes_no_number_and_no_figure(workdir):
    """The same audit on 1 thread (figures drawn in the audit's process) and on 2 (figures drawn by the renderer,
    torch on one thread): report.json agrees to the bit but for timings and run ids, and every figure is the same."""
    from audit.config import config_from_dict
    from audit.pipeline import run_audit
    from tests.conftest import base_config, with_html

    reports, pngs = [], []
    for threads in (1, 2):
        cfg = with_html(base_config())  # figures are drawn only for a page that shows them
        cfg["compute"] = {"threads": threads}
        run = run_audit(config_from_dict(cfg, base_dir=workdir, name=f"t{threads}"), quiet=True)
        rep = json.loads((run.run_dir / "report.json").read_text())
        assert rep["provenance"]["compute"]["figure_renderer"] is (threads == 2)
        reports.append(rep["modules"])
        pngs.append([f.png for m in run.modules if m.result is not None for f in m.result.figures])

    def strip(d):
        if isinstance(d, dict):
            return {k: strip(v) for k, v in d.items() if k not in ("duration_s",)}
        if isinstance(d, list):
            return [strip(v) for v in d]
        return d

    assert strip(reports[0]) == strip(reports[1])
    assert len(pngs[0]) > 10 and pngs[0] == pngs[1]


def test_a_deferred_figure_is_drawn_only_when_asked_and_gives_the_same_bytes():
    from audit.plotting import draw

    here = draw(_draw_lines, 12, seed=3)
    calls = []

    def counted(n, seed):
        calls.append(n)
        return _draw_lines(n, seed)

    with figure_renderer.deferred_figures():
        data = np.array([12])
        later = draw(_draw_lines, int(data[0]), seed=3)
        unpicklable = draw(lambda: counted(12, 3))  # kept as it is, built when asked
        assert isinstance(later, figure_renderer.DeferredPNG) and calls == []
        data[0] = 3  # the call was kept as it was made
    assert figure_renderer.deferred() is False
    assert later.result() == here and later.result() is later.result()  # drawn once
    assert unpicklable.result() == here and calls == [12]


def test_a_run_that_writes_no_html_or_pdf_draws_no_figure(workdir, monkeypatch):
    """report.json alone shows no figure, so none is drawn (the same numbers either way); with HTML every figure
    is drawn (tests/test_pipeline.py: one that cannot be drawn fails its section there, and only there)."""
    import audit.plotting as plotting
    from audit.config import load_config
    from audit.pipeline import run_audit
    from tests.conftest import base_config, with_html, write_config

    drawn = []
    real = plotting._render
    monkeypatch.setattr(plotting, "_render", lambda fig, smallest: drawn.append(1) or real(fig, smallest))
    cfg = base_config()
    cfg["network"] = {"enabled": False}
    json_only = run_audit(load_config(write_config(workdir, cfg)), quiet=True)
    assert drawn == [] and json_only.exit_code in (0, 1)
    assert not (json_only.run_dir / "report.html").exists()
    figures = [f for m in json_only.modules if m.result for f in m.result.figures]
    assert figures and all(isinstance(f.data, figure_renderer.DeferredPNG) for f in figures)
    assert figures[0].png.startswith(b"\x89PNG") and len(drawn) == 1  # still there when asked for
    with_figures = run_audit(
        load_config(write_config(workdir, with_html(base_config()) | {"network": cfg["network"]})), quiet=True
    )
    assert len(drawn) == 1 + sum(len(m.result.figures) for m in with_figures.modules if m.result)
    a, b = (json.loads((r.run_dir / "report.json").read_text()) for r in (json_only, with_figures))
    for name in ("performance", "fairness", "shap", "partial_dependence"):
        assert a["modules"][name]["data"] == b["modules"][name]["data"], name
        assert a["modules"][name]["figures"] == b["modules"][name]["figures"], name


def test_deferral_is_per_thread():
    """Two audits side by side in one process (the API, tests/test_reliability.py) each keep their own setting."""
    import threading

    seen = {}
    entered, leave = threading.Event(), threading.Event()

    def other():
        with figure_renderer.deferred_figures():
            entered.set()
            leave.wait(5)
            seen["other"] = figure_renderer.deferred()

    t = threading.Thread(target=other)
    t.start()
    entered.wait(5)
    with figure_renderer.deferred_figures(False):
        seen["here"] = figure_renderer.deferred()
    leave.set()
    t.join()
    assert seen == {"here": False, "other": True} and figure_renderer.deferred() is False
