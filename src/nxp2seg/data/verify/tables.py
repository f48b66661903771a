"""Checks of ``dataset.json`` and the tables (``cases.csv``, ``grades.csv``, ``patterns.csv``, ``clinical.csv``)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from nxp2seg.data.case_ids import CASE_ID_PATTERN, is_safe_case_id
from nxp2seg.data.cohort import DatasetDescription, read_table
from nxp2seg.data.schema import FAT_SCALE, PATTERNS, STATIONS
from nxp2seg.data.verify.report import Collector, _names, _rows

__all__ = [
    "CASE_ID_PATTERN",
    "check_cases",
    "check_clinical",
    "check_dataset_json",
    "check_grades",
    "check_patterns",
    "is_safe_case_id",
]


_REQUIRED = {
    "cases.csv": ("case_id", "subject_id", "station"),
    "grades.csv": ("case_id", "rater", "region", "edema_grade"),
    "patterns.csv": ("case_id", "rater", "pattern"),
    "clinical.csv": ("subject_id",),
}
_OPTIONAL_GRADES = ("fat_grade", "fascial_edema", "subcutaneous_edema")
# dataset.json keys parsed together, so that one bad key does not hide the others
_JSON_GROUPS = {
    "channel_names": ("channel_names",),
    "file_ending": ("file_ending",),
    "labels/regions": ("labels", "regions", "label_level"),
    "grade_scale": ("grade_scale",),
    "raters": ("raters",),
    "numTraining": ("numTraining",),
}


def check_dataset_json(ctx: Collector) -> None:
    path, f = ctx.root / "dataset.json", "dataset.json"
    if not path.is_file():
        msg = "no dataset.json; the rest was checked with the default schema and beltrame6"
        return ctx.add("dataset_json_missing", None, f, msg)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return ctx.add("dataset_json_invalid", None, f, f"cannot be parsed as JSON ({e})")
    if not isinstance(d, dict):
        msg = f"holds a JSON {type(d).__name__}, not an object"
        return ctx.add("dataset_json_invalid", None, f, msg)
    ctx.raw_json = d
    try:
        ctx.desc = DatasetDescription.from_dict(d)
    except Exception:  # noqa: BLE001 - parse key by key below to report each bad key
        _parse_by_key(ctx, d)


def _parse_by_key(ctx: Collector, d: dict[str, Any]) -> None:
    """Parse dataset.json key group by key group: report each bad one, default it."""
    f = "dataset.json"
    parts: dict[str, DatasetDescription] = {}
    for group, keys in _JSON_GROUPS.items():
        try:
            parts[group] = DatasetDescription.from_dict({k: d[k] for k in keys if k in d})
        except Exception as e:  # noqa: BLE001 - SchemaError, or a value of the wrong type
            ctx.add("dataset_json_schema", None, f, f"{group}: {e}")
    default = DatasetDescription()
    ctx.desc = DatasetDescription(
        schema=parts.get("labels/regions", default).schema,
        grade_scale=parts.get("grade_scale", default).grade_scale,
        raters=parts.get("raters", default).raters,
        num_training=parts.get("numTraining", default).num_training,
        file_ending=parts.get("file_ending", default).file_ending,
    )


def read(ctx: Collector, name: str, required: bool) -> pd.DataFrame | None:
    """Read a table, adding ``csv_row_``; report it missing, unreadable or short of columns."""
    path = ctx.root / name
    if not path.is_file():
        if required:
            ctx.add("table_missing", None, name, f"{name} is missing")
        elif name != "clinical.csv":
            what = f"no {name}: no reader {name[:-5]} to train on or evaluate against"
            fix = (
                f"add {name} if readers graded these cases; fine for a segmentation-only cohort"
            )
            ctx.add("table_missing", None, name, what, warning=True, fix=fix)
        return None
    try:
        df = read_table(path)
    except Exception as e:  # noqa: BLE001 - any reason a CSV cannot be read is one problem
        msg = f"cannot be read as CSV ({type(e).__name__}: {e})"
        ctx.add("table_unreadable", None, name, msg)
        return None
    missing = [c for c in _REQUIRED[name] if c not in df.columns]
    if missing:
        has = ", ".join(map(str, df.columns))
        ctx.add(
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
        ctx.add("column_missing", None, name, msg, warning=True)
    return df.assign(csv_row_=np.arange(len(df)) + 2)  # CSV line number, header = 1


def check_cases(ctx: Collector) -> pd.DataFrame | None:
    df, f = read(ctx, "cases.csv", required=True), "cases.csv"
    if df is None or "case_id" not in df.columns:
        return None
    ctx.cases_read = True
    ctx.listed = set(df["case_id"].dropna())
    for row in df.itertuples(index=False):
        cid, at = row.case_id, f"row {row.csv_row_}"
        if cid is None:
            ctx.add("value_missing", None, f, f"{at}: case_id is blank")
        elif not is_safe_case_id(cid):
            ctx.add("case_id_unsafe", cid, f, f"{at}: case id {cid!r} is not a safe file name")
        if "subject_id" in df.columns and row.subject_id is None:
            ctx.add("value_missing", cid, f, f"{at}: subject_id is blank")
        if "station" in df.columns:
            if row.station not in STATIONS:
                what = (
                    f"station {row.station!r} is not thigh or calf"
                    if row.station
                    else "station is blank"
                )
                ctx.add("station_invalid", cid, f, f"{at}: {what}")
            elif cid is not None:
                ctx.station.setdefault(cid, row.station)
    ids = df.dropna(subset=["case_id"])
    for cid, rows in ids.groupby("case_id")["csv_row_"]:
        if len(rows) > 1:
            msg = f"case {cid!r} is listed {len(rows)} times ({_rows(list(rows))})"
            ctx.add("case_id_duplicate", cid, f, msg)
    if {"subject_id", "station"} <= set(df.columns):
        uniq = ids.dropna(subset=["subject_id", "station"]).drop_duplicates("case_id")
        for (subj, st), g in uniq.groupby(["subject_id", "station"]):
            if len(g) > 1 and st in STATIONS:
                both = _names(g["case_id"])
                msg = f"subject {subj!r} has {len(g)} {st} cases ({both}); scores need one"
                ctx.add(
                    "subject_station_duplicate", g["case_id"].iloc[0], f, msg, warning=True
                )
    ctx.report.n_cases = len(ctx.listed)
    if "subject_id" in df.columns:
        ctx.report.n_subjects = int(df["subject_id"].dropna().nunique())
    return df


def _rater_rows(ctx: Collector, df: pd.DataFrame, issues: dict[tuple, list[int]]) -> None:
    """Checks shared by grades.csv and patterns.csv rows: case listed, rater given and known."""
    raters = set(ctx.desc.raters) if ctx.desc.raters is not None else None
    for row in df.itertuples(index=False):
        cid = row.case_id
        if cid is None:
            issues["value_missing", None, "case_id"].append(row.csv_row_)
        elif ctx.cases_read and cid not in ctx.listed:
            issues["rows_without_case", cid, cid].append(row.csv_row_)
        if "rater" in df.columns:
            if row.rater is None:
                issues["value_missing", cid, "rater"].append(row.csv_row_)
            elif raters is not None and row.rater not in raters:
                issues["rater_unknown", cid, row.rater].append(row.csv_row_)


def _emit(ctx: Collector, f: str, issues: dict[tuple, list[int]]) -> None:
    """One error per (code, case, value), listing the rows it concerns."""
    scale = ctx.desc.grade_scale
    for (code, cid, what), rows in issues.items():
        if code == "value_missing":
            msg = f"{what} is blank"
        elif code == "rows_without_case":
            msg = f"case {what!r} is not in cases.csv, so these rows belong to no images"
        elif code == "rater_unknown":
            declared = _names(ctx.desc.raters or [])
            msg = f"rater {what!r} is not one of the raters of dataset.json ({declared})"
        elif code == "region_unknown":
            msg = f"region {what!r} is not a region of the label schema"
        elif code == "region_other_station":
            station = ctx.desc.schema.regions[what].station
            msg = (
                f"region {what!r} is a {station} region; the case is a {ctx.station[cid]} case"
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
        ctx.add(code, cid, f, f"{_rows(sorted(rows))}: {msg}")


def check_grades(ctx: Collector) -> None:
    df, f = read(ctx, "grades.csv", required=False), "grades.csv"
    if df is None or "case_id" not in df.columns:
        return
    issues: dict[tuple, list[int]] = defaultdict(list)
    _rater_rows(ctx, df, issues)
    regions = ctx.desc.schema.regions
    for row in df.itertuples(index=False) if "region" in df.columns else ():
        reg, cid = row.region, row.case_id
        if reg is None:
            issues["value_missing", cid, "region"].append(row.csv_row_)
        elif reg not in regions:
            issues["region_unknown", cid, reg].append(row.csv_row_)
        elif cid in ctx.station and regions[reg].station != ctx.station[cid]:
            issues["region_other_station", cid, reg].append(row.csv_row_)
    top = {"edema_grade": ctx.desc.grade_scale.max_grade, "fat_grade": FAT_SCALE.max_grade}
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
    _emit(ctx, f, issues)


def check_patterns(ctx: Collector) -> None:
    df, f = read(ctx, "patterns.csv", required=False), "patterns.csv"
    if df is None or "case_id" not in df.columns:
        return
    issues: dict[tuple, list[int]] = defaultdict(list)
    _rater_rows(ctx, df, issues)
    for row in df.itertuples(index=False) if "pattern" in df.columns else ():
        if row.pattern is not None and row.pattern not in PATTERNS:
            issues["pattern_invalid", row.case_id, row.pattern].append(row.csv_row_)
    if "rater" in df.columns:
        key = ["case_id", "rater"]
        for (cid, rater), rows in df.dropna(subset=key).groupby(key)["csv_row_"]:
            if len(rows) > 1:
                issues["pattern_duplicate", cid, rater].extend(rows)
    _emit(ctx, f, issues)


def check_clinical(ctx: Collector, cases: pd.DataFrame | None) -> None:
    df, f = read(ctx, "clinical.csv", required=False), "clinical.csv"
    if df is None or "subject_id" not in df.columns:
        return
    known = cases is not None and "subject_id" in cases.columns
    subjects = set(cases["subject_id"].dropna()) if known else set()
    for subj, rows in df.dropna(subset=["subject_id"]).groupby("subject_id")["csv_row_"]:
        at = _rows(list(rows))
        if known and subj not in subjects:
            msg = f"{at}: subject {subj!r} has no case in cases.csv"
            ctx.add("clinical_subject_unknown", None, f, msg, warning=True)
        if len(rows) > 1:
            msg = f"{at}: subject {subj!r} has {len(rows)} rows"
            ctx.add("clinical_subject_duplicate", None, f, msg, warning=True)
