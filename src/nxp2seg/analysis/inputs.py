"""The grades an analysis reads: the readers' (a cohort alone) or the model's (predict's tables).

Either source becomes one :class:`GradeSet` of tidy tables, so that every
table and figure of ``analyze`` is computed the same way from both:

* ``regions`` -- one row per case and *graded* region (compartments, or
  muscles in a muscle-graded cohort): ``case_id``, ``subject_id``,
  ``station``, ``region``, ``compartment``, ``muscle``, ``side``,
  ``edema_grade`` (continuous: the readers' mean, or the model's grade),
  ``edema_grade_int``, ``fat_grade``, ``fat_grade_int``, and the 0/1 calls
  ``edema_present``, ``fat_present`` (grade above 0), ``fascial_edema``,
  ``subcutaneous_edema``: for the readers, present when **more than half of
  them** saw it (``grading.readers_flag``, the rule of the flags: with two
  readers, both), for the model its integer grade above 0 or its flag;
* ``compartments`` -- the same per compartment (``grading.rollup_regions``
  of a muscle-graded cohort; ``regions`` itself otherwise);
* ``cases`` -- per case: ``pattern`` (the readers' majority, or the model's)
  and ``station_score``;
* ``subjects`` -- per subject: ``thigh_score``, ``calf_score``,
  ``total_score``, the patterns, and MRI-defined groups: ``diffuse_lesion``
  (a global region, i.e. a mixed or diffuse pattern, at the thigh or calf:
  paper 000's Table 2 split), ``thigh_edema``, ``calf_edema`` (any edema there:
  its supplementary subgroup split).

The readers' scores are the scores of their mean grades (the mean of their
scores); the model's are ``predict``'s (sums of its integer grades).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nxp2seg.data.cohort import Cohort, CohortError, DatasetDescription
from nxp2seg.data.schema import (
    FAT_SCALE,
    PATTERNS,
    GradeScale,
    LabelSchema,
    SchemaError,
    default_compartment_schema,
    default_muscle_schema,
    get_grade_scale,
)
from nxp2seg.evaluation.inputs import EvaluationError, read_predictions
from nxp2seg.grading import (
    integer_grade,
    pattern_targets,
    rater_mean_targets,
    readers_flag,
    rollup_regions,
    scores_table,
)
from nxp2seg.stats.join import AnalysisError

__all__ = ["GradeSet", "load_grades", "subject_mri_table"]

REGION_FIELDS = ["case_id", "subject_id", "station", "region", "compartment", "muscle", "side",
                 "edema_grade", "edema_grade_int", "edema_present", "fat_grade", "fat_grade_int",
                 "fat_present", "fascial_edema", "subcutaneous_edema"]
DONE = ("ok", "skipped")


@dataclass
class GradeSet:
    """One source of grades, as tidy tables (see the module docstring)."""

    source: str  # "readers" | "model"
    scale: GradeScale
    schema: LabelSchema
    regions: pd.DataFrame
    compartments: pd.DataFrame
    cases: pd.DataFrame
    subjects: pd.DataFrame
    clinical: pd.DataFrame | None = None
    raw_grades: pd.DataFrame | None = None  # the readers' grades.csv (for their agreement)
    raw_patterns: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def graded_level(self) -> str:
        return self.schema.graded_level


def _with_region_info(df: pd.DataFrame, schema: LabelSchema, what: str) -> pd.DataFrame:
    regions = schema.regions
    unknown = sorted(set(df["region"]) - set(regions))
    if unknown:
        raise AnalysisError(f"{what}: regions not in the label schema: {unknown[:8]}; the grades and "
                            "the dataset.json (or the model's) must name the same regions")
    info = pd.DataFrame([{"region": n, "station": r.station, "compartment": r.compartment,
                          "side": r.side, "muscle": schema.muscle_of(n)} for n, r in regions.items()])
    return df.drop(columns=[c for c in ("station", "compartment", "side", "muscle") if c in df]
                   ).merge(info, on="region", how="left")


def _finish(df: pd.DataFrame) -> pd.DataFrame:
    for c in REGION_FIELDS:
        if c not in df.columns:
            df[c] = np.nan
    return df[REGION_FIELDS + [c for c in df.columns if c not in REGION_FIELDS]]


def _open_cohort(path: str | os.PathLike) -> Cohort:
    try:
        return Cohort.open(path)
    except (CohortError, SchemaError) as e:
        raise AnalysisError(f"cohort={path}: {e}") from None


def _select_split(cases: pd.DataFrame, split: str | None, what: str) -> pd.DataFrame:
    if not split:
        return cases
    if "split" not in cases.columns or not (cases["split"] == split).any():
        raise AnalysisError(f"split={split}: no case of {what} has that split")
    return cases[cases["split"] == split]


def _truth(cohort: Cohort) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A phantom cohort's true grades and patterns (``truth/``) as if read by one rater ``truth``."""
    muscle = cohort.dataset.schema.graded_level == "muscle"
    path = cohort.root / "truth" / ("grades_muscle.csv" if muscle else "grades.csv")
    pats = cohort.root / "truth" / "patterns.csv"
    if not path.is_file() or not pats.is_file():
        raise AnalysisError(f"source=truth: {path} or {pats} missing; only phantom cohorts "
                            "(python -m nxp2seg.phantom) carry their truth")
    t = pd.read_csv(path, dtype={"case_id": str})
    edema = t["edema_grade_extent4"] if cohort.dataset.grade_scale.name == "extent4" else t["edema_grade"]

    def flag(col: str) -> pd.Series:
        return t[col].astype(str).str.lower().isin(["true", "1", "1.0"]).astype(int)
    grades = pd.DataFrame({"case_id": t["case_id"], "rater": "truth", "region": t["region"],
                           "edema_grade": edema, "fat_grade": t["fat_grade"],
                           "fascial_edema": flag("fascial_edema"),
                           "subcutaneous_edema": flag("subcutaneous_edema")})
    p = pd.read_csv(pats, dtype={"case_id": str})
    return grades, pd.DataFrame({"case_id": p["case_id"], "rater": "truth", "pattern": p["pattern"]})


def _readers(cohort: Cohort, split: str | None, truth: bool = False) -> GradeSet:
    scale, schema = cohort.dataset.grade_scale, cohort.dataset.schema
    cases = _select_split(cohort.cases, split, f"cohort={cohort.root}")
    all_grades, all_patterns = _truth(cohort) if truth else (cohort.grades, cohort.patterns)
    grades = all_grades[all_grades["case_id"].isin(cases["case_id"])]
    if grades.empty:
        raise AnalysisError(f"cohort={cohort.root}: grades.csv has no grade for the cases analysed; "
                            "the readers' analysis needs their grades")
    try:
        mean = rater_mean_targets(grades, scale)
    except ValueError as e:
        raise AnalysisError(f"cohort={cohort.root} grades.csv: {e}") from None
    subject_of = cases.drop_duplicates("case_id").set_index("case_id")["subject_id"]
    mean["subject_id"] = mean["case_id"].map(subject_of)
    for col, name in (("edema_grade", "edema_present"), ("fat_grade", "fat_present")):
        v = pd.to_numeric(grades[col], errors="coerce")
        share = (v > 0).astype(float).where(v.notna()).groupby(
            [grades["case_id"], grades["region"]], sort=False).mean()
        mean[name] = readers_flag(pd.MultiIndex.from_frame(mean[["case_id", "region"]])
                                  .map(share).to_numpy(dtype=float))
    regions = mean.copy()
    for flag in ("fascial_edema", "subcutaneous_edema"):
        regions[flag] = readers_flag(regions[flag].to_numpy(dtype=float))
    regions = _finish(_with_region_info(regions, schema, f"cohort={cohort.root} grades.csv"))
    comp = rollup_regions(mean, schema, scale)
    for flag in ("fascial_edema", "subcutaneous_edema"):
        comp[flag] = readers_flag(comp[flag].to_numpy(dtype=float))
    comp = _finish(_with_region_info(comp.assign(subject_id=comp["case_id"].map(subject_of)),
                                     schema.compartment_schema(), "roll-up"))
    patterns = all_patterns[all_patterns["case_id"].isin(cases["case_id"])]
    pat = (pattern_targets(patterns, mean, scale=scale).set_index("case_id")["pattern"]
           if len(patterns) else pd.Series(dtype=object))
    case_t, subj_t = scores_table(mean[["case_id", "region", "edema_grade"]], schema, scale,
                                  cases=cases)
    case_t["pattern"] = case_t["case_id"].map(pat)
    return GradeSet(source="truth" if truth else "readers", scale=scale, schema=schema, regions=regions,
                    compartments=comp, cases=case_t, subjects=subj_t, clinical=cohort.clinical,
                    raw_grades=grades, raw_patterns=patterns,
                    inputs={"cohort": str(cohort.root), "split": split})


def _prediction_schema(model: dict[str, Any], cohort: Cohort | None, notes: list[str]
                       ) -> LabelSchema | None:
    if cohort is not None:
        return cohort.dataset.schema
    bundle = model.get("bundle")
    if bundle:
        try:
            return DatasetDescription.load(Path(bundle) / "dataset.json").schema
        except (CohortError, SchemaError, OSError) as e:
            notes.append(f"the model bundle's dataset.json could not be read ({e})")
    return None


def _guess_schema(names: set[str]) -> LabelSchema:
    for schema in (default_compartment_schema(), default_muscle_schema("muscle")):
        if names <= set(schema.regions):
            return schema
    raise AnalysisError(f"regions {sorted(names)[:6]}... are neither the default compartments nor "
                        "muscles; give cohort= (its dataset.json names the regions)")


def _model(predictions: str | os.PathLike, cohort: Cohort | None, split: str | None) -> GradeSet:
    try:
        pred = read_predictions(predictions)
    except EvaluationError as e:
        raise AnalysisError(str(e)) from None
    notes: list[str] = []
    cases = pred.cases[pred.cases["status"].isin(DONE)].copy()
    n_failed = int((~pred.cases["status"].isin(DONE)).sum())
    if n_failed:
        notes.append(f"{n_failed} case(s) of the predictions failed and are left out")
    if split:
        if cohort is None:
            raise AnalysisError("split= needs cohort= (the cohort's cases.csv holds the splits)")
        keep = _select_split(cohort.cases, split, f"cohort={cohort.root}")["case_id"]
        cases = cases[cases["case_id"].isin(keep)]
    if cases.empty:
        raise AnalysisError(f"predictions={predictions}: no finished case to analyse")
    scale_name = pred.model.get("grade_scale") or (cohort.dataset.grade_scale.name if cohort else None)
    scale = get_grade_scale(scale_name or "beltrame6")
    regions = pred.regions[pred.regions["case_id"].isin(cases["case_id"])].copy()
    if "level" in regions.columns:  # predict writes muscle rows and their compartments' roll-up
        levels = set(regions["level"].dropna())
        graded = regions[regions["level"] == ("muscle" if "muscle" in levels else "compartment")]
    else:
        graded = regions
    schema = _prediction_schema(pred.model, cohort, notes) or _guess_schema(set(graded["region"]))
    if schema.graded_level == "muscle" and not graded["region"].isin(schema.region_names()).all():
        schema = schema.compartment_schema()
    subject_of = cases.set_index("case_id")["subject_id"]
    graded = graded.assign(subject_id=graded["case_id"].map(subject_of))
    graded["fat_grade_int"] = pd.to_numeric(graded["fat_grade"], errors="coerce")
    if "fat_grade_continuous" in graded.columns:
        graded["fat_grade"] = pd.to_numeric(graded["fat_grade_continuous"], errors="coerce")
    for flag in ("fascial_edema", "subcutaneous_edema"):
        text = graded[flag].astype(str).str.strip().str.lower()
        graded[flag] = text.map({"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "1.0": 1.0,
                                 "0.0": 0.0})
    if graded["edema_grade_int"].isna().all() and graded["edema_grade"].notna().any():
        graded["edema_grade_int"] = integer_grade(graded["edema_grade"], scale)
    for col, name in (("edema_grade_int", "edema_present"), ("fat_grade_int", "fat_present")):
        v = pd.to_numeric(graded[col], errors="coerce")
        graded[name] = (v > 0).astype(float).where(v.notna())
    regions_t = _finish(_with_region_info(graded, schema, f"predictions={predictions} regions.csv"))
    if schema.graded_level == "muscle":
        comp = rollup_regions(graded[["case_id", "region", "edema_grade", "fat_grade",
                                      "edema_present", "fat_present", "fascial_edema",
                                      "subcutaneous_edema"]], schema, scale)
        comp["fat_grade_int"] = integer_grade(comp["fat_grade"], FAT_SCALE)
        comp = _finish(_with_region_info(comp.assign(subject_id=comp["case_id"].map(subject_of)),
                                         schema.compartment_schema(), "roll-up"))
    else:
        comp = regions_t
    _, subj_t = scores_table(graded[["case_id", "region", "edema_grade"]], schema, scale,
                             cases=cases[["case_id", "subject_id", "station"]], integer=True)
    case_t = cases[["case_id", "subject_id", "station", "pattern", "station_score"]].copy()
    case_t["pattern"] = case_t["pattern"].where(case_t["pattern"].isin(PATTERNS))
    return GradeSet(source="model", scale=scale, schema=schema, regions=regions_t,
                    compartments=comp, cases=case_t, subjects=subj_t,
                    clinical=cohort.clinical if cohort is not None else None, notes=notes,
                    inputs={"predictions": str(predictions),
                            "cohort": str(cohort.root) if cohort is not None else None,
                            "split": split})


def load_grades(*, cohort: str | None = None, predictions: str | None = None,
                source: str = "auto", split: str | None = None) -> GradeSet:
    """The grades to analyse: ``source`` ``readers`` (needs ``cohort``) or ``model``
    (needs ``predictions``; ``cohort`` then supplies the schema, splits and clinical table);
    ``auto`` = the model's when ``predictions`` is given; ``truth``: a phantom cohort's true
    grades (``truth/``), read as by one rater: what the generator drew, before the readers."""
    if source == "auto":
        source = "model" if predictions else "readers"
    if source not in ("readers", "model", "truth"):
        raise AnalysisError(f"source={source!r}: use readers, model, truth or auto")
    coh = _open_cohort(cohort) if cohort else None
    if source in ("readers", "truth"):
        if coh is None:
            raise AnalysisError(f"source={source} needs cohort=DIR (its grades.csv and patterns.csv)")
        return _readers(coh, split, truth=source == "truth")
    if not predictions:
        raise AnalysisError("source=model needs predictions=DIR (the output of nxp2seg.predict)")
    return _model(predictions, coh, split)


def subject_mri_table(gs: GradeSet) -> pd.DataFrame:
    """Per subject: scores, patterns, and the MRI-defined groups (see the module docstring)."""
    out = gs.subjects.copy()
    pats = gs.cases.pivot_table(index="subject_id", columns="station", values="pattern",
                                aggfunc="first")
    for st in ("thigh", "calf"):
        out[f"{st}_pattern"] = out["subject_id"].map(pats[st]) if st in pats else None
    glob = gs.cases.assign(g=gs.cases["pattern"].isin(["mixed", "diffuse"]).astype(float)
                           .where(gs.cases["pattern"].notna()))
    out["diffuse_lesion"] = out["subject_id"].map(glob.groupby("subject_id")["g"].max())
    reg = gs.compartments.assign(e=pd.to_numeric(gs.compartments["edema_present"], errors="coerce"))
    for st in ("thigh", "calf"):
        e = reg[reg["station"] == st].groupby("subject_id")["e"].max()
        out[f"{st}_edema"] = out["subject_id"].map(e)
    return out
