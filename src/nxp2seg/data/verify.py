"""Verify a cohort against the dataset contract and name every problem in one report.

::

    python -m nxp2seg.data.verify COHORT [--json OUT.json] [--no-images]
    nxp2seg-verify cohort=COHORT json=OUT.json check_images=false

:func:`verify_cohort` never stops at the first problem: a missing or unreadable
file, table or ``dataset.json`` becomes a :class:`Problem` (severity, case, file
relative to the cohort root, what is wrong, what to do) and the rest is checked
anyway, with the defaults of DESIGN.md standing in for a ``dataset.json`` that
cannot be read. Images are read one case at a time: headers for geometry, then
the data for the NaN/inf and label-value checks.

Exit codes of the command: 0 no errors (warnings allowed), 1 errors, 2 the
cohort folder cannot be opened at all. :data:`FIXES` lists every problem code;
``docs/dataset.md`` explains each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pandas as pd

from nxp2seg.data.cohort import CohortError, DatasetDescription, read_table
from nxp2seg.data.schema import FAT_SCALE, PATTERNS, STATIONS
from nxp2seg.io import atomic_write_text

__all__ = [
    "CASE_ID_PATTERN",
    "FIXES",
    "Problem",
    "VerifyReport",
    "is_safe_case_id",
    "main",
    "verify_cohort",
]

#: A case id must be usable as a file name on every system.
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
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

_REQUIRED = {
    "cases.csv": ("case_id", "subject_id", "station"),
    "grades.csv": ("case_id", "rater", "region", "edema_grade"),
    "patterns.csv": ("case_id", "rater", "pattern"),
    "clinical.csv": ("subject_id",),
}
_OPTIONAL_GRADES = ("fat_grade", "fascial_edema", "subcutaneous_edema")
_CHANNELS = {"0000": "T1", "0001": "STIR"}
# dataset.json keys parsed together, so that one bad key does not hide the others
_JSON_GROUPS = {
    "channel_names": ("channel_names",),
    "file_ending": ("file_ending",),
    "labels/regions": ("labels", "regions", "label_level"),
    "grade_scale": ("grade_scale",),
    "raters": ("raters",),
    "numTraining": ("numTraining",),
}


def is_safe_case_id(case_id: Any) -> bool:
    """True for ids like ``S01_thigh``: safe as file names (no ``..``, no separators)."""
    return isinstance(case_id, str) and bool(CASE_ID_PATTERN.match(case_id)) and ".." not in case_id


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


class _Verifier:
    """One pass over a cohort: each ``check_*`` method adds problems (run through :meth:`guard`)."""

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

    # -- dataset.json ------------------------------------------------------
    def check_dataset_json(self) -> None:
        path, f = self.root / "dataset.json", "dataset.json"
        if not path.is_file():
            msg = "no dataset.json; the rest was checked with the default schema and beltrame6"
            return self.add("dataset_json_missing", None, f, msg)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            return self.add("dataset_json_invalid", None, f, f"cannot be parsed as JSON ({e})")
        if not isinstance(d, dict):
            msg = f"holds a JSON {type(d).__name__}, not an object"
            return self.add("dataset_json_invalid", None, f, msg)
        self.raw_json = d
        try:
            self.desc = DatasetDescription.from_dict(d)
        except Exception:  # noqa: BLE001 - parse key by key below to report each bad key
            self._parse_by_key(d)

    def _parse_by_key(self, d: dict[str, Any]) -> None:
        """Parse dataset.json key group by key group: report each bad one, default it."""
        f = "dataset.json"
        parts: dict[str, DatasetDescription] = {}
        for group, keys in _JSON_GROUPS.items():
            try:
                parts[group] = DatasetDescription.from_dict({k: d[k] for k in keys if k in d})
            except Exception as e:  # noqa: BLE001 - SchemaError, or a value of the wrong type
                self.add("dataset_json_schema", None, f, f"{group}: {e}")
        default = DatasetDescription()
        self.desc = DatasetDescription(
            schema=parts.get("labels/regions", default).schema,
            grade_scale=parts.get("grade_scale", default).grade_scale,
            raters=parts.get("raters", default).raters,
            num_training=parts.get("numTraining", default).num_training,
            file_ending=parts.get("file_ending", default).file_ending,
        )

    # -- tables ------------------------------------------------------------
    def read(self, name: str, required: bool) -> pd.DataFrame | None:
        """Read a table, adding ``csv_row_``; report it missing, unreadable or short of columns."""
        path = self.root / name
        if not path.is_file():
            if required:
                self.add("table_missing", None, name, f"{name} is missing")
            elif name != "clinical.csv":
                what = f"no {name}: no reader {name[:-5]} to train on or evaluate against"
                fix = (
                    f"add {name} if readers graded these cases; fine for a segmentation-only cohort"
                )
                self.add("table_missing", None, name, what, warning=True, fix=fix)
            return None
        try:
            df = read_table(path)
        except Exception as e:  # noqa: BLE001 - any reason a CSV cannot be read is one problem
            msg = f"cannot be read as CSV ({type(e).__name__}: {e})"
            self.add("table_unreadable", None, name, msg)
            return None
        missing = [c for c in _REQUIRED[name] if c not in df.columns]
        if missing:
            has = ", ".join(map(str, df.columns))
            self.add(
                "column_missing",
                None,
                name,
                f"required column(s) {', '.join(missing)} missing (has: {has})",
            )
        absent = (
            [c for c in _OPTIONAL_GRADES if c not in df.columns] if name == "grades.csv" else []
        )
        if absent:
            msg = f"no column {', '.join(absent)}: read as not graded"
            self.add("column_missing", None, name, msg, warning=True)
        return df.assign(csv_row_=np.arange(len(df)) + 2)  # CSV line number, header = 1

    def check_cases(self) -> pd.DataFrame | None:
        df, f = self.read("cases.csv", required=True), "cases.csv"
        if df is None or "case_id" not in df.columns:
            return None
        self.cases_read = True
        self.listed = set(df["case_id"].dropna())
        for row in df.itertuples(index=False):
            cid, at = row.case_id, f"row {row.csv_row_}"
            if cid is None:
                self.add("value_missing", None, f, f"{at}: case_id is blank")
            elif not is_safe_case_id(cid):
                self.add("case_id_unsafe", cid, f, f"{at}: case id {cid!r} is not a safe file name")
            if "subject_id" in df.columns and row.subject_id is None:
                self.add("value_missing", cid, f, f"{at}: subject_id is blank")
            if "station" in df.columns:
                if row.station not in STATIONS:
                    what = (
                        f"station {row.station!r} is not thigh or calf"
                        if row.station
                        else "station is blank"
                    )
                    self.add("station_invalid", cid, f, f"{at}: {what}")
                elif cid is not None:
                    self.station.setdefault(cid, row.station)
        ids = df.dropna(subset=["case_id"])
        for cid, rows in ids.groupby("case_id")["csv_row_"]:
            if len(rows) > 1:
                msg = f"case {cid!r} is listed {len(rows)} times ({_rows(list(rows))})"
                self.add("case_id_duplicate", cid, f, msg)
        if {"subject_id", "station"} <= set(df.columns):
            uniq = ids.dropna(subset=["subject_id", "station"]).drop_duplicates("case_id")
            for (subj, st), g in uniq.groupby(["subject_id", "station"]):
                if len(g) > 1 and st in STATIONS:
                    both = _names(g["case_id"])
                    msg = f"subject {subj!r} has {len(g)} {st} cases ({both}); scores need one"
                    self.add(
                        "subject_station_duplicate", g["case_id"].iloc[0], f, msg, warning=True
                    )
        self.report.n_cases = len(self.listed)
        if "subject_id" in df.columns:
            self.report.n_subjects = int(df["subject_id"].dropna().nunique())
        return df

    def _rater_rows(self, df: pd.DataFrame, issues: dict[tuple, list[int]]) -> None:
        """Checks shared by grades.csv and patterns.csv rows: case listed, rater given and known."""
        raters = set(self.desc.raters) if self.desc.raters is not None else None
        for row in df.itertuples(index=False):
            cid = row.case_id
            if cid is None:
                issues["value_missing", None, "case_id"].append(row.csv_row_)
            elif self.cases_read and cid not in self.listed:
                issues["rows_without_case", cid, cid].append(row.csv_row_)
            if "rater" in df.columns:
                if row.rater is None:
                    issues["value_missing", cid, "rater"].append(row.csv_row_)
                elif raters is not None and row.rater not in raters:
                    issues["rater_unknown", cid, row.rater].append(row.csv_row_)

    def _emit(self, f: str, issues: dict[tuple, list[int]]) -> None:
        """One error per (code, case, value), listing the rows it concerns."""
        scale = self.desc.grade_scale
        for (code, cid, what), rows in issues.items():
            if code == "value_missing":
                msg = f"{what} is blank"
            elif code == "rows_without_case":
                msg = f"case {what!r} is not in cases.csv, so these rows belong to no images"
            elif code == "rater_unknown":
                declared = _names(self.desc.raters or [])
                msg = f"rater {what!r} is not one of the raters of dataset.json ({declared})"
            elif code == "region_unknown":
                msg = f"region {what!r} is not a region of the label schema"
            elif code == "region_other_station":
                station = self.desc.schema.regions[what].station
                msg = (
                    f"region {what!r} is a {station} region; the case is a {self.station[cid]} case"
                )
            elif code == "grade_non_numeric":
                msg = f"{what} is not a number"
            elif code == "grade_out_of_scale":
                col, v = what
                allowed = {
                    "edema_grade": f"an integer 0..{scale.max_grade} ({scale.name}, dataset.json)",
                    "fat_grade": f"an integer 0..{FAT_SCALE.max_grade} (fat scale)",
                }.get(col, "0 or 1")
                msg = f"{col} {v:g} is outside the scale: must be {allowed}"
            elif code == "grade_duplicate":
                msg = f"rater {what[0]!r} graded {what[1]!r} {len(rows)} times"
            elif code == "pattern_invalid":
                msg = f"pattern {what!r} is not one of {', '.join(PATTERNS)}"
            else:  # pattern_duplicate
                msg = f"rater {what!r} gave {len(rows)} patterns"
            self.add(code, cid, f, f"{_rows(sorted(rows))}: {msg}")

    def check_grades(self) -> None:
        df, f = self.read("grades.csv", required=False), "grades.csv"
        if df is None or "case_id" not in df.columns:
            return
        issues: dict[tuple, list[int]] = defaultdict(list)
        self._rater_rows(df, issues)
        regions = self.desc.schema.regions
        for row in df.itertuples(index=False) if "region" in df.columns else ():
            reg, cid = row.region, row.case_id
            if reg is None:
                issues["value_missing", cid, "region"].append(row.csv_row_)
            elif reg not in regions:
                issues["region_unknown", cid, reg].append(row.csv_row_)
            elif cid in self.station and regions[reg].station != self.station[cid]:
                issues["region_other_station", cid, reg].append(row.csv_row_)
        top = {"edema_grade": self.desc.grade_scale.max_grade, "fat_grade": FAT_SCALE.max_grade}
        for col in ("edema_grade", *_OPTIONAL_GRADES):
            if col not in df.columns:
                continue
            num = pd.to_numeric(df[col], errors="coerce")
            for i in np.flatnonzero((df[col].notna() & num.isna()).to_numpy()):
                issues["grade_non_numeric", df["case_id"].iat[i], col].append(df["csv_row_"].iat[i])
            v = num.to_numpy(dtype=float)
            bad = ~np.isnan(v) & ((v < 0) | (v > top.get(col, 1)) | (np.floor(v) != v))
            for i in np.flatnonzero(bad):
                issues["grade_out_of_scale", df["case_id"].iat[i], (col, v[i])].append(
                    df["csv_row_"].iat[i]
                )
        if {"rater", "region"} <= set(df.columns):
            key = ["case_id", "rater", "region"]
            for (cid, rater, reg), rows in df.dropna(subset=key).groupby(key)["csv_row_"]:
                if len(rows) > 1:
                    issues["grade_duplicate", cid, (rater, reg)].extend(rows)
        self._emit(f, issues)

    def check_patterns(self) -> None:
        df, f = self.read("patterns.csv", required=False), "patterns.csv"
        if df is None or "case_id" not in df.columns:
            return
        issues: dict[tuple, list[int]] = defaultdict(list)
        self._rater_rows(df, issues)
        for row in df.itertuples(index=False) if "pattern" in df.columns else ():
            if row.pattern is not None and row.pattern not in PATTERNS:
                issues["pattern_invalid", row.case_id, row.pattern].append(row.csv_row_)
        if "rater" in df.columns:
            key = ["case_id", "rater"]
            for (cid, rater), rows in df.dropna(subset=key).groupby(key)["csv_row_"]:
                if len(rows) > 1:
                    issues["pattern_duplicate", cid, rater].extend(rows)
        self._emit(f, issues)

    def check_clinical(self, cases: pd.DataFrame | None) -> None:
        df, f = self.read("clinical.csv", required=False), "clinical.csv"
        if df is None or "subject_id" not in df.columns:
            return
        known = cases is not None and "subject_id" in cases.columns
        subjects = set(cases["subject_id"].dropna()) if known else set()
        for subj, rows in df.dropna(subset=["subject_id"]).groupby("subject_id")["csv_row_"]:
            at = _rows(list(rows))
            if known and subj not in subjects:
                msg = f"{at}: subject {subj!r} has no case in cases.csv"
                self.add("clinical_subject_unknown", None, f, msg, warning=True)
            if len(rows) > 1:
                msg = f"{at}: subject {subj!r} has {len(rows)} rows"
                self.add("clinical_subject_duplicate", None, f, msg, warning=True)

    # -- files -------------------------------------------------------------
    def scan_files(self) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
        """Image and label files by case: ``({case: {"T1"|"STIR": rel}}, {case: rel})``."""
        ending = self.desc.file_ending
        images: dict[str, dict[str, str]] = defaultdict(dict)
        labels: dict[str, str] = {}
        for folder in ("imagesTr", "labelsTr"):
            if not (self.root / folder).is_dir():
                if folder == "imagesTr":
                    self.add("folder_missing", None, folder, "no imagesTr folder: no images")
                continue
            try:
                entries = sorted((self.root / folder).iterdir())
            except OSError as e:
                self.add("folder_missing", None, folder, f"cannot be listed ({e})")
                continue
            self.images_listed |= folder == "imagesTr"
            for p in entries:
                rel, name = f"{folder}/{p.name}", p.name
                if name.startswith("."):  # .DS_Store and the like; a .part is an interrupted write
                    if name.endswith(".part"):
                        msg = "partial file left by an interrupted write: delete it"
                        self.add("stray_file", None, rel, msg, warning=True)
                    continue
                if not p.is_file() or not name.endswith(ending):
                    nifti = p.is_file() and name.endswith((".nii", ".nii.gz"))
                    msg = f"not an image of the contract: only images belong in {folder}"
                    if nifti:
                        msg = f"file ending is not dataset.json file_ending {ending!r}"
                    self.add("stray_file", None, rel, msg, warning=not nifti)
                    continue
                stem = name[: -len(ending)]
                if folder == "labelsTr":
                    labels[stem] = rel
                    continue
                m = re.match(r"^(?P<case>.+)_(?P<ch>\d{4})$", stem)
                if m and m["ch"] in _CHANNELS:
                    images[m["case"]][_CHANNELS[m["ch"]]] = rel
                elif m:
                    msg = f"channel _{m['ch']} is not in channel_names (0 = T1, 1 = STIR)"
                    self.add("stray_file", m["case"], rel, msg)
                else:
                    self.add(
                        "stray_file", None, rel, "no channel suffix _0000 (T1) or _0001 (STIR)"
                    )
        return images, labels

    def check_files(self, images: dict, labels: dict[str, str], listed: list[str]) -> None:
        """Every listed case has both channels; every file belongs to a listed case."""
        ending = self.desc.file_ending
        for cid in listed if self.images_listed else ():  # no imagesTr: reported once
            have = images.get(cid, {})
            if not have:
                msg = f"case {cid!r} is in cases.csv but has no images"
                self.add("case_without_images", cid, f"imagesTr/{cid}_0000{ending}", msg)
            for ch, mod in _CHANNELS.items() if have else ():
                if mod not in have:
                    rel = f"imagesTr/{cid}_{ch}{ending}"
                    self.add("image_missing", cid, rel, f"{mod} image missing", fix=f"add {rel}")
        declared = self.raw_json.get("numTraining")  # absent or invalid: not compared
        if isinstance(declared, int) and declared != len(images):
            msg = f"numTraining is {declared} but imagesTr holds {len(images)} cases"
            self.add("num_training_mismatch", None, "dataset.json", msg, warning=True)
        if not self.cases_read:
            return
        orphans = [(c, rel) for c in sorted(images) for rel in images[c].values()]
        for cid, rel in orphans + sorted(labels.items()):
            if cid in self.listed:
                continue
            m = re.match(r"^(.+)_\d{4}$", cid)
            if rel.startswith("labelsTr") and m and m[1] in self.listed:
                msg = f"case {cid!r} is not in cases.csv: label maps have no channel suffix"
                self.add(
                    "image_without_case", cid, rel, msg, fix=f"rename it to labelsTr/{m[1]}{ending}"
                )
            else:
                self.add("image_without_case", cid, rel, f"case {cid!r} is not in cases.csv")

    # -- images ------------------------------------------------------------
    def _load(self, cid: str, rel: str, role: str) -> tuple[Any, np.ndarray, bool] | None:
        """Header checks, then data checks: ``(image, data, geometry_ok)``, or None if unusable."""
        try:
            img = nib.load(self.root / rel)
            shape, affine = img.shape, np.asarray(img.affine, dtype=float)
        except Exception as e:  # noqa: BLE001 - not a NIfTI, bad header, permission...
            msg = f"{role} cannot be read as NIfTI ({type(e).__name__}: {e})"
            return self.add("image_unreadable", cid, rel, msg)
        if len(shape) == 4 and shape[3] == 1:
            msg = f"{role} is 3D with a trailing singleton 4th dimension {shape}: read as 3D"
            self.add(
                "image_dims", cid, rel, msg, warning=True, fix="fine; re-save as 3D for other tools"
            )
        elif len(shape) != 3:
            msg = f"{role} has {len(shape)} dimensions {shape}; a 3D volume is needed"
            return self.add("image_dims", cid, rel, msg)
        hdr = img.header
        codes = (int(hdr["sform_code"]), int(hdr["qform_code"])) if "sform_code" in hdr else (1, 1)
        det = abs(np.linalg.det(affine[:3, :3])) if np.all(np.isfinite(affine)) else 0.0
        geometry_ok = det > 1e-12 and codes != (0, 0)
        if not geometry_ok:
            msg = f"{role} has no usable orientation (sform/qform codes {codes}, |det| {det:.3g})"
            self.add("image_geometry_invalid", cid, rel, msg)
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as e:  # noqa: BLE001 - truncated gzip, short file...
            msg = f"{role} data cannot be read: truncated or corrupt ({type(e).__name__}: {e})"
            return self.add("image_unreadable", cid, rel, msg)
        if data.dtype.kind not in "biuf":
            return self.add(
                "image_unreadable", cid, rel, f"{role} data type {data.dtype} is not real numbers"
            )
        bad = int(data.size - np.count_nonzero(np.isfinite(data))) if data.dtype.kind == "f" else 0
        if bad:
            self.add("image_nonfinite", cid, rel, f"{role} has {bad} NaN/inf voxels")
        elif role != "label" and data.size and data.min() == data.max():
            self.add(
                "image_constant", cid, rel, f"{role} is constant ({data.flat[0]})", warning=True
            )
        return img, data, geometry_ok

    def _grid(self, cid: str, rel: str | None, role: str) -> Any | None:
        """Check one image; keep only its header, when its geometry is usable."""
        loaded = self._load(cid, rel, role) if rel else None
        return loaded[0] if loaded is not None and loaded[2] else None

    def check_case_images(self, cid: str, images: dict[str, str], label: str | None) -> None:
        """A case's T1, STIR and label map, one file's data in memory at a time."""
        t1, stir = (
            self._grid(cid, images.get("T1"), "T1"),
            self._grid(cid, images.get("STIR"), "STIR"),
        )
        if t1 is not None and stir is not None and not _overlap(t1, stir):
            self.add("stir_no_overlap", cid, images["STIR"], "STIR and T1 do not overlap in space")
        lab = self._load(cid, label, "label") if label else None
        if lab is None:
            return
        if t1 is not None and lab[2]:
            self._compare_grids(cid, label, lab[0], t1)
        self._check_label_values(cid, label, lab[1])

    def _compare_grids(self, cid: str, rel: str, lab: Any, t1: Any) -> None:
        if lab.shape[:3] != t1.shape[:3]:
            msg = f"label shape {lab.shape[:3]} differs from T1 shape {t1.shape[:3]}"
            self.add("label_shape_mismatch", cid, rel, msg)
        z_lab = np.asarray(lab.header.get_zooms()[:3], float)
        z_t1 = np.asarray(t1.header.get_zooms()[:3], float)
        if not np.allclose(z_lab, z_t1, rtol=self.spacing_rtol, atol=0):
            lab_mm, t1_mm = z_lab.round(4).tolist(), z_t1.round(4).tolist()
            msg = f"label spacing {lab_mm} mm differs from the T1's {t1_mm} mm"
            return self.add("label_spacing_mismatch", cid, rel, msg)
        shift = float(np.max(np.linalg.norm((lab.affine - t1.affine) @ _corners(t1.shape), axis=0)))
        tol = max(self.tol_mm, self.tol_vox * float(z_t1.min()))
        if shift > tol:
            msg = (
                f"label and T1 affines differ: voxels move {shift:.3g} mm (tolerance {tol:.3g} mm)"
            )
            self.add("label_affine_mismatch", cid, rel, msg)
        return None

    def _check_label_values(self, cid: str, rel: str, data: np.ndarray) -> None:
        if data.dtype.kind == "f":
            if not np.all(np.isfinite(data)):
                return  # reported as image_nonfinite
            if not np.array_equal(data, np.round(data)):
                return self.add(
                    "label_values_noninteger", cid, rel, "label map holds non-integer values"
                )
        values = set(_unique_ints(data))
        schema = self.desc.schema
        known = set(schema.labels.values())
        if values - known:
            msg = f"label values {_names(sorted(values - known))} are not in the label schema"
            self.add("label_values_unknown", cid, rel, msg)
        station = self.station.get(cid)
        other = sorted((values & known) - schema.station_labels(station)) if station else []
        if other:
            names = _names(f"{schema.name_of(v)} ({v})" for v in other)
            self.add("label_values_other_station", cid, rel, f"a {station} case holds {names}")
        if values <= {0}:
            self.add("label_empty", cid, rel, "label map is all background", warning=True)
        return None


def _corners(shape: Sequence[int], pad: float = 0.0) -> np.ndarray:
    """Homogeneous voxel coordinates of the 8 corners of a grid, ``(4, 8)``.

    ``pad=0``: the corner voxel centres; ``pad=0.5``: the outer faces of the corner voxels.
    """
    ax = [(-pad, max(n - 1, 0) + pad) for n in shape[:3]]
    return np.array([[i, j, k, 1.0] for i in ax[0] for j in ax[1] for k in ax[2]]).T


def _overlap(a: Any, b: Any) -> bool:
    """Do the world bounding boxes of two images intersect? (Never a false 'no'.)"""
    (lo1, hi1), (lo2, hi2) = [
        (w.min(axis=1), w.max(axis=1))
        for w in ((img.affine @ _corners(img.shape, pad=0.5))[:3] for img in (a, b))
    ]
    return bool(np.all(lo1 <= hi2) and np.all(lo2 <= hi1))


def _unique_ints(data: np.ndarray) -> list[int]:
    """Distinct values of an integer-valued array (bincount when small and non-negative)."""
    if data.size == 0:
        return []
    lo, hi = int(data.min()), int(data.max())
    if lo >= 0 and hi < 65536:
        counts = np.bincount(data.ravel().astype(np.int64, copy=False), minlength=hi + 1)
        return np.flatnonzero(counts).tolist()
    return [int(v) for v in np.unique(data)]


def verify_cohort(
    root: str | os.PathLike,
    *,
    check_images: bool = True,
    affine_tol_mm: float = 1e-3,
    affine_tol_vox: float = 0.05,
    spacing_rtol: float = 1e-3,
) -> VerifyReport:
    """Check a cohort against the dataset contract and report every problem.

    Args:
        root: the cohort folder.
        check_images: read every image (headers, then data, one case at a time);
            False checks tables and file names only.
        affine_tol_mm, affine_tol_vox: a label map matches its T1's affine when no
            voxel centre moves by more than ``max(affine_tol_mm, affine_tol_vox *
            smallest T1 voxel spacing)`` mm (default: 5% of a voxel).
        spacing_rtol: relative tolerance of label vs T1 voxel spacing.

    Returns:
        The report; ``report.ok`` is False when there is any error. A folder that
        cannot be opened gives ``opened=False`` and one ``cohort_missing`` error;
        this function does not raise for a bad cohort. T1 and STIR may differ in
        grid: only label maps must share the T1's.
    """
    root = Path(root)
    v = _Verifier(root, check_images, affine_tol_mm, affine_tol_vox, spacing_rtol)
    try:
        os.listdir(root)
    except OSError as e:
        v.report.opened = False
        v.add("cohort_missing", None, None, f"{root} is not a cohort folder ({e.strerror or e})")
        return v.report
    v.guard(v.check_dataset_json, file="dataset.json")
    cases = v.guard(v.check_cases, file="cases.csv")
    v.guard(v.check_grades, file="grades.csv")
    v.guard(v.check_patterns, file="patterns.csv")
    v.guard(v.check_clinical, cases, file="clinical.csv")
    images, labels = v.guard(v.scan_files) or ({}, {})
    if v.cases_read:
        listed = [c for c in dict.fromkeys(cases["case_id"].dropna()) if is_safe_case_id(c)]
    else:  # no usable cases.csv: still check the images that are there
        listed = sorted(c for c in images if is_safe_case_id(c))
    v.guard(v.check_files, images, labels, listed)
    v.report.n_labelled = sum(1 for c in listed if c in labels)
    for cid in listed if check_images else ():
        if images.get(cid) or cid in labels:
            v.guard(v.check_case_images, cid, images.get(cid, {}), labels.get(cid), case=cid)
    return v.report


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------

_OVERRIDES = ("cohort", "json", "check_images", "max_rows")


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="nxp2seg-verify",
        description="Check a cohort against the nxp2seg dataset contract and list every problem. "
        "Exit code 0: no errors; 1: errors; 2: the cohort folder cannot be opened.",
    )
    parser.add_argument("cohort", nargs="?", help="the cohort folder (or cohort=DIR)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the report as JSON")
    no_images = "check tables and file names only (or check_images=false)"
    parser.add_argument("--no-images", dest="check_images", action="store_false", help=no_images)
    parser.add_argument("--max-rows", type=int, default=200, help="problems shown (--json has all)")
    plain, overrides = [], {}
    for tok in argv:  # Hydra-style key=value, for symmetry with the other commands
        key, sep, value = tok.partition("=")
        if sep and re.fullmatch(r"\+?[A-Za-z_]\w*", key):
            if key.lstrip("+") not in _OVERRIDES:
                parser.error(
                    f"unknown override {key!r}; use {', '.join(k + '=' for k in _OVERRIDES)}"
                )
            overrides[key.lstrip("+")] = value
        else:
            plain.append(tok)
    args = parser.parse_args(plain)
    for key, value in overrides.items():
        if key == "check_images":
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                parser.error(f"check_images={value}: use true or false")
            args.check_images = value.lower() in ("true", "1", "yes")
        elif key == "max_rows":
            args.max_rows = int(value)
        else:
            setattr(args, key, value)
    if not args.cohort:
        parser.error("give the cohort folder: nxp2seg-verify COHORT (or cohort=COHORT)")
    return args


def _print_report(report: VerifyReport, max_rows: int) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    problems = sorted(report.problems, key=lambda p: p.severity != "error")  # stable: errors first
    if problems:
        table = Table(title=escape(str(report.root)))
        for col, style in (
            ("", None),
            ("case", "cyan"),
            ("file", None),
            ("problem", None),
            ("fix", "green"),
        ):
            table.add_column(col, style=style, overflow="fold")
        for p in problems[:max_rows]:
            sev = "[red]error[/red]" if p.severity == "error" else "[yellow]warning[/yellow]"
            cells = (p.case_id or "", p.file or "", p.message, p.fix)
            table.add_row(sev, *map(escape, cells))
        console.print(table)
        if len(problems) > max_rows:
            console.print(
                f"... {len(problems) - max_rows} more problems not shown (--json has all)"
            )
    style = "green" if report.ok else "red"
    note = "" if report.checked_images else " (images not read)"
    console.print(f"[{style}]{escape(report.summary())}[/{style}]{note}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit code (0 ok, 1 errors, 2 cannot open)."""
    try:
        args = _parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:  # argparse: --help, or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    report = verify_cohort(args.cohort, check_images=args.check_images)
    _print_report(report, args.max_rows)
    if args.json:
        report.to_json(args.json)
        print(f"report written to {args.json}")
    if not report.opened:
        return 2
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
