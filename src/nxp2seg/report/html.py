"""The evaluation report: one self-contained HTML file (figures embedded as base64 PNG).

No template engine and no external asset: the file opens offline, can be mailed
or archived, and shows exactly what ``summary.json`` says. Every piece of text
that comes from the data (case ids, errors, notes, rater ids, paths) goes
through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

__all__ = ["ReportFigure", "headline_rows", "render_evaluation_report", "table_html"]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1250px;
color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.25em;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:0.88em}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.muted{color:#666}.pass{color:#17803d;font-weight:600}.fail{color:#b42318;font-weight:600}
figure{margin:16px 0}figcaption{color:#555;font-size:0.9em;max-width:1000px}
img{max-width:100%;border:1px solid #eee}.notes li{margin:2px 0}
.scroll{max-height:520px;overflow:auto;border:1px solid #eee}
"""


@dataclass
class ReportFigure:
    """A figure of the report: PNG bytes, a title and a caption saying how to read it."""

    title: str
    caption: str
    png: bytes


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any, decimals: int = 2) -> str:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        return f"{x:.{decimals}f}" if isinstance(x, float) else str(x)
    return str(x)


def _get(summary: dict, key: str) -> Any:
    d: Any = summary
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _with_ci(summary: dict, key: str) -> str:
    value = _get(summary, key)
    if value is None:
        return "–"
    head, _, last = key.rpartition(".")
    ci = _get(summary, f"{head}.{last}_ci" if head else f"{last}_ci") or [None, None]
    return f"{_fmt(value)} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


#: (label, model-vs-mean key, rater-vs-rater key or None, per-rater key prefix or None)
HEADLINE = (
    ("Edema grade: quadratic-weighted kappa", "edema.kappa_quadratic.model_vs_mean",
     "edema.kappa_quadratic.rater_vs_rater", "edema.kappa_quadratic.model_vs_rater"),
    ("Edema grade: linear-weighted kappa", "edema.kappa_linear.model_vs_mean",
     "edema.kappa_linear.rater_vs_rater", "edema.kappa_linear.model_vs_rater"),
    ("Edema grade: ICC(2,1)", "edema.icc.model_vs_mean", "edema.icc.rater_vs_rater",
     "edema.icc.model_vs_rater"),
    ("Edema grade: Spearman r", "edema.spearman.model_vs_mean", "edema.spearman.rater_vs_rater", None),
    ("Edema grade: Pearson r", "edema.pearson.model_vs_mean", "edema.pearson.rater_vs_rater", None),
    ("Edema grade: mean absolute difference (grades)", "edema.mae.model_vs_mean",
     "edema.mae.rater_vs_rater", "edema.mae.model_vs_rater"),
    ("Edema grade: Bland–Altman bias (grades)", "edema.bland_altman.bias",
     "edema.bland_altman_rater_vs_rater.bias", None),
    ("Edema grade: lower limit of agreement", "edema.bland_altman.loa_low",
     "edema.bland_altman_rater_vs_rater.loa_low", None),
    ("Edema grade: upper limit of agreement", "edema.bland_altman.loa_high",
     "edema.bland_altman_rater_vs_rater.loa_high", None),
    ("Edema present (grade > 0): sensitivity", "edema.presence.sensitivity", None, None),
    ("Edema present (grade > 0): specificity", "edema.presence.specificity", None, None),
    ("Fat grade: quadratic-weighted kappa", "fat.kappa_quadratic.model_vs_mean",
     "fat.kappa_quadratic.rater_vs_rater", "fat.kappa_quadratic.model_vs_rater"),
    ("Station score: ICC(2,1)", "station_score.icc", "station_score.icc_rater_vs_rater",
     "station_score.icc_model_vs_rater"),
    ("Station score: Bland–Altman bias (points)", "station_score.bland_altman.bias", None, None),
    ("Total score: ICC(2,1)", "total_score.icc", "total_score.icc_rater_vs_rater",
     "total_score.icc_model_vs_rater"),
    ("Pattern: kappa (unweighted)", "pattern.kappa", "pattern.kappa_rater_vs_rater",
     "pattern.kappa_model_vs_rater"),
    ("Pattern: macro-F1", "pattern.macro_f1", "pattern.macro_f1_rater_vs_rater", None),
    ("Fascial edema: AUC", "fascial_edema.auc", None, None),
    ("Subcutaneous edema: AUC", "subcutaneous_edema.auc", None, None),
    ("Segmentation: mean Dice", "segmentation.dice_mean", None, None),
)


def headline_rows(summary: dict) -> list[list[str]]:
    """The headline table as text cells: figure, model vs mean, rater vs rater, model vs each rater."""
    rows = []
    for label, key, rvr, per_rater in HEADLINE:
        each = ""
        if per_rater:
            block = _get(summary, per_rater) or {}
            each = "; ".join(f"{r}: {_with_ci(summary, f'{per_rater}.{r}')}"
                             for r in summary.get("raters", []) if r in block)
        rows.append([label, _with_ci(summary, key), _with_ci(summary, rvr) if rvr else "", each])
    return rows


def table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None) -> str:
    """An HTML table; every cell escaped, numbers right-aligned."""
    numeric = list(numeric or [False] * len(header))
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(f"<td class=\"num\">{_esc(_fmt(v))}</td>" if num else f"<td>{_esc(_fmt(v))}</td>"
                        for v, num in zip(row, numeric))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _frame_html(df: pd.DataFrame) -> str:
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
               for c in df.columns]
    rows = [[None if (isinstance(v, float) and math.isnan(v)) else v for v in r]
            for r in df.itertuples(index=False, name=None)]
    return table_html([str(c) for c in df.columns], rows, numeric)


def _noninferiority(summary: dict) -> str:
    parts = []
    for name, what in (("noninferiority", "model vs readers' mean"),
                       ("noninferiority_each_rater", "model vs each reader (mean)")):
        b = _get(summary, f"edema.{name}") or {}
        if b.get("difference") is None:
            parts.append(f"<li>{_esc(what)}: not computed (needs two readers and model grades).</li>")
            continue
        verdict = ("<span class=\"pass\">non-inferior</span>" if b.get("passed")
                   else "<span class=\"fail\">not shown non-inferior</span>")
        parts.append(
            f"<li>{_esc(what)} minus reader vs reader (quadratic kappa): "
            f"{_esc(_fmt(b['difference']))} [{_esc(_fmt(b['ci_low']))}, {_esc(_fmt(b['ci_high']))}], "
            f"margin −{_esc(_fmt(b['margin']))}: {verdict}</li>")
    return "<ul>" + "".join(parts) + "</ul>"


def _figures_html(figures: Sequence[ReportFigure]) -> str:
    out = []
    for f in figures:
        data = base64.b64encode(f.png).decode("ascii")
        out.append(f"<figure><h3>{_esc(f.title)}</h3><img src=\"data:image/png;base64,{data}\" "
                   f"alt=\"{_esc(f.title)}\"><figcaption>{_esc(f.caption)}</figcaption></figure>")
    return "".join(out)


def render_evaluation_report(summary: dict, figures: Sequence[ReportFigure], case_table: pd.DataFrame,
                             failed: pd.DataFrame, *, title: str = "nxp2seg evaluation") -> str:
    """The whole report as one HTML string."""
    settings = summary.get("settings", {})
    notes = "".join(f"<li>{_esc(n)}</li>" for n in summary.get("notes", []))
    raters = ", ".join(summary.get("raters", [])) or "none"
    intro = (
        f"<p>Predictions <code>{_esc(settings.get('predictions', ''))}</code> against cohort "
        f"<code>{_esc(settings.get('cohort', ''))}</code>"
        f"{' (split ' + _esc(settings['split']) + ')' if settings.get('split') else ''}: "
        f"<b>{summary.get('n_cases', 0)}</b> cases of <b>{summary.get('n_subjects', 0)}</b> subjects; "
        f"readers {_esc(raters)}; grade scale {_esc(summary.get('grade_scale', ''))}; "
        f"<b>{summary.get('n_failed', 0)}</b> failed case(s) excluded.</p>"
        f"<p class=\"muted\">Brackets: 95% bootstrap intervals, {_esc(settings.get('bootstrap', ''))} "
        f"resamples of subjects (seed {_esc(settings.get('seed', ''))}). Model vs mean compares the "
        "model with the readers' mean (kappa: the integer grade of the mean); rater vs rater is the "
        "readers against each other. See docs/evaluation.md.</p>")
    headline = table_html(["figure", "model vs readers' mean", "reader vs reader", "model vs each reader"],
                          headline_rows(summary), [False, True, True, False])
    failed_html = (_frame_html(failed) if len(failed) else "<p class=\"muted\">No case failed.</p>")
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1>{intro}"
        f"<h2>Agreement with the readers</h2>{headline}"
        f"<h2>Is the model as consistent with the readers as they are with each other?</h2>"
        f"{_noninferiority(summary)}"
        f"<h2>Figures</h2>{_figures_html(figures)}"
        f"<h2>Notes</h2><ul class=\"notes\">{notes or '<li>none</li>'}</ul>"
        f"<h2>Failed cases (excluded)</h2>{failed_html}"
        f"<h2>Cases</h2><div class=\"scroll\">{_frame_html(case_table)}</div>"
        "</body></html>\n")
