"""DICOM I/O: round trips through write_series/find_series/read_series, checks, roles, SEG."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from nxp2seg.data.dicom_headers import DicomError, acquisition_of
from nxp2seg.data.dicom_roles import classify
from nxp2seg.inference.dicom_seg import EmptySegmentation, write_dicom_seg
from nxp2seg.data.dicom_series import (
    SeriesInfo,
    check_series,
    find_series,
    geometry,
    read_series,
)
from nxp2seg.io import make_nifti, save_nifti
from nxp2seg.phantom.dicom_export import write_series

SHAPE = (24, 20, 6)
STUDY = "1.2.826.0.1.3680043.8.498.1"
FOR = "1.2.826.0.1.3680043.8.498.2"


def _rot(axis: int, deg: float) -> np.ndarray:
    """A 3x3 rotation by ``deg`` degrees about RAS axis ``axis``."""
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(m: np.ndarray, origin=(12.0, -30.0, 45.0)) -> np.ndarray:
    a = np.eye(4)
    a[:3, :3] = m
    a[:3, 3] = origin
    return a


AFFINES = {
    "ras": _affine(np.diag([1.0, 1.0, 5.0])),
    "lps": _affine(np.diag([-0.8, -0.8, 5.0])),
    "oblique": _affine(_rot(2, 5.0) @ _rot(0, 3.0) @ np.diag([-1.0, -1.0, 4.0])),
    "anisotropic": _affine(np.diag([-0.9, -1.1, 6.0])),
}


def _image(affine: np.ndarray, shape=SHAPE, seed: int = 0) -> nib.Nifti1Image:
    data = np.random.default_rng(seed).normal(300.0, 80.0, shape).astype(np.float32)
    return make_nifti(data, affine)


def _write(img: nib.Nifti1Image, out: Path, desc: str = "AX T1 TSE", number: int = 1, **kw) -> list[Path]:
    kw.setdefault("uid_seed", f"test-{desc}-{number}")
    return write_series(img, out, series_description=desc, series_number=number, study_uid=STUDY,
                        frame_of_reference_uid=FOR, **kw)


def _one(folder: Path) -> SeriesInfo:
    series = find_series(folder)
    assert len(series) == 1
    return series[0]


def _header(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


# ---------------------------------------------------------------------------
# round trips and geometry
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_round_trip_same_array_and_affine(tmp_path, name):
    img = _image(AFFINES[name])
    files = _write(img, tmp_path / "s")
    info = _one(tmp_path)
    assert info.files == tuple(files) and info.n_slices == SHAPE[2]
    assert (info.columns, info.rows) == SHAPE[:2]
    check_series(info)
    back = read_series(info)
    data = np.asarray(img.dataobj)
    assert back.shape == SHAPE and back.get_data_dtype() == np.float32
    np.testing.assert_allclose(back.get_fdata(), data, atol=1e-3 * np.ptp(data))
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-4)
    assert back.header["sform_code"] == 1 and back.header["qform_code"] == 1


@pytest.mark.parametrize(
    "matrix",
    [
        _rot(2, 4.0) @ np.diag([-1.0, -1.0, -5.0]),  # L, P, I: slices go foot-wards
        np.diag([-0.9, 1.1, 6.0]),  # L, A, S: the DICOM slice normal points inferior
    ],
    ids=["inferior-slices", "LAS"],
)
def test_world_points_survive_any_handedness(tmp_path, matrix):
    img = _image(_affine(matrix), seed=3)
    _write(img, tmp_path / "s")
    back = read_series(_one(tmp_path))
    data, out = np.asarray(img.dataobj), back.get_fdata()
    np.testing.assert_allclose(out, data[:, :, ::-1], atol=1e-3 * np.ptp(data))  # files sorted on the normal
    for idx in [(0, 0, 0), (5, 7, 2), (23, 19, 5), (11, 3, 4)]:
        world = img.affine @ np.array([*idx, 1.0])
        idx2 = np.linalg.inv(back.affine) @ world
        np.testing.assert_allclose(idx2[:3], [idx[0], idx[1], SHAPE[2] - 1 - idx[2]], atol=1e-4)
        assert out[tuple(int(v) for v in np.round(idx2[:3]))] == pytest.approx(data[idx], abs=0.1)


def test_written_headers_are_dicom_lps(tmp_path):
    img = _image(AFFINES["ras"])
    files = _write(img, tmp_path, scanning_sequence="IR", inversion_time=160, repetition_time=4000)
    ds = pydicom.dcmread(files[2])
    assert ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [-1, 0, 0, 0, -1, 0])
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], [-12.0, 30.0, 55.0])
    assert [float(v) for v in ds.PixelSpacing] == [1.0, 1.0] and float(ds.SliceThickness) == 5.0
    assert ds.InstanceNumber == 3 and ds.pixel_array.dtype == np.uint16
    assert ds.pixel_array.shape == (SHAPE[1], SHAPE[0])  # (rows, columns)
    assert ds.ScanningSequence == "IR" and float(ds.InversionTime) == 160.0


def test_uids_are_deterministic_with_a_seed(tmp_path):
    img = _image(AFFINES["lps"])
    a = _write(img, tmp_path / "a", uid_seed="seed")
    b = _write(img, tmp_path / "b", uid_seed="seed")
    c = _write(img, tmp_path / "c", uid_seed="other")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    uids = {pydicom.dcmread(p).SOPInstanceUID for p in a}
    assert len(uids) == SHAPE[2]
    assert pydicom.dcmread(c[0]).SeriesInstanceUID != pydicom.dcmread(a[0]).SeriesInstanceUID


def test_integer_images_round_trip_exactly(tmp_path):
    data = np.random.default_rng(1).integers(0, 4000, SHAPE).astype(np.float32)
    _write(make_nifti(data, AFFINES["lps"]), tmp_path)
    np.testing.assert_array_equal(read_series(_one(tmp_path)).get_fdata(), data)


def test_geometry_has_no_uids_or_patient_attributes(tmp_path):
    _write(_image(AFFINES["anisotropic"]), tmp_path, patient_name="Doe^Jane", patient_id="12345")
    info = _one(tmp_path)
    g = geometry(info)
    assert g["n_slices"] == 6 and (g["columns"], g["rows"]) == SHAPE[:2]
    np.testing.assert_allclose(g["spacing"], [0.9, 1.1, 6.0], atol=1e-5)
    assert g["orientation"] == "".join(nib.aff2axcodes(read_series(info).affine))
    text = repr(g) + repr(info)
    assert "1.2.826" not in repr(g) and "Doe" not in text and "12345" not in text


# ---------------------------------------------------------------------------
# finding and classifying
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "role"),
    [
        ({"SeriesDescription": "AX STIR"}, "stir"),
        ({"SeriesDescription": "t2_tirm_tra_p2"}, "stir"),
        ({"ProtocolName": "T2_IR thigh"}, "stir"),
        ({"SeriesDescription": "AX T1 TSE"}, "t1"),
        ({"SeriesDescription": "cor_t1_tse"}, "t1"),
        ({"SeriesDescription": "T1W_SE"}, "t1"),
        ({"SeriesDescription": "Series 5", "ScanningSequence": ["SE", "IR"], "InversionTime": 160}, "stir"),
        ({"SeriesDescription": "Series 6", "ScanningSequence": "SE", "RepetitionTime": 550}, "t1"),
        ({"SeriesDescription": "T2 FS", "ScanningSequence": "SE", "RepetitionTime": 800}, None),
        ({"SeriesDescription": "FLAIR", "ScanningSequence": "IR", "InversionTime": 2200}, None),
        ({"SeriesDescription": "T2 SPAIR"}, None),
        ({"SeriesDescription": "T12 level"}, None),
        ({"SeriesDescription": "", "ScanningSequence": "GR", "RepetitionTime": 5}, None),
    ],
)
def test_classify_series(attrs, role):
    assert classify(acquisition_of(_header(**attrs)))[0] == role


def test_two_series_in_one_folder_found_and_classified(tmp_path):
    t1 = _write(_image(AFFINES["lps"]), tmp_path, "Series A", 2, repetition_time=550)
    stir = _write(_image(AFFINES["lps"], seed=1), tmp_path, "Series B", 3, scanning_sequence="IR",
                  inversion_time=170, repetition_time=4500, echo_time=40)
    series = find_series(tmp_path)
    assert [s.description for s in series] == ["Series A", "Series B"]
    assert [s.role for s in series] == ["t1", "stir"]
    assert series[0].files == tuple(t1) and series[1].files == tuple(stir)
    assert {s.study_uid for s in series} == {STUDY} and {s.folder for s in series} == {tmp_path}
    assert series[1].role_reason == "inversion recovery, TI 170 ms"


def test_non_dicom_files_are_ignored(tmp_path):
    files = _write(_image(AFFINES["ras"]), tmp_path / "exam" / "t1", body_part="thigh")
    (tmp_path / "exam" / "notes.txt").write_text("not DICOM")
    (tmp_path / "exam" / "empty").write_bytes(b"")
    (tmp_path / "exam" / ".partial.dcm").write_bytes(files[0].read_bytes()[:300])
    save_nifti(_image(AFFINES["ras"]), tmp_path / "exam" / "t1.nii.gz")
    dicomdir = Dataset()
    dicomdir.file_meta = FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dicomdir.DirectoryRecordSequence = []
    dicomdir.save_as(tmp_path / "exam" / "DICOMDIR", enforce_file_format=True)
    info = _one(tmp_path)
    assert info.files == tuple(files) and info.folder == tmp_path / "exam" / "t1"
    assert info.body_part == "THIGH" and info.modality == "MR"


def test_find_series_refuses_a_missing_folder(tmp_path):
    with pytest.raises(DicomError, match="not a folder"):
        find_series(tmp_path / "nope")


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------


def test_missing_slice_is_named(tmp_path):
    files = _write(_image(AFFINES["lps"]), tmp_path)
    files[3].unlink()
    info = _one(tmp_path)
    with pytest.raises(DicomError, match=r"1 slice\(s\) missing") as e:
        check_series(info)
    assert files[2].name in str(e.value) and files[4].name in str(e.value)
    assert str(tmp_path) in str(e.value) and "AX T1 TSE" in str(e.value)


def test_sagittal_series_is_refused(tmp_path):
    sag = _affine(np.column_stack([[0, 1.0, 0], [0, 0, -1.0], [5.0, 0, 0]]))
    _write(_image(sag), tmp_path, "SAG T1")
    with pytest.raises(DicomError, match="sagittal.*nxp2seg expects axial slices"):
        check_series(_one(tmp_path))


def test_duplicate_positions_are_refused(tmp_path):
    files = _write(_image(AFFINES["lps"]), tmp_path / "s")
    shutil.copy(files[2], tmp_path / "s" / "copy.dcm")
    with pytest.raises(DicomError, match="duplicate slice position"):
        check_series(_one(tmp_path))


def test_single_slice_is_refused(tmp_path):
    _write(_image(AFFINES["lps"], shape=(24, 20, 1)), tmp_path)
    with pytest.raises(DicomError, match="has 1 slice"):
        check_series(_one(tmp_path))


def test_one_series_of_two_orientations_is_two_stacks(tmp_path):
    # one series uid (same seed, number and description), two different stacks
    _write(_image(AFFINES["lps"]), tmp_path / "a", uid_seed="same")
    _write(_image(AFFINES["oblique"]), tmp_path / "b", uid_seed="same")
    stacks = find_series(tmp_path)
    assert len(stacks) == 2 and {s.n_slices for s in stacks} == {SHAPE[2]}
    assert {s.series_uid for s in stacks} == {stacks[0].series_uid}
    assert sorted(s.stack.split(",")[0] for s in stacks) == ["stack 1 of 2", "stack 2 of 2"]
    for s in stacks:
        check_series(s)
        which = "a" if s.folder.name == "a" else "b"
        np.testing.assert_allclose(read_series(s).affine, AFFINES["lps" if which == "a" else "oblique"],
                                   atol=1e-4)


def test_sheared_affine_cannot_be_written(tmp_path):
    sheared = _affine(np.array([[1.0, 0.3, 0], [0, 1.0, 0], [0, 0, 5.0]]))
    with pytest.raises(ValueError, match="sheared"):
        _write(_image(sheared), tmp_path)


# ---------------------------------------------------------------------------
# DICOM SEG
# ---------------------------------------------------------------------------


def test_dicom_seg_round_trip(tmp_path):
    import highdicom as hd

    _write(_image(AFFINES["oblique"]), tmp_path / "t1")
    info = _one(tmp_path / "t1")
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[2:10, 3:12, 1:5] = 1
    labels[14:20, 8:16, 2:6] = 15
    labels[0, 0, 0] = 7  # present but not named: not written
    names = {1: "thigh_anterior_right", 15: "bone", 9: "calf_lateral_left"}  # 9 absent: not written
    out = write_dicom_seg(labels, info, names, tmp_path / "out" / "seg.dcm", algorithm_version="1.2")
    assert out == tmp_path / "out" / "seg.dcm"

    seg = hd.seg.segread(out)
    assert seg.number_of_segments == 2
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == info.series_uid
    first, second = seg.get_segment_description(1), seg.get_segment_description(2)
    assert first.segment_label == "thigh_anterior_right" and second.segment_label == "bone"
    assert first.segmented_property_type.value == "127954009"  # skeletal muscle
    assert second.segmented_property_type.value == "272673000"  # bone
    assert first.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert first.algorithm_identification[0].AlgorithmName == "nxp2seg"

    k = 3
    sop = pydicom.dcmread(info.files[k], stop_before_pixels=True).SOPInstanceUID
    for number, value in ((1, 1), (2, 15)):
        pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[sop], segment_numbers=[number])
        np.testing.assert_array_equal(pixels[0, :, :, 0], (labels[:, :, k] == value).T)

    assert str(seg.PatientName) == "ANON" and seg.PatientID == "ANON"
    names_pn = {str(e.value) for e in seg.iterall() if e.VR == "PN" and e.value}
    assert names_pn <= {"ANON"}
    assert _one(tmp_path) == info  # the SEG next to the series is not taken for an image series


def test_dicom_seg_refuses_a_label_map_off_the_source_grid(tmp_path):
    _write(_image(AFFINES["lps"]), tmp_path)
    info = _one(tmp_path)
    with pytest.raises(DicomError, match="not the source grid"):
        write_dicom_seg(np.ones((20, 24, 6), np.uint8), info, {1: "bone"}, tmp_path / "seg.dcm")
    with pytest.raises(EmptySegmentation, match="no named label"):
        write_dicom_seg(np.zeros(SHAPE, np.uint8), info, {1: "bone"}, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
