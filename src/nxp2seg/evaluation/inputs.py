"""What ``evaluate`` compares: a prediction folder and the labelled cohort it came from.

The prediction folder is the contract of DESIGN.md ("Prediction output"):
``cases.csv``, ``regions.csv`` and ``{case_id}/seg.nii.gz``. The cohort is the
dataset contract (``Cohort.open``). This module reads both, decides which
cases are evaluated and says why the others are not:

* evaluated = cases predicted ``ok`` (or ``skipped``: finished by an earlier
  run) that the cohort has, optionally of one ``split``;
* predicted cases that ``failed`` are listed with their error and excluded;
* predicted cases unknown to the cohort, and cohort cases never predicted,
  are counted in a note.

Anything that makes the evaluation impossible raises :class:`EvaluationError`
with the file and the fix, which ``python -m nxp2seg.evaluate`` turns into
exit code 2.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nxp2seg.data.cohort import Cohort, CohortError, DatasetDescription, read_table
from nxp2seg.data.schema import GradeScale, LabelSchema, SchemaError

__all__ = [
    "EvaluationError",
    "EvaluationSet",
    "Predictions",
    "load_evaluation_set",
    "read_predictions",
]

#: Statuses of ``cases.csv`` whose results exist (``skipped`` = finished by an earlier run).
DONE = ("ok", "skipped")
_CASE_NEEDS = ["case_id", "status"]
_REGION_NEEDS = ["case_id", "region", "edema_grade"]
_GRADE_COLUMNS = ["edema_grade", "edema_grade_int", "fat_grade", "fat_grade_continuous",
                  "fascial_edema_prob", "subcutaneous_edema_prob"]


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated; the message names the file and the fix."""


@dataclass
class Predictions:
    """A prediction folder: its tables and the model that wrote it.

    Attributes:
        root: the folder.
        cases: ``cases.csv`` as written (every status).
        regions: ``regions.csv`` (one row per case and region).
        model: the ``model`` block of a ``report.json`` (bundle path,
            ``grade_scale``, ``grading``), ``{}`` when no report says it.
    """

    root: Path
    cases: pd.DataFrame
    regions: pd.DataFrame
    model: dict[str, Any] = field(default_factory=dict)

    def seg_path(self, case_id: str) -> Path:
        return self.root / case_id / "seg.nii.gz"


def _read_csv(path: Path, needs: list[str], fix: str) -> pd.DataFrame:
    if not path.is_file():
        raise EvaluationError(f"{path}: missing; {fix}")
    try:
        df = read_table(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise EvaluationError(f"{path}: not a readable CSV table ({e}); {fix}") from None
    missing = [c for c in needs if c not in df.columns]
    if missing:
        raise EvaluationError(f"{path}: no column(s) {missing} (it has {list(df.columns)}); {fix}")
    return df


def _model_info(root: Path, cases: pd.DataFrame) -> dict[str, Any]:
    """The ``model`` block of the first readable ``report.json`` of a finished case."""
    for cid in cases.loc[cases["status"].isin(DONE), "case_id"]:
        try:
            rep = json.loads((root / str(cid) / "report.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rep, dict) and isinstance(rep.get("model"), dict):
            return rep["model"]
    return {}


def read_predictions(root: str | os.PathLike) -> Predictions:
    """Read a prediction folder written by ``python -m nxp2seg.predict``.

    Raises:
        EvaluationError: the folder, ``cases.csv`` or ``regions.csv`` is
            missing or lacks a required column.
    """
    root = Path(root)
    fix = "give predictions= the output folder of python -m nxp2seg.predict"
    if not root.is_dir():
        raise EvaluationError(f"{root}: no such prediction folder; {fix}")
    cases = _read_csv(root / "cases.csv", _CASE_NEEDS, fix)
    regions = _read_csv(root / "regions.csv", _REGION_NEEDS, fix)
    cases["status"] = cases["status"].astype(str).str.strip().str.lower()
    for col in _GRADE_COLUMNS:
        if col not in regions.columns:
            regions[col] = float("nan")
        regions[col] = pd.to_numeric(regions[col], errors="coerce")
    return Predictions(root=root, cases=cases, regions=regions, model=_model_info(root, cases))


@dataclass
class EvaluationSet:
    """The cases to evaluate, with everything needed to compare them.

    Attributes:
        cohort: the labelled cohort (readers' grades, patterns, label maps).
        predictions: the prediction folder.
        cases: evaluated cases: ``case_id``, ``subject_id``, ``station``
            (from the cohort), in the cohort's order.
        failed: predicted cases that failed: ``case_id``, ``error``.
        schema: the cohort's label schema (regions, label values).
        prediction_schema: the schema of the segmentations (the bundle's
            ``dataset.json``; the cohort's when the bundle cannot be read).
        scale: the cohort's edema grade scale.
        has_grading: whether the model graded (``regions.csv`` grade columns filled).
        notes: what a reader of the results should know (excluded cases, ...).
    """

    cohort: Cohort
    predictions: Predictions
    cases: pd.DataFrame
    failed: pd.DataFrame
    schema: LabelSchema
    prediction_schema: LabelSchema
    scale: GradeScale
    has_grading: bool
    notes: list[str] = field(default_factory=list)

    @property
    def case_ids(self) -> list[str]:
        return self.cases["case_id"].tolist()

    @property
    def n_subjects(self) -> int:
        return int(self.cases["subject_id"].nunique())


def _open_cohort(path: str | os.PathLike) -> Cohort:
    try:
        return Cohort.open(path)
    except (CohortError, SchemaError) as e:
        raise EvaluationError(f"cohort={path}: {e}") from None


def _prediction_schema(model: dict[str, Any], cohort: Cohort, notes: list[str]) -> LabelSchema:
    """The label schema the segmentations were written in: the bundle's when it can be read."""
    bundle = model.get("bundle")
    if not bundle:
        return cohort.dataset.schema
    try:
        return DatasetDescription.load(Path(bundle) / "dataset.json").schema
    except (CohortError, SchemaError, OSError) as e:
        notes.append(f"the model bundle's dataset.json could not be read ({e}); the segmentations "
                     "are read with the cohort's label values")
        return cohort.dataset.schema


def _select(cohort: Cohort, pred: Predictions, split: str | None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    notes: list[str] = []
    known = cohort.cases[["case_id", "subject_id", "station"] + (["split"] if "split" in cohort.cases else [])]
    if split is not None:
        known = known[known["split"].astype(str) == str(split)]
        if known.empty:
            splits = sorted(cohort.cases["split"].dropna().astype(str).unique())
            raise EvaluationError(f"{cohort.root / 'cases.csv'}: no case has split={split} "
                                  f"(splits: {splits}); give one of them or split=null")
    status = pred.cases.drop_duplicates("case_id").set_index("case_id")["status"]
    done = set(status.index[status.isin(DONE)])
    in_cohort = set(known["case_id"])
    unknown = sorted(done - set(cohort.cases["case_id"]))
    if unknown:
        notes.append(f"{len(unknown)} predicted case(s) are not in the cohort and are not evaluated: "
                     f"{unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    failed = pred.cases[pred.cases["status"].eq("failed") & pred.cases["case_id"].isin(in_cohort)]
    failed = failed.reindex(columns=["case_id", "error"]).reset_index(drop=True)
    if len(failed):
        notes.append(f"{len(failed)} case(s) failed in prediction and are excluded: "
                     f"{failed['case_id'].tolist()[:10]}{' ...' if len(failed) > 10 else ''}")
    missing = sorted(in_cohort - set(status.index))
    if missing:
        notes.append(f"{len(missing)} cohort case(s){' of split ' + str(split) if split else ''} "
                     f"were not predicted: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    cases = known[known["case_id"].isin(done)][["case_id", "subject_id", "station"]]
    return cases.reset_index(drop=True), failed, notes


def _check_scale(model: dict[str, Any], scale: GradeScale, pred: Predictions) -> None:
    name = model.get("grade_scale")
    if name and name != scale.name:
        raise EvaluationError(
            f"{pred.root}: the model grades on {name!r} but the cohort's dataset.json says "
            f"grade_scale {scale.name!r}; evaluate predictions made with a bundle trained on this "
            "cohort's scale")


def load_evaluation_set(predictions: str | os.PathLike, cohort: str | os.PathLike,
                        split: str | None = None) -> EvaluationSet:
    """Read both folders and decide which cases are evaluated.

    Raises:
        EvaluationError: a folder or table is missing or unusable, the grade
            scales differ, or no predicted case is in the cohort (selection).
    """
    pred = read_predictions(predictions)
    coh = _open_cohort(cohort)
    _check_scale(pred.model, coh.dataset.grade_scale, pred)
    cases, failed, notes = _select(coh, pred, split)
    if cases.empty:
        raise EvaluationError(
            f"{pred.root / 'cases.csv'}: none of its finished cases is a case of "
            f"{coh.root / 'cases.csv'}{' with split=' + str(split) if split else ''}; predict the "
            "cohort's cases (python -m nxp2seg.predict input=COHORT ...) or give the matching cohort")
    regions = pred.regions[pred.regions["case_id"].isin(cases["case_id"])]
    has_grading = bool(regions["edema_grade"].notna().any())
    if not has_grading:
        notes.append("the model has no grading head (regions.csv grade columns are empty): "
                     "grading figures are null; segmentation is evaluated")
    pred_schema = _prediction_schema(pred.model, coh, notes)
    return EvaluationSet(cohort=coh, predictions=pred, cases=cases, failed=failed,
                         schema=coh.dataset.schema, prediction_schema=pred_schema,
                         scale=coh.dataset.grade_scale, has_grading=has_grading, notes=notes)
