"""Readers' wide spreadsheet -> the contract's long ``grades.csv`` and ``patterns.csv``.

The sheet has one row per exam and reader, one column per region (and,
optionally, per measure):

========  ======  ============  ===========  ==============  ===================
case_id   rater   ant R         med R        fat ant R       fascial post L ...
========  ======  ============  ===========  ==============  ===================

An exam is named by ``case_id``, or by ``subject_id`` (or ``subject``) and
``station``. Region columns are read from their words in any order and
case: a compartment (``anterior``/``ant``, ``medial``/``med``,
``posterior``/``post``, ``lateral``/``lat``), a side (``right``/``R``/``rt``,
``left``/``L``/``lt``), optionally the station (``thigh``, ``calf``; else the
exam's) and a measure (``edema``/``oedema``/``stir`` = edema grade, the
default; ``fat``/``t1`` = fat grade; ``fascial`` = fascial edema 0/1;
``subcutaneous``/``subcut`` = subcutaneous edema 0/1). A ``pattern`` column
goes to ``patterns.csv``. A column that cannot be read stops the conversion
with its name; blank cells are not graded.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from nxp2seg.data.schema import COMPARTMENTS, STATIONS, region_name

__all__ = ["ReadersSheetError", "read_readers_sheet"]


class ReadersSheetError(ValueError):
    """A readers' spreadsheet that cannot be turned into grades."""


_COMPARTMENT_WORDS = {
    "anterior": "anterior", "ant": "anterior", "a": "anterior",
    "medial": "medial", "med": "medial", "m": "medial",
    "posterior": "posterior", "post": "posterior", "p": "posterior",
    "lateral": "lateral", "lat": "lateral",
}
_SIDE_WORDS = {"right": "right", "r": "right", "rt": "right", "left": "left", "l": "left", "lt": "left"}
_MEASURE_WORDS = {
    "edema": "edema_grade", "oedema": "edema_grade", "stir": "edema_grade", "grade": "edema_grade",
    "fat": "fat_grade", "t1": "fat_grade", "fatty": "fat_grade",
    "fascial": "fascial_edema", "fascia": "fascial_edema", "fasciitis": "fascial_edema",
    "subcutaneous": "subcutaneous_edema", "subcut": "subcutaneous_edema", "sc": "subcutaneous_edema",
}
_ID_COLUMNS = {"case_id", "rater", "reader", "subject_id", "subject", "station", "pattern"}
MEASURES = ("edema_grade", "fat_grade", "fascial_edema", "subcutaneous_edema")


def _words(column: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", column.lower()) if w]


def parse_region_column(column: str) -> tuple[str | None, str, str, str]:
    """``"fat ant R"`` -> ``(station or None, compartment, side, measure)``; raises on anything else."""
    station = compartment = side = measure = None
    for w in _words(column):
        if w in STATIONS and station is None:
            station = w
        elif w in _COMPARTMENT_WORDS and compartment is None:
            compartment = _COMPARTMENT_WORDS[w]
        elif w in _SIDE_WORDS and side is None:
            side = _SIDE_WORDS[w]
        elif w in _MEASURE_WORDS and measure is None:
            measure = _MEASURE_WORDS[w]
        else:
            raise ReadersSheetError(
                f"column {column!r}: cannot read the word {w!r}; name region columns by compartment "
                "(anterior/medial/posterior/lateral), side (right/left, R/L) and optionally the station "
                "and measure (edema, fat, fascial, subcutaneous), e.g. 'ant R' or 'fat posterior left'"
            )
    if compartment is None or side is None:
        raise ReadersSheetError(f"column {column!r}: a region column needs a compartment and a side, e.g. 'ant R'")
    return station, compartment, side, measure or "edema_grade"


def read_readers_sheet(path: str | Path, exams: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Long ``grades`` and ``patterns`` tables from a wide readers' sheet.

    Args:
        path: CSV, TSV or Excel (``.xlsx``, needs openpyxl) file.
        exams: the converted exams: ``case_id``, ``subject_id``, ``station``.

    Returns:
        ``(grades, patterns)`` in the contract's columns.
    """
    path = Path(path)
    sheet = _read(path)
    cols = {c: str(c).strip() for c in sheet.columns}
    sheet = sheet.rename(columns=cols)
    lower = {c.lower(): c for c in sheet.columns}
    rater_col = lower.get("rater") or lower.get("reader")
    if rater_col is None:
        raise ReadersSheetError(f"{path}: needs a 'rater' (or 'reader') column: one row per exam and reader")
    case_ids = _case_ids(sheet, lower, exams, path)
    stations = dict(zip(exams["case_id"], exams["station"]))
    region_cols = [c for c in sheet.columns if c.lower() not in _ID_COLUMNS]
    parsed = {}
    for c in region_cols:
        try:
            parsed[c] = parse_region_column(c)
        except ReadersSheetError as e:
            raise ReadersSheetError(f"{path}: {e}") from None
    long: dict[tuple[str, str, str], dict[str, float]] = {}
    for i, row in sheet.iterrows():
        cid, rater = case_ids[i], str(row[rater_col]).strip()
        for c, (station, comp, side, measure) in parsed.items():
            value = row[c]
            if pd.isna(value) or str(value).strip() == "":
                continue
            st = station or stations[cid]
            if st != stations[cid]:
                continue  # a calf column on a thigh exam's row: not this exam's region
            if comp not in COMPARTMENTS[st]:
                raise ReadersSheetError(f"{path}, row {i + 2}, column {c!r}: {st} has no {comp} compartment")
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ReadersSheetError(f"{path}, row {i + 2}, column {c!r}: {value!r} is not a number") from None
            long.setdefault((cid, rater, region_name(st, comp, side)), {})[measure] = v
    grades = pd.DataFrame(
        [{"case_id": c, "rater": r, "region": g, **{m: v.get(m) for m in MEASURES}} for (c, r, g), v in long.items()]
    )
    pattern_col = lower.get("pattern")
    patterns = pd.DataFrame(columns=["case_id", "rater", "pattern"])
    if pattern_col is not None:
        keep = sheet[pattern_col].notna() & (sheet[pattern_col].astype(str).str.strip() != "")
        patterns = pd.DataFrame({"case_id": [case_ids[i] for i in sheet.index[keep]],
                                 "rater": sheet.loc[keep, rater_col].astype(str).str.strip().to_list(),
                                 "pattern": sheet.loc[keep, pattern_col].astype(str).str.strip().str.lower().to_list()})
    return grades, patterns


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xls"):
            try:
                return pd.read_excel(path, dtype=object)
            except ImportError:
                raise ReadersSheetError(
                    f"{path}: reading Excel needs openpyxl (pip install openpyxl), or save the sheet as CSV"
                ) from None
        sep = "\t" if suffix in (".tsv", ".tab") else ","
        return pd.read_csv(path, sep=sep, dtype=object, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ReadersSheetError(f"{path}: cannot read the readers' sheet ({e})") from None


def _case_ids(sheet: pd.DataFrame, lower: dict[str, str], exams: pd.DataFrame, path: Path) -> list[str]:
    known = set(exams["case_id"])
    if "case_id" in lower:
        ids = sheet[lower["case_id"]].astype(str).str.strip().to_list()
    else:
        subj = lower.get("subject_id") or lower.get("subject")
        if subj is None or "station" not in lower:
            raise ReadersSheetError(f"{path}: name each exam by case_id, or by subject_id and station")
        by_key = {(s, st): c for c, s, st in zip(exams["case_id"], exams["subject_id"], exams["station"])}
        ids = [by_key.get((str(s).strip(), str(st).strip().lower()), f"{s}/{st}")
               for s, st in zip(sheet[subj], sheet[lower["station"]])]
    unknown = sorted({c for c in ids if c not in known})
    if unknown:
        raise ReadersSheetError(f"{path}: rows name exams the spec does not convert: {unknown}")
    return ids
