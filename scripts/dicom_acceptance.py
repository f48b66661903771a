"""Acceptance run of ``predict`` on DICOM as hospitals export it (issue 20's "Done when").

``python scripts/dicom_acceptance.py BUNDLE WORKDIR [--json OUT.json]``

Builds, in ``WORKDIR/suite`` (outside the project), a suite of exams of every
kind a hospital exports, from real vendor files (pydicom's test data: Toshiba
in six transfer syntaxes, Siemens, Philips uncompressed and JPEG 2000) and a
tiny phantom cohort for anatomy: classic series with the vendor's pixel
stream, vendor headers over phantom anatomy, Enhanced MR, a two-station
multi-frame object, Legacy Converted Enhanced MR (highdicom), files without
preamble, gzipped files, Japanese/Korean/Cyrillic names, uneven slice
spacing, the myositis protocol exported flat (thigh and calf in one study,
coronal series, a localizer, a repeated T1), several studies in one folder,
a NIfTI pair beside the DICOM, broken files and a CT study. Identifiers are
planted in the headers and the folder names. Then it runs ``predict`` on the
whole suite and reports:

* exams lost in silence (an exam built without a row in ``cases.csv``);
* geometry against dcm2niix: the largest distance (mm) between a voxel of
  ``seg.nii.gz`` (the T1's grid) and the same voxel of dcm2niix's T1 (its
  ``_Eq`` file for uneven spacing), over every exam dcm2niix reads;
* dciodvfy errors per ``seg.dcm``;
* identifiers of the headers or folder names found in any output (the SEG's
  required patient/study attributes excepted).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom

from nxp2seg.inference.dicom_select import study_key
from nxp2seg.io import save_nifti
from nxp2seg.phantom.dicom_export import write_enhanced_series, write_series
from nxp2seg.phantom.dicom_vendor import pydicom_test_file, series_from_template

ROOT = "1.2.826.0.1.3680043.8.498.2020"
PLANTED = {"PatientName": "Doe^Jane", "PatientID": "MRN-31415", "PatientBirthDate": "19700101",
           "PatientComments": "SECRET-COMMENT", "PatientAge": "056Y", "StudyDescription": "SECRET-STUDY",
           "InstitutionName": "St Secret Hospital", "StationName": "SECRETMR", "DeviceSerialNumber": "SN-271828",
           "AccessionNumber": "ACC-161803", "ReferringPhysicianName": "Referrer^Secret",
           "OperatorsName": "Operator^Secret"}
#: The SEG keeps these (the IOD's Type 1/2 patient and study attributes).
SEG_REQUIRED = {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "ReferringPhysicianName"}
VENDORS = {"toshiba": "MR_small.dcm", "toshiba-implicit": "MR_small_implicit.dcm",
           "toshiba-bigendian": "MR_small_bigendian.dcm", "toshiba-rle": "MR_small_RLE.dcm",
           "toshiba-j2k": "MR_small_jp2klossless.dcm", "toshiba-jpegls": "MR_small_jpeg_ls_lossless.dcm",
           "siemens": "MR-SIEMENS-DICOM-WithOverlays.dcm", "philips": "MR2_UNCR.dcm", "philips-j2k": "MR2_J2KR.dcm"}
T1 = {"scanning_sequence": "SE", "repetition_time": 550.0, "echo_time": 12.0}
STIR = {"scanning_sequence": "IR", "inversion_time": 160.0, "repetition_time": 4500.0, "echo_time": 40.0}


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def _placement(img: nib.Nifti1Image) -> dict:
    """series_from_template's geometry and pixels for a NIfTI image (columns = array axis 0)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ img.affine
    sp = np.linalg.norm(lps[:3, :3], axis=0)
    data = np.asarray(img.dataobj, dtype=np.float64)
    pixels = np.clip(data / max(float(data.max()), 1.0) * 4000.0, 0, 65535).astype(np.uint16).transpose(1, 0, 2)
    return {"origin": lps[:3, 3], "row_dir": lps[:3, 0] / sp[0], "col_dir": lps[:3, 1] / sp[1],
            "pixel_spacing": (sp[1], sp[0]), "slice_step": sp[2], "n_slices": data.shape[2], "pixels": pixels}


class Suite:
    """The exams built so far: expected case id -> what it is."""

    def __init__(self, root: Path):
        self.root = root
        self.exams: dict[str, str] = {}
        self.t1: dict[str, tuple[Path, int]] = {}  # case id -> the T1's folder and SeriesNumber
        self.n = 0

    def study(self, kind: str, station: str | None) -> tuple[str, str]:
        self.n += 1
        uid = f"{ROOT}.{self.n}"
        cid = f"S{study_key(uid)}" + (f"_{station}" if station else "")
        self.exams[cid] = kind
        return uid, cid

    def extra(self, **kw) -> dict:
        return {**PLANTED, **kw}


def build(suite: Suite, cohort: Path) -> None:
    from nxp2seg.data.cohort import Cohort

    c = Cohort.open(cohort)
    rows = list(c.cases.itertuples(index=False))
    imgs = {str(r.case_id): (nib.load(c.t1_path(str(r.case_id))), nib.load(c.stir_path(str(r.case_id))),
                             str(r.station)) for r in rows}
    thigh = next(v for v in imgs.values() if v[2] == "thigh")
    calf = next(v for v in imgs.values() if v[2] == "calf")
    patient = suite.root / "DOE_JANE_MRN-31415"  # a PACS viewer's folder name
    # 1. vendor files as they are (pixel stream kept), oblique, files out of order
    for vendor, name in VENDORS.items():
        uid, cid = suite.study(f"vendor {vendor} (vendor pixels)", "thigh")
        suite.t1[cid] = (patient / vendor / "t1", 1)
        for k, (role, acq) in enumerate((("t1", T1), ("stir", STIR))):
            series_from_template(pydicom_test_file(name), patient / vendor / role, n_slices=8,
                                 origin=(40.0, -30.0, 100.0), row_dir=(0.9961947, 0.0871557, 0.0),
                                 col_dir=(-0.0871557, 0.9961947, 0.0), slice_step=5.0, series_number=k + 1,
                                 description=f"{role}_tse_tra", study_uid=uid, frame_of_reference_uid=uid + ".1",
                                 extra=suite.extra(BodyPartExamined="THIGH"), uid_seed=f"{vendor}{role}",
                                 order=[3, 0, 6, 1, 7, 2, 5, 4], **acq)
    # 2. vendor headers over phantom anatomy (SEG written), raw and gzipped files too
    for vendor, kw in (("toshiba", {}), ("siemens", {}), ("philips", {}), ("toshiba-raw", {"raw": True}),
                       ("toshiba-gz", {"gz": True})):
        uid, cid = suite.study(f"vendor header {vendor} over anatomy", "thigh")
        suite.t1[cid] = (patient / f"anat_{vendor}" / "t1", 1)
        name = VENDORS[vendor.split("-")[0]]
        for k, (img, acq, role) in enumerate(((thigh[0], T1, "t1"), (thigh[1], STIR, "stir"))):
            series_from_template(pydicom_test_file(name), patient / f"anat_{vendor}" / role, series_number=k + 1,
                                 description=f"{role}_tse_tra", study_uid=uid, frame_of_reference_uid=uid + ".1",
                                 extra=suite.extra(BodyPartExamined="THIGH"), uid_seed=f"a{vendor}{role}",
                                 **_placement(img), **acq, **kw)
    # 3. multi-frame: Enhanced MR, two stations in one object, Legacy Converted
    uid, cid = suite.study("Enhanced MR", "thigh")
    suite.t1[cid] = (patient / "enhanced", 1)
    for k, (img, acq) in enumerate(((thigh[0], T1), (thigh[1], STIR))):
        write_enhanced_series([img], patient / "enhanced" / f"{k}.dcm", series_description=f"s{k}",
                              series_number=k + 1, study_uid=uid, frame_of_reference_uid=uid + ".1",
                              uid_seed=f"enh{k}", body_part="THIGH", spin_echo=True,
                              inversion_time=acq.get("inversion_time"), repetition_time=acq["repetition_time"],
                              echo_time=acq["echo_time"], extra=suite.extra())
    uid, cid = suite.study("Enhanced MR, thigh and calf stacks in one object", "thigh")
    suite.exams[cid[:-6] + "_calf"] = "Enhanced MR, thigh and calf stacks in one object"
    moved = nib.Nifti1Image(np.asarray(calf[0].dataobj), _shift(-450.0) @ calf[0].affine)
    moved_stir = nib.Nifti1Image(np.asarray(calf[1].dataobj), _shift(-450.0) @ calf[1].affine)
    for k, (pair, acq) in enumerate((((thigh[0], moved), T1), ((thigh[1], moved_stir), STIR))):
        write_enhanced_series(list(pair), patient / "enhanced2" / f"{k}.dcm", series_description=f"s{k}",
                              series_number=k + 1, study_uid=uid, frame_of_reference_uid=uid + ".1",
                              uid_seed=f"enh2{k}", inversion_time=acq.get("inversion_time"),
                              repetition_time=acq["repetition_time"], echo_time=acq["echo_time"], extra=suite.extra())
    _legacy(suite, thigh, patient / "legacy")
    # 4. character sets
    for charset in ("chrH31.dcm", "chrKoreanMulti.dcm", "chrRuss.dcm", "chrX1.dcm"):
        src = pydicom.dcmread(pydicom_test_file(charset))
        uid, cid = suite.study(f"character set {src.SpecificCharacterSet}", "thigh")
        suite.t1[cid] = (patient / f"charset_{charset[3:-4]}" / "t1", 1)
        for k, (img, acq, role) in enumerate(((thigh[0], T1, "t1"), (thigh[1], STIR, "stir"))):
            write_series(img, patient / f"charset_{charset[3:-4]}" / role, series_description=f"{role}_tse_tra",
                         series_number=k + 1, study_uid=uid, frame_of_reference_uid=uid + ".1", body_part="THIGH",
                         uid_seed=f"{charset}{role}", patient_name=src.PatientName, patient_id=PLANTED["PatientID"],
                         extra=suite.extra(SpecificCharacterSet=src.SpecificCharacterSet, PatientName=src.PatientName),
                         **acq)
    # 5. uneven spacing
    uid, cid = suite.study("uneven slice spacing", "thigh")
    suite.t1[cid] = (patient / "uneven" / "t1", 1)
    for k, (img, acq, role) in enumerate(((thigh[0], T1, "t1"), (thigh[1], STIR, "stir"))):
        place = _placement(img)
        n = place["n_slices"]
        place["slice_positions"] = [place["slice_step"] * (j + (0.4 if j >= n // 2 else 0.0)) for j in range(n)]
        place["pixels"] = place["pixels"].astype(np.int16)  # dcm2niix writes its _Eq file for signed data
        series_from_template(pydicom_test_file("MR_small.dcm"), patient / "uneven" / role, series_number=k + 1,
                             description=f"{role}_tse_tra", study_uid=uid, frame_of_reference_uid=uid + ".1",
                             extra=suite.extra(BodyPartExamined="THIGH"), uid_seed=f"uneven{role}", **place, **acq)
    # 6. the myositis protocol exported flat, twice (two studies in one folder)
    for rep in range(2):
        uid, cid = suite.study("flat protocol (thigh)", "thigh")
        suite.exams[cid[:-6] + "_calf"] = "flat protocol (calf)"
        flat = patient / "flat_export"
        suite.t1[cid], suite.t1[cid[:-6] + "_calf"] = (flat, 6), (flat, 3)
        number = [0]

        def put(img, acq, desc, shift=0.0, uid=uid, rep=rep, flat=flat, number=number):
            number[0] += 1
            place = _placement(nib.Nifti1Image(np.asarray(img.dataobj), _shift(shift) @ img.affine))
            series_from_template(pydicom_test_file("MR_small.dcm"), flat, series_number=number[0], description=desc,
                                 study_uid=uid, frame_of_reference_uid=uid + ".1",
                                 extra=suite.extra(BodyPartExamined="LEG", SeriesTime=f"10{number[0]:02d}00"),
                                 uid_seed=f"flat{rep}{number[0]}", file_pattern=f"R{rep}S{number[0]:02d}_{{k:03d}}",
                                 **place, **acq)

        put(thigh[0], T1, "t1_tse_tra")
        put(thigh[1], STIR, "t2_tirm_tra")
        put(calf[0], T1, "t1_tse_tra", -450.0)
        put(calf[1], STIR, "t2_tirm_tra", -450.0)
        coronal = nib.Nifti1Image(np.asarray(thigh[1].dataobj)[:, :8, :].transpose(0, 2, 1).copy(),
                                  np.array([[-4.0, 0, 0, 80], [0, 0, 6.0, 60], [0, -4.0, 0, 10], [0, 0, 0, 1]]))
        put(coronal, STIR, "t2_tirm_cor")
        put(thigh[0], T1, "t1_tse_tra")  # repeated
    # 7. NIfTI pair beside the DICOM, broken files, a CT study
    save_nifti(calf[0], suite.root / "nifti" / "N01_calf_T1.nii.gz")
    save_nifti(calf[1], suite.root / "nifti" / "N01_calf_STIR.nii.gz")
    suite.exams["N01_calf"] = "NIfTI pair beside the DICOM"
    (patient / "broken").mkdir(parents=True)
    (patient / "broken" / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00")
    (patient / "broken" / "notes.gz").write_bytes(__import__("gzip").compress(b"not an image"))
    suite.exams["(broken files)"] = "broken files"
    uid, _ = suite.study("CT study (skipped)", None)
    ct = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    ct.StudyInstanceUID, ct.SeriesInstanceUID = uid, uid + ".2"
    (patient / "ct").mkdir(parents=True)
    ct.save_as(patient / "ct" / "ct.dcm")


def _shift(dz_mm: float) -> np.ndarray:
    """A world translation by ``dz_mm`` along the patient's superior axis (apply as ``T @ affine``)."""
    out = np.eye(4)
    out[2, 3] = dz_mm
    return out


def _legacy(suite: Suite, thigh: tuple, folder: Path) -> None:
    import highdicom as hd

    uid, cid = suite.study("Legacy Converted Enhanced MR", "thigh")
    suite.t1[cid] = (folder, 10)
    with tempfile.TemporaryDirectory() as tmp:
        for k, (img, acq, role) in enumerate(((thigh[0], T1, "t1"), (thigh[1], STIR, "stir"))):
            files = write_series(img, Path(tmp) / role, series_description=f"{role}_tse_tra", series_number=k + 1,
                                 study_uid=uid, frame_of_reference_uid=uid + ".1", body_part="THIGH",
                                 uid_seed=f"leg{role}", extra=suite.extra(), **acq)
            legacy = hd.legacy.LegacyConvertedEnhancedMRImage(
                [pydicom.dcmread(f) for f in files], series_instance_uid=hd.UID(), series_number=10 + k,
                sop_instance_uid=hd.UID(), instance_number=1)
            folder.mkdir(parents=True, exist_ok=True)
            legacy.save_as(folder / f"{role}.dcm")


def _world_mm(a: nib.Nifti1Image, b: nib.Nifti1Image) -> float | None:
    """Largest distance (mm) between b's voxel corners and the same voxels of a (None: other grid)."""
    if sorted(a.shape[:3]) != sorted(b.shape[:3]):
        return None
    corners = np.array([[i, j, k] for i in (0, b.shape[0] - 1) for j in (0, b.shape[1] - 1)
                        for k in (0, b.shape[2] - 1)], float)
    world = nib.affines.apply_affine(b.affine, corners)
    idx = nib.affines.apply_affine(np.linalg.inv(a.affine), world)
    return float(np.abs(nib.affines.apply_affine(a.affine, np.rint(idx)) - world).max())


def check(suite: Suite, out: Path, seconds: float, code: int) -> dict:
    cases = pd.read_csv(out / "cases.csv", keep_default_na=False)
    listed = set(cases["case_id"])
    lost = sorted(c for c in suite.exams if not c.startswith("(") and c not in listed)
    if "(broken files)" in suite.exams and not any(c.startswith("F") for c in listed):
        lost.append("(broken files)")
    result = {"exams_built": len(suite.exams), "rows": len(cases), "exit_code": code, "seconds": round(seconds, 1),
              "status": cases["status"].value_counts().to_dict(), "lost_in_silence": lost,
              "warnings": cases["warnings"].value_counts().to_dict()}
    d2n, dci = _tool("dcm2niix"), _tool("dciodvfy")
    geometry, seg_errors = {}, {}
    for row in cases.itertuples(index=False):
        if row.status != "ok" or not str(row.case_id).startswith("S"):
            continue
        seg = out / row.case_id / "seg.dcm"
        if dci and seg.exists():
            res = subprocess.run([dci, str(seg)], capture_output=True, text=True, check=False)
            seg_errors[row.case_id] = sum(ln.startswith("Error") for ln in (res.stdout + res.stderr).splitlines())
        if d2n:
            geometry[row.case_id] = _against_dcm2niix(d2n, row.case_id, out / row.case_id / "seg.nii.gz", suite)
    result["geometry_vs_dcm2niix_mm"] = {k: v for k, v in geometry.items() if v is not None}
    result["dcm2niix_unreadable_or_merged"] = sorted(k for k, v in geometry.items() if v is None)
    measured = list(result["geometry_vs_dcm2niix_mm"].values())
    result["geometry_max_mm"] = max(measured) if measured else None
    result["dciodvfy_errors"] = seg_errors
    result["segs_written"] = len(seg_errors)
    result["identifiers_found"] = _identifiers(out, suite.root)
    result["tools"] = {"dcm2niix": bool(d2n), "dciodvfy": bool(dci)}
    result["exams"] = dict(suite.exams)
    return result


def _against_dcm2niix(d2n: str, cid: str, seg_path: Path, suite: Suite) -> float | None:
    """dcm2niix on the folder of the case's T1 series (that SeriesNumber only): the closest of its
    outputs of the same grid size against seg.nii.gz, its ``_Eq`` output when it writes one
    (``None``: dcm2niix reads nothing of that size, e.g. it merges a two-stack object)."""
    if cid not in suite.t1:
        return None
    folder, _ = suite.t1[cid]
    seg = nib.load(seg_path)
    distances, equalized = [], []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([d2n, "-z", "n", "-o", tmp, "-f", "%s_%j", str(folder)], capture_output=True, check=False)
        for nii in sorted(Path(tmp).glob("*.nii")):
            if "_ROI" in nii.name:
                continue
            d = _world_mm(nib.load(nii), seg)
            if d is not None:
                (equalized if "_Eq" in nii.name else distances).append(d)
    pool = equalized or distances
    return min(pool) if pool else None


def _identifiers(out: Path, suite_root: Path) -> dict:
    needles = [v for k, v in PLANTED.items() if k != "PatientAge"] + ["Doe", "DOE_JANE", str(suite_root),
                                                                       "山田", "Yamada", "김희중", "Люкceмбypг", "王"]
    found: dict[str, list[str]] = {}
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix in (".png", ".gz"):  # binary: only its name is searched (the QC title is the case id)
            text = str(path.relative_to(out))
            bad = [n for n in needles if n in text]
        elif path.suffix == ".dcm":
            ds = pydicom.dcmread(path)
            bad = [k for k in PLANTED if k not in SEG_REQUIRED and str(ds.get(k, "")) == PLANTED[k]]
            text = "".join(str(e.value) for e in ds.iterall() if e.keyword not in SEG_REQUIRED
                           and e.keyword not in ("PatientName", "PixelData"))
            bad += [n for n in needles if n in text]
        else:
            text = path.read_bytes().decode("utf-8", "replace") + str(path.relative_to(out))
            bad = [n for n in needles if n in text]
        if bad:
            found[str(path.relative_to(out))] = sorted(set(bad))
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("work", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from nxp2seg.phantom import generate_cohort
    from nxp2seg.predict import main as predict

    cohort = args.work / "cohort"
    if not (cohort / "dataset.json").exists():
        generate_cohort(cohort, subjects=2, preset="tiny", seed=20)
    suite_root = args.work / "suite"
    shutil.rmtree(suite_root, ignore_errors=True)
    suite = Suite(suite_root)
    build(suite, cohort)
    out = args.work / "out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    code = predict([f"model={args.bundle}", f"input={suite_root}", f"output={out}", "progress=false"])
    result = check(suite, out, time.perf_counter() - t0, code)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
