"""``predict`` on DICOM as hospitals export it, end to end with a trained bundle.

A flat export of the myositis protocol (thigh and calf in one study, coronal
series, a repeated T1) in Japanese (``ISO 2022 IR 87``) with identifiers in
the headers and the folder name, an Enhanced MR exam, a NIfTI pair beside
them and unusable files: every exam becomes a case, the SEG is written in
every case, no identifier reaches an output but the SEG's patient module, a
SEG failure leaves an ``ok`` case with a warning, and a failed case leaves
only its report.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from nxp2seg.io import make_nifti, save_nifti
from nxp2seg.phantom.dicom_export import write_enhanced_series, write_series
from nxp2seg.phantom.dicom_vendor import pydicom_test_file

SECRETS = {"PatientID": "MRN-77123", "PatientComments": "SECRETCOMMENT", "PatientAge": "047Y",
           "PatientWeight": "81", "StudyDescription": "SECRETSTUDY", "InstitutionName": "SECRETHOSPITAL",
           "StationName": "SECRETSTATION", "DeviceSerialNumber": "SECRETSERIAL",
           "AccessionNumber": "ACC99887", "ReferringPhysicianName": "Referrer^Secret"}
FOLDER = "YAMADA_TAROU_MRN-77123"


def _predict(*args: str) -> int:
    from nxp2seg.predict import main

    return main(["progress=false", *args])


def _exam(station: str, z0: float, seed: int) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    from helpers_synthetic import grid_affine, render_case

    aff = grid_affine((40, 28, 6), (4.0, 4.0, 6.0), lps=True)
    aff[2, 3] += z0
    rng = np.random.default_rng(seed)
    _, t1, _ = render_case(aff, (40, 28, 6), station, rng)
    _, _, stir = render_case(aff, (40, 28, 6), station, rng)
    return (make_nifti((t1 * 700).astype(np.float32), aff), make_nifti((stir * 300).astype(np.float32), aff))


@pytest.fixture(scope="module")
def export(tmp_path_factory, trained_bundle) -> dict:
    tmp = tmp_path_factory.mktemp("pacs")
    flat = tmp / "in" / FOLDER  # PACS viewers name the export after the patient
    japanese = pydicom.dcmread(pydicom_test_file("chrH31.dcm"))
    extra = {"SpecificCharacterSet": japanese.SpecificCharacterSet, **SECRETS}
    study = "1.2.826.0.1.3680043.8.498.31337"
    kw = {"study_uid": study, "frame_of_reference_uid": study + ".1", "patient_name": japanese.PatientName,
          "patient_id": SECRETS["PatientID"], "body_part": "LEG", "extra": extra}
    t1_thigh, stir_thigh = _exam("thigh", 0.0, 1)
    t1_calf, stir_calf = _exam("calf", -400.0, 2)
    t1 = {"scanning_sequence": "SE", "repetition_time": 550.0, "echo_time": 12.0}
    stir = {"scanning_sequence": "IR", "inversion_time": 160.0, "repetition_time": 4500.0, "echo_time": 40.0}
    write_series(t1_thigh, flat, series_description="t1_tse_tra", series_number=3, uid_seed="t1t", **t1, **kw)
    write_series(stir_thigh, flat, series_description="t2_tirm_tra", series_number=4, uid_seed="st", **stir, **kw)
    write_series(t1_calf, flat, series_description="t1_tse_tra", series_number=5, uid_seed="t1c", **t1, **kw)
    write_series(stir_calf, flat, series_description="t2_tirm_tra", series_number=6, uid_seed="sc", **stir, **kw)
    write_series(t1_thigh, flat, series_description="t1_tse_tra", series_number=7, uid_seed="rep", **t1, **kw)
    coronal = make_nifti(np.asarray(t1_thigh.dataobj)[:, :6, :].transpose(0, 2, 1).copy(),
                         np.array([[-4.0, 0, 0, 80], [0, 0, 6.0, 60], [0, -4.0, 0, 10], [0, 0, 0, 1]]))
    write_series(coronal, flat, series_description="t2_tirm_cor", series_number=8, uid_seed="cor", **stir, **kw)
    (flat / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    # a second patient's Enhanced MR exam, and a NIfTI pair beside the DICOM
    e1, e2 = _exam("thigh", 0.0, 3)
    other = "1.2.826.0.1.3680043.8.498.4711"
    write_enhanced_series([e1], tmp / "in" / "other" / "t1.dcm", series_description="T1 TSE", series_number=2,
                          study_uid=other, frame_of_reference_uid=other + ".1", uid_seed="e1", body_part="THIGH")
    write_enhanced_series([e2], tmp / "in" / "other" / "stir.dcm", series_description="STIR", series_number=3,
                          study_uid=other, frame_of_reference_uid=other + ".1", uid_seed="e2",
                          inversion_time=170.0, repetition_time=5000.0, echo_time=40.0, body_part="THIGH")
    n1, n2 = _exam("calf", 0.0, 4)
    save_nifti(n1, tmp / "in" / "nifti" / "N01_calf_T1.nii.gz")
    save_nifti(n2, tmp / "in" / "nifti" / "N01_calf_STIR.nii.gz")
    out = tmp / "out"
    code = _predict(f"model={trained_bundle}", f"input={tmp / 'in'}", f"output={out}")
    cases = pd.read_csv(out / "cases.csv", keep_default_na=False)
    return {"tmp": tmp, "out": out, "code": code, "cases": cases, "bundle": trained_bundle}


def test_every_exam_of_a_mixed_export_is_a_case(export):
    cases = export["cases"].set_index("case_id")
    assert export["code"] == 1  # the folder with the broken file fails, alone
    ok = cases[cases["status"] == "ok"]
    assert sorted(ok["station"]) == ["calf", "calf", "thigh", "thigh"], cases[["status", "error"]]
    assert "N01_calf" in ok.index
    dicom = [c for c in ok.index if c.startswith("S")]
    assert len(dicom) == 3
    flat_thigh = next(c for c in dicom if c.endswith("_thigh") and cases.loc[c, "warnings"])
    assert cases.loc[flat_thigh, "warnings"] == "series_repeated"
    report = json.loads((export["out"] / flat_thigh / "report.json").read_text())
    assert report["inputs"]["t1"].startswith("SeriesNumber 7 't1_tse_tra', axial")
    reasons = [u["reason"] for u in report["inputs"]["unused"]]
    assert "an earlier repeat of SeriesNumber 7" in reasons and any("coronal" in r for r in reasons)
    for cid in dicom:
        assert (export["out"] / cid / "seg.dcm").is_file()
    failed = cases[cases["status"] == "failed"]
    assert len(failed) == 0 or all("broken.dcm" in e for e in failed["error"])
    # the broken file of the flat export went into its study's case (one study per folder here)
    assert any("files_unusable" in w for w in cases["warnings"]) or len(failed) == 1


def test_no_identifier_reaches_an_output_but_the_seg_patient_module(export):
    names = ["Yamada", "山田", "やまだ", FOLDER, str(export["tmp"])] + [
        v for k, v in SECRETS.items() if k != "PatientWeight"]  # a bare number: checked in the SEG only
    for path in export["out"].rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".dcm":
            seg = pydicom.dcmread(path)
            for keyword in ("PatientComments", "PatientAge", "PatientWeight", "StudyDescription",
                            "InstitutionName", "StationName", "OperatorsName"):
                assert keyword not in seg, (path, keyword)
            assert seg.get("DeviceSerialNumber") != SECRETS["DeviceSerialNumber"]
            assert "ContributingEquipmentSequence" not in seg or all(
                "SECRET" not in str(item) for item in seg.ContributingEquipmentSequence)
            assert seg.SpecificCharacterSet == "ISO_IR 192"
            continue
        text = path.read_bytes().decode("utf-8", "replace")
        for name in names:
            assert name not in text, (path, name)
        assert FOLDER not in str(path)


def test_seg_and_nifti_agree_and_name_the_bundle(export):
    import highdicom as hd

    cases = export["cases"].set_index("case_id")
    cid = next(c for c in cases.index if c.startswith("S") and c.endswith("_calf"))
    seg = hd.seg.segread(export["out"] / cid / "seg.dcm")
    nii = nib.load(export["out"] / cid / "seg.nii.gz")
    labels = np.asarray(nii.dataobj)
    bundle = json.loads((export["out"] / cid / "report.json").read_text())["model"]
    ident = seg.get_segment_description(1).algorithm_identification[0]
    assert ident.AlgorithmVersion == bundle["algorithm_version"] and bundle["bundle_hash"] in ident.AlgorithmVersion
    # every SEG frame at the world position of the seg.nii.gz slice holding that segment
    for item, frame in zip(seg.PerFrameFunctionalGroupsSequence, seg.pixel_array):
        z = float(item.PlanePositionSequence[0].ImagePositionPatient[2])
        k = int(np.rint((z - nii.affine[2, 3]) / nii.affine[2, 2]))
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        label = seg.get_segment_description(number).segment_label
        value = next(int(v) for n, v in json.loads(
            (export["bundle"] / "dataset.json").read_text())["labels"].items() if n == label)
        assert frame.sum() == int((labels[:, :, k] == value).sum())


def test_a_seg_failure_keeps_the_case_ok_and_a_failed_case_leaves_only_its_report(export, monkeypatch, tmp_path):
    from nxp2seg.inference import batch

    def boom(*args, **kwargs):
        raise RuntimeError("simulated SEG failure")

    monkeypatch.setattr(batch, "write_dicom_seg", boom)
    out = tmp_path / "out"
    assert _predict(f"model={export['bundle']}", f"input={export['tmp'] / 'in' / 'other'}", f"output={out}") == 0
    (row,) = pd.read_csv(out / "cases.csv", keep_default_na=False).to_dict("records")
    assert row["status"] == "ok" and row["warnings"] == "dicom_seg_failed"
    assert not (out / row["case_id"] / "seg.dcm").exists() and (out / row["case_id"] / "seg.nii.gz").exists()

    def broken_qc(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(batch, "write_qc", broken_qc)
    out2 = tmp_path / "out2"
    assert _predict(f"model={export['bundle']}", f"input={export['tmp'] / 'in' / 'other'}", f"output={out2}") == 1
    (row,) = pd.read_csv(out2 / "cases.csv", keep_default_na=False).to_dict("records")
    assert row["status"] == "failed" and "cannot write its results" in row["error"]
    assert sorted(p.name for p in (out2 / row["case_id"]).iterdir()) == ["report.json"]


def test_an_empty_segmentation_skips_the_seg_with_a_warning(export, monkeypatch, tmp_path):
    from nxp2seg.inference import batch
    from nxp2seg.inference.dicom_seg import EmptySegmentation

    def empty(*args, **kwargs):
        raise EmptySegmentation("no named label > 0 in the label map; nothing to write")

    monkeypatch.setattr(batch, "write_dicom_seg", empty)
    out = tmp_path / "out"
    assert _predict(f"model={export['bundle']}", f"input={export['tmp'] / 'in' / 'other'}", f"output={out}") == 0
    (row,) = pd.read_csv(out / "cases.csv", keep_default_na=False).to_dict("records")
    assert row["status"] == "ok" and row["warnings"] == "segmentation_empty"
    assert not (out / row["case_id"] / "seg.dcm").exists()
    assert Path(out / row["case_id"] / "seg.nii.gz").exists()
