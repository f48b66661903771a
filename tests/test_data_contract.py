"""The dataset contract: schema and grade scales, cohort round trip, and the verifier.

Every class of problem the verifier knows has one parametrised case below that
breaks a valid tiny cohort in exactly that way and checks that the report names
the problem's code, case and file.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers_cohort import (
    SHAPE,
    edit_json,
    edit_table,
    make_tiny_cohort,
    tiny_affine,
    tiny_label,
    write_image,
)

from nxp2seg.data import (
    FAT_SCALE,
    Cohort,
    CohortError,
    CohortWriter,
    DatasetDescription,
    LabelSchema,
    Region,
    default_compartment_schema,
    default_muscle_schema,
    get_grade_scale,
)
from nxp2seg.data.cohort import read_table
from nxp2seg.data.schema import SchemaError
from nxp2seg.data.verify import FIXES, Problem, VerifyReport, is_safe_case_id, main, verify_cohort
from nxp2seg.io import make_nifti, save_nifti

T, C = "S01_thigh", "S01_calf"  # a thigh and a calf case of the tiny cohort


@pytest.fixture(scope="module")
def tiny_cohort_template(tmp_path_factory) -> Path:
    return make_tiny_cohort(tmp_path_factory.mktemp("template") / "cohort")


@pytest.fixture
def tiny_cohort(tiny_cohort_template, tmp_path) -> Path:
    """A fresh copy of a valid 2-subject, 4-case cohort, free to break."""
    return Path(shutil.copytree(tiny_cohort_template, tmp_path / "cohort"))


def found(report: VerifyReport, code: str) -> list[Problem]:
    return [p for p in report.problems if p.code == code]


# ---------------------------------------------------------------------------
# schema.py
# ---------------------------------------------------------------------------


def test_grade_scale_to_int_rounds_halves_up_and_clips():
    s = get_grade_scale("beltrame6")
    assert s.to_int([0.4, 0.5, 1.49, 2.5, 4.5, -1.0, 7.2]).tolist() == [0, 1, 1, 3, 5, 0, 5]
    assert s.to_int(2.5) == 3
    out = s.to_int([1.2, np.nan])
    assert out[0] == 1 and np.isnan(out[1])
    assert get_grade_scale("extent4").to_int([3.6, 2.5]).tolist() == [3, 3]


def test_grade_scale_contains_integer_grades_and_blank():
    s = get_grade_scale("beltrame6")
    got = s.contains([0, 5, 2.0, 5.5, 6, -1, np.nan])
    assert got.tolist() == [True, True, True, False, False, False, True]
    assert not get_grade_scale("extent4").contains(4)
    assert FAT_SCALE.max_grade == 4 and FAT_SCALE.contains(4) and not FAT_SCALE.contains(5)


def test_grade_scale_extents():
    b6, e4 = get_grade_scale("beltrame6"), get_grade_scale("extent4")
    assert b6.max_grade == 5 and e4.max_grade == 3
    assert b6.extent == ("none", "focal", "segmented", "global", "segmented", "global")
    assert b6.intensity == ("none", "mild", "mild", "mild", "moderate", "moderate")
    assert e4.extent == ("none", "focal", "segmented", "global")
    assert b6.grades().tolist() == [0, 1, 2, 3, 4, 5]


def test_grade_scale_unknown_name_and_bad_definition():
    with pytest.raises(SchemaError, match="unknown grade scale 'vas10'"):
        get_grade_scale("vas10")
    with pytest.raises(SchemaError, match="differ in length"):
        type(FAT_SCALE)("x", ("a", "b"), ("none",), ("none", "any"))
    with pytest.raises(SchemaError, match="unknown extent"):
        type(FAT_SCALE)("x", ("a", "b"), ("none", "huge"), ("none", "any"))


def test_default_compartment_schema_values():
    s = default_compartment_schema()
    assert s.labels["thigh_anterior_right"] == 1 and s.labels["thigh_posterior_left"] == 6
    assert s.labels["calf_anterior_right"] == 7 and s.labels["calf_posterior_left"] == 12
    assert (s.labels["subcutaneous_right"], s.labels["subcutaneous_left"], s.labels["bone"]) == (
        13,
        14,
        15,
    )
    assert s.station_labels("thigh") == {0, 1, 2, 3, 4, 5, 6, 13, 14, 15}
    assert s.region_names("calf")[0] == "calf_anterior_right" and len(s.region_names()) == 12
    assert s.rollup_lut().tolist() == list(range(16))


@pytest.mark.parametrize(
    "labels, regions, match",
    [
        ({"background": 1, "x": 2}, {}, "background"),
        ({"background": 0, "a": 1, "b": 1}, {}, "reuses values"),
        ({"background": 0, "a": 300}, {}, "0..255"),
        (
            {"background": 0},
            {"r": Region("r", "thigh", "anterior", "right", (4,))},
            "does not define",
        ),
        (
            {"background": 0, "a": 1},
            {"r": Region("r", "knee", "anterior", "right", (1,))},
            "station",
        ),
        ({"background": 0, "a": 1}, {"r": Region("r", "thigh", "anterior", "up", (1,))}, "side"),
        (
            {"background": 0, "a": 1},
            {"r": Region("r", "calf", "medial", "right", (1,))},
            "compartment",
        ),
    ],
)
def test_label_schema_validation_errors(labels, regions, match):
    with pytest.raises(SchemaError, match=match):
        LabelSchema(labels=labels, regions=regions)


@pytest.mark.parametrize(
    "d, match",
    [
        ({"labels": {"background": 0, "muscle": [1, 2]}}, "one integer per label"),
        ({"labels": {"background": 0, "muscle": True}}, "one integer per label"),
        ({"labels": {"background": 0, "muscle": 1}}, "no 'regions'"),
        ({"labels": [0, 1]}, "must be an object"),
        ({**default_compartment_schema().to_dataset_json(), "label_level": "organ"}, "label_level"),
        (
            {"labels": {"background": 0, "a": 1}, "regions": {"r": {"station": "thigh"}}},
            "must have station",
        ),
    ],
)
def test_label_schema_from_dataset_json_errors(d, match):
    with pytest.raises(SchemaError, match=match):
        LabelSchema.from_dataset_json(d)


# ---------------------------------------------------------------------------
# cohort.py: the contract round trip
# ---------------------------------------------------------------------------


def test_cohort_round_trip(tmp_path):
    schema = default_compartment_schema()
    desc = DatasetDescription(
        grade_scale=get_grade_scale("extent4"), raters=["R1", "NA"], extra={"licence": "CC0"}
    )
    writer = CohortWriter(tmp_path / "c", desc)
    lab = make_nifti(tiny_label("thigh", schema), tiny_affine())
    img = make_nifti(np.ones(SHAPE, np.float32), tiny_affine())
    writer.write_case("007_thigh", img, img, lab)
    writer.write_case("007_calf", img, img)
    cases = pd.DataFrame(
        {
            "case_id": ["007_thigh", "007_calf"],
            "subject_id": ["007", "007"],
            "station": ["thigh", "calf"],
            "split": ["train", None],
        }
    )
    grades = pd.DataFrame(
        {
            "case_id": ["007_thigh", "007_thigh"],
            "rater": ["R1", "NA"],
            "region": ["thigh_anterior_right"] * 2,
            "edema_grade": [2.0, np.nan],
            "fat_grade": [1.0, 0.0],
            "fascial_edema": [1.0, np.nan],
            "subcutaneous_edema": [0.0, 1.0],
        }
    )
    patterns = pd.DataFrame({"case_id": ["007_thigh"], "rater": ["NA"], "pattern": ["none"]})
    clinical = pd.DataFrame({"subject_id": ["007"], "age": [51.5], "ck": [np.nan]})
    writer.write_tables(cases, grades, patterns, clinical)
    writer.finish()
    with pytest.raises(CohortError, match="already holds a cohort"):
        CohortWriter(tmp_path / "c", desc)

    cohort = Cohort.open(tmp_path / "c")
    d = cohort.dataset
    assert d.schema == schema and d.grade_scale.name == "extent4" and d.raters == ["R1", "NA"]
    assert (
        d.num_training == 2
        and d.extra == {"licence": "CC0"}
        and d.channel_names == {"0": "T1", "1": "STIR"}
    )
    pd.testing.assert_frame_equal(cohort.cases, cases.astype(object).where(cases.notna(), None))
    pd.testing.assert_frame_equal(
        cohort.grades, grades, check_dtype=False
    )  # ids stay strings, "NA" a rater
    pd.testing.assert_frame_equal(cohort.patterns, patterns.astype(object))
    pd.testing.assert_frame_equal(cohort.clinical, clinical.astype({"subject_id": object}))
    assert cohort.case_ids == ["007_thigh", "007_calf"]
    assert cohort.has_label("007_thigh") and not cohort.has_label("007_calf")
    assert (
        cohort.t1_path("007_calf").exists()
        and cohort.stir_path("007_calf").name == "007_calf_0001.nii.gz"
    )
    assert cohort.station_of("007_calf") == "calf" and cohort.subject_of("007_thigh") == "007"
    with pytest.raises(KeyError, match="not in"):
        cohort.station_of("nope")
    assert verify_cohort(tmp_path / "c").ok


def test_dataset_json_defaults():
    d = DatasetDescription.from_dict({"channel_names": {"0": "T1", "1": "STIR"}})
    assert d.schema == default_compartment_schema() and d.schema.level == "compartment"
    assert d.grade_scale.name == "beltrame6" and d.raters is None and d.file_ending == ".nii.gz"
    assert DatasetDescription.from_dict({}).channel_names == {"0": "T1", "1": "STIR"}


def test_read_table_keeps_id_strings_and_reads_blanks_as_missing(tmp_path):
    p = tmp_path / "g.csv"
    p.write_text("case_id,rater,edema_grade\n007, NA ,NA\n 008 ,,\n")
    df = read_table(p, ["region"])
    assert df["case_id"].tolist() == ["007", "008"] and df["rater"].tolist() == ["NA", None]
    assert df["edema_grade"].isna().all() and df["region"].tolist() == [None, None]


def test_muscle_schema_round_trip_and_rollup():
    m = default_muscle_schema()
    d = json.loads(json.dumps(DatasetDescription(schema=m).to_dict()))
    assert d["label_level"] == "muscle"
    back = DatasetDescription.from_dict(d).schema
    assert back == m and back.level == "muscle"
    # without 'regions' the muscle names are enough to rebuild the default regions
    bare = LabelSchema.from_dataset_json({"labels": d["labels"]})
    assert bare.level == "muscle" and bare.regions == m.regions
    comp, lut = default_compartment_schema(), m.rollup_lut()
    for region in m.regions.values():
        assert {int(lut[v]) for v in region.labels} == {comp.labels[region.name]}
    assert lut[m.labels["sartorius_right"]] == 1 and lut[m.labels["soleus_left"]] == 12
    assert lut[m.labels["subcutaneous_left"]] == 14 and lut[m.labels["bone"]] == 15 and lut[0] == 0
    assert len(m.regions["thigh_anterior_right"].labels) == 5


def test_muscle_level_cohort_verifies(tmp_path):
    m = default_muscle_schema()
    root = make_tiny_cohort(tmp_path / "m", subjects=("S01",), schema=m)
    assert Cohort.open(root).dataset.schema.level == "muscle"
    report = verify_cohort(root)
    assert report.ok and not report.problems, report.problems
    lab = tiny_label("thigh", m)
    lab[0, 0, 0] = m.labels["soleus_right"]
    write_image(root, f"labelsTr/{T}.nii.gz", lab)
    (p,) = found(verify_cohort(root), "label_values_other_station")
    assert p.case_id == T and "soleus_right" in p.message


# ---------------------------------------------------------------------------
# verify.py: every class of problem
# ---------------------------------------------------------------------------


def _rm(*rels):
    def f(root):
        for rel in rels:
            (root / rel).unlink()

    return f


def _write(rel, text):
    return lambda root: (root / rel).write_text(text)


def _table(name, fn):
    return lambda root: edit_table(root, name, fn)


def _set(name, row, col, value):
    def fn(df):
        df.loc[row, col] = value
        return df

    return _table(name, fn)


def _add_row(name, **row):
    return _table(
        name, lambda df: pd.concat([df, pd.DataFrame([row])], ignore_index=True).fillna("")
    )


def _json(fn):
    return lambda root: edit_json(root, fn)


def _image(rel, data=None, affine=None):
    return lambda root: write_image(
        root, rel, np.ones(SHAPE, np.float32) if data is None else data, affine
    )


def _label(station="thigh", edit=None, shape=SHAPE, affine=None, dtype=np.uint8):
    def f(root):
        lab = np.zeros(shape, dtype)
        lab[: SHAPE[0], : SHAPE[1], : SHAPE[2]] = tiny_label(station, default_compartment_schema())
        if edit:
            edit(lab)
        write_image(root, f"labelsTr/{T}.nii.gz", lab, affine)

    return f


def _with_nan(a):
    a = a.copy()
    a[1, 2, 3] = np.nan
    return a


def _truncate(rel):
    def f(root):
        raw = (root / rel).read_bytes()
        (root / rel).write_bytes(raw[: len(raw) // 2])

    return f


def _no_orientation(root):
    img = nib.Nifti1Image(np.ones(SHAPE, np.float32), None)
    img.set_sform(None, code=0)
    img.set_qform(None, code=0)
    save_nifti(img, root / f"imagesTr/{T}_0000.nii.gz")


def _drop(col):
    return lambda df: df.drop(columns=[col])


IMG_T1, IMG_STIR, LAB = (
    f"imagesTr/{T}_0000.nii.gz",
    f"imagesTr/{T}_0001.nii.gz",
    f"labelsTr/{T}.nii.gz",
)
S09 = "S09_thigh"  # a case that is not in cases.csv
E, W = "error", "warning"
ONES = np.ones(SHAPE, np.float32)
STIR_GRID = tiny_affine(spacing=(4.0, 4.0, 5.0))
_put = np.ndarray.__setitem__

# fmt: off
PROBLEMS = [  # id, mutation of the valid tiny cohort, expected code, case_id, file, severity
    # dataset.json
    ("json_missing", _rm("dataset.json"), "dataset_json_missing", None, "dataset.json", E),
    ("json_syntax", _write("dataset.json", "{oops"), "dataset_json_invalid", None, "dataset.json", E),
    ("json_array", _write("dataset.json", "[1, 2]"), "dataset_json_invalid", None, "dataset.json", E),
    ("json_labels", _json(lambda d: d["labels"].update(background=3)),
     "dataset_json_schema", None, "dataset.json", E),
    ("json_grade_scale", _json(lambda d: d.update(grade_scale="vas10")),
     "dataset_json_schema", None, "dataset.json", E),
    ("json_channels", _json(lambda d: d.update(channel_names={"0": "STIR", "1": "T1"})),
     "dataset_json_schema", None, "dataset.json", E),
    ("json_regions", _json(lambda d: d.update(regions=[1])), "dataset_json_schema", None, "dataset.json", E),
    ("json_raters", _json(lambda d: d.update(raters="R1")), "dataset_json_schema", None, "dataset.json", E),
    ("num_training", _json(lambda d: d.update(numTraining=7)),
     "num_training_mismatch", None, "dataset.json", W),
    # tables and columns
    ("cases_missing", _rm("cases.csv"), "table_missing", None, "cases.csv", E),
    ("grades_missing", _rm("grades.csv"), "table_missing", None, "grades.csv", W),
    ("table_unreadable", _write("patterns.csv", ""), "table_unreadable", None, "patterns.csv", E),
    ("col_station", _table("cases.csv", _drop("station")), "column_missing", None, "cases.csv", E),
    ("col_region", _table("grades.csv", _drop("region")), "column_missing", None, "grades.csv", E),
    ("col_fat", _table("grades.csv", _drop("fat_grade")), "column_missing", None, "grades.csv", W),
    ("col_pattern", _table("patterns.csv", _drop("pattern")), "column_missing", None, "patterns.csv", E),
    # cases.csv rows
    ("case_id_duplicate", _table("cases.csv", lambda df: pd.concat([df, df.iloc[[0]]])),
     "case_id_duplicate", T, "cases.csv", E),
    ("case_id_dotdot", _add_row("cases.csv", case_id="../evil", subject_id="S09", station="thigh"),
     "case_id_unsafe", "../evil", "cases.csv", E),
    ("case_id_separator", _add_row("cases.csv", case_id="a/b", subject_id="S09", station="thigh"),
     "case_id_unsafe", "a/b", "cases.csv", E),
    ("case_id_space", _add_row("cases.csv", case_id="S 09", subject_id="S09", station="thigh"),
     "case_id_unsafe", "S 09", "cases.csv", E),
    ("station_invalid", _set("cases.csv", 0, "station", "knee"), "station_invalid", T, "cases.csv", E),
    ("subject_blank", _set("cases.csv", 0, "subject_id", ""), "value_missing", T, "cases.csv", E),
    ("subject_station_duplicate", _add_row("cases.csv", case_id="S01_thigh2", subject_id="S01", station="thigh"),
     "subject_station_duplicate", T, "cases.csv", W),
    # files
    ("stir_missing", _rm(IMG_STIR), "image_missing", T, IMG_STIR, E),
    ("t1_missing", _rm(IMG_T1), "image_missing", T, IMG_T1, E),
    ("case_without_images", _rm(IMG_T1, IMG_STIR, LAB), "case_without_images", T, IMG_T1, E),
    ("image_without_case", _image(f"imagesTr/{S09}_0000.nii.gz"),
     "image_without_case", S09, f"imagesTr/{S09}_0000.nii.gz", E),
    ("label_without_case", _image(f"labelsTr/{S09}.nii.gz"), "image_without_case", S09, f"labelsTr/{S09}.nii.gz", E),
    ("label_channel_suffix", _image(f"labelsTr/{T}_0000.nii.gz"),
     "image_without_case", f"{T}_0000", f"labelsTr/{T}_0000.nii.gz", E),
    ("stray_channel", _image(f"imagesTr/{T}_0002.nii.gz"), "stray_file", T, f"imagesTr/{T}_0002.nii.gz", E),
    ("stray_no_channel", _image(f"imagesTr/{T}.nii.gz"), "stray_file", None, f"imagesTr/{T}.nii.gz", E),
    ("stray_ending", _image(f"imagesTr/{T}_0000.nii"), "stray_file", None, f"imagesTr/{T}_0000.nii", E),
    ("stray_text", _write("imagesTr/notes.txt", "x"), "stray_file", None, "imagesTr/notes.txt", W),
    ("stray_partial", _write("labelsTr/.x.nii.gz.abc.part", "x"), "stray_file", None,
     "labelsTr/.x.nii.gz.abc.part", W),
    ("images_folder_missing", lambda root: shutil.rmtree(root / "imagesTr"), "folder_missing", None, "imagesTr", E),
    # images
    ("not_nifti", _write(IMG_T1, "not an image"), "image_unreadable", T, IMG_T1, E),
    ("truncated_gzip", _truncate(IMG_STIR), "image_unreadable", T, IMG_STIR, E),
    ("4d", _image(IMG_T1, np.ones((*SHAPE, 2), np.float32)), "image_dims", T, IMG_T1, E),
    ("2d", _image(IMG_T1, np.ones(SHAPE[:2], np.float32)), "image_dims", T, IMG_T1, E),
    ("4d_singleton", _image(IMG_T1, np.ones((*SHAPE, 1), np.float32)), "image_dims", T, IMG_T1, W),
    ("nan", _image(IMG_T1, _with_nan(ONES)), "image_nonfinite", T, IMG_T1, E),
    ("inf", _image(IMG_STIR, np.full((6, 5, 4), np.inf, np.float32), STIR_GRID),
     "image_nonfinite", T, IMG_STIR, E),
    ("constant", _image(IMG_STIR, np.zeros((6, 5, 4), np.float32), STIR_GRID), "image_constant", T, IMG_STIR, W),
    ("no_orientation", _no_orientation, "image_geometry_invalid", T, IMG_T1, E),
    ("stir_no_overlap", _image(IMG_STIR, np.ones((6, 5, 4)), tiny_affine(origin=(1000.0, 0, 0))),
     "stir_no_overlap", T, IMG_STIR, E),
    # label maps (the T1 grid: 2 x 2 x 5 mm)
    ("label_shape", _label(shape=(12, 10, 5)), "label_shape_mismatch", T, LAB, E),
    ("label_spacing", _label(affine=tiny_affine(spacing=(2.1, 2.0, 5.0))), "label_spacing_mismatch", T, LAB, E),
    ("label_affine_half_voxel", _label(affine=tiny_affine(origin=(-11.0, -10.0, 0.0))),
     "label_affine_mismatch", T, LAB, E),
    ("label_value_99", _label(edit=lambda a: _put(a, (0, 0, 0), 99)), "label_values_unknown", T, LAB, E),
    ("calf_label_in_thigh", _label(edit=lambda a: _put(a, (0, 0, 0), 7)), "label_values_other_station", T, LAB, E),
    ("label_noninteger", _label(edit=lambda a: _put(a, (0, 0, 0), 1.5), dtype=np.float32),
     "label_values_noninteger", T, LAB, E),
    ("label_empty", _label(edit=lambda a: a.fill(0)), "label_empty", T, LAB, W),
    # grades.csv (row 0 = S01_thigh, R1, thigh_anterior_right)
    ("edema_6", _set("grades.csv", 0, "edema_grade", "6"), "grade_out_of_scale", T, "grades.csv", E),
    ("edema_2.5", _set("grades.csv", 0, "edema_grade", "2.5"), "grade_out_of_scale", T, "grades.csv", E),
    ("fat_5", _set("grades.csv", 0, "fat_grade", "5"), "grade_out_of_scale", T, "grades.csv", E),
    ("fascial_2", _set("grades.csv", 0, "fascial_edema", "2"), "grade_out_of_scale", T, "grades.csv", E),
    ("subcutaneous_-1", _set("grades.csv", 0, "subcutaneous_edema", "-1"), "grade_out_of_scale", T, "grades.csv", E),
    ("grade_non_numeric", _set("grades.csv", 0, "edema_grade", "moderate"), "grade_non_numeric", T, "grades.csv", E),
    ("region_unknown", _set("grades.csv", 0, "region", "thigh_lateral_right"), "region_unknown", T, "grades.csv", E),
    ("region_other_station", _set("grades.csv", 0, "region", "calf_lateral_right"),
     "region_other_station", T, "grades.csv", E),
    ("rater_unknown", _set("grades.csv", 0, "rater", "R3"), "rater_unknown", T, "grades.csv", E),
    ("rater_blank", _set("grades.csv", 0, "rater", ""), "value_missing", T, "grades.csv", E),
    ("grade_duplicate", _set("grades.csv", 1, "region", "thigh_anterior_right"), "grade_duplicate", T, "grades.csv", E),
    ("grades_without_case", _set("grades.csv", 0, "case_id", S09), "rows_without_case", S09, "grades.csv", E),
    # patterns.csv (rows 0, 1 = S01_thigh by R1, R2)
    ("pattern_invalid", _set("patterns.csv", 0, "pattern", "focal"), "pattern_invalid", T, "patterns.csv", E),
    ("pattern_rater_unknown", _set("patterns.csv", 0, "rater", "R3"), "rater_unknown", T, "patterns.csv", E),
    ("pattern_duplicate", _set("patterns.csv", 1, "rater", "R1"), "pattern_duplicate", T, "patterns.csv", E),
    ("patterns_without_case", _set("patterns.csv", 0, "case_id", S09), "rows_without_case", S09, "patterns.csv", E),
    # clinical.csv
    ("clinical_subject_unknown", _add_row("clinical.csv", subject_id="S99", age="50"),
     "clinical_subject_unknown", None, "clinical.csv", W),
    ("clinical_subject_duplicate", _add_row("clinical.csv", subject_id="S01", age="50"),
     "clinical_subject_duplicate", None, "clinical.csv", W),
]
# fmt: on


@pytest.mark.parametrize(
    "mutate, code, case_id, file, severity", [pytest.param(*p[1:], id=p[0]) for p in PROBLEMS]
)
def test_verify_reports_problem(tiny_cohort, mutate, code, case_id, file, severity):
    mutate(tiny_cohort)
    report = verify_cohort(tiny_cohort)
    hits = [p for p in found(report, code) if p.case_id == case_id and p.file == file]
    assert hits, f"no {code} for {case_id}/{file}; got:\n" + "\n".join(map(str, report.problems))
    assert all(p.severity == severity and p.message and p.fix for p in hits)
    assert report.ok == (severity == "warning" and not report.errors)
    assert main([str(tiny_cohort), "--max-rows", "5"]) == (1 if report.errors else 0)


def test_valid_cohort_has_no_problems(tiny_cohort, capsys):
    report = verify_cohort(tiny_cohort)
    assert report.ok and report.problems == [], report.problems
    assert (report.n_cases, report.n_subjects, report.n_labelled) == (4, 2, 4)
    assert main([str(tiny_cohort)]) == 0
    assert "cohort OK: 4 cases, 2 subjects, 4 with labels" in capsys.readouterr().out


def test_normal_variation_is_not_a_problem(tiny_cohort):
    """Blank grades, unlabelled cases, T1/STIR on different grids, float32 affine jitter."""
    edit_table(
        tiny_cohort,
        "grades.csv",
        lambda df: df.assign(edema_grade=[""] * 3 + list(df.edema_grade[3:])),
    )
    edit_table(
        tiny_cohort, "patterns.csv", lambda df: df.assign(pattern=[""] + list(df.pattern[1:]))
    )
    (tiny_cohort / f"labelsTr/{C}.nii.gz").unlink()
    jitter = tiny_affine()
    jitter[:3, 3] += 1e-4
    _label(affine=jitter)(tiny_cohort)
    report = verify_cohort(tiny_cohort)
    assert report.ok and report.problems == [], report.problems
    assert report.n_labelled == 3


def test_every_problem_in_one_pass(tiny_cohort):
    """A corrupt file, a missing dataset.json and bad rows do not hide each other."""
    (tiny_cohort / "dataset.json").unlink()
    _truncate(IMG_T1)(tiny_cohort)
    _image(f"imagesTr/{C}_0000.nii.gz", _with_nan(ONES))(tiny_cohort)
    _label(edit=lambda a: _put(a, (0, 0, 0), 7))(tiny_cohort)
    _set("grades.csv", 0, "edema_grade", "9")(tiny_cohort)
    _set("patterns.csv", 0, "pattern", "Patchy")(tiny_cohort)
    report = verify_cohort(tiny_cohort)
    got = {(p.code, p.case_id) for p in report.errors}
    assert got == {
        ("dataset_json_missing", None),
        ("image_unreadable", T),
        ("image_nonfinite", C),
        ("label_values_other_station", T),
        ("grade_out_of_scale", T),
        ("pattern_invalid", T),
    }, report.problems


def test_cases_csv_missing_still_checks_images(tiny_cohort):
    (tiny_cohort / "cases.csv").unlink()
    _image(IMG_T1, _with_nan(ONES))(tiny_cohort)
    codes = {(p.code, p.case_id) for p in verify_cohort(tiny_cohort).problems}
    assert ("table_missing", None) in codes and ("image_nonfinite", T) in codes
    assert not any(c == "image_without_case" for c, _ in codes)  # no flood when cases.csv is gone


def test_grade_scale_of_dataset_json_is_used(tmp_path):
    root = make_tiny_cohort(tmp_path / "e4", subjects=("S01",), grade_scale="extent4")
    assert verify_cohort(root).ok
    _set("grades.csv", 0, "edema_grade", "4")(root)
    (p,) = found(verify_cohort(root), "grade_out_of_scale")
    assert "0..3" in p.message and "extent4" in p.message and "row 2" in p.message


def test_undeclared_raters_are_not_checked(tmp_path):
    root = make_tiny_cohort(tmp_path / "c", subjects=("S01",), declare_raters=False)
    _set("grades.csv", 0, "rater", "R9")(root)
    assert verify_cohort(root).ok


def test_unsafe_case_id_is_never_used_as_a_path(tiny_cohort):
    _add_row("cases.csv", case_id="../../outside", subject_id="S09", station="thigh")(tiny_cohort)
    report = verify_cohort(tiny_cohort)
    assert [p.code for p in report.errors] == ["case_id_unsafe"]


def test_no_images_mode_reads_names_only(tiny_cohort):
    _image(IMG_T1, _with_nan(ONES))(tiny_cohort)
    (tiny_cohort / IMG_STIR).unlink()
    report = verify_cohort(tiny_cohort, check_images=False)
    assert {p.code for p in report.problems} == {"image_missing"} and not report.checked_images


def test_report_exports(tiny_cohort, tmp_path):
    _set("grades.csv", 0, "fat_grade", "7")(tiny_cohort)
    report = verify_cohort(tiny_cohort)
    df = report.to_dataframe()
    assert (
        list(df.columns) == ["severity", "code", "case_id", "file", "message", "fix"]
        and len(df) == 1
    )
    d = json.loads(report.to_json(tmp_path / "r.json"))
    assert d == json.loads((tmp_path / "r.json").read_text())
    assert d["ok"] is False and d["n_errors"] == 1 and d["problems"][0]["case_id"] == T
    with pytest.raises(CohortError, match="fat_grade 7"):
        report.raise_if_errors()
    assert verify_cohort(tiny_cohort.parent / "nope").opened is False


def test_is_safe_case_id():
    assert all(map(is_safe_case_id, ["S01_thigh", "007", "a.b-c_d"]))
    assert not any(map(is_safe_case_id, ["", ".x", "_x", "a/b", "a\\b", "a..b", "a b", None, "é"]))


# ---------------------------------------------------------------------------
# verify.py: command line
# ---------------------------------------------------------------------------


def test_cli_exit_codes_and_json(tiny_cohort, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main([str(tiny_cohort), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["ok"] is True
    _set("cases.csv", 0, "station", "knee")(tiny_cohort)
    assert main([f"cohort={tiny_cohort}", f"json={out}", "check_images=false"]) == 1
    d = json.loads(out.read_text())
    assert d["n_errors"] == 1 and d["checked_images"] is False
    text = capsys.readouterr().out
    assert (
        "station_invalid" not in text
        and "knee" in text
        and "cohort has 1 error and 0 warnings" in text
    )
    assert main([str(tmp_path / "missing"), "--json", str(out)]) == 2
    assert json.loads(out.read_text())["opened"] is False
    assert main([]) == 2 and main(["colour=red", str(tiny_cohort)]) == 2


def test_cli_module_runs_and_import_is_light(tiny_cohort):
    code = "import sys, nxp2seg.data.verify; print('torch' in sys.modules, 'monai' in sys.modules)"
    assert subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    ).stdout.split() == ["False", "False"]
    run = subprocess.run(
        [sys.executable, "-m", "nxp2seg.data.verify", str(tiny_cohort), "--no-images"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "cohort OK" in run.stdout, run.stderr


def test_corrupt_gzip_helper_really_is_corrupt(tiny_cohort):
    """Guard for the truncated-gzip case above: the header may still read, the data may not."""
    _truncate(IMG_STIR)(tiny_cohort)
    with pytest.raises(EOFError), gzip.open(tiny_cohort / IMG_STIR) as f:
        f.read()


def test_missing_images_folder_is_reported_once(tiny_cohort):
    shutil.rmtree(tiny_cohort / "imagesTr")
    report = verify_cohort(tiny_cohort)
    assert [p.code for p in report.errors] == ["folder_missing"]


def test_a_failing_check_does_not_stop_the_others(tiny_cohort, monkeypatch):
    from nxp2seg.data.verify import tables

    def boom(v):
        raise RuntimeError("boom")

    monkeypatch.setattr(tables, "check_grades", boom)
    _image(IMG_T1, _with_nan(ONES))(tiny_cohort)
    report = verify_cohort(tiny_cohort)
    assert {(p.code, p.file) for p in report.errors} == {
        ("check_failed", "grades.csv"),
        ("image_nonfinite", IMG_T1),
    }


def test_docs_list_every_problem_code():
    """FIXES names every code the verifier reports, and docs/dataset.md has one row for each."""
    import re

    from nxp2seg.data import verify

    src = "".join(p.read_text() for p in sorted(Path(verify.__file__).parent.glob("*.py")))
    used = set(re.findall(r'(?:self|v|ctx)\.add\(\s*"([a-z_]+)"', src))
    used |= set(re.findall(r'issues\["([a-z_]+)"', src))
    assert used == set(FIXES) and len(used) > 40
    doc = (Path(__file__).parents[1] / "docs" / "dataset.md").read_text()
    assert set(re.findall(r"^\| `([a-z_0-9]+)` \| [EW]", doc, flags=re.MULTILINE)) == set(FIXES)
