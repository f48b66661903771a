"""Seed paper 000's description of a cohort's MRI, from one set of grades (``analyze``'s first part).

Writes: ``involvement`` (patients with edema, fat, fascial and subcutaneous
edema per compartment and station; ``involvement_muscles`` per muscle for a
muscle-graded cohort), ``pattern_counts``, ``scores_by_pattern``, ``symmetry``,
``thigh_vs_calf`` (McNemar beside the papers' chi-square), ``reader_agreement``
(the readers' kappa per indicator, readers only) and the heatmap figure.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from nxp2seg.analysis.inputs import GradeSet
from nxp2seg.analysis.labels import Labels
from nxp2seg.analysis.outputs import Writer
from nxp2seg.data.schema import PATTERNS, STATIONS
from nxp2seg.report.paper_figures import heatmap_figure
from nxp2seg.stats.describe import (
    FINDINGS,
    heatmap_matrix,
    involvement_table,
    pattern_counts,
    score_by_pattern,
    site_findings,
    symmetry_table,
)
from nxp2seg.stats.paired import paired_sites_table
from nxp2seg.stats.reader_agreement import reader_agreement
from nxp2seg.stats.tables import format_number

__all__ = ["describe_section"]


def _records(df: pd.DataFrame) -> list[dict]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.astype(object).to_dict("records")]


def _involvement_display(t: pd.DataFrame, lab: Labels, level: str) -> pd.DataFrame:
    cols = {"station": "Station", "compartment": "Compartment"}
    if level == "muscle":
        cols["muscle"] = "Muscle"
    out = pd.DataFrame({v: t[k].map(lab) for k, v in cols.items()})
    out["n"] = t["n_subjects"].to_numpy()
    for f in FINDINGS:
        out[f"{lab(f)}, n (%)"] = t[f].to_numpy()
    return out


def describe_section(gs: GradeSet, w: Writer, lab: Labels, opts: dict[str, Any]) -> dict[str, Any]:
    """Write the descriptive tables and figures; return their summary."""
    pct = int(opts.get("percent_decimals", 1))
    who = {"readers": "the readers' mean grades", "model": "the model's grades",
           "truth": "the phantom's true grades"}[gs.source]
    w.section("MRI description (seed paper 000)",
              f"From {who}: a finding is present in a compartment when it is present on either side "
              + ("(the readers: when more than half of them graded it above 0 or flagged it)"
                 if gs.source == "readers" else "(integer grade above 0, or the flag)")
              + "; percentages are of the subjects whose station was read. Scale: "
              + gs.scale.name + ".")
    summary: dict[str, Any] = {}
    inv = involvement_table(gs.compartments, decimals=pct)
    w.table("involvement", inv, "Subjects with each finding per compartment and station",
            display=_involvement_display(inv, lab, "compartment"))
    summary["involvement"] = _records(inv)
    if gs.graded_level == "muscle":
        invm = involvement_table(gs.regions, decimals=pct, level="muscle")
        w.table("involvement_muscles", invm, "Subjects with each finding per muscle",
                display=_involvement_display(invm, lab, "muscle"))
    pc = pattern_counts(gs.cases, decimals=pct)
    wide = pc.pivot(index="pattern", columns="station", values="n_percent")
    wide = wide.reindex(index=list(PATTERNS), columns=[s for s in STATIONS if s in wide.columns])
    shown = pd.DataFrame({"Pattern": [lab(p) for p in wide.index]})
    for st in wide.columns:
        n = int(pc.loc[pc["station"] == st, "n_cases"].iloc[0])
        shown[f"{lab(st)} (n = {n}), n (%)"] = wide[st].to_numpy()
    w.table("pattern_counts", pc, "Edema pattern per station (none < patchy < mixed < diffuse)",
            display=shown)
    summary["pattern_counts"] = _records(pc)
    sp = score_by_pattern(gs.cases, decimals=int(opts.get("decimals", 2)),
                          quantile_method=str(opts.get("quantiles", "linear")))
    shown = pd.DataFrame({"Station": sp["station"].map(lab), "Pattern": sp["pattern"].map(lab),
                          "n": sp["n"], "Score, mean ± SD": sp["mean_sd"],
                          "Score, median [IQR]": sp["median_iqr"]})
    w.table("scores_by_pattern", sp, "Station score by pattern", display=shown,
            note=f"Station score: the sum of the six compartment grades ({gs.scale.name}).")
    summary["scores_by_pattern"] = _records(sp)
    sym = symmetry_table(gs.compartments, decimals=pct)
    if len(sym):
        shown = pd.DataFrame({"Station": sym["station"].map(lab),
                              "Subjects with edema": sym["n_subjects"],
                              "Symmetric in location": sym["symmetric_location"],
                              "Equal grades both sides": sym["equal_grades"],
                              "Sides one grade apart": sym["one_grade_apart"],
                              "Sides more apart": sym["more_apart"]})
        w.table("symmetry", sym, "Symmetry of the edema (subjects with edema, both sides read)",
                display=shown, note="Grades compared compartment by compartment (integer grades); "
                "the largest side difference counts.")
        summary["symmetry"] = _records(sym)
    sites = site_findings(gs.compartments)
    pairs = {f: (f"{f}_thigh", f"{f}_calf") for f in FINDINGS
             if f"{f}_thigh" in sites and f"{f}_calf" in sites}
    if pairs:
        tvc = paired_sites_table(sites, pairs, decimals=pct)
        shown = pd.DataFrame({"Finding": tvc["finding"].map(lab), "Subjects (both read)": tvc["n_subjects"],
                              "Thigh, n (%)": tvc["site_a"], "Calf, n (%)": tvc["site_b"],
                              "Both": tvc["both"], "Thigh only": tvc["a_only"],
                              "Calf only": tvc["b_only"], "McNemar p": tvc["mcnemar_p"],
                              "Chi-square p (as the papers)": tvc["chi_square_p"]})
        w.table("thigh_vs_calf", tvc, "Thigh vs calf: the same subjects at two stations", display=shown,
                note="McNemar's exact test compares the paired proportions (it reads the subjects "
                "with the finding at one station only); the chi-square treats thigh and calf as two "
                "independent groups, as the papers did (Pearson, no continuity correction), and is "
                "printed to reproduce them, not as the right test.")
        summary["thigh_vs_calf"] = _records(tvc)
    if gs.source == "readers" and gs.raw_grades is not None and gs.raw_grades["rater"].nunique() > 1:
        cases = gs.cases[["case_id", "subject_id"]]
        ra = reader_agreement(gs.raw_grades, gs.raw_patterns, cases, gs.scale.max_grade,
                              n_boot=int(opts.get("bootstrap", 1000)), seed=int(opts.get("seed", 0)))
        d = int(opts.get("decimals", 2))

        def ci(lo, hi):
            return [f"{format_number(a, d)} to {format_number(b, d)}" for a, b in zip(lo, hi)]
        shown = pd.DataFrame({"Indicator": ra["indicator"].map(lab), "Readers": ra["raters"],
                              "Items": ra["n_items"], "Exact agreement": ra["exact_agreement"],
                              "Kappa": ra["kappa"],
                              "95% CI (asymptotic)": ci(ra["kappa_ci_low"], ra["kappa_ci_high"]),
                              "95% CI (bootstrap by subject)": ci(ra["kappa_boot_low"], ra["kappa_boot_high"]),
                              "Weighted kappa (quadratic)": ra["kappa_quadratic"]})
        w.table("reader_agreement", ra, "Agreement between the readers per indicator (kappa)",
                display=shown, note="Unweighted Cohen's kappa on the regions both readers graded "
                "(the pattern: per case), as SPSS reports it, with its asymptotic interval; the "
                "bootstrap interval resamples subjects (regions of one subject are not independent).")
        summary["reader_agreement"] = _records(ra)
    order = gs.subjects.set_index("subject_id")["total_score"]
    mat = heatmap_matrix(gs.compartments, "edema_grade", order_by=order)
    w.figure("heatmap", heatmap_figure(mat, max_grade=gs.scale.max_grade, label=lab,
                                       title=f"Edema grade per subject and compartment ({who})",
                                       colorbar=f"edema grade ({gs.scale.name})"),
             "Heatmap: edema per subject and compartment (seed paper 000, Figure 1)")
    if gs.graded_level == "muscle":
        th = gs.regions[gs.regions["station"] == "thigh"]
        if len(th):
            matm = heatmap_matrix(th, "edema_grade", order_by=order)
            w.figure("heatmap_thigh_muscles",
                     heatmap_figure(matm, max_grade=gs.scale.max_grade, label=lab,
                                    title=f"Thigh edema per subject and muscle ({who})",
                                    colorbar=f"edema grade ({gs.scale.name})"),
                     "Heatmap: thigh edema per subject and muscle")
    return summary
