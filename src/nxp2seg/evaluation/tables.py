"""Paired tables: the model's results next to each reader's and the readers' mean.

Every agreement figure of ``evaluate`` is a function of one of three tables,
each carrying ``subject_id`` so that it can be bootstrapped by subject:

* :func:`region_table` -- one row per evaluated case and region: edema and
  fat grades, fascial / subcutaneous edema, for the model, each rater and the
  rater mean (``grading.tables.rater_mean_targets``);
* :func:`case_table` -- one row per case: station scores and patterns;
* :func:`subject_table` -- one row per subject: thigh, calf and total scores.

Columns are named ``{measure}_{source}`` with source ``model``, ``mean`` or
``rater_{id}`` (e.g. ``edema_grade_model``, ``edema_grade_int_mean``,
``edema_grade_rater_A``). The scores of the model and of the readers come from
one rule (``grading.tables.scores_table``): the model's station score is the
sum of its integer grades, the number ``predict`` reports; a reader's is the
sum of their grades; the readers' mean score is the mean of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from nxp2seg.data.schema import PATTERNS
from nxp2seg.evaluation.inputs import EvaluationSet
from nxp2seg.grading.rules import readers_flag
from nxp2seg.grading.tables import pattern_targets, rater_mean_targets, scores_table

__all__ = ["PairedTables", "build_tables", "rater_col", "raters_of"]

#: Flags of ``grades.csv``: reference = fraction of raters >= 0.5 (half up, as grades).
FLAGS = ("fascial_edema", "subcutaneous_edema")


def rater_col(measure: str, rater: str) -> str:
    """Column of one rater's value, e.g. ``edema_grade_rater_A``."""
    return f"{measure}_rater_{rater}"


def raters_of(grades: pd.DataFrame, declared: list[str] | None) -> list[str]:
    """The raters in ``grades.csv``: in ``dataset.json`` order when declared, else first-seen order."""
    seen = [str(r) for r in pd.unique(grades["rater"].dropna())] if "rater" in grades else []
    if declared:
        return [r for r in declared if r in seen] + [r for r in seen if r not in declared]
    return seen


@dataclass
class PairedTables:
    """The three paired tables and the raters they hold (see the module docstring)."""

    regions: pd.DataFrame
    cases: pd.DataFrame
    subjects: pd.DataFrame
    raters: list[str]


def _model_regions(es: EvaluationSet) -> pd.DataFrame:
    reg = es.predictions.regions
    reg = reg[reg["case_id"].isin(es.case_ids)].drop_duplicates(["case_id", "region"])
    reg = reg[reg["region"].isin(es.schema.region_names())]
    out = pd.DataFrame({
        "case_id": reg["case_id"].to_numpy(), "region": reg["region"].to_numpy(),
        "edema_grade_model": reg["edema_grade"].to_numpy(dtype=float),
        "edema_grade_int_model": reg["edema_grade_int"].to_numpy(dtype=float),
        "fat_grade_model": reg["fat_grade"].to_numpy(dtype=float),
        "fat_grade_continuous_model": reg["fat_grade_continuous"].to_numpy(dtype=float),
        "fascial_edema_prob_model": reg["fascial_edema_prob"].to_numpy(dtype=float),
        "subcutaneous_edema_prob_model": reg["subcutaneous_edema_prob"].to_numpy(dtype=float)})
    missing = out["edema_grade_int_model"].isna() & out["edema_grade_model"].notna()
    if missing.any():  # older tables without the integer column: the nearest grade
        out.loc[missing, "edema_grade_int_model"] = es.scale.to_int(out.loc[missing, "edema_grade_model"])
    for flag in FLAGS:  # the reported call (the bundle's operating point); older tables: p >= 0.5
        prob = out[f"{flag}_prob_model"]
        called = (reg[flag].map({True: 1.0, False: 0.0, "True": 1.0, "False": 0.0}).to_numpy(dtype=float)
                  if flag in reg else np.full(len(out), np.nan))
        out[f"{flag}_model"] = np.where(np.isnan(called), np.where(prob.isna(), np.nan, prob >= 0.5), called)
    return out


def _reader_regions(grades: pd.DataFrame, es: EvaluationSet, raters: list[str]) -> pd.DataFrame:
    keys = ["case_id", "region"]
    if grades.empty:
        return pd.DataFrame(columns=keys)
    mean = rater_mean_targets(grades, es.scale)
    out = mean[keys].copy()
    for col in ("edema_grade", "edema_grade_int", "fat_grade", "fat_grade_int", *FLAGS):
        out[f"{col}_mean"] = mean[col].to_numpy(dtype=float)
    for flag in FLAGS:  # the readers' call: more than half of them saw it
        out[f"{flag}_mean"] = readers_flag(out[f"{flag}_mean"].to_numpy(dtype=float))
    out["n_raters"] = mean["n_raters"].to_numpy()
    for r in raters:
        one = grades[grades["rater"] == r].drop_duplicates(keys).set_index(keys)
        idx = pd.MultiIndex.from_frame(out[keys])
        for col in ("edema_grade", "fat_grade", *FLAGS):
            values = pd.to_numeric(one[col], errors="coerce") if col in one else pd.Series(dtype=float)
            out[rater_col(col, r)] = values.reindex(idx).to_numpy(dtype=float)
    return out


def _station_scores(long: pd.DataFrame, es: EvaluationSet, integer: bool) -> tuple[pd.Series, pd.DataFrame]:
    """Station score per case and (thigh, calf, total) per subject of one set of grades."""
    rows = long[["case_id", "region", "edema_grade"]].dropna(subset=["edema_grade"])
    if rows.empty:
        return pd.Series(dtype=float), pd.DataFrame(columns=["subject_id", "thigh_score",
                                                             "calf_score", "total_score"])
    case_t, subj_t = scores_table(rows, es.schema, es.scale, cases=es.cases, integer=integer)
    return case_t.set_index("case_id")["station_score"].astype(float), subj_t


def _scores(es: EvaluationSet, model: pd.DataFrame, grades: pd.DataFrame, raters: list[str],
            mean: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    cases = es.cases.copy()
    subjects = pd.DataFrame({"subject_id": pd.unique(es.cases["subject_id"])})
    sources = {"model": (model.rename(columns={"edema_grade_model": "edema_grade"}), True)}
    if not mean.empty:
        sources["mean"] = (mean.rename(columns={"edema_grade_mean": "edema_grade"}), False)
    for r in raters:
        sources[f"rater_{r}"] = (grades[grades["rater"] == r], False)
    for src, (long, integer) in sources.items():
        station, subj = _station_scores(long, es, integer)
        cases[f"station_score_{src}"] = cases["case_id"].map(station).astype(float)
        subj = subj.set_index("subject_id")
        for col in ("thigh_score", "calf_score", "total_score"):
            subjects[f"{col}_{src}"] = subjects["subject_id"].map(subj[col]).astype(float)
    return cases, subjects


def _patterns(es: EvaluationSet, cases: pd.DataFrame, mean: pd.DataFrame, raters: list[str]) -> pd.DataFrame:
    pred = es.predictions.cases.drop_duplicates("case_id").set_index("case_id")
    model = pred["pattern"] if "pattern" in pred else pd.Series(dtype=object)
    cases["pattern_model"] = cases["case_id"].map(model).where(lambda s: s.isin(PATTERNS), None)
    pats = es.cohort.patterns
    pats = pats[pats["case_id"].isin(es.case_ids) & pats["pattern"].notna()]
    if pats.empty:
        cases["pattern_mean"] = None
        for r in raters:
            cases[rater_col("pattern", r)] = None
        return cases
    grades = mean.rename(columns={"edema_grade_mean": "edema_grade"}) if not mean.empty else None
    target = pattern_targets(pats, grades, scale=es.scale if grades is not None else None)
    cases["pattern_mean"] = cases["case_id"].map(target.set_index("case_id")["pattern"])
    for r in raters:
        one = pats[pats["rater"] == r].drop_duplicates("case_id").set_index("case_id")["pattern"]
        cases[rater_col("pattern", r)] = cases["case_id"].map(one)
    return cases


def build_tables(es: EvaluationSet) -> PairedTables:
    """The region, case and subject tables of the evaluated cases (see the module docstring)."""
    grades = es.cohort.grades
    grades = grades[grades["case_id"].isin(es.case_ids)].copy()
    raters = raters_of(grades, es.cohort.dataset.raters)
    model = _model_regions(es)
    readers = _reader_regions(grades, es, raters)
    info = es.cases[["case_id", "subject_id", "station"]]
    regions = model.merge(readers, on=["case_id", "region"], how="outer") if not readers.empty else model
    regions = info.merge(regions, on="case_id", how="inner")
    order = {n: i for i, n in enumerate(es.schema.region_names())}
    case_pos = {c: i for i, c in enumerate(es.case_ids)}
    regions = (regions.assign(_c=regions["case_id"].map(case_pos), _r=regions["region"].map(order))
               .sort_values(["_c", "_r"]).drop(columns=["_c", "_r"]).reset_index(drop=True))
    mean_long = regions[["case_id", "region", "edema_grade_mean"]] if "edema_grade_mean" in regions else pd.DataFrame()
    cases, subjects = _scores(es, model, grades, raters, mean_long)
    cases = _patterns(es, cases, mean_long, raters)
    return PairedTables(regions=regions, cases=cases, subjects=subjects, raters=raters)
