"""The ``warnings`` column of cases.csv: codes recorded on a report, joined in the table."""

from __future__ import annotations

import pandas as pd
import pytest

from nxp2seg.inference.writers import (
    CASE_COLUMNS,
    add_warning,
    case_warnings,
    write_report,
    write_tables,
)


def test_add_warning_keeps_each_code_once_in_order():
    rep: dict = {}
    add_warning(rep, "uneven_slice_spacing", "first")
    add_warning(rep, "input_unlike_training", "far from the training cohort")
    add_warning(rep, "uneven_slice_spacing", "second")
    assert rep["warnings"] == ["uneven_slice_spacing", "input_unlike_training"]
    assert rep["warning_messages"] == {"uneven_slice_spacing": "second",
                                       "input_unlike_training": "far from the training cohort"}
    assert case_warnings(rep) == "uneven_slice_spacing;input_unlike_training"
    assert case_warnings({}) == "" and case_warnings({"warnings": []}) == ""


@pytest.mark.parametrize("code", ["Bad", "has space", "semi;colon", "", "1st"])
def test_add_warning_refuses_codes_that_break_the_column(code):
    with pytest.raises(ValueError, match="warning code"):
        add_warning({}, code, "x")


def test_cases_csv_has_the_warnings_column(tmp_path):
    ok = {"case_id": "a", "subject_id": "a", "station": "thigh", "status": "ok", "error": ""}
    add_warning(ok, "dicom_seg_failed", "the SEG could not be written")
    add_warning(ok, "segmentation_empty", "nothing found")
    write_report(tmp_path / "a" / "report.json", ok)
    write_report(tmp_path / "b" / "report.json", {**ok, "case_id": "b", "warnings": []})
    tables = write_tables(tmp_path, ["a", "b"])
    assert CASE_COLUMNS.index("warnings") == CASE_COLUMNS.index("error") + 1
    table = pd.read_csv(tmp_path / "cases.csv", keep_default_na=False).set_index("case_id")
    assert table.loc["a", "warnings"] == "dicom_seg_failed;segmentation_empty"
    assert table.loc["b", "warnings"] == ""
    assert list(tables["cases"].columns[:6]) == ["case_id", "subject_id", "station", "status", "error",
                                                 "warnings"]
