"""What the verifier reports: the problem catalogue, one problem, the report.

:data:`FIXES` names every problem code with what to do about it
(``docs/dataset.md`` explains each); :class:`Problem` is one thing wrong;
:class:`VerifyReport` all of them, with counts and JSON/table output;
:class:`Collector` is one pass over a cohort that the checks
(:mod:`~nxp2seg.data.verify.tables`, :mod:`~nxp2seg.data.verify.files`,
:mod:`~nxp2seg.data.verify.images`) add problems to.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from nxp2seg.data.cohort import CohortError, DatasetDescription
from nxp2seg.io import atomic_write_text

__all__ = ["FIXES", "Collector", "Problem", "Severity", "VerifyReport"]

Severity = Literal["error", "warning"]
_DOC = "docs/dataset.md"

#: Every problem code the verifier reports, with what to do about it.
FIXES: dict[str, str] = {
    "cohort_missing": "give the path of an existing, readable cohort folder",
    "dataset_json_missing": f"write dataset.json (channel_names, labels, grade_scale, ...; {_DOC})",
    "dataset_json_invalid": "make it one valid JSON object (`python -m json.tool` shows where)",
    "dataset_json_schema": f"correct this key (see {_DOC}); defaults were used to check the rest",
    "num_training_mismatch": "set numTraining to the number of cases in imagesTr",
    "table_missing": f"write the table with its required columns (see {_DOC})",
    "table_unreadable": "save it as comma-separated UTF-8 text with a header row",
    "column_missing": f"add the column (lower-case names, see {_DOC}); blank cells = not graded",
    "value_missing": "fill in the value or delete the row",
    "case_id_unsafe": "use letters, digits, '.', '_', '-' (no '..', start with a letter or "
    "digit); rename the case in every table and file",
    "case_id_duplicate": "keep one row per case (a case is one station of one subject)",
    "station_invalid": "set station to thigh or calf (lower case)",
    "subject_station_duplicate": "give follow-up exams their own subject_id",
    "folder_missing": "put the images in imagesTr/{case_id}_0000 (T1) and _0001 (STIR)",
    "case_without_images": "add its T1 (_0000) and STIR (_0001) to imagesTr, or delete its rows",
    "image_missing": "add the file to imagesTr",
    "image_without_case": "add the case to cases.csv (case_id, subject_id, station), or rename "
    "or remove the file",
    "stray_file": "name images {case_id}_0000 / _0001 and labels {case_id} with dataset.json's "
    "file_ending; move anything else out",
    "image_unreadable": "export the file again as NIfTI; it is corrupt, truncated or not a NIfTI",
    "image_dims": "save one 3D volume per file",
    "image_geometry_invalid": "re-export with the scanner geometry (qform/sform): the patient's "
    "left/right comes from it",
    "image_nonfinite": "re-export the image; replace NaN/inf only if the source is known good",
    "image_constant": "check the export: the image holds no signal",
    "stir_no_overlap": "pair the case's own STIR with its T1, and check both affines",
    "label_shape_mismatch": "resample the label map onto the T1 grid (nearest neighbour)",
    "label_spacing_mismatch": "resample the label map onto the T1 grid, or fix its header",
    "label_affine_mismatch": "copy the T1's affine if the label was drawn on this T1, else "
    "resample it onto the T1 (nearest neighbour)",
    "label_values_noninteger": "save labels as integers; resample labels with nearest neighbour",
    "label_values_unknown": "relabel those voxels, or declare the values in dataset.json 'labels'",
    "label_values_other_station": "check the case's station in cases.csv, or relabel those voxels",
    "label_empty": "remove the empty label map (grades alone are fine) or draw the regions",
    "rows_without_case": "correct the case_id, or add the case to cases.csv with its images",
    "rater_unknown": "correct the rater id, or add it to 'raters' in dataset.json",
    "region_unknown": "use a region name of dataset.json 'regions' (e.g. thigh_anterior_right)",
    "region_other_station": "correct the region, or the case's station in cases.csv",
    "grade_non_numeric": "write the grade as a number, or leave the cell blank (not graded)",
    "grade_out_of_scale": "correct the grade or leave it blank; check grade_scale in dataset.json",
    "grade_duplicate": "keep one row per case, rater and region",
    "pattern_invalid": "use none, patchy, mixed or diffuse (lower case), or blank (not rated)",
    "pattern_duplicate": "keep one pattern per case and rater",
    "clinical_subject_unknown": "correct the subject_id; ignore if the subject has no images",
    "clinical_subject_duplicate": "keep one row per subject",
    "check_failed": "look at this file by hand; if it seems fine, report an nxp2seg bug",
}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a cohort.

    Attributes:
        severity: ``"error"`` (the cohort cannot be used as is) or ``"warning"``.
        case_id: the case it concerns, or ``None`` for the cohort as a whole.
        file: the file, relative to the cohort root (``imagesTr/S01_thigh_0000.nii.gz``).
        message: what is wrong.
        fix: what to do about it.
        code: the class of problem, a key of :data:`FIXES` (``grade_out_of_scale``, ...).
    """

    severity: Severity
    case_id: str | None
    file: str | None
    message: str
    fix: str
    code: str = ""

    def __str__(self) -> str:
        where = " ".join(x for x in (f"[{self.case_id}]" if self.case_id else "", self.file) if x)
        return f"{self.severity}: {where}: {self.message} -> {self.fix}"


@dataclass
class VerifyReport:
    """Every problem found in a cohort, with counts for the summary line.

    Attributes:
        root: the cohort folder.
        problems: in the order found.
        n_cases, n_subjects, n_labelled: case ids in ``cases.csv``, distinct
            subjects, cases with a label map.
        opened: False when the folder could not be opened at all.
        checked_images: False when run with ``check_images=False``.
    """

    root: Path
    problems: list[Problem] = field(default_factory=list)
    n_cases: int = 0
    n_subjects: int = 0
    n_labelled: int = 0
    opened: bool = True
    checked_images: bool = True

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No errors (warnings allowed)."""
        return self.opened and not self.errors

    def codes(self) -> set[str]:
        return {p.code for p in self.problems}

    def summary(self) -> str:
        counts = f"{self.n_cases} cases, {self.n_subjects} subjects, {self.n_labelled} with labels"
        if self.ok:
            extra = f" ({_count(len(self.warnings), 'warning')})" if self.warnings else ""
            return f"cohort OK{extra}: {counts}"
        errors, warnings = _count(len(self.errors), "error"), _count(len(self.warnings), "warning")
        return f"cohort has {errors} and {warnings}: {counts}"

    def to_dataframe(self) -> pd.DataFrame:
        """One row per problem: severity, code, case_id, file, message, fix."""
        cols = ["severity", "code", "case_id", "file", "message", "fix"]
        return pd.DataFrame([asdict(p) for p in self.problems], columns=cols)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "opened": self.opened,
            "checked_images": self.checked_images,
            "n_errors": len(self.errors),
            "n_warnings": len(self.warnings),
            "n_cases": self.n_cases,
            "n_subjects": self.n_subjects,
            "n_labelled": self.n_labelled,
            "problems": [asdict(p) for p in self.problems],
        }

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The report as JSON; also written (atomically) to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    def raise_if_errors(self) -> VerifyReport:
        """Raise :class:`CohortError` listing the errors (for pipelines), or return the report."""
        if not self.ok:
            lines = "".join(f"\n  {p}" for p in self.errors[:20])
            more = f"\n  ... and {len(self.errors) - 20} more" if len(self.errors) > 20 else ""
            raise CohortError(
                f"{self.root}: {self.summary()}{lines}{more}\n"
                f"run `python -m nxp2seg.data.verify {self.root}` for the full report"
            )
        return self


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _rows(rows: Sequence[int], n: int = 6) -> str:
    """``row 3`` / ``rows 3, 5, 9 (+4 more)``; rows are CSV line numbers (header = 1)."""
    more = f" (+{len(rows) - n} more)" if len(rows) > n else ""
    return f"row{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows[:n]))}{more}"


def _names(values: Iterable[Any], n: int = 8) -> str:
    values = list(values)
    more = f", ... ({len(values)} in all)" if len(values) > n else ""
    return ", ".join(map(str, values[:n])) + more


class Collector:
    """One pass over a cohort: the report so far and what the checks learnt on the way.

    Each check is a function of the collector that adds problems (run through
    :meth:`guard`, so that an unexpected failure becomes a problem too).
    """

    def __init__(self, root: Path, check_images: bool, tol_mm: float, tol_vox: float, rtol: float):
        self.root = root
        self.tol_mm, self.tol_vox, self.spacing_rtol = tol_mm, tol_vox, rtol
        self.report = VerifyReport(root=root, checked_images=check_images)
        self.desc = DatasetDescription()
        self.raw_json: dict[str, Any] = {}
        self.station: dict[str, str] = {}  # case_id -> valid station, from cases.csv
        self.listed: set[str] = set()  # case ids of cases.csv
        self.cases_read = False
        self.images_listed = False  # imagesTr exists and could be listed

    def add(
        self,
        code: str,
        case: str | None,
        file: str | None,
        message: str,
        *,
        warning: bool = False,
        fix: str | None = None,
    ) -> None:
        severity: Severity = "warning" if warning else "error"
        problem = Problem(severity, case, file, message, fix or FIXES[code], code)
        self.report.problems.append(problem)

    def guard(
        self,
        check: Callable[..., Any],
        *args: Any,
        case: str | None = None,
        file: str | None = None,
    ) -> Any:
        """Run one check; an unexpected failure becomes a problem instead of stopping the rest."""
        try:
            return check(*args)
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the report
            self.add("check_failed", case, file, f"checking stopped ({type(e).__name__}: {e})")
            return None
