"""Two groups compared muscle by muscle (or compartment by compartment): seed paper 004's analysis.

Per item (muscle or compartment) of one station: the grade per subject (the
mean of both sides by default), median [IQR] per group, box plots by group
(paper 004's Figure 1), and linear mixed-effects models with a random
intercept per subject (:mod:`nxp2seg.stats.mixed`): per-item contrasts with
a multiple-comparison correction, the pooled group effect, the interaction
test and the model's diagnostics. With ``exclude`` / ``exclude_if`` the same
is repeated without those subjects (the paper's secondary analysis).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from nxp2seg.analysis.inputs import GradeSet
from nxp2seg.analysis.labels import Labels
from nxp2seg.analysis.outputs import Writer
from nxp2seg.data.schema import COMPARTMENTS, MUSCLES, STATIONS
from nxp2seg.report.paper_figures import diagnostics_figure, group_boxplots, p_stars
from nxp2seg.stats.join import AnalysisError
from nxp2seg.stats.mixed import compare_groups_mixed
from nxp2seg.stats.tables import format_number, mean_sd, median_iqr

__all__ = ["compare_data", "compare_section"]

VALUES = ("edema_grade", "edema_grade_int", "fat_grade", "fat_grade_int")
SIDES_RULES = ("mean", "max", "both")


def _order(station: str, level: str) -> list[str]:
    if level == "compartment":
        return list(COMPARTMENTS[station])
    return [m for c in COMPARTMENTS[station] for m in MUSCLES[station][c]]


def compare_data(gs: GradeSet, groups: pd.Series, opts: dict[str, Any]) -> tuple[pd.DataFrame, list[str], str]:
    """The long table the model reads: ``subject_id, group, item, [side], grade``; items in order.

    ``groups`` maps subject -> group. Returns ``(data, items, level)``.
    """
    level = str(opts.get("level", "auto"))
    if level == "auto":
        level = gs.graded_level
    if level == "muscle" and gs.graded_level != "muscle":
        raise AnalysisError("compare.level=muscle: these grades are per compartment; the cohort (or "
                            "model) must grade muscles (dataset.json regions per muscle)")
    if level not in ("muscle", "compartment"):
        raise AnalysisError(f"compare.level={level}: use auto, muscle or compartment")
    value = str(opts.get("value", "edema_grade"))
    if value not in VALUES:
        raise AnalysisError(f"compare.value={value}: use one of {VALUES}")
    sides = str(opts.get("sides", "mean"))
    if sides not in SIDES_RULES:
        raise AnalysisError(f"compare.sides={sides}: use one of {SIDES_RULES}")
    rows = gs.regions if level == "muscle" else gs.compartments
    station = str(opts.get("station", "thigh"))
    stations = list(STATIONS) if station == "all" else [station]
    if station != "all" and station not in STATIONS:
        raise AnalysisError(f"compare.station={station}: use thigh, calf or all")
    col = "muscle" if level == "muscle" else "compartment"
    df = rows[rows["station"].isin(stations)].copy()
    df["item"] = df[col] if len(stations) == 1 else df["station"] + "_" + df[col]
    items = [i if len(stations) == 1 else f"{st}_{i}" for st in stations for i in _order(st, level)]
    for name, members in (opts.get("combine") or {}).items():
        df.loc[df["item"].isin(list(members)), "item"] = str(name)
        first = min((items.index(m) for m in members if m in items), default=len(items))
        items = [i for i in items if i not in members]
        items.insert(min(first, len(items)), str(name))
    wanted = opts.get("items")
    if wanted:
        missing = [i for i in wanted if i not in items]
        if missing:
            raise AnalysisError(f"compare.items: {missing} are not among {items}")
        items = list(wanted)
    df = df[df["item"].isin(items)]
    df["grade"] = pd.to_numeric(df[value], errors="coerce")
    keys = ["subject_id", "item"] + (["side"] if sides == "both" else [])
    agg = "max" if sides == "max" else "mean"
    data = df.groupby(keys, sort=False)["grade"].agg(agg).reset_index()
    data["group"] = data["subject_id"].map(groups)
    return data, [i for i in items if i in set(data["item"])], level


def _summary_table(data: pd.DataFrame, items: list[str], levels: tuple[str, str], opts: dict,
                   ) -> pd.DataFrame:
    d = int(opts.get("decimals", 1))
    q = str(opts.get("quantiles", "linear"))
    rows = []
    for it in items:
        row = {"item": it}
        for k, g in zip(("a", "b"), levels):
            v = data.loc[(data["item"] == it) & (data["group"] == g), "grade"].dropna()
            row[f"n_{k}"] = int(v.size)
            row[f"median_iqr_{k}"] = median_iqr(v, d, brackets=True, method=q)
            row[f"mean_sd_{k}"] = mean_sd(v, d)
            row[f"median_{k}"] = float(v.median()) if v.size else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _one_analysis(data: pd.DataFrame, items: list[str], levels: tuple[str, str], w: Writer,
                  lab: Labels, opts: dict, by: str, suffix: str, what: str, ymax: float) -> dict:
    res = compare_groups_mixed(data.rename(columns={"subject_id": "subject", "item": "muscle"}),
                               value="grade", group="group", item="muscle", subject="subject",
                               groups=levels, items=items, correction=str(opts.get("correction", "holm")),
                               alpha=float(opts.get("alpha", 0.05)))
    summ = _summary_table(data, items, levels, opts)
    c = res.contrasts.set_index("item")
    sizes = {g: int(data.loc[data["group"] == g, "subject_id"].nunique()) for g in levels}
    la, lb = (lab.level(by, g) for g in levels)
    d = int(opts.get("decimals", 2))
    shown = pd.DataFrame({"Item": [lab(i) for i in items]})
    shown[f"{la} (n = {sizes[levels[0]]}), median [IQR]"] = summ["median_iqr_a"].to_numpy()
    shown[f"{lb} (n = {sizes[levels[1]]}), median [IQR]"] = summ["median_iqr_b"].to_numpy()
    est = c.reindex(items)
    shown[f"Difference {lb} − {la} [95% CI]"] = [
        f"{format_number(e, d)} [{format_number(lo, d)}, {format_number(hi, d)}]"
        for e, lo, hi in zip(est["estimate"], est["ci_low"], est["ci_high"])]
    shown["p"] = est["p"].to_numpy()
    shown["p (adjusted)"] = est["p_adjusted"].to_numpy()
    shown["Higher in"] = [lab.level(by, g) if g else "" for g in est["higher_in"]]
    table = summ.merge(res.contrasts, on="item", how="left")
    corr = str(opts.get("correction", "holm"))
    w.table(f"compare{suffix}", table, f"{what}: {lab(by)} compared per item", display=shown,
            note=f"Per item: the mixed model grade ~ {by} * item + (1 | subject) (REML, Wald z); "
            f"p adjusted by {corr} over the {len(items)} items.")
    p = res.pooled
    di = res.diagnostics
    model_rows = pd.DataFrame([
        {"Quantity": f"Pooled effect of {lab(by)} ({lb} − {la}, grades)",
         "Estimate": p["estimate"], "95% CI": f"{format_number(p['ci_low'], d)} to "
         f"{format_number(p['ci_high'], d)}", "p": p["p"], "Model": p["formula"]},
        {"Quantity": "Group difference the same in every item (interaction)",
         "Estimate": res.interaction["chi2"], "95% CI": f"chi-square, {res.interaction['df']} df",
         "p": res.interaction["p"], "Model": di["formula"]},
        {"Quantity": "Subject variance / residual variance", "Estimate": di["subject_variance"],
         "95% CI": format_number(di["residual_variance"], d), "p": math.nan,
         "Model": f"subject share {format_number(di['subject_share'], d)}"},
        {"Quantity": "Residual normality (Shapiro-Wilk)", "Estimate": di["residual_shapiro_W"],
         "95% CI": "", "p": di["residual_shapiro_p"],
         "Model": "converged" if di["converged"] else "NOT converged"}])
    notes = "; ".join(di["warnings"]) if di["warnings"] else "none"
    w.table(f"mixed_model{suffix}", model_rows, f"{what}: the mixed model",
            note=f"{di['n_obs']} observations of {di['n_subjects']} subjects; optimiser "
            f"{di['optimizer']}; fit warnings: {notes}. The pooled effect is from grade ~ "
            f"{by} + item + (1 | subject).")
    stars = {it: p_stars(pa) for it, pa in zip(c.index, c["p_adjusted"])}
    fig = group_boxplots(data, items=items, groups=levels, value="grade", item="item", group="group",
                         label=lambda x: lab.level(by, x) if x in levels else lab(x),
                         ylabel=str(opts.get("ylabel") or "grade"), stars=stars, sizes=sizes,
                         ymax=ymax, title=f"{what}: by {lab(by)}")
    w.figure(f"compare_boxplots{suffix}", fig, f"{what}: grade per item by {lab(by)} "
             "(seed paper 004, Figure 1)", caption="Boxes: median and interquartile range; points: "
             "subjects; marks: adjusted p of the mixed model's contrast (*** < 0.001, ** < 0.01, "
             "* < 0.05, NS not significant).")
    w.figure(f"mixed_diagnostics{suffix}",
             diagnostics_figure(res.residuals["fitted"], res.residuals["residual"],
                                res.subject_effects.to_numpy(), title=f"{what}: model checks"),
             f"{what}: mixed model diagnostics")
    return {"groups": list(levels), "sizes": sizes, "items": items,
            "contrasts": [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                           for k, v in r.items()} for r in table.astype(object).to_dict("records")],
            "pooled": p, "interaction": res.interaction, "diagnostics": di}


def compare_section(gs: GradeSet, subjects: pd.DataFrame, w: Writer, lab: Labels, opts: dict[str, Any]
                    ) -> dict[str, Any]:
    """The group comparison per item; ``subjects`` holds ``subject_id`` and the group column."""
    by = str(opts["by"])
    if by not in subjects.columns:
        raise AnalysisError(f"compare.by={by}: no such column among the clinical and MRI columns "
                            f"({[c for c in subjects.columns if c != 'subject_id']})")
    raw = subjects.set_index("subject_id")[by]
    groups = raw.where(raw.notna()).map(lambda v: None if v is None else
                                        (str(int(v)) if isinstance(v, float) and float(v).is_integer()
                                         else str(v)))
    data, items, level = compare_data(gs, groups, opts)
    missing = sorted(set(data.loc[data["group"].isna(), "subject_id"]))
    data = data[data["group"].notna()]
    present = sorted(set(data["group"]))
    levels = tuple(str(g) for g in (opts.get("groups") or present))
    if len(levels) != 2 or not set(levels) <= set(present):
        raise AnalysisError(f"compare.by={by}: needs exactly two groups; found {present}"
                            + (f", asked for {list(levels)}" if opts.get("groups") else "")
                            + " (give compare.groups=[A,B] to pick two)")
    data = data[data["group"].isin(levels)]
    ymax = float(gs.scale.max_grade) if str(opts.get("value", "")).startswith("edema") else 4.0
    opts = {**opts, "ylabel": opts.get("ylabel") or f"{lab(str(opts.get('value', 'edema_grade')))} "
            f"({gs.scale.name if str(opts.get('value', '')).startswith('edema') else 'fat5'})"}
    w.section(f"{lab(by)}: grades compared per {level} (seed paper 004)",
              f"{level.capitalize()} grades of the {opts.get('station', 'thigh')} "
              f"({opts.get('value', 'edema_grade')}, {opts.get('sides', 'mean')} of the sides) per "
              f"subject; {len(missing)} subject(s) without a {by} left out.")
    out = {"by": by, "level": level, "value": opts.get("value", "edema_grade"),
           "station": opts.get("station", "thigh"), "sides": opts.get("sides", "mean"),
           "without_group": missing,
           "primary": _one_analysis(data, items, levels, w, lab, opts, by, "", "All subjects", ymax)}
    excluded = set(map(str, opts.get("exclude") or []))
    flag = opts.get("exclude_if")
    if flag:
        if flag not in subjects.columns:
            raise AnalysisError(f"compare.exclude_if={flag}: no such column")
        v = pd.to_numeric(subjects[flag], errors="coerce").fillna(0)
        excluded |= set(subjects.loc[v.to_numpy() != 0, "subject_id"].astype(str))
    if excluded:
        unknown = sorted(excluded - set(subjects["subject_id"].astype(str)))
        if unknown:
            raise AnalysisError(f"compare.exclude: unknown subjects {unknown[:10]}")
        sec = data[~data["subject_id"].astype(str).isin(excluded)]
        out["secondary"] = _one_analysis(sec, items, levels, w, lab, opts, by, "_secondary",
                                         f"Secondary analysis (without {len(excluded)} subjects)", ymax)
        out["secondary"]["excluded"] = sorted(excluded)
        agree = [np.sign(a["estimate"] or 0) == np.sign(b["estimate"] or 0)
                 for a, b in zip(out["primary"]["contrasts"], out["secondary"]["contrasts"])]
        out["secondary"]["same_direction_as_primary"] = int(sum(agree))
    return out
