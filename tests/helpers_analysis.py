"""Cohorts made of tables only (no images) for the analysis tests, and predict-like folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from nxp2seg.data.cohort import DatasetDescription
from nxp2seg.data.schema import default_compartment_schema, default_muscle_schema, get_grade_scale
from nxp2seg.grading import integer_grade, rollup_regions
from nxp2seg.phantom.clinical import simulate_clinical
from nxp2seg.phantom.disease import DiseaseConfig, sample_subjects, truth_tables
from nxp2seg.phantom.muscles import muscle_truth_table, sample_subjects_by_muscle
from nxp2seg.phantom.readers import simulate_readers


def make_table_cohort(root: Path, n: int, *, muscle: bool = False, groups: dict | None = None,
                      scale: str = "beltrame6", seed: int = 0) -> list:
    """The phantom's tables (grades, patterns, cases, clinical, truth) without rendering images."""
    root = Path(root)
    (root / "truth").mkdir(parents=True, exist_ok=True)
    if muscle or groups:
        subjects = sample_subjects_by_muscle(n, seed, DiseaseConfig(groups=groups or {}))
    else:
        subjects = sample_subjects(n, seed)
    grades, patterns = simulate_readers(subjects, seed, grade_scale=scale,
                                        level="muscle" if muscle else "compartment")
    clinical = simulate_clinical(subjects, seed)
    cases = pd.DataFrame([{"case_id": st.case_id, "subject_id": s.subject_id, "station": name,
                           "split": "test" if i % 5 == 0 else "train"}
                          for i, s in enumerate(subjects) for name, st in s.stations.items()])
    schema = default_muscle_schema("muscle") if muscle else default_compartment_schema()
    DatasetDescription(schema=schema, grade_scale=get_grade_scale(scale),
                       raters=["A", "B"]).save(root / "dataset.json")
    for name, df in (("cases", cases), ("grades", grades), ("patterns", patterns),
                     ("clinical", clinical)):
        df.to_csv(root / f"{name}.csv", index=False)
    region_df, station_df, subject_df = truth_tables(subjects)
    region_df.to_csv(root / "truth" / "grades.csv", index=False)
    station_df.to_csv(root / "truth" / "patterns.csv", index=False)
    subject_df.to_csv(root / "truth" / "subjects.csv", index=False)
    if muscle or groups:
        muscle_truth_table(subjects).to_csv(root / "truth" / "grades_muscle.csv", index=False)
    return subjects


def fake_predictions(cohort: Path, out: Path, *, rater: str = "A", scale: str = "beltrame6",
                     muscle: bool = False, noise: float = 0.0, seed: int = 0) -> Path:
    """A folder shaped like predict's output whose 'model' grades are one reader's (plus noise)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    cases = pd.read_csv(cohort / "cases.csv", dtype=str)
    grades = pd.read_csv(cohort / "grades.csv", dtype={"case_id": str})
    pats = pd.read_csv(cohort / "patterns.csv", dtype={"case_id": str})
    g = grades[grades["rater"] == rater].copy()
    sc = get_grade_scale(scale)
    g["edema_grade"] = np.clip(g["edema_grade"] + rng.normal(0, noise, len(g)), 0, sc.max_grade)
    regions = pd.DataFrame({"case_id": g["case_id"], "region": g["region"],
                            "edema_grade": g["edema_grade"],
                            "edema_grade_int": integer_grade(g["edema_grade"], sc),
                            "fat_grade": g["fat_grade"], "fat_grade_continuous": g["fat_grade"],
                            "fascial_edema_prob": g["fascial_edema"] * 0.9,
                            "subcutaneous_edema_prob": g["subcutaneous_edema"] * 0.9,
                            "fascial_edema": g["fascial_edema"].astype(bool),
                            "subcutaneous_edema": g["subcutaneous_edema"].astype(bool),
                            "level": "muscle" if muscle else "compartment"})
    if muscle:
        schema = default_muscle_schema("muscle")
        up = rollup_regions(regions.drop(columns=["level", "fascial_edema", "subcutaneous_edema"]),
                            schema, sc).assign(level="compartment")
        regions = pd.concat([regions, up], ignore_index=True)
    regions.to_csv(out / "regions.csv", index=False)
    pat = pats[pats["rater"] == rater].set_index("case_id")["pattern"]
    score = regions[regions["level"] == "compartment"].groupby("case_id")["edema_grade_int"].sum()
    c = cases.assign(status="ok", error="", pattern=cases["case_id"].map(pat),
                     station_score=cases["case_id"].map(score))
    c.to_csv(out / "cases.csv", index=False)
    rep = {"status": "ok", "model": {"bundle": None, "grading": True, "grade_scale": scale}}
    for cid in c["case_id"]:
        (out / cid).mkdir(exist_ok=True)
        (out / cid / "report.json").write_text(json.dumps(rep))
    return out
