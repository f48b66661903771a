"""The figures of the evaluation report, drawn from the paired tables and the summary.

Which figure shows what, and how to read it, is said in each caption (and in
``docs/evaluation.md``). Figures whose data are missing (no grading head, no
label maps) are left out rather than drawn empty.
"""

from __future__ import annotations

import pandas as pd

from nxp2seg.data.schema import GradeScale, LabelSchema
from nxp2seg.evaluation.tables import PairedTables
from nxp2seg.report.figures import (
    bland_altman_plot,
    confusion_plot,
    dice_plot,
    grade_heatmap,
    scatter_panels,
)
from nxp2seg.report.html import ReportFigure

__all__ = ["case_overview", "report_figures"]


def _grading_figures(t: PairedTables, mats: dict[str, pd.DataFrame], scale: GradeScale,
                     schema: LabelSchema) -> list[ReportFigure]:
    c, r = t.cases, t.regions
    station_max = scale.max_grade * len(schema.region_names("thigh"))
    figs = [
        ReportFigure(
            "Bland–Altman: station scores",
            "Each point is one station (thigh or calf) of one subject: the model's station score "
            "minus the readers' mean score, against their average. The solid line is the bias "
            "(positive: the model scores higher), the dashed lines the 95% limits of agreement; "
            "judge them against a clinically acceptable difference in score points.",
            bland_altman_plot(c["station_score_model"], c["station_score_mean"],
                              title="Station score: model − readers' mean")),
        ReportFigure(
            "Model against the readers' mean",
            "Left: station scores (sum of the six regional grades). Right: regional edema grades "
            "(the model's continuous grade against the readers' mean; readers' values jittered "
            "horizontally so that equal grades do not hide each other). Points on the dashed "
            "identity line are perfect agreement.",
            scatter_panels([
                {"x": c["station_score_mean"], "y": c["station_score_model"], "title": "station score",
                 "max": station_max},
                {"x": r["edema_grade_mean"], "y": r["edema_grade_model"], "title": "regional edema grade",
                 "max": scale.max_grade, "jitter": 0.08}])),
    ]
    edema = {"edema grade: readers' mean vs model": mats["edema"]}
    if "edema_rater_vs_rater" in mats:
        a, b = t.raters[:2]
        edema[f"edema grade: reader {a} vs reader {b}"] = mats["edema_rater_vs_rater"]
    figs.append(ReportFigure(
        "Confusion matrices: edema grades",
        "Counts of regions: the integer grade of the readers' mean in rows, the model's integer "
        "grade in columns (left), and the two readers against each other (right). The diagonal "
        "is exact agreement; the farther a count from it, the more a weighted kappa penalises it.",
        confusion_plot(edema, row_label="readers", col_label="model")))
    pattern = {"pattern: readers vs model": mats["pattern"]}
    if "pattern_rater_vs_rater" in mats:
        a, b = t.raters[:2]
        pattern[f"pattern: reader {a} vs reader {b}"] = mats["pattern_rater_vs_rater"]
    figs.append(ReportFigure(
        "Confusion matrices: edema patterns",
        "Counts of stations: the readers' majority pattern in rows (ties broken by the pattern "
        "rule on the mean grades), the model's pattern in columns; right, reader against reader.",
        confusion_plot(pattern, row_label="readers", col_label="model")))
    regions = schema.region_names()
    model = r.pivot_table(index="subject_id", columns="region", values="edema_grade_model",
                          aggfunc="first").reindex(columns=regions)
    mean = r.pivot_table(index="subject_id", columns="region", values="edema_grade_mean",
                         aggfunc="first").reindex(index=model.index.union(r["subject_id"].unique()),
                                                  columns=regions)
    model = model.reindex(index=mean.index)
    figs.append(ReportFigure(
        "Edema grades per subject and region",
        "Rows are subjects, columns the regions (thigh then calf, right then left). Left the "
        "model's grade, right the readers' mean, on one colour scale; blank cells were not "
        "graded. Look for columns or subjects where the two panels differ.",
        grade_heatmap(model, mean, scale.max_grade)))
    return figs


def _dice_figure(summary: dict, schema: LabelSchema) -> ReportFigure:
    seg = summary.get("segmentation", {})
    regions = schema.region_names()
    mean = [seg.get("dice", {}).get(r) for r in regions]
    ci = [seg.get("dice", {}).get(f"{r}_ci") or [None, None] for r in regions]
    as_float = lambda v: float("nan") if v is None else float(v)
    return ReportFigure(
        "Segmentation: Dice per region",
        "Mean Dice of each region over the cases with a label map (native T1 grid), with its 95% "
        "bootstrap interval by subject. 1 is perfect overlap; a region near 0 in some case is "
        "usually a right/left swap (counted in the summary as segmentation.lr_swaps).",
        dice_plot(regions, [as_float(m) for m in mean], [as_float(c[0]) for c in ci],
                  [as_float(c[1]) for c in ci]))


def report_figures(t: PairedTables, seg: pd.DataFrame, summary: dict, mats: dict[str, pd.DataFrame],
                   scale: GradeScale, schema: LabelSchema, graded: bool) -> list[ReportFigure]:
    """Every figure of the report that has data."""
    figs = _grading_figures(t, mats, scale, schema) if graded else []
    if not seg.empty:
        figs.append(_dice_figure(summary, schema))
    return figs


def case_overview(t: PairedTables, seg: pd.DataFrame) -> pd.DataFrame:
    """One row per case for the report and ``case_scores.csv``: scores, patterns, Dice."""
    c = t.cases.copy()
    if not seg.empty:
        dice = seg[seg["graded"]].groupby("case_id")["dice"].mean()
        c["dice_mean"] = c["case_id"].map(dice)
    return c
