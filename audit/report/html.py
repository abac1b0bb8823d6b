"""The self-contained report.html: the executive summary first, then the evidence, then provenance.

Everything a reader sees is prepared here: numbers formatted for people (16,281; 0.303 [0.278, 0.329]; 5 min 14 s),
long tables cut to ``report.max_table_rows`` rows with the full table as a CSV download inside the page, verdicts as
coloured badges, glossary terms linked at their first use. The page makes no request: CSS inline, figures as
``data:`` PNGs, a Content-Security-Policy that allows nothing else.
"""

from __future__ import annotations

import base64
import html as _html
import json
import math
import re
from typing import Any

import pandas as pd
from markupsafe import Markup

from audit.findings import sort_findings

GLOSSARY: dict[str, tuple[str, str]] = {
    # term: (anchor, definition)
    "ROC AUC": ("roc-auc", "Area under the ROC curve: the probability that a random positive row scores above a random "
                "negative one (0.5: chance, 1: perfect ranking)."),
    "ECE": ("ece", "Expected calibration error: over 10 equal-width score bins, the row-weighted mean gap between the "
            "mean score and the observed positive rate."),
    "TPR": ("tpr", "True positive rate: among rows whose true outcome is the selected one, the share the model "
            "selects."),
    "FPR": ("fpr", "False positive rate: among the other rows, the share the model selects anyway."),
    "selection rate": ("selection-rate", "Share of a group given the favourable decision by the model."),
    "base rate": ("base-rate", "Share of a group whose true outcome is the favourable one."),
    "four-fifths rule": ("four-fifths", "US EEOC Uniform Guidelines: a group selected at less than 80% of the rate "
                         "of the most selected group shows adverse impact."),
    "disparate impact ratio": ("di", "Lowest group selection rate divided by the highest."),
    "demographic parity difference": ("dpd", "Largest gap in selection rate between groups."),
    "equalized odds difference": ("eod", "The larger of the largest TPR gap and the largest FPR gap between groups."),
    "equal opportunity difference": ("eopd", "Largest gap in TPR between groups."),
    "calibration gap": ("cal-gap", "Largest gap in ECE between groups."),
    "bootstrap": ("bootstrap", "Resampling the audited rows (here: Poisson(1) weights) to see how much a number would "
                  "move with other data of the same kind; intervals are the spread of the resampled values."),
    "permutation importance": ("pi", "Drop in a metric (ROC AUC) when one feature's values are shuffled across rows."),
    "ICE": ("ice", "Individual conditional expectation: one row's score as one feature moves over a grid."),
    "c-ICE": ("cice", "Centred ICE: each curve shifted to start at the PD's first point, to compare shapes."),
    "ALE": ("ale", "Accumulated local effects: the average change in score as a feature moves within small bins, "
            "summed; unlike PD it does not extrapolate to unlikely combinations."),
    "Friedman's H": ("h", "Share of a pair's joint effect that is interaction (0: additive, 1: pure interaction)."),
    "SHAP": ("shap", "Shapley values: each feature's share of the difference between a row's score and the average "
             "score of a background of rows; they add up exactly to that difference."),
    "reason codes": ("reason-codes", "For a declined row, the features whose values push its score most towards "
                     "the decline, with their values (what an adverse-action notice cites)."),
    "LIME": ("lime", "A weighted linear model fitted to the model's scores on perturbed copies of one row."),
    "fidelity": ("fidelity", "R² of the LIME surrogate on its neighbourhood: how well it mimics the model there."),
    "Jaccard": ("jaccard", "Overlap of two sets (shared / all); here of the top features of two explanations."),
    "counterfactual": ("counterfactual", "The nearest change to a row, within the constraints, that flips the "
                       "model's decision."),
    "recourse": ("recourse", "What a person would have to change to get the favourable decision; its cost by group "
                 "is the recourse gap."),
    "Cramér's V": ("cramers-v", "Association of two categorical variables (0: none, 1: one determines the other); "
                   "bias-corrected here (Bergsma 2013)."),
    "Integrated Gradients": ("ig", "Attribution that integrates the gradient along the straight path from a "
                             "reference row; adds up to the score difference (completeness)."),
    "probe AUC": ("probe", "ROC AUC of a linear model that reads a sensitive attribute from the network's last hidden "
                  "layer: how much of it the network encodes."),
    "MC dropout": ("mc-dropout", "Monte Carlo dropout: the network scored many times with dropout on; the spread of "
                   "the scores is its uncertainty."),
}  # fmt: skip


class Glossary:
    """Links each glossary term to its definition at its first use in the page."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        terms = sorted(GLOSSARY, key=len, reverse=True)
        self._pattern = re.compile(r"(?<![\w-])(" + "|".join(re.escape(t) for t in terms) + r")(?![\w-])")

    def __call__(self, text: Any) -> Markup:
        if text is None:
            return Markup("")
        escaped = _html.escape(str(text), quote=True)

        def link(m: re.Match) -> str:
            term = m.group(1)
            if term in self.seen:
                return term
            self.seen.add(term)
            return f'<a class="gloss" href="#g-{GLOSSARY[term][0]}">{term}</a>'

        return Markup(self._pattern.sub(link, escaped))


def fmt(v: Any) -> str:
    """A number for people: 16,281; 0.3034; 1.2e-08; 'yes'/'no'; '–' for missing; a list as its items ('none' when
    empty), never Python's ``['a', 'b']``.

    >>> fmt([]), fmt(["SHAP", "LIME"]), fmt([["education", "education-num"]]), fmt(1234567.0)
    ('none', 'SHAP, LIME', 'education + education-num', '1,234,567')
    """
    if v is None:
        return "–"
    if isinstance(v, (list, tuple, set)):
        items = [" + ".join(fmt(x) for x in i) if isinstance(i, (list, tuple)) else fmt(i) for i in v]
        return ", ".join(items) if items else "none"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v == 0:
            return "0"
        if v.is_integer() and abs(v) < 1e15:
            return f"{int(v):,}"
        if abs(v) >= 1e5:
            return f"{v:,.0f}"
        if abs(v) < 1e-3:
            return f"{v:.1e}"
        return f"{v:.4g}"
    return str(v)


def wbr(text: Any) -> Markup:
    """Text, escaped, that may break after ``_`` and ``.`` (``<wbr>``): a narrow printed column breaks
    ``demographic_parity_difference`` or a finding id between its parts, never in the middle of a word."""
    escaped = _html.escape(str(text), quote=False)
    return Markup(re.sub(r"([_.])(?=\w)", r"\1<wbr>", escaped))


def duration(seconds: float | None) -> str:
    """'5 min 14 s', '38.2 s', '0.41 s'."""
    if seconds is None:
        return "–"
    if seconds >= 60:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s} s"
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2f} s"


_BADGE_COLUMNS = {"verdict", "status"}

# The PDF is the printable summary (about 20 A4 pages for Adult); report.html keeps every figure and table. These
# secondary ones stay out of print (fnmatch patterns on "<module>/<figure or table name>").
NOT_PRINTED = (
    "performance/calibration",
    "partial_dependence/pd_categorical_[2-9]",
    "partial_dependence/pd2_*",
    "ale/ale_categorical*",
    "ale/ale2_*",
    "ale/ale_range",
    "interactions/h",
    "shap/shap_values",
    "shap/shap_waterfalls",
    "architecture/layers",
    "architecture/embeddings",
    "gradients/gradient_attributions",
    "gradients/gradients",
    "activations/activation_distributions",
    "activations/activations",
    "activations/representation",
    "fairness/fairness_roc",
    "fairness/fairness_* x *",
    "fairness/groups_* x *",
    "comparison/config",
    "comparison/ranks",
    "data_quality/columns",
    "drift/csi",
    "drift/score",
    "weak_segments/slices",
    "stability/flips",
    "contrastive/fragile",
    "contrastive/cem",
    "faithfulness/agreement",
    "faithfulness/curves",
    "faithfulness/randomisation",
    "faithfulness/faithfulness",
    "weak_segments/weak_segments",
)


# tables printed whole (the others print their first report.max_print_rows rows)
PRINTED_WHOLE = (
    "performance/metrics",
    "performance/confusion",
    "permutation_importance/importance",
    "fairness/measures",
    "fairness/groups_*",
    "fairness/definitions",
    "uncertainty/*",
)


def printed_whole(module: str, name: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(f"{module}/{name}", p) for p in PRINTED_WHOLE)


def printed(module: str, name: str) -> bool:
    """Whether a figure or table goes into the PDF (see :data:`NOT_PRINTED`)."""
    from fnmatch import fnmatchcase

    return not any(fnmatchcase(f"{module}/{name}", p) for p in NOT_PRINTED)


def display_table(frame: pd.DataFrame, max_rows: int, name: str) -> dict[str, Any]:
    """A table as the page shows it: intervals merged into their value ("0.303 [0.278, 0.329]"), at most
    ``max_rows`` rows, the full table as a CSV download when it is longer, a badge for verdict columns."""
    cols = [str(c) for c in frame.columns]
    merged: dict[str, tuple[str, str]] = {}
    for c in cols:
        for lo, hi in ((f"{c}_low", f"{c}_high"), ("ci_low", "ci_high") if c == "value" else (None, None)):
            if lo in cols and hi in cols:
                merged[c] = (lo, hi)
    hidden = {x for pair in merged.values() for x in pair}
    shown = [c for c in cols if c not in hidden]
    rows = []
    for rec in frame.head(max_rows).to_dict("records"):
        cells = []
        for c in shown:
            v = rec.get(c)
            if c in merged:
                lo, hi = rec.get(merged[c][0]), rec.get(merged[c][1])
                text = fmt(v) if _missing(lo) or _missing(hi) else f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"
            else:
                text = fmt(v)
            kind = "badge" if c in _BADGE_COLUMNS and isinstance(v, str) else "num" if _is_number(v) else ""
            cells.append({"text": text, "kind": kind, "status": str(v).replace(" ", "_") if kind == "badge" else ""})
        rows.append(cells)
    out = {"columns": shown, "rows": rows, "total": len(frame), "wide": len(shown) > 9}
    if len(frame) > max_rows:
        csv = frame.to_csv(index=False).encode("utf-8")
        out["csv"] = "data:text/csv;base64," + base64.b64encode(csv).decode("ascii")
        out["csv_name"] = f"{name}.csv"
    return out


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def print_warmup_page() -> str:
    """A small page in the report's style sheet (every font and weight it uses), for warming up the PDF renderer."""
    from importlib.resources import files

    source = (files("audit") / "report" / "templates" / "report.html.j2").read_text(encoding="utf-8")
    style = re.search(r"<style>(.*?)</style>", source, re.S)
    css = re.sub(r"{{.*?}}|{%.*?%}", "", style.group(1) if style else "", flags=re.S)
    return (
        f"<!DOCTYPE html><html><head><style>{css}</style></head><body><header><h1>Audit</h1><p>run</p></header>"
        "<main><h2>Section <span class='badge s-fail'>fail</span></h2><h3>Table</h3><p><b>bold</b> <i>italic</i> "
        "<small>small</small> <code>code</code></p><table><thead><tr><th>a</th></tr></thead><tbody><tr>"
        "<td class='num'>0.123</td></tr></tbody></table><pre>pre</pre></main></body></html>"
    )


def _section(m, summary: dict, cfg, for_print: bool) -> dict:
    """What the template shows of one section: its badge, summary, findings, tables and figures (a figure not
    printed is left out of the print page)."""
    badge = summary["sections"].get(m.name, {"status": m.status, "label": m.status})
    sec = {"name": m.name, "title": m.title, "status": m.status, "badge": badge, "duration": m.duration_s,
           "error": m.error, "traceback": m.traceback, "tables": [], "figures": [], "findings": [], "summary": {}}  # fmt: skip
    if m.result is None:
        return sec
    sec["summary"] = m.result.summary
    sec["findings"] = sort_findings(m.result.findings)
    for t in m.result.tables:
        sec["tables"].append(
            {
                "title": t.title,
                "caption": t.caption,
                "print": printed(m.name, t.name),
                "print_rows": 10**9 if printed_whole(m.name, t.name) else cfg.report.max_print_rows,
                **display_table(t.frame, cfg.report.max_table_rows, t.name),
            }
        )
    for f in m.result.figures:
        sec["figures"].append(
            {
                "caption": f.caption,
                "name": f.name,
                "width_in": f.width_in,
                "print": printed(m.name, f.name),
                "src": None
                if for_print and not printed(m.name, f.name)
                else "data:image/png;base64," + base64.b64encode(f.png).decode("ascii"),
            }
        )
    sec["not_printed"] = sum(not x["print"] for x in sec["figures"] + sec["tables"])
    return sec


def _idcard(prov: dict, cfg) -> dict:
    """The first screen's "what was audited": the model, the data and its rows, the date, the owner."""
    model = prov.get("model", {})
    rows = prov["dataset"]["rows"]
    if cfg.report.model_card.model_name:
        what = cfg.report.model_card.model_name
    elif model.get("source") == "train":
        what = f"built-in tabular net, hidden layers {model.get('architecture', {}).get('hidden')}"
    elif model.get("source") == "python":
        what = f"passed to run_audit in Python ({model.get('kind')})"
    elif model.get("format") == "http":
        what = f"scored by the endpoint {model.get('url')}"
    else:
        what = f"loaded from {model.get('path')}" + (f" ({model['format']})" if model.get("format") else "")
    population = f", {rows['population']:,} population rows" if "population" in rows else ""
    return {
        "model": what,
        "data": f"{prov['dataset']['name']} ({rows['train']:,} training rows, {rows['test']:,} audit rows{population})",
        "date": prov["started"][:16].replace("T", " ") + " UTC",
        "owner": cfg.report.model_card.owner,
        "version": cfg.report.model_card.version,
    }


def render_html(report: dict[str, Any], run, *, medium: str = "screen") -> str:
    """One self-contained HTML page: CSS inline, figures as base64 PNG, no external requests.

    ``medium="print"`` is the page the PDF is made from: what the print style sheet hides (the contents list, rows
    beyond ``report.max_print_rows``, passed findings, figures and tables marked not printed, CSV links, tracebacks
    and the full provenance) is left out of the page instead of being parsed, styled and dropped by the PDF
    renderer, which more than half the elements of the Adult report used to cost. The PDF shows the same.
    """
    for_print = medium == "print"
    from jinja2 import Environment, PackageLoader, select_autoescape

    from audit.report.card import model_card_fields

    env = Environment(loader=PackageLoader("audit", "report/templates"), autoescape=select_autoescape(["html", "j2"]))
    gloss = Glossary()
    env.filters["fmt"] = fmt
    env.filters["wbr"] = wbr
    env.filters["duration"] = duration
    env.filters["gloss"] = gloss
    cfg = run.config
    summary = report["audit"]["summary"]
    findings = sort_findings(run.findings)
    by_key = {f.key: f for f in findings}
    top = [by_key[k] for k in summary["top"] if k in by_key]
    sections = [_section(m, summary, cfg, for_print) for m in run.modules]
    card = model_card_fields(cfg)
    idcard = _idcard(report["provenance"], cfg)
    template = env.get_template("report.html.j2")
    css_title = re.sub(r"[^\w .,:;()/+-]", "", report["audit"]["title"])[:120]
    return template.render(
        css_title=Markup(css_title),
        for_print=for_print,
        print_rows=cfg.report.max_print_rows,
        report=report,
        summary=summary,
        idcard=idcard,
        top=top,
        sections=sections,
        findings=findings,
        model_card=card,
        glossary=[
            (term, anchor, text) for term, (anchor, text) in sorted(GLOSSARY.items(), key=lambda x: x[0].lower())
        ],
        provenance_json=json.dumps(report["provenance"], indent=1),
    )
