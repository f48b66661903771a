"""``nxp2seg.data.convert``: spec -> cohort, label tables, aliases, side: auto, readers' sheet."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.convert import ConvertError, convert
from nxp2seg.data.convert import main as convert_main
from nxp2seg.data.convert_labels import AliasTable, LabelTableError, Target, read_label_table
from nxp2seg.data.convert_readers import ReadersSheetError, parse_region_column
from nxp2seg.data.convert_sides import SideSplitError, split_sides
from nxp2seg.data.schema import default_muscle_schema
from nxp2seg.data.verify import verify_cohort
from nxp2seg.io import make_nifti, save_nifti
from nxp2seg.phantom import generate_cohort

# the Huashan thigh table's abbreviations (ABOUT.md), sideless
HUASHAN = {1: "SA", 2: "RF", 3: "VL", 4: "VI", 5: "VM", 6: "AM", 7: "GR", 8: "BL", 9: "ST", 10: "SM", 11: "BB"}
MUSCLE_OF = {
    "SA": ["sartorius"], "RF": ["rectus_femoris"], "VL": ["vastus_lateralis"], "VI": ["vastus_intermedius"],
    "VM": ["vastus_medialis"], "AM": ["adductor_longus", "adductor_brevis", "adductor_magnus"],
    "GR": ["gracilis"], "BL": ["biceps_femoris_long_head"], "ST": ["semitendinosus"],
    "SM": ["semimembranosus"], "BB": ["biceps_femoris_short_head"],
}


def _itksnap(path: Path, table: dict[int, str]) -> Path:
    rows = ['################################################', '# ITK-SnAP Label Description File',
            '    0     0    0    0        0  0  0    "Clear Label"']
    rows += [f'{v:5d}   {v * 20 % 256:3d}  0  31        1  1  1    "{n}"' for v, n in table.items()]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Thigh exams as a user brings them: Dixon images and a sideless per-muscle mask (Huashan-style)."""
    root = tmp_path_factory.mktemp("convert")
    cohort_dir = generate_cohort(root / "phantom", subjects=2, preset="tiny", seed=11, workers=1,
                                 sequence="dixon", label_level="muscle")
    cohort = Cohort.open(cohort_dir)
    labels = default_muscle_schema().labels
    src = root / "src"
    src.mkdir()
    exams = []
    for cid in cohort.case_ids:
        if cohort.station_of(cid) != "thigh":
            continue
        lab = nib.load(cohort.label_path(cid))
        data = np.asarray(lab.dataobj)
        sideless = np.zeros(data.shape, np.int16)
        for value, abbreviation in HUASHAN.items():
            for muscle in MUSCLE_OF[abbreviation]:
                sideless[np.isin(data, [labels[f"{muscle}_right"], labels[f"{muscle}_left"]])] = value
        save_nifti(make_nifti(sideless, lab.affine), src / f"{cid}_muscles.nii.gz")
        for ch, name in ((0, "fat"), (1, "water")):
            save_nifti(nib.load(cohort.image_path(cid, ch)), src / f"{cid}_{name}.nii.gz")
        exams.append({"subject_id": cohort.subject_of(cid), "station": "thigh", "fat": f"{cid}_fat.nii.gz",
                      "water": f"{cid}_water.nii.gz", "label": f"{cid}_muscles.nii.gz"})
    pd.DataFrame(exams).to_csv(src / "exams.csv", index=False)
    _itksnap(src / "muscles.label", HUASHAN)
    (src / "spec.yaml").write_text(
        "label_table: muscles.label\naliases: {AM: adductors}\nside: auto\nexams: exams.csv\n")
    return src


def _phantom_compartments(source: Path, cid: str) -> np.ndarray:
    """The phantom's muscle labels rolled up to compartments (what the sideless source was made from)."""
    muscles = np.asarray(nib.load(source.parent / "phantom" / "labelsTr" / f"{cid}.nii.gz").dataobj)
    return default_muscle_schema().rollup_lut()[muscles]


def test_sideless_huashan_style_masks_convert_to_compartments(source, tmp_path):
    out = convert(source / "spec.yaml", out=str(tmp_path / "c"))
    assert verify_cohort(out).ok
    cohort = Cohort.open(out)
    assert cohort.dataset.channel_names == {"0": "FAT", "1": "WATER"}
    d = json.loads((out / "dataset.json").read_text())
    assert d["annotated"] == [f"thigh_{c}_{s}" for s in ("right", "left") for c in ("anterior", "medial", "posterior")]
    for cid in cohort.case_ids:
        got = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
        truth = _phantom_compartments(source, cid)
        muscle = (truth >= 1) & (truth <= 6)
        assert (got[muscle] == truth[muscle]).mean() > 0.995, cid  # sides right in world space
        assert not got[~muscle].any()  # subcutaneous and bone: not in the source, left unknown (0)
        assert (nib.load(cohort.image_path(cid, 0)).get_fdata() == nib.load(source / f"{cid}_fat.nii.gz").get_fdata()).all()


def test_muscle_level_keeps_groups_with_their_rollup(source, tmp_path):
    out = convert(source / "spec.yaml", out=str(tmp_path / "m"), level="muscle")
    cohort = Cohort.open(out)
    schema = cohort.dataset.schema
    assert "adductors_right" in schema.labels and schema.labels["adductors_right"] in schema.regions["thigh_medial_right"].labels
    assert "adductor_longus_right" not in json.loads((out / "dataset.json").read_text())["annotated"]
    cid = cohort.case_ids[0]
    got = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
    truth = _phantom_compartments(source, cid)
    muscle = (truth >= 1) & (truth <= 6)
    assert (schema.rollup_lut()[got][muscle] == truth[muscle]).mean() > 0.995


def test_legs_that_cannot_be_separated_are_refused_naming_the_exam(source, tmp_path):
    exams = pd.read_csv(source / "exams.csv")
    bad = source / "touching.nii.gz"
    lab = nib.load(source / exams["label"][0])
    data = np.asarray(lab.dataobj).copy()
    data[:, data.shape[1] // 2, :] = 3  # a band of "VL" across both legs on every slice
    save_nifti(make_nifti(data, lab.affine), bad)
    exams.loc[0, "label"] = bad.name
    exams.to_csv(source / "exams_bad.csv", index=False)
    with pytest.raises(ConvertError, match=f"exam {exams['subject_id'][0]}_thigh.*cannot be separated"):
        convert(source / "exams_bad.csv", out=str(tmp_path / "x"), label_table="muscles.label",
                aliases={"AM": "adductors"})
    assert not (tmp_path / "x").exists()  # nothing written
    # a fixed side is accepted for the same exam (e.g. one leg in the field of view)
    exams.loc[0, "side"] = "right"
    exams.to_csv(source / "exams_right.csv", index=False)
    out = convert(source / "exams_right.csv", out=str(tmp_path / "r"), label_table="muscles.label",
                  aliases={"AM": "adductors"})
    got = np.asarray(nib.load(Cohort.open(out).label_path(Cohort.open(out).case_ids[0])).dataobj)
    assert set(np.unique(got)) <= {0, 1, 2, 3}


def test_split_sides_uses_world_coordinates_not_array_order():
    mask = np.zeros((60, 4, 2), bool)
    mask[5:20, :, :] = True  # one leg at i = 5..19
    mask[35:55, :, :] = True  # the other at i = 35..54
    ras = np.diag([1.0, 1.0, 5.0, 1.0])  # +i = patient's right (+x)
    lps = np.diag([-1.0, -1.0, 5.0, 1.0])  # +i = patient's left
    a = split_sides(mask, ras, "exam A")
    b = split_sides(mask, lps, "exam B")
    assert (a[35:55] == 1).all() and (a[5:20] == -1).all()
    assert (b[35:55] == -1).all() and (b[5:20] == 1).all()
    one_leg = np.zeros_like(mask)
    one_leg[35:55, :, 0] = True  # slice 0: one leg only (it borrows slice 1's midline); slice 1: both
    one_leg[5:20, :, 1] = one_leg[35:55, :, 1] = True
    c = split_sides(one_leg, ras, "exam C")
    assert (c[35:55, :, 0] == 1).all()
    with pytest.raises(SideSplitError, match="exam D"):
        split_sides(np.ones((60, 4, 2), bool), ras, "exam D")


def test_label_tables_itksnap_slicer_csv(tmp_path):
    assert read_label_table(_itksnap(tmp_path / "a.label", {1: "VL", 2: "vastus medialis"})) == {
        0: "Clear Label", 1: "VL", 2: "vastus medialis"}
    (tmp_path / "b.ctbl").write_text("# Color table file\n0 Background 0 0 0 0\n1 VL_R 128 0 0 255\n2 VL_L 0 128 0 255\n")
    assert read_label_table(tmp_path / "b.ctbl") == {0: "Background", 1: "VL_R", 2: "VL_L"}
    (tmp_path / "c.csv").write_text("value,name\n1,adductors\n2,gracilis\n")
    assert read_label_table(tmp_path / "c.csv") == {1: "adductors", 2: "gracilis"}
    (tmp_path / "d.csv").write_text("one,VL\n")
    with pytest.raises(LabelTableError, match="d.csv"):
        read_label_table(tmp_path / "d.csv")


def test_aliases_resolve_abbreviations_full_names_groups_and_sides():
    a = AliasTable()
    assert a.resolve("VL") == Target("muscle", "vastus_lateralis")
    assert a.resolve("Vastus Lateralis") == Target("muscle", "vastus_lateralis")
    assert a.resolve("BFlh") == Target("muscle", "biceps_femoris_long_head")
    assert a.resolve("VL_R") == Target("muscle", "vastus_lateralis", "right")
    assert a.resolve("left vastus lateralis") == Target("muscle", "vastus_lateralis", "left")
    assert a.resolve("Adductors") == Target("group", "adductors")
    assert a.resolve("hamstrings L") == Target("group", "hamstrings", "left")
    assert a.resolve("SAT") == Target("subcutaneous", "subcutaneous")
    assert a.resolve("femur") == Target("bone", "bone")
    assert a.resolve("AM") == Target("muscle", "adductor_magnus")
    assert AliasTable({"AM": "adductors"}).resolve("AM") == Target("group", "adductors")
    with pytest.raises(LabelTableError, match="'psoas'.*add an alias"):
        a.resolve("psoas")
    with pytest.raises(LabelTableError, match="not a muscle"):
        AliasTable({"X": "quadratus"})


def test_readers_wide_sheet_becomes_grades_csv(source, tmp_path):
    exams = pd.read_csv(source / "exams.csv")
    cids = [f"{s}_thigh" for s in exams["subject_id"]]
    sheet = pd.DataFrame({
        "case_id": [cids[0], cids[0], cids[1]], "rater": ["A", "B", "A"],
        "ant R": [2, 3, 0], "med R": [1, 1, ""], "post L": [0, 0, 5], "fat ant R": [1, 2, 0],
        "fascial posterior left": [1, 0, 0], "pattern": ["patchy", "mixed", "diffuse"],
    })
    sheet.to_csv(source / "readers.csv", index=False)
    out = convert(source / "spec.yaml", out=str(tmp_path / "g"), readers="readers.csv")
    assert verify_cohort(out).ok
    g = pd.read_csv(out / "grades.csv")
    row = g[(g.case_id == cids[0]) & (g.rater == "B") & (g.region == "thigh_anterior_right")].iloc[0]
    assert row.edema_grade == 3 and row.fat_grade == 2
    assert np.isnan(g[(g.case_id == cids[1]) & (g.region == "thigh_medial_right")].edema_grade).all() or \
        g[(g.case_id == cids[1]) & (g.region == "thigh_medial_right")].empty
    assert g[(g.case_id == cids[0]) & (g.rater == "A") & (g.region == "thigh_posterior_left")].fascial_edema.iloc[0] == 1
    assert set(pd.read_csv(out / "patterns.csv").pattern) == {"patchy", "mixed", "diffuse"}
    assert parse_region_column("Fat Posterior Left") == (None, "posterior", "left", "fat_grade")
    assert parse_region_column("calf lat R oedema") == ("calf", "lateral", "right", "edema_grade")
    with pytest.raises(ReadersSheetError, match="'comment'"):
        parse_region_column("comment")


def test_dicom_series_folders_convert(source, tmp_path):
    from nxp2seg.phantom.dicom_export import write_series

    exams = pd.read_csv(source / "exams.csv").iloc[:1].copy()
    for i, col in enumerate(("fat", "water")):
        folder = tmp_path / "dicom" / col
        write_series(nib.load(source / exams[col].iloc[0]), folder, series_description=col.upper(),
                     series_number=i + 1, study_uid="1.2.3", frame_of_reference_uid="1.2.3.4", uid_seed="t")
        exams[col] = str(folder)
    exams["label"] = str(source / exams["label"].iloc[0])
    exams.to_csv(tmp_path / "dicom.csv", index=False)
    out = convert(tmp_path / "dicom.csv", out=str(tmp_path / "d"), label_table=str(source / "muscles.label"),
                  aliases={"AM": "adductors"})
    cohort = Cohort.open(out)
    cid = cohort.case_ids[0]
    assert np.allclose(nib.load(cohort.image_path(cid, 0)).get_fdata(),
                       nib.load(source / pd.read_csv(source / "exams.csv")["fat"].iloc[0]).get_fdata(), atol=0.5)


def test_cli_exit_codes_and_clear_errors(source, tmp_path, capsys):
    assert convert_main([f"spec={source / 'spec.yaml'}", f"out={tmp_path / 'ok'}"]) == 0
    assert str(tmp_path / "ok") in capsys.readouterr().out
    assert convert_main([f"spec={source / 'spec.yaml'}", f"out={tmp_path / 'ok'}"]) == 1  # not empty
    assert convert_main([f"out={tmp_path / 'z'}"]) == 2
    assert convert_main([f"spec={source / 'spec.yaml'}", f"out={tmp_path / 'y'}", "level=organ"]) == 1
    (source / "nolabel.yaml").write_text("exams: exams.csv\n")  # label maps without a label table
    assert convert_main([f"spec={source / 'nolabel.yaml'}", f"out={tmp_path / 'w'}"]) == 1
    assert "needs a label table" in capsys.readouterr().err
