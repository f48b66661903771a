"""Bad inputs, command by command: the matrix of issue 8 ("Hardening").

Every kind of bad input is built in a temporary folder and given to the command
that must refuse it. Each test checks:

(a) the documented exit code (or exception type);
(b) a message that names the case and/or the file and says what to do;
(c) for a prediction batch, that the good case of the batch still finishes
    (``status=ok`` in ``cases.csv``) and that the inputs are byte-identical;
(d) that nothing that existed before is overwritten (a sentinel file in the
    output folder, the input folders' SHA-256 digests).

The prediction kinds share one batch per input type (NIfTI folder, manifest,
DICOM folder) with one good exam each, so the model runs once per batch;
each kind still has its own test id. ``docs/reliability.md`` lists every kind
with its message and exit code.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers_cohort import edit_table, make_tiny_cohort, tiny_affine, tiny_label, write_image
from helpers_synthetic import grid_affine, render_case

from nxp2seg.data import default_compartment_schema
from nxp2seg.io import atomic_write_bytes, make_nifti, nifti_bytes, save_nifti

GRID = (40, 28, 6)
SPACING = (4.0, 4.0, 6.0)
SENTINEL = "keep-me.txt"


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path -> hex digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _run(main: Callable[[list[str]], int], *args: str) -> tuple[int, str, str]:
    """Run a command's ``main(argv)``; return its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def _predict(*args: str) -> tuple[int, str, str]:
    from nxp2seg.predict import main

    return _run(main, "progress=false", *args)


def _output_with_sentinel(out: Path) -> Path:
    """An output folder that already holds a file of the user's: it must survive every run."""
    out.mkdir(parents=True)
    (out / SENTINEL).write_text("written by the user before the run\n")
    return out


def _sentinel_intact(out: Path) -> bool:
    return (out / SENTINEL).read_text() == "written by the user before the run\n"


def _exam(affine: np.ndarray | None = None, station: str = "thigh", seed: int = 0,
          shape: tuple[int, int, int] = GRID) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """T1 and STIR of one synthetic exam on the grid ``(affine, shape)``."""
    aff = grid_affine(shape, SPACING) if affine is None else affine
    rng = np.random.default_rng(seed)
    _, t1, _ = render_case(aff, shape, station, rng)
    _, _, stir = render_case(aff, shape, station, rng)
    return (make_nifti((t1 * 700).astype(np.float32), aff),
            make_nifti((stir * 300).astype(np.float32), aff))


def _pair(folder: Path, name: str, station: str = "thigh", seed: int = 0) -> None:
    """``{name}_T1.nii.gz`` and ``{name}_STIR.nii.gz`` of one good exam."""
    t1, stir = _exam(station=station, seed=seed)
    save_nifti(t1, folder / f"{name}_T1.nii.gz")
    save_nifti(stir, folder / f"{name}_STIR.nii.gz")


def _t1(folder: Path, cid: str, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    save_nifti(make_nifti(data, grid_affine(GRID, SPACING) if affine is None else affine),
               folder / f"{cid}_T1.nii.gz")


def _stir(folder: Path, cid: str, data: np.ndarray | None = None, affine: np.ndarray | None = None) -> None:
    data = _exam(seed=9)[1].get_fdata(dtype=np.float32) if data is None else data
    save_nifti(make_nifti(data, grid_affine(GRID, SPACING) if affine is None else affine),
               folder / f"{cid}_STIR.nii.gz")


def _sagittal_affine() -> np.ndarray:
    """Array axis 2 (6 mm, the slice axis) along world x: sagittal slices."""
    a = np.eye(4)
    a[:3, :3] = np.array([[0.0, 0.0, 6.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    a[:3, 3] = [-15.0, -78.0, -54.0]
    return a


def _sagittal() -> nib.Nifti1Image:
    data = np.random.default_rng(11).normal(300.0, 50.0, GRID).astype(np.float32)
    return make_nifti(data, _sagittal_affine())


def _huge_header_file(path: Path, shape=(100_000, 100_000, 1000)) -> None:
    """A NIfTI-2 file whose header claims ``shape`` (10^13 voxels) but whose body is 16 bytes."""
    hdr = nib.Nifti2Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape(shape)
    aff = grid_affine(GRID, SPACING)
    hdr.set_qform(aff, code=1)
    hdr.set_sform(aff, code=1)
    hdr.set_data_offset(hdr.single_vox_offset)
    atomic_write_bytes(path, gzip.compress(hdr.binaryblock + b"\x00" * 4 + b"\x00" * 16, mtime=0))


# ---------------------------------------------------------------------------
# predict: a NIfTI folder with one good exam and one bad exam of each kind
# ---------------------------------------------------------------------------


def _missing_stir(src: Path, cid: str) -> None:
    _t1(src, cid, _exam()[0].get_fdata(dtype=np.float32))


def _apart(src: Path, cid: str) -> None:
    t1, stir = _exam(seed=6)
    save_nifti(t1, src / f"{cid}_T1.nii.gz")
    far = stir.affine.copy()
    far[:3, 3] += [0.0, 0.0, 500.0]  # the STIR 50 cm above the T1: another station or exam
    _stir(src, cid, stir.get_fdata(dtype=np.float32), far)


def _with_t1(data: Callable[[], np.ndarray], affine: Callable[[], np.ndarray] | None = None):
    def build(src: Path, cid: str) -> None:
        _t1(src, cid, data(), None if affine is None else affine())
        _stir(src, cid)

    return build


def _raw_t1(raw: Callable[[], bytes]):
    def build(src: Path, cid: str) -> None:
        _stir(src, cid)
        (src / f"{cid}_T1.nii.gz").write_bytes(raw())

    return build


def _truncated() -> bytes:
    data = nifti_bytes(_exam(seed=4)[0])
    return data[: len(data) // 2]  # the header reads, the voxels do not


def _huge(src: Path, cid: str) -> None:
    _stir(src, cid)
    _huge_header_file(src / f"{cid}_T1.nii.gz")


def _ambiguous(src: Path, cid: str) -> None:
    t1, stir = _exam(seed=2)
    save_nifti(t1, src / f"{cid}_T1.nii.gz")
    save_nifti(t1, src / f"{cid}-t1w.nii.gz")  # the same case id twice as T1
    save_nifti(stir, src / f"{cid}_STIR.nii.gz")


def _unnamed(src: Path, cid: str) -> None:
    save_nifti(_exam(seed=3)[0], src / f"{cid}.nii.gz")


def _nan() -> np.ndarray:
    a = _exam()[0].get_fdata(dtype=np.float32)
    a[3, 4, 2] = np.nan
    return a


def _inf_stir(src: Path, cid: str) -> None:
    _t1(src, cid, _exam()[0].get_fdata(dtype=np.float32))
    a = _exam(seed=9)[1].get_fdata(dtype=np.float32)
    a[5, 5, 1] = np.inf
    _stir(src, cid, a)


def _complex() -> np.ndarray:
    return _exam()[0].get_fdata(dtype=np.float32).astype(np.complex64)


def _bool_t1(src: Path, cid: str) -> None:
    """NIfTI has a 1-bit 'binary' data type (code 1) that no MR magnitude image uses."""
    _stir(src, cid)
    img = make_nifti(np.ones(GRID, np.uint8), grid_affine(GRID, SPACING))
    raw = bytearray(img.to_bytes())
    raw[70:72] = np.int16(1).tobytes()  # datatype = DT_BINARY
    raw[72:74] = np.int16(1).tobytes()  # bitpix = 1
    atomic_write_bytes(src / f"{cid}_T1.nii.gz", gzip.compress(bytes(raw), mtime=0))


# fmt: off
NIFTI_KINDS = [  # id (= case id), builder, substrings of the case's error
    ("missing_stir", _missing_stir,
     ["no STIR file found", "missing_stir_T1.nii.gz", "name the pair {case}_T1.nii.gz and {case}_STIR.nii.gz"]),
    ("t1_stir_apart", _apart,
     ["t1_stir_apart:", "t1_stir_apart_STIR.nii.gz", "overlap in only 0%", "check the pairing and the affines"]),
    ("image_4d", _with_t1(lambda: np.ones((*GRID, 3), np.float32)),
     ["image_4d:", "image_4d_T1.nii.gz", "shape (40, 28, 6, 3)", "one 3D volume", "split 4D series"]),
    ("image_2d", _with_t1(lambda: np.ones(GRID[:2], np.float32)),
     ["image_2d:", "image_2d_T1.nii.gz", "shape (40, 28)", "one 3D volume", "stack 2D slices"]),
    ("all_zero", _with_t1(lambda: np.zeros(GRID, np.float32)),
     ["all_zero:", "all_zero_T1.nii.gz", "is constant (0 everywhere)", "it holds no image"]),
    ("nan_voxels", _with_t1(_nan), ["nan_voxels:", "nan_voxels_T1.nii.gz", "1 NaN/infinite voxels", "fix the export"]),
    ("inf_voxels", _inf_stir, ["inf_voxels:", "STIR", "inf_voxels_STIR.nii.gz", "NaN/infinite voxels"]),
    ("not_an_image", _raw_t1(lambda: b"this is a text file, not an image\n" * 20),
     ["not_an_image:", "not_an_image_T1.nii.gz", "cannot read T1", "as NIfTI", "re-export it as .nii.gz"]),
    ("truncated_gzip", _raw_t1(_truncated),
     ["truncated_gzip:", "truncated_gzip_T1.nii.gz", "the file is damaged: copy or export it again"]),
    ("complex_dtype", _with_t1(_complex),
     ["complex_dtype:", "complex_dtype_T1.nii.gz", "data type complex64", "an MR magnitude image is integer or real"]),
    ("bool_dtype", _bool_t1, ["bool_dtype:", "bool_dtype_T1.nii.gz", "cannot read T1", "re-export it"]),
    ("absurd_dimensions", _huge,
     ["absurd_dimensions:", "absurd_dimensions_T1.nii.gz", "10,000,000,000,000 voxels", "more than nxp2seg accepts",
      "check the header or crop it"]),
    ("not_axial", _with_t1(lambda: _sagittal().get_fdata(dtype=np.float32), _sagittal_affine),
     ["not_axial:", "not_axial_T1.nii.gz", "is not an axial acquisition", "sagittal slices", "export the axial series"]),
    ("duplicate_case_id", _ambiguous,
     ["ambiguous pairing: 2 T1 files", "duplicate_case_id_T1.nii.gz", "duplicate_case_id-t1w.nii.gz",
      "keep one T1 and one STIR per case"]),
    ("unpaired_name", _unnamed,
     ["unpaired_name.nii.gz", "cannot tell whether this is T1 or STIR", "list it in a manifest"]),
]
# fmt: on


@pytest.fixture(scope="module")
def nifti_batch(tmp_path_factory, trained_bundle) -> dict:
    """One prediction run over a NIfTI folder: a good exam and every bad kind of NIFTI_KINDS."""
    tmp = tmp_path_factory.mktemp("nifti_batch")
    src = tmp / "in"
    src.mkdir()
    _pair(src, "good_thigh", seed=1)
    for cid, build, _ in NIFTI_KINDS:
        build(src, cid)
    out = _output_with_sentinel(tmp / "out")
    before = _digest(src)
    code, stdout, stderr = _predict(f"model={trained_bundle}", f"input={src}", f"output={out}")
    return {"src": src, "out": out, "before": before, "after": _digest(src), "code": code,
            "stdout": stdout, "stderr": stderr,
            "cases": pd.read_csv(out / "cases.csv", keep_default_na=False).set_index("case_id")}


@pytest.mark.parametrize("cid, needles", [pytest.param(k[0], k[2], id=k[0]) for k in NIFTI_KINDS])
def test_predict_nifti_bad_case_fails_alone(nifti_batch, cid, needles):
    b = nifti_batch
    assert b["code"] == 1, b["stderr"][-3000:]
    row = b["cases"].loc[cid]
    assert row["status"] == "failed"
    for needle in needles:
        assert needle in row["error"], (needle, row["error"])
    assert f"FAILED {cid}: " in b["stderr"]
    # the good exam of the batch is complete, the inputs untouched, nothing of the user's overwritten
    assert b["cases"].loc["good_thigh", "status"] == "ok"
    assert (b["out"] / "good_thigh" / "seg.nii.gz").is_file()
    assert b["after"] == b["before"]
    assert _sentinel_intact(b["out"]) and not list(b["out"].rglob("*.part"))
    assert not (b["out"] / cid / "seg.nii.gz").exists()


def test_predict_nifti_batch_summary(nifti_batch):
    b = nifti_batch
    n = len(NIFTI_KINDS) + 1
    assert f"{n} cases: 1 ok, 0 skipped (finished before), {n - 1} failed" in b["stdout"]
    assert set(b["cases"].index) == {"good_thigh", *(k[0] for k in NIFTI_KINDS)}


def test_absurd_dimensions_are_refused_from_the_header(tmp_path, monkeypatch):
    """The header's shape is refused before a single voxel is read (reading would fail otherwise)."""
    from nxp2seg.inference.inputs import CaseInput
    from nxp2seg.inference.predictor import MAX_VOXELS, CaseError, load_case_images

    _huge(tmp_path, "huge_thigh")

    def no_reading(*args, **kwargs):
        raise AssertionError("voxel data was read")

    for name in ("__array__", "__getitem__", "get_unscaled", "get_scaled"):
        if hasattr(nib.arrayproxy.ArrayProxy, name):
            monkeypatch.setattr(nib.arrayproxy.ArrayProxy, name, no_reading)
    case = CaseInput(case_id="huge_thigh", subject_id="huge", station="thigh", source="nifti",
                     t1=tmp_path / "huge_thigh_T1.nii.gz", stir=tmp_path / "huge_thigh_STIR.nii.gz")
    with pytest.raises(CaseError, match="more than nxp2seg accepts") as e:
        load_case_images(case, tmp_path)
    assert f"{MAX_VOXELS:,}" in str(e.value) and "(100000, 100000, 1000)" in str(e.value)
    assert (tmp_path / "huge_thigh_T1.nii.gz").stat().st_size < 1000  # the file really is tiny


# ---------------------------------------------------------------------------
# predict: a manifest with duplicate and unsafe case ids, and a thigh exam declared calf
# ---------------------------------------------------------------------------

MANIFEST_KINDS = [  # id, case id, substrings of the error (every row of that id)
    ("duplicate_case_id", "dup", ["case id 'dup' appears more than once in", "m.csv",
                                  "case ids must be unique"]),
    ("case_id_with_separator", "a/b", ["case id 'a/b' is not a safe folder name",
                                       "no path separators or '..'", "rename it"]),
    ("case_id_with_dotdot", "../evil", ["case id '../evil' is not a safe folder name", "rename it"]),
    ("file_not_found", "gone", ["m.csv: file or folder not found: t1=", "nope_T1.nii.gz"]),
    ("unknown_station", "knee_case", ["station 'knee' in", "m.csv", "use thigh or calf"]),
]


@pytest.fixture(scope="module")
def manifest_batch(tmp_path_factory, trained_bundle) -> dict:
    tmp = tmp_path_factory.mktemp("manifest_batch")
    src = tmp / "in"
    src.mkdir()
    _pair(src, "good", seed=1)
    _pair(src, "exam7", seed=7)  # a thigh exam
    good = {"t1": "good_T1.nii.gz", "stir": "good_STIR.nii.gz"}
    rows = [
        {"case_id": "good_thigh", **good, "station": "thigh"},
        {"case_id": "dup", **good, "station": "thigh"},
        {"case_id": "dup", **good, "station": "thigh"},
        {"case_id": "a/b", **good, "station": "thigh"},
        {"case_id": "../evil", **good, "station": "thigh"},
        {"case_id": "gone", "t1": "nope_T1.nii.gz", "stir": "good_STIR.nii.gz", "station": "thigh"},
        {"case_id": "knee_case", **good, "station": "knee"},
        {"case_id": "declared_calf", "t1": "exam7_T1.nii.gz", "stir": "exam7_STIR.nii.gz", "station": "calf"},
    ]
    pd.DataFrame(rows).to_csv(src / "m.csv", index=False)
    out = _output_with_sentinel(tmp / "out")
    before = _digest(src)
    code, stdout, stderr = _predict(f"model={trained_bundle}", f"manifest={src / 'm.csv'}", f"output={out}")
    return {"src": src, "out": out, "before": before, "after": _digest(src), "code": code,
            "stdout": stdout, "stderr": stderr, "tmp": tmp,
            "cases": pd.read_csv(out / "cases.csv", keep_default_na=False)}


@pytest.mark.parametrize("cid, needles", [pytest.param(k[1], k[2], id=k[0]) for k in MANIFEST_KINDS])
def test_predict_manifest_bad_case_fails_alone(manifest_batch, cid, needles):
    b = manifest_batch
    assert b["code"] == 1, b["stderr"][-3000:]
    rows = b["cases"][b["cases"]["case_id"] == cid]
    assert len(rows) >= 1 and (rows["status"] == "failed").all()
    for error in rows["error"]:
        for needle in needles:
            assert needle in error, (needle, error)
    cases = b["cases"].set_index("case_id")
    assert cases.loc["good_thigh", "status"] == "ok"
    assert b["after"] == b["before"] and _sentinel_intact(b["out"])
    # an unsafe case id never becomes a path: nothing written outside the output folder
    assert not (b["tmp"] / "evil").exists() and not (b["out"] / "a").exists()
    assert sorted(p.name for p in b["tmp"].iterdir()) == ["in", "out"]


def test_predict_thigh_exam_declared_calf_is_graded_with_a_warning(manifest_batch):
    """The station is the user's to give, but a clearly contradicting network is reported, not hidden."""
    b = manifest_batch
    row = b["cases"].set_index("case_id").loc["declared_calf"]
    assert row["status"] == "ok" and row["station"] == "calf" and row["station_source"] == "given"
    report = json.loads((b["out"] / "declared_calf" / "report.json").read_text())
    warning = report["station_warning"]
    assert warning and "declared_calf: the station is given as calf" in warning
    assert "more confident that this is a thigh exam" in warning and "check the station" in warning
    assert warning in report["notes"]
    assert report["warnings"] == ["station_questioned"] and row["warnings"] == "station_questioned"
    assert report["warning_messages"]["station_questioned"] == warning
    good = json.loads((b["out"] / "good_thigh" / "report.json").read_text())
    assert good["station_warning"] is None  # a correct station raises nothing
    assert good["warnings"] == [] and str(b["cases"].set_index("case_id").loc["good_thigh", "warnings"]) in ("", "nan")


# ---------------------------------------------------------------------------
# predict: DICOM folders (mixed series, missing slice, sagittal)
# ---------------------------------------------------------------------------


def _series(img: nib.Nifti1Image, folder: Path, exam: str, role: str, number: int,
            description: str | None = None) -> list[Path]:
    from nxp2seg.phantom.dicom_export import write_series

    study = "1.2.826.0.1.3680043.8.498." + str(int(hashlib.sha256(exam.encode()).hexdigest()[:10], 16))
    seq = {"t1": {"scanning_sequence": "SE", "inversion_time": None, "repetition_time": 600.0},
           "stir": {"scanning_sequence": "IR", "inversion_time": 160.0, "repetition_time": 4000.0}}[role]
    return write_series(img, folder, series_description=description or {"t1": "T1 TSE AX", "stir": "STIR AX"}[role],
                        series_number=number, study_uid=study, frame_of_reference_uid=study + ".1",
                        body_part="THIGH", uid_seed=f"{exam}-{role}-{number}", **seq)


def _dicom_case_id(exam: str) -> str:
    """The case id of ``_series``' study for ``exam``: S + digest of its StudyInstanceUID + station."""
    from nxp2seg.inference.dicom_select import study_key

    study = "1.2.826.0.1.3680043.8.498." + str(int(hashlib.sha256(exam.encode()).hexdigest()[:10], 16))
    return f"S{study_key(study)}_thigh"


DICOM_KINDS = [  # exam folder, status, substrings of the error (or of the warning)
    ("mixed_series", "ok", [("2 T1 series for one station (SeriesNumber 1 'T1 TSE AX', SeriesNumber 3 "
                             "'T1 TSE AX REPEAT'); used the latest complete one, SeriesNumber 3")]),
    ("missing_slice", "failed", ["T1 series: t1: series 1 'T1 TSE AX': 1 slice(s) missing",
                                 "between 0001_0003.dcm", "and 0001_0005.dcm", "re-export the complete series"]),
    ("sagittal", "failed", ["no T1 series for the thigh station of this study among [",
                            ("SeriesNumber 1 'T1 TSE SAG', sagittal, no TI, 6 slices, folder t1: T1, not used: "
                             "sagittal slices (nxp2seg reads axial T1 and STIR)"), "choose the series in a manifest (case_id,t1,stir,t1_series,stir_series"]),
]


@pytest.fixture(scope="module")
def dicom_batch(tmp_path_factory, trained_bundle) -> dict:
    tmp = tmp_path_factory.mktemp("dicom_batch")
    src = tmp / "dicom"
    t1, stir = _exam(seed=1)
    _series(t1, src / "good" / "t1", "good", "t1", 1)
    _series(stir, src / "good" / "stir", "good", "stir", 2)
    # two T1 candidates in one study: nxp2seg must not guess
    _series(t1, src / "mixed_series" / "t1", "mixed_series", "t1", 1)
    _series(t1, src / "mixed_series" / "t1b", "mixed_series", "t1", 3, "T1 TSE AX REPEAT")
    _series(stir, src / "mixed_series" / "stir", "mixed_series", "stir", 2)
    # a slice deleted in the middle of the T1 series
    files = _series(t1, src / "missing_slice" / "t1", "missing_slice", "t1", 1)
    _series(stir, src / "missing_slice" / "stir", "missing_slice", "stir", 2)
    files[3].unlink()
    # a sagittal T1
    _series(_sagittal(), src / "sagittal" / "t1", "sagittal", "t1", 1, "T1 TSE SAG")
    _series(stir, src / "sagittal" / "stir", "sagittal", "stir", 2)
    out = _output_with_sentinel(tmp / "out")
    before = _digest(src)
    code, stdout, stderr = _predict(f"model={trained_bundle}", f"input={src}", f"output={out}", "qc=false")
    return {"src": src, "out": out, "before": before, "after": _digest(src), "code": code,
            "stdout": stdout, "stderr": stderr,
            "cases": pd.read_csv(out / "cases.csv", keep_default_na=False).set_index("case_id")}


@pytest.mark.parametrize("exam, status, needles", [pytest.param(*k, id=k[0]) for k in DICOM_KINDS])
def test_predict_dicom_bad_study_fails_alone(dicom_batch, exam, status, needles):
    b = dicom_batch
    assert b["code"] == 1, b["stderr"][-3000:]
    row = b["cases"].loc[_dicom_case_id(exam)]
    assert row["status"] == status
    text = row["error"] if status == "failed" else json.dumps(
        json.loads((b["out"] / row.name / "report.json").read_text())["warning_messages"])
    for needle in needles:
        assert needle in text, (needle, text)
    assert str(b["src"]) not in text and f"{exam}/" not in text  # no folder above the exam in an output
    good = _dicom_case_id("good")
    assert b["cases"].loc[good, "status"] == "ok" and (b["out"] / good / "seg.dcm").is_file()
    assert b["after"] == b["before"] and _sentinel_intact(b["out"])


def test_predict_dicom_repeat_is_resolved_with_a_warning(dicom_batch):
    row = dicom_batch["cases"].loc[_dicom_case_id("mixed_series")]
    assert row["status"] == "ok" and row["warnings"] == "series_repeated"
    report = json.loads((dicom_batch["out"] / row.name / "report.json").read_text())
    assert report["inputs"]["t1"].startswith("SeriesNumber 3 'T1 TSE AX REPEAT', axial")
    unused = report["inputs"]["unused"]
    assert [u["reason"] for u in unused] == ["an earlier repeat of SeriesNumber 3"]


# ---------------------------------------------------------------------------
# predict: output folders (read-only, full disk) and the batch as a whole
# ---------------------------------------------------------------------------


@pytest.fixture
def two_exams(tmp_path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    _pair(src, "a_thigh", seed=1)
    _pair(src, "b_thigh", seed=2)
    return src


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="runs as root: chmod 0o500 does not stop root from writing "
                           "(test_unwritable_output_probe_exits_2 covers the same path)")
def test_read_only_output_folder_exits_2(trained_bundle, two_exams, tmp_path):
    out = _output_with_sentinel(tmp_path / "out")
    out.chmod(0o500)
    try:
        code, _, err = _predict(f"model={trained_bundle}", f"input={two_exams}", f"output={out}")
    finally:
        out.chmod(0o700)
    assert code == 2
    assert f"output {out} is not writable" in err and "choose a folder you can write to" in err
    assert sorted(p.name for p in out.iterdir()) == [SENTINEL] and _sentinel_intact(out)


@pytest.mark.parametrize("err_no, reason", [(errno.EACCES, "Permission denied"),
                                             (errno.EROFS, "Read-only file system"),
                                             (errno.ENOSPC, "No space left on device")],
                         ids=["permission_denied", "read_only_fs", "full_at_start"])
def test_unwritable_output_probe_exits_2(trained_bundle, two_exams, tmp_path, monkeypatch, err_no, reason):
    """The output folder's write probe fails (as for a read-only folder, or a full disk): nothing runs."""
    out = _output_with_sentinel(tmp_path / "out")
    real = Path.write_bytes

    def probe_fails(self, data):
        if self.name.startswith(".nxp2seg-write-test"):
            raise PermissionError(err_no, reason) if err_no == errno.EACCES else OSError(err_no, reason)
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", probe_fails)
    before = _digest(two_exams)
    code, _, err = _predict(f"model={trained_bundle}", f"input={two_exams}", f"output={out}")
    assert code == 2
    assert f"nxp2seg.predict: output {out} is not writable ({reason}); choose a folder you can write to, " \
           "or free space" in err
    assert sorted(p.name for p in out.iterdir()) == [SENTINEL] and _digest(two_exams) == before


def test_full_disk_during_a_case_fails_that_case_only(trained_bundle, two_exams, tmp_path, monkeypatch):
    """ENOSPC while a case's segmentation is written: that case fails with a message about space,
    the temporary file is removed, and the batch goes on."""
    from nxp2seg import io as nx_io
    from nxp2seg.inference import writers

    out = _output_with_sentinel(tmp_path / "out")
    real = nx_io.atomic_write_bytes

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def disk_full_for_a(path, data):
        if Path(path).parent.name == "a_thigh":
            with monkeypatch.context() as m:
                m.setattr(os, "fsync", no_space)  # the bytes went to the .part file; the disk is full
                return real(path, data)
        return real(path, data)

    monkeypatch.setattr(writers, "atomic_write_bytes", disk_full_for_a)
    before = _digest(two_exams)
    code, _, err = _predict(f"model={trained_bundle}", f"input={two_exams}", f"output={out}")
    assert code == 1
    cases = pd.read_csv(out / "cases.csv", keep_default_na=False).set_index("case_id")
    assert cases.loc["b_thigh", "status"] == "ok" and cases.loc["a_thigh", "status"] == "failed"
    msg = cases.loc["a_thigh", "error"]
    assert msg.startswith(f"a_thigh: cannot write its results to {out / 'a_thigh'} (No space left on device)")
    assert "free space on the output disk" in msg and "rerun" in msg and "unexpected" not in msg
    assert f"FAILED a_thigh: {msg}" in err
    assert not list(out.rglob("*.part")) and not (out / "a_thigh" / "seg.nii.gz").exists()
    assert _sentinel_intact(out) and _digest(two_exams) == before


@pytest.mark.parametrize("args, needles", [
    pytest.param(lambda t: [f"input={t / 'empty'}"], ["no cases found", "see `python -m nxp2seg.predict --help`"],
                 id="empty_input_folder"),
    pytest.param(lambda t: [f"input={t / 'nowhere'}"], ["input", "nowhere: no such file or folder"],
                 id="input_missing"),
    pytest.param(lambda t: [f"manifest={t / 'nowhere.csv'}"], ["manifest", "nowhere.csv: no such file"],
                 id="manifest_missing"),
    pytest.param(lambda t: [f"input={t / 'in'}", "colour=blue"],
                 ["Key 'colour' is not in struct", "known options: model, input"],
                 id="unknown_option"),
    pytest.param(lambda t: [f"input={t / 'in'}", "device=cuda:7"] if not _has_cuda() else None,
                 ["device=cuda:7 but CUDA is not available here; use device=cpu"], id="cuda_without_gpu"),
    pytest.param(lambda t: [f"input={t / 'in'}", f"output={t / 'in' / 'out'}"],
                 ["inside the input folder", "choose an output folder elsewhere"], id="output_inside_input"),
])
def test_predict_unusable_run_exits_2(trained_bundle, tmp_path, args, needles):
    (tmp_path / "empty").mkdir()
    (tmp_path / "in").mkdir()
    _pair(tmp_path / "in", "a_thigh", seed=1)
    argv = args(tmp_path)
    if argv is None:
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    if not any(a.startswith("output=") for a in argv):
        argv.append(f"output={out}")
    before = _digest(tmp_path / "in")
    code, _, err = _predict(f"model={trained_bundle}", *argv)
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("nxp2seg.predict: ")]  # one line
    for needle in needles:
        assert needle in line, (needle, err)
    assert not out.exists() or not any(out.iterdir())  # nothing written (the device is checked last)
    assert _digest(tmp_path / "in") == before and not (tmp_path / "in" / "out").exists()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------
# bundles: tampered, incomplete or too new
# ---------------------------------------------------------------------------


def _edit_manifest(**changes):
    def edit(b: Path) -> None:
        m = json.loads((b / "bundle.json").read_text())
        (b / "bundle.json").write_text(json.dumps({**m, **changes}))

    return edit


def _flip_weight_byte(b: Path) -> None:
    raw = bytearray((b / "weights.safetensors").read_bytes())
    raw[-1] ^= 0x01
    (b / "weights.safetensors").write_bytes(bytes(raw))


BUNDLE_KINDS = [  # id, mutation of a copy of the trained bundle, substrings of the message
    ("weights_fail_hash", _flip_weight_byte,
     ["weights.safetensors: sha256 differs from bundle.json", "Refusing to use it", "copy the bundle again"]),
    ("newer_package_version", _edit_manifest(package_version="99.0.0"),
     ["written by nxp2seg 99.0.0, newer than the installed", "install nxp2seg>=99.0 to use it"]),
    ("unknown_format_version", _edit_manifest(format_version=99),
     ["bundle format version 99", "reads versions 1..1; upgrade nxp2seg"]),
    ("file_missing", lambda b: (b / "preprocessing.json").unlink(),
     ["preprocessing.json: missing; the bundle is incomplete, copy the whole folder"]),
    ("not_a_bundle", lambda b: (b / "bundle.json").unlink(),
     ["is not a model bundle (no bundle.json); give the bundle folder that training printed"]),
    ("manifest_unreadable", lambda b: (b / "bundle.json").write_text("{oops"),
     ["bundle.json: unreadable", "the bundle is damaged, export it again"]),
]


@pytest.mark.parametrize("mutate, needles", [pytest.param(*k[1:], id=k[0]) for k in BUNDLE_KINDS])
def test_bad_bundle_is_refused(trained_bundle, tmp_path, mutate, needles):
    from nxp2seg.models.bundle import BundleError, load_bundle

    bundle = Path(shutil.copytree(trained_bundle, tmp_path / "bundle"))
    mutate(bundle)
    before = _digest(bundle)
    with pytest.raises(BundleError) as e:
        load_bundle(bundle)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    src = tmp_path / "in"
    _pair(src, "a_thigh", seed=1)
    code, _, err = _predict(f"model={bundle}", f"input={src}", f"output={tmp_path / 'out'}")
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("nxp2seg.predict: ")]
    for needle in needles:
        assert needle in line
    assert _digest(bundle) == before and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# verify: a tiny valid cohort broken one way at a time
# ---------------------------------------------------------------------------

T = "S01_thigh"
IMG_T1, IMG_STIR, LAB = f"imagesTr/{T}_0000.nii.gz", f"imagesTr/{T}_0001.nii.gz", f"labelsTr/{T}.nii.gz"
TINY = (12, 10, 4)
STIR_TINY = (6, 5, 4)


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory) -> Path:
    return make_tiny_cohort(tmp_path_factory.mktemp("tiny") / "cohort")


@pytest.fixture
def tiny(tiny_template, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_template, tmp_path / "cohort"))


def _v_rm(rel):
    return lambda root: (root / rel).unlink()


def _v_image(rel, data, affine=None):
    return lambda root: write_image(root, rel, data, affine)


def _v_bytes(rel, fn):
    return lambda root: (root / rel).write_bytes(fn((root / rel).read_bytes()))


def _v_set(name, row, col, value):
    def fn(df):
        df.loc[row, col] = value
        return df

    return lambda root: edit_table(root, name, fn)


def _v_add_case(case_id):
    def fn(df):
        return pd.concat([df, pd.DataFrame([{"case_id": case_id, "subject_id": "S09", "station": "thigh",
                                             "split": "train"}])], ignore_index=True)

    return lambda root: edit_table(root, "cases.csv", fn)


def _v_label_value(value):
    def f(root):
        lab = tiny_label("thigh", default_compartment_schema())
        lab[0, 0, 0] = value
        write_image(root, LAB, lab)

    return f


def _nan_tiny():
    a = np.ones(TINY, np.float32)
    a[1, 2, 3] = np.nan
    return a


# fmt: off
VERIFY_KINDS = [  # id, mutation, code, case_id, file, exit code of the CLI, substrings of message + fix
    ("missing_stir", _v_rm(IMG_STIR), "image_missing", T, IMG_STIR, 1, ["STIR image missing", f"add {IMG_STIR}"]),
    ("t1_stir_apart", _v_image(IMG_STIR, np.ones(STIR_TINY, np.float32), tiny_affine(origin=(1000.0, 0, 0))),
     "stir_no_overlap", T, IMG_STIR, 1, ["STIR and T1 do not overlap in space", "pair the case's own STIR"]),
    ("image_4d", _v_image(IMG_T1, np.ones((*TINY, 2), np.float32)), "image_dims", T, IMG_T1, 1,
     ["T1 has 4 dimensions (12, 10, 4, 2); a 3D volume is needed", "save one 3D volume per file"]),
    ("image_2d", _v_image(IMG_T1, np.ones(TINY[:2], np.float32)), "image_dims", T, IMG_T1, 1,
     ["T1 has 2 dimensions (12, 10)", "save one 3D volume per file"]),
    ("all_zero", _v_image(IMG_T1, np.zeros(TINY, np.float32)), "image_constant", T, IMG_T1, 0,
     ["T1 is constant (0.0)", "the image holds no signal"]),
    ("nan_voxels", _v_image(IMG_T1, _nan_tiny()), "image_nonfinite", T, IMG_T1, 1,
     ["T1 has 1 NaN/inf voxels", "re-export the image"]),
    ("inf_voxels", _v_image(IMG_STIR, np.full(STIR_TINY, np.inf, np.float32), tiny_affine(spacing=(4.0, 4.0, 5.0))),
     "image_nonfinite", T, IMG_STIR, 1, ["STIR has 120 NaN/inf voxels"]),
    ("not_an_image", _v_bytes(IMG_T1, lambda raw: b"not an image"), "image_unreadable", T, IMG_T1, 1,
     ["T1 cannot be read as NIfTI", "export the file again as NIfTI"]),
    ("truncated_gzip", _v_bytes(IMG_STIR, lambda raw: raw[: len(raw) // 2]), "image_unreadable", T, IMG_STIR, 1,
     ["STIR", "corrupt, truncated or not a NIfTI"]),
    ("complex_dtype", _v_image(IMG_T1, np.ones(TINY, np.complex64)), "image_unreadable", T, IMG_T1, 1,
     ["T1 data type complex64 is not real numbers"]),
    ("label_values_outside_schema", _v_label_value(99), "label_values_unknown", T, LAB, 1,
     ["label values 99 are not in the label schema", "declare the values in dataset.json 'labels'"]),
    ("edema_grade_outside_scale", _v_set("grades.csv", 0, "edema_grade", "6"), "grade_out_of_scale", T,
     "grades.csv", 1, ["row 2: edema_grade 6 is outside the scale: must be an integer 0..5 (beltrame6, dataset.json)",
                       "check grade_scale in dataset.json"]),
    ("fat_grade_outside_scale", _v_set("grades.csv", 0, "fat_grade", "5"), "grade_out_of_scale", T,
     "grades.csv", 1, ["row 2: fat_grade 5 is outside the scale: must be an integer 0..4 (fat scale)"]),
    ("unknown_region", _v_set("grades.csv", 0, "region", "thigh_lateral_right"), "region_unknown", T,
     "grades.csv", 1, ["row 2: region 'thigh_lateral_right' is not a region of the label schema",
                       "use a region name of dataset.json 'regions'"]),
    ("duplicate_case_id", lambda root: edit_table(root, "cases.csv", lambda df: pd.concat([df, df.iloc[[0]]])),
     "case_id_duplicate", T, "cases.csv", 1, ["case 'S01_thigh' is listed 2 times (rows 2, 6)",
                                              "keep one row per case"]),
    ("case_id_with_separator", _v_add_case("a/b"), "case_id_unsafe", "a/b", "cases.csv", 1,
     ["row 6: case id 'a/b' is not a safe file name", "rename the case in every table and file"]),
    ("case_id_with_dotdot", _v_add_case("../evil"), "case_id_unsafe", "../evil", "cases.csv", 1,
     ["case id '../evil' is not a safe file name", "no '..'"]),
]
# fmt: on


@pytest.mark.parametrize("mutate, code, case_id, file, exit_code, needles",
                         [pytest.param(*k[1:], id=k[0]) for k in VERIFY_KINDS])
def test_verify_names_the_problem(tiny, tmp_path, mutate, code, case_id, file, exit_code, needles):
    from nxp2seg.data.verify import main, verify_cohort

    mutate(tiny)
    before = _digest(tiny)
    report = verify_cohort(tiny)
    hits = [p for p in report.problems if p.code == code and p.case_id == case_id and p.file == file]
    assert hits, "\n".join(map(str, report.problems))
    text = " ".join(f"{p.message} {p.fix}" for p in hits)
    for needle in needles:
        assert needle in text, (needle, text)
    out = tmp_path / "verify.json"
    rc, stdout, _ = _run(main, str(tiny), "--json", str(out))
    assert rc == exit_code
    listed = json.loads(out.read_text())["problems"]
    assert any(p["code"] == code and p["case_id"] == case_id and p["file"] == file for p in listed)
    assert "error" in stdout if exit_code else "warning" in stdout
    assert _digest(tiny) == before  # verify only reads


def test_verify_missing_cohort_exits_2(tmp_path):
    from nxp2seg.data.verify import main

    rc, _, _ = _run(main, str(tmp_path / "nowhere"), "--json", str(tmp_path / "v.json"))
    assert rc == 2
    (p,) = json.loads((tmp_path / "v.json").read_text())["problems"]
    assert p["code"] == "cohort_missing" and "nowhere is not a cohort folder" in p["message"]
    assert p["fix"] == "give the path of an existing, readable cohort folder"
    assert not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------------------
# train: a cohort that fails verify, or none at all
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind, needles", [
    ("fails_verify", ["cohort has 1 error", "[S01_thigh] grades.csv: row 2: edema_grade 6 is outside the scale",
                      "correct the grade or leave it blank", "run `python -m nxp2seg.data.verify"]),
    ("missing", ["nowhere", "give the path of an existing, readable cohort folder"]),
])
def test_train_refuses_a_bad_cohort_before_training(tiny, tmp_path, kind, needles):
    from conftest import compose_train

    from nxp2seg.data.cohort import CohortError
    from nxp2seg.train import train

    cohort = tiny if kind == "fails_verify" else tmp_path / "nowhere"
    if kind == "fails_verify":
        _v_set("grades.csv", 0, "edema_grade", "6")(tiny)
    cfg = compose_train(["experiment=smoke", f"data.cohort={cohort}", f"output_dir={tmp_path / 'run'}",
                         f"paths.cache_dir={tmp_path / 'cache'}", f"paths.root_dir={tmp_path}",
                         "data.loader.verify=true"])
    with pytest.raises(CohortError) as e:
        train(cfg)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    assert not (tmp_path / "run" / "bundle").exists() and not (tmp_path / "cache").exists()


def test_train_command_exits_1_naming_the_cohort(tmp_path):
    """The Hydra entry point: the same refusal, printed, and a non-zero exit code (Hydra's 1)."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "nxp2seg.train", f"data.cohort={tmp_path / 'nowhere'}",
         f"output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.root_dir={tmp_path}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "nowhere" in run.stderr and "give the path of an existing, readable cohort folder" in run.stderr
    assert not (tmp_path / "run" / "bundle").exists()


# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_inputs(tmp_path_factory) -> dict[str, Path]:
    """A tiny cohort and a hand-written prediction folder that evaluates (exit 0) as it is."""
    tmp = tmp_path_factory.mktemp("evaluate")
    cohort = make_tiny_cohort(tmp / "cohort", subjects=("S01", "S02", "S03"))
    schema = default_compartment_schema()
    pred = tmp / "pred"
    cases = pd.read_csv(cohort / "cases.csv")
    rows, regions = [], []
    for c in cases.itertuples(index=False):
        rows.append({"case_id": c.case_id, "subject_id": c.subject_id, "station": c.station,
                     "status": "ok", "error": "", "pattern": "patchy"})
        for k, region in enumerate(schema.region_names(c.station)):
            regions.append({"case_id": c.case_id, "region": region, "edema_grade": k % 4 + 0.3,
                            "edema_grade_int": k % 4, "fat_grade": k % 3, "fat_grade_continuous": k % 3,
                            "fascial_edema_prob": 0.2, "subcutaneous_edema_prob": 0.7})
        save_nifti(make_nifti(tiny_label(c.station, schema), tiny_affine()), pred / c.case_id / "seg.nii.gz")
        (pred / c.case_id / "report.json").write_text(json.dumps(
            {"status": "ok", "model": {"bundle": None, "grading": True, "grade_scale": "beltrame6"}}))
    pd.DataFrame(rows).to_csv(pred / "cases.csv", index=False)
    pd.DataFrame(regions).to_csv(pred / "regions.csv", index=False)
    digests = {"cohort": _digest(cohort), "pred": _digest(pred)}
    yield {"cohort": cohort, "pred": pred, "tmp": tmp}
    assert _digest(cohort) == digests["cohort"] and _digest(pred) == digests["pred"]


def _evaluate(*args: str) -> tuple[int, str, str]:
    from nxp2seg.evaluate import main

    return _run(main, *args, "bootstrap=2", "report=false", "hd95=false")


def _pred_copy(edit: Callable[[Path], None]):
    def make(t: Path, e: dict[str, Path]) -> dict[str, Path]:
        pred = Path(shutil.copytree(e["pred"], t / "pred"))
        edit(pred)
        return {"predictions": pred}

    return make


def _rename_cases(pred: Path) -> None:
    df = pd.read_csv(pred / "cases.csv")
    df["case_id"] = "X_" + df["case_id"]
    df.to_csv(pred / "cases.csv", index=False)


def _other_scale(pred: Path) -> None:
    for rep in pred.glob("*/report.json"):
        rep.write_text(json.dumps({"status": "ok", "model": {"grade_scale": "extent4", "grading": True}}))


# fmt: off
EVALUATE_KINDS = [  # id, arguments replaced ({'predictions'|'cohort'|'output': path} or extra args), needles
    ("predictions_missing", lambda t, e: {"predictions": t / "nope"},
     ["nope: no such prediction folder", "give predictions= the output folder of python -m nxp2seg.predict"]),
    ("cases_csv_missing", _pred_copy(lambda p: (p / "cases.csv").unlink()),
     ["cases.csv: missing", "give predictions= the output folder"]),
    ("regions_column_missing", _pred_copy(
        lambda p: pd.read_csv(p / "regions.csv").drop(columns=["region"]).to_csv(p / "regions.csv", index=False)),
     ["regions.csv: no column(s) ['region']"]),
    ("no_predicted_case_in_cohort", _pred_copy(_rename_cases),
     ["none of its finished cases is a case of", "predict the cohort's cases", "or give the matching cohort"]),
    ("grade_scales_differ", _pred_copy(_other_scale),
     ["the model grades on 'extent4' but the cohort's dataset.json says grade_scale 'beltrame6'"]),
    ("cohort_missing", lambda t, e: {"cohort": t / "nocohort"}, ["cohort=", "nocohort: no such cohort folder"]),
    ("output_inside_cohort", lambda t, e: {"output": e["cohort"] / "eval"},
     ["is inside the cohort", "inputs are never written to, choose another folder"]),
    ("unknown_split", lambda t, e: {"extra": ["split=nosuch"]},
     ["no case has split=nosuch (splits: ['train'])", "give one of them or split=null"]),
    ("unknown_option", lambda t, e: {"extra": ["colour=blue"]},
     ["Key 'colour' is not in struct", "known options: predictions, cohort"]),
    ("option_missing", lambda t, e: {"cohort": None}, ["cohort=DIR is required; see --help"]),
]
# fmt: on


def test_evaluate_fixture_is_valid(eval_inputs, tmp_path):
    code, _, err = _evaluate(f"predictions={eval_inputs['pred']}", f"cohort={eval_inputs['cohort']}",
                             f"output={tmp_path / 'out'}")
    assert code == 0, err


@pytest.mark.parametrize("variant, needles", [pytest.param(*k[1:], id=k[0]) for k in EVALUATE_KINDS])
def test_evaluate_unusable_input_exits_2(eval_inputs, tmp_path, variant, needles):
    paths = {"predictions": eval_inputs["pred"], "cohort": eval_inputs["cohort"], "output": tmp_path / "out"}
    change = variant(tmp_path, eval_inputs)
    extra = change.pop("extra", [])
    paths.update(change)
    args = [f"{k}={v}" for k, v in paths.items() if v is not None] + extra
    code, _, err = _evaluate(*args)
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("nxp2seg.evaluate: ")]  # one line
    for needle in needles:
        assert needle in line, (needle, err)
    assert not Path(paths["output"]).exists()


# ---------------------------------------------------------------------------
# analyze
# ---------------------------------------------------------------------------


@pytest.fixture
def analyze_tables(tmp_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(3)
    ids = [f"P{i:02d}" for i in range(20)]
    scores = pd.DataFrame({"subject_id": ids, "total_score": rng.normal(20, 6, 20).round(1)})
    clinical = pd.DataFrame({"subject_id": ids, "ck": rng.lognormal(6, 1, 20).round(0),
                             "sex": rng.choice(["F", "M"], 20), "ethnicity": ["a", "b", "c", "a"] * 5})
    return scores, clinical


def _set_cell(column: str, row: int, value: object):
    def edit(df: pd.DataFrame) -> pd.DataFrame:
        df[column] = df[column].astype(object)
        df.loc[row, column] = value
        return df

    return edit


def _same(df: pd.DataFrame) -> pd.DataFrame:
    return df


# fmt: off
ANALYZE_KINDS = [  # id, edit of scores, edit of clinical, extra args, needles
    ("non_numeric_clinical", _same, _set_cell("ck", 7, ">1000"), [],
     ["clinical=", "clinical.csv: ck: non-numeric values ['>1000'] in rows [7]; clean or drop them",
      "(rows: 0 = first data row)"]),
    ("non_numeric_score", _set_cell("total_score", 3, "high"), _same, [],
     ["scores.csv: total_score: non-numeric values ['high'] in rows [3]; clean or drop them"]),
    ("no_common_subject", lambda df: df.assign(subject_id="Z" + df["subject_id"]), _same, [],
     ["no subject is in both scores=", "do they use the same subject_id?"]),
    ("duplicate_subject", _set_cell("subject_id", 1, "P00"), _same, [],
     ["scores=", "subjects listed twice: ['P00']; keep one row per subject"]),
    ("blank_subject", _same, _set_cell("subject_id", 4, ""), [],
     ["clinical=", "blank subject_id in rows [4] (0 = first data row); fill them in or delete the rows"]),
    ("id_column_missing", lambda df: df.rename(columns={"subject_id": "patient"}), _same, [],
     ["scores=", "no 'subject_id' column", "give id=COLUMN or add the subject ids"]),
    ("score_column_missing", _same, _same, ["score=mri_total"],
     ["no score column 'mri_total'", "give score=COLUMN"]),
    ("group_by_three_levels", _same, _same, ["group_by=ethnicity"],
     ["group_by=ethnicity: categorical column with levels ['a', 'b', 'c']", "give a two-valued column"]),
    ("group_by_unknown_column", _same, _same, ["group_by=nothing"], ["group_by=nothing: no such column"]),
    ("unknown_option", _same, _same, ["colour=blue"], ["Key 'colour' is not in struct", "known options: cohort, predictions"]),
]
# fmt: on


@pytest.mark.parametrize("edit_scores, edit_clinical, extra, needles",
                         [pytest.param(*k[1:], id=k[0]) for k in ANALYZE_KINDS])
def test_analyze_unusable_input_exits_2(analyze_tables, tmp_path, edit_scores, edit_clinical, extra, needles):
    from nxp2seg.analyze import main

    scores, clinical = analyze_tables
    s, c = tmp_path / "scores.csv", tmp_path / "clinical.csv"
    edit_scores(scores.copy()).to_csv(s, index=False)
    edit_clinical(clinical.copy()).to_csv(c, index=False)
    out = _output_with_sentinel(tmp_path / "out")
    before = _digest(tmp_path)
    code, _, err = _run(main, f"scores={s}", f"clinical={c}", f"output={out}", "figures=false", *extra)
    assert code == 2
    (line,) = [x for x in err.splitlines() if x.startswith("nxp2seg.analyze: ")]  # one line
    for needle in needles:
        assert needle in line, (needle, err)
    assert _digest(tmp_path) == before  # nothing written, nothing overwritten (the sentinel included)


def test_analyze_missing_file_exits_2(tmp_path, analyze_tables):
    from nxp2seg.analyze import main

    analyze_tables[1].to_csv(tmp_path / "clinical.csv", index=False)
    code, _, err = _run(main, f"scores={tmp_path / 'missing.csv'}", f"clinical={tmp_path / 'clinical.csv'}",
                        f"output={tmp_path / 'out'}")
    assert code == 2 and f"scores={tmp_path / 'missing.csv'}: no such file" in err
    assert not (tmp_path / "out").exists()
