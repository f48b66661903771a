"""DICOM in and out: find series, check them, read them with exact geometry, write series and SEG.

Clinical input is a folder of single-frame DICOM files, often several series
(localizers, T1, STIR, other sequences) mixed together. This module groups the
files into series from their headers alone (:func:`find_series`), tells T1
from STIR (:func:`classify_series`), refuses stacks the model cannot use
(:func:`check_series`: a missing slice silently shifts every label after it)
and reads a series into a NIfTI image whose affine is the scanner's geometry
(:func:`read_series`). The other way, :func:`write_series` exports an image as
a DICOM series (tests, phantom cases) and :func:`write_dicom_seg` writes a
label map as a DICOM SEG on the source T1 series, for PACS viewers.

Coordinates. DICOM positions are in the patient's LPS space (x to the
patient's left, y posterior, z superior); NIfTI affines here are RAS, so
``affine_ras = diag(-1, -1, 1) @ affine_lps``. Arrays are indexed
``(i, j, k) = (column, row, slice)``, the NIfTI/SimpleITK convention; slice
``k`` of a series read here is ``SeriesInfo.files[k]`` (files sorted by their
position along the slice normal, ``cross(row direction, column direction)``).

Series roles (:func:`classify_series`), first rule that matches wins; the
text is SeriesDescription, ProtocolName and SequenceName together, matched
without regard to case:

1. ``"stir"``: the text contains ``STIR``, ``TIRM``, ``INVERSION`` or ``IR``
   as a word (no letter on either side: ``T2_IR`` and ``IR-TSE`` match,
   ``FLAIR``, ``SPIR`` and ``SPAIR`` (fat saturation, not inversion recovery)
   do not);
2. ``"stir"``: ScanningSequence contains ``IR`` and 100 <= InversionTime <= 250 ms
   (STIR nulls fat at about 150-220 ms at 1.5-3 T; FLAIR, TI ~2000 ms, is not STIR);
3. ``"t1"``: the text contains ``T1`` with no letter or digit before it and
   no digit after it (``T1``, ``T1W``, ``T1-W``, ``T1_TSE``, ``AX_T1``; not
   ``T12``);
4. ``"t1"``: ScanningSequence contains ``SE`` and not ``IR``, RepetitionTime
   < 1000 ms, and the text names no other weighting (``T2``, ``PD``, ``FLAIR``);
5. otherwise ``None`` (unknown: the user chooses the series in a manifest).

Privacy. :class:`SeriesInfo` and :func:`geometry` carry no patient attribute
(name, id, birth date, ...); :func:`geometry` carries no UID either, so it
can go into reports. A DICOM SEG necessarily repeats the patient and study of
its source series (that is how a PACS files it), nothing more.

Files that are not DICOM (text, NIfTI, DICOMDIR, hidden files such as
partial downloads) are skipped silently; DICOM objects without per-file
geometry (enhanced multi-frame images, SEG, SR) are skipped with a log line.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import re
import struct
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from nxp2seg.data.images import MAX_AXIAL_TILT_DEG
from nxp2seg.io import atomic_write_bytes, make_nifti

__all__ = [
    "DicomError",
    "SeriesInfo",
    "check_series",
    "classify_series",
    "find_series",
    "geometry",
    "read_series",
    "write_dicom_seg",
    "write_series",
]

log = logging.getLogger(__name__)

#: LPS <-> RAS (its own inverse).
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
_SEG_UID = "1.2.840.10008.5.1.4.1.1.66.4"
_STIR_TEXT = re.compile(r"STIR|TIRM|INVERSION|(?<![A-Z])IR(?![A-Z])", re.IGNORECASE)
_T1_TEXT = re.compile(r"(?<![A-Z0-9])T1(?![0-9])", re.IGNORECASE)
_OTHER_TEXT = re.compile(r"(?<![A-Z0-9])(T2|PD)(?![0-9])|FLAIR", re.IGNORECASE)
#: What pydicom raises on a file that is not (intact) DICOM.
_READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, struct.error)


class DicomError(ValueError):
    """A DICOM folder or series nxp2seg cannot use; the message names it and the fix."""


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found on disk (headers only; no patient attribute).

    Attributes:
        series_uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID, ``None`` if absent.
        files: the slices' files, sorted by position along the slice normal.
        description: SeriesDescription, else ProtocolName, else ``""``.
        modality: Modality (``"MR"``).
        role: ``"t1"``, ``"stir"`` or ``None`` (unknown), see :func:`classify_series`.
        rows: Rows of the first slice.
        columns: Columns of the first slice.
        n_slices: number of files.
        body_part: BodyPartExamined, upper-case, or ``""``.
        folder: the deepest folder holding all of the files.
    """

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str | None
    files: tuple[Path, ...]
    description: str
    modality: str
    role: str | None
    rows: int
    columns: int
    n_slices: int
    body_part: str
    folder: Path


# ---------------------------------------------------------------------------
# finding and classifying series
# ---------------------------------------------------------------------------


def find_series(folder: Path) -> list[SeriesInfo]:
    """All image series under ``folder`` (recursive), grouped by SeriesInstanceUID.

    Only headers are read. Non-DICOM files are skipped silently. Series are
    ordered by folder, then description, then UID.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder; point the input at a folder of DICOM files")
    groups: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in _walk(folder):
        ds = _read_image_header(path)
        if ds is not None:
            groups[str(ds.SeriesInstanceUID)].append((path, ds))
    infos = [_series_info(uid, members) for uid, members in groups.items()]
    return sorted(infos, key=lambda s: (str(s.folder), s.description, s.series_uid))


def classify_series(ds_or_info: Dataset | SeriesInfo) -> str | None:
    """``"t1"``, ``"stir"`` or ``None`` from a header (rules in the module docstring).

    A :class:`SeriesInfo` is classified from the header of its first file.
    """
    ds = _header(ds_or_info.files[0]) if isinstance(ds_or_info, SeriesInfo) else ds_or_info
    text = " ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription", "ProtocolName", "SequenceName"))
    scanning = _scanning_sequence(ds)
    if _STIR_TEXT.search(text):
        return "stir"
    ti = _number(ds.get("InversionTime"))
    if "IR" in scanning and ti is not None and 100.0 <= ti <= 250.0:
        return "stir"
    if _T1_TEXT.search(text):
        return "t1"
    tr = _number(ds.get("RepetitionTime"))
    if "SE" in scanning and "IR" not in scanning and tr is not None and tr < 1000.0:
        return None if _OTHER_TEXT.search(text) else "t1"
    return None


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, in sorted order (symlinked folders not followed)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return out


def _read_image_header(path: Path) -> Dataset | None:
    """The header of a single-frame DICOM image with geometry, else ``None``."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except _READ_ERRORS:  # not DICOM, truncated, unreadable: skipped by design
        return None
    sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if sop_class == _DICOMDIR_UID or "DirectoryRecordSequence" in ds:
        return None
    if "SeriesInstanceUID" not in ds:
        return None
    if str(ds.get("SOPClassUID", "")) == _SEG_UID or "PerFrameFunctionalGroupsSequence" in ds:
        log.info("%s: multi-frame DICOM (SEG or enhanced image) skipped; export single-frame images", path)
        return None
    try:
        ok = (len(_floats(ds.ImagePositionPatient)) == 3 and len(_floats(ds.ImageOrientationPatient)) == 6
              and int(ds.Rows) > 0 and int(ds.Columns) > 0)
    except (AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        log.info("%s: DICOM without image geometry skipped", path)
    return ds if ok else None


def _series_info(uid: str, members: list[tuple[Path, Dataset]]) -> SeriesInfo:
    """A :class:`SeriesInfo` from the (path, header) pairs of one series."""
    normal = _normal(members[0][1])
    members = sorted(members, key=lambda m: (float(_floats(m[1].ImagePositionPatient) @ normal),
                                             _number(m[1].get("InstanceNumber")) or 0.0, str(m[0])))
    first = members[0][1]
    files = tuple(p for p, _ in members)
    for_uid = first.get("FrameOfReferenceUID")
    return SeriesInfo(
        series_uid=uid,
        study_uid=str(first.get("StudyInstanceUID", "")),
        frame_of_reference_uid=str(for_uid) if for_uid else None,
        files=files,
        description=str(first.get("SeriesDescription") or first.get("ProtocolName") or "").strip(),
        modality=str(first.get("Modality", "")),
        role=classify_series(first),
        rows=int(first.Rows),
        columns=int(first.Columns),
        n_slices=len(files),
        body_part=str(first.get("BodyPartExamined", "") or "").strip().upper(),
        folder=Path(os.path.commonpath([str(p.parent) for p in files])),
    )


# ---------------------------------------------------------------------------
# checking and reading a series
# ---------------------------------------------------------------------------


def check_series(info: SeriesInfo) -> None:
    """Raise :class:`DicomError` if the series is not one complete axial stack.

    Refused: fewer than 2 slices; slices differing in orientation, size or
    pixel spacing; a slice normal more than 45 degrees from the patient's
    superior axis; two slices at one position; a gap over 1.5x the median
    slice spacing (missing slices).
    """
    where = _where(info)
    if info.n_slices < 2:
        raise DicomError(f"{where}: has {info.n_slices} slice; nxp2seg needs a stack of axial slices "
                         "(export the whole series)")
    headers = [_header(p) for p in info.files]
    _check_in_plane(headers, where)
    normal = _normal(headers[0])
    tilt = float(np.degrees(np.arccos(min(1.0, abs(normal[2])))))
    if tilt > MAX_AXIAL_TILT_DEG:
        plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
        raise DicomError(f"{where}: {plane} slices (slice normal {tilt:.0f} degrees from the patient's "
                         "superior axis); nxp2seg expects axial slices: choose the axial T1/STIR series")
    pos = np.array([_floats(h.ImagePositionPatient) @ normal for h in headers])
    _check_spacing(pos, info.files, where)


def _check_in_plane(headers: list[Dataset], where: str) -> None:
    """All slices share orientation, size and pixel spacing."""
    try:
        iop = np.array([_floats(h.ImageOrientationPatient) for h in headers])
        spacing = np.array([_floats(h.PixelSpacing) for h in headers])
    except AttributeError:
        raise DicomError(f"{where}: a slice lacks ImageOrientationPatient or PixelSpacing; "
                         "export the series with its geometry (not as secondary capture)") from None
    sizes = sorted({(int(h.Rows), int(h.Columns)) for h in headers})
    if len(sizes) > 1 or np.ptp(iop, axis=0).max() > 1e-4 or np.ptp(spacing, axis=0).max() > 1e-4:
        raise DicomError(f"{where}: slices differ in orientation or size (rows x columns {sizes}); "
                         "the series mixes several stacks (e.g. localizers): export the axial stack "
                         "as a series of its own")


def _check_spacing(pos: np.ndarray, files: Sequence[Path], where: str) -> None:
    """No duplicate positions and no gaps over 1.5x the median spacing (``pos`` sorted)."""
    d = np.diff(pos)
    dup = np.flatnonzero(d < 0.01)
    if dup.size:
        i = int(dup[0])
        raise DicomError(f"{where}: {dup.size} duplicate slice position(s), e.g. {files[i].name} and "
                         f"{files[i + 1].name} both at {pos[i]:.2f} mm; the folder holds the series twice "
                         "or several echoes: keep one copy of each slice")
    med = float(np.median(d))
    gaps = np.flatnonzero(d > 1.5 * med)
    if gaps.size:
        counts = [max(1, int(np.rint(d[i] / med)) - 1) for i in gaps]
        where_missing = "; ".join(
            f"{c} between {files[i].name} ({pos[i]:.1f} mm) and {files[i + 1].name} ({pos[i + 1]:.1f} mm)"
            for c, i in zip(counts, gaps))
        raise DicomError(f"{where}: {sum(counts)} slice(s) missing ({where_missing}; slice spacing "
                         f"{med:.2f} mm); re-export the complete series")


def read_series(info: SeriesInfo) -> nib.Nifti1Image:
    """The series as a float32 NIfTI image, (column, row, slice) order, RAS affine.

    Read by SimpleITK (rescale slope/intercept applied) from ``info.files`` in
    their order; slice ``k`` is ``info.files[k]``. Run :func:`check_series` first.
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in info.files])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        image = reader.Execute()
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DicomError(f"{_where(info)}: SimpleITK cannot read the series ({reason}); check that "
                         "the files are complete, uncompressed or standard-compressed DICOM") from None
    if image.GetDimension() != 3:
        raise DicomError(f"{_where(info)}: read as a {image.GetDimension()}D image; expected a 3D stack")
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * np.array(image.GetSpacing(), dtype=float)
    affine_lps[:3, 3] = image.GetOrigin()
    data = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), dtype=np.float32)
    return make_nifti(data, _LPS @ affine_lps)


def geometry(info: SeriesInfo) -> dict[str, Any]:
    """Non-identifying facts about a series (no UID, no patient attribute), for reports.

    ``spacing`` is in mm along (column, row, slice) and ``orientation`` the
    axis codes (e.g. ``"LPS"``) of the array :func:`read_series` returns.
    """
    first, last = _header(info.files[0]), _header(info.files[-1])
    iop = _floats(first.ImageOrientationPatient)
    row_sp, col_sp = (float(v) for v in _floats(first.get("PixelSpacing", [1.0, 1.0])))
    normal = _normal(first)
    step = _floats(last.ImagePositionPatient) - _floats(first.ImagePositionPatient)
    slice_sp = abs(float(step @ normal)) / (info.n_slices - 1) if info.n_slices > 1 else \
        float(_number(first.get("SliceThickness")) or 0.0)
    lps = np.eye(4)
    lps[:3, :3] = np.column_stack([iop[:3], iop[3:], normal])
    return {
        "description": info.description,
        "role": info.role,
        "body_part": info.body_part,
        "n_slices": info.n_slices,
        "rows": info.rows,
        "columns": info.columns,
        "spacing": [round(col_sp, 6), round(row_sp, 6), round(slice_sp, 6)],
        "orientation": "".join(nib.aff2axcodes(_LPS @ lps)),
    }


# ---------------------------------------------------------------------------
# writing a series
# ---------------------------------------------------------------------------


def write_series(
    img: nib.Nifti1Image,
    out_dir: Path,
    *,
    series_description: str,
    series_number: int,
    study_uid: str,
    frame_of_reference_uid: str,
    patient_id: str = "ANON",
    patient_name: str = "ANON",
    body_part: str = "",
    scanning_sequence: str = "SE",
    inversion_time: float | None = None,
    repetition_time: float = 600.0,
    echo_time: float = 10.0,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write ``img`` as an MR DICOM series, one file per slice (the third array axis).

    Positions and orientation come from the image's RAS affine (any axis
    order, oblique allowed; not sheared). Pixels are uint16 with
    RescaleSlope/Intercept mapping the data range onto 0..65535 (integer
    data within 0..65535 is stored as is). With ``uid_seed`` the UIDs are
    deterministic. Files are ``{series_number:04d}_{slice:04d}.dcm`` in ``out_dir``.
    """
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DicomError(f"write_series: need a 3D image, got shape {data.shape}")
    affine_lps = _LPS @ np.asarray(img.affine, dtype=float)
    row_dir, col_dir, spacing = _dicom_axes(affine_lps)
    stored, slope, intercept = _to_uint16(data)
    series_uid = _uid(uid_seed, "series", study_uid, series_number, series_description)
    base = _series_dataset(
        series_description=series_description, series_number=series_number, study_uid=study_uid,
        series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid, patient_id=patient_id,
        patient_name=patient_name, body_part=body_part, scanning_sequence=scanning_sequence,
        inversion_time=inversion_time, repetition_time=repetition_time, echo_time=echo_time)
    base.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
    base.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # between rows, between columns
    base.SliceThickness = base.SpacingBetweenSlices = _ds(spacing[2])
    base.RescaleSlope, base.RescaleIntercept, base.RescaleType = _ds(slope), _ds(intercept), "US"
    lo, hi = float(data.min()), float(data.max())
    base.WindowCenter, base.WindowWidth = _ds((lo + hi) / 2), _ds(max(hi - lo, 1.0))
    normal = np.cross(row_dir, col_dir)
    out_dir = Path(out_dir)
    paths = []
    for k in range(data.shape[2]):
        ipp = affine_lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + affine_lps[:3, 3]
        ds = _slice_dataset(base, k, ipp, float(ipp @ normal), _uid(uid_seed, "instance", series_uid, k))
        ds.set_pixel_data(np.ascontiguousarray(stored[:, :, k].T), "MONOCHROME2", 16,
                          generate_instance_uid=False)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        paths.append(atomic_write_bytes(out_dir / f"{series_number:04d}_{k + 1:04d}.dcm", buf.getvalue()))
    return paths


def _dicom_axes(affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column direction cosines and (column, row, slice) spacing of an LPS affine."""
    m = affine_lps[:3, :3]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0):
        raise DicomError("write_series: the affine has a zero-length axis")
    unit = m / spacing
    row_dir, col_dir, slice_dir = unit.T
    normal = np.cross(row_dir, col_dir)
    if abs(row_dir @ col_dir) > 1e-4 or abs(abs(slice_dir @ normal) - 1.0) > 1e-6:
        raise DicomError("write_series: the affine is sheared (axes not orthogonal); DICOM slices "
                         "cannot represent it: resample the image onto an orthogonal grid first")
    clean = [np.where(np.abs(v) < 1e-12, 0.0, v) for v in (row_dir, col_dir)]
    return clean[0], clean[1], spacing


def _to_uint16(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored uint16 values, slope and intercept (as written to DS) for float ``data``."""
    if not np.all(np.isfinite(data)):
        raise DicomError("write_series: the image holds NaN or infinite values; replace them first")
    lo, hi = float(data.min()), float(data.max())
    if lo >= 0 and hi <= 65535 and np.array_equal(data, np.round(data)):
        return data.astype(np.uint16), 1.0, 0.0
    slope = float(format_number_as_ds((hi - lo) / 65535.0)) if hi > lo else 1.0
    intercept = float(format_number_as_ds(lo))
    stored = np.clip(np.rint((data - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept


def _series_dataset(*, series_description: str, series_number: int, study_uid: str, series_uid: str,
                    frame_of_reference_uid: str, patient_id: str, patient_name: str, body_part: str,
                    scanning_sequence: str, inversion_time: float | None, repetition_time: float,
                    echo_time: float) -> Dataset:
    """The attributes shared by every slice of a written series (no geometry, no pixels)."""
    ds = Dataset()
    ds.SOPClassUID = MRImageStorage
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", ""
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study_uid, "1", "", ""
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "MR", series_uid, int(series_number)
    ds.SeriesDescription = ds.ProtocolName = series_description
    if body_part:
        ds.BodyPartExamined = body_part.upper()
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference_uid, ""
    ds.Manufacturer = "nxp2seg"
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.AcquisitionNumber = 1
    ds.ScanningSequence = scanning_sequence.split("\\") if "\\" in scanning_sequence else scanning_sequence
    ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "NONE", "", "2D"
    ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = _ds(repetition_time), _ds(echo_time), 1
    if inversion_time is not None:
        ds.InversionTime = _ds(inversion_time)
    return ds


def _slice_dataset(base: Dataset, k: int, ipp: np.ndarray, location: float, sop_uid: str) -> Dataset:
    """Slice ``k`` of a series: ``base`` plus position, numbers and file meta."""
    ds = copy.deepcopy(base)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = [_ds(v) for v in ipp]
    ds.SliceLocation = _ds(location)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


# ---------------------------------------------------------------------------
# DICOM SEG
# ---------------------------------------------------------------------------


def write_dicom_seg(
    labels: np.ndarray,
    source_files: Sequence[Path],
    segment_names: Mapping[int, str],
    out_path: Path,
    *,
    series_description: str = "nxp2seg segmentation",
    algorithm_version: str = "0",
) -> Path:
    """Write a label map as a binary DICOM SEG on its source series (atomically).

    ``labels`` is on the source grid in :func:`read_series` order,
    ``(column, row, slice)`` with slice ``k`` = ``source_files[k]``. One
    segment per named label value > 0 present in ``labels``, numbered 1.. in
    increasing label value. Property codes (SNOMED CT) follow the name:
    ``*edema*`` morphologically abnormal structure/edema, ``*bone*``
    tissue/bone, ``subcutaneous*`` anatomical structure/subcutaneous tissue,
    ``*fat*`` tissue/adipose tissue, compartments and muscles of the schema
    tissue/skeletal muscle (anatomic region thigh or lower leg), else
    tissue/tissue. SeriesNumber is the source's + 1000; UIDs are new.
    """
    import highdicom as hd

    if not source_files:
        raise DicomError("write_dicom_seg: no source files given; pass the T1 series' files")
    where = f"{Path(source_files[0]).parent}: DICOM SEG"
    sources = [pydicom.dcmread(p) for p in source_files]
    labels = np.asarray(labels)
    expected = (int(sources[0].Columns), int(sources[0].Rows), len(sources))
    if labels.shape != expected:
        raise DicomError(f"{where}: label map shape {labels.shape} is not the source grid (columns, rows, "
                         f"slices) = {expected}; resample the labels onto the source T1 first")
    present = {int(v) for v in np.unique(labels)}
    values = sorted(int(v) for v in segment_names if int(v) > 0 and int(v) in present)
    if not values:
        raise DicomError(f"{where}: no named label > 0 in the label map; nothing to write")
    frames = np.zeros(labels.shape[::-1], dtype=np.uint8 if len(values) < 256 else np.uint16)
    labels_srk = labels.transpose(2, 1, 0)  # (slice, row, column)
    for number, value in enumerate(values, start=1):
        frames[labels_srk == value] = number
    descriptions = [_segment_description(hd, number, str(segment_names[value]), algorithm_version)
                    for number, value in enumerate(values, start=1)]
    try:
        with warnings.catch_warnings():
            # highdicom warns about one-component names such as "ANON": the source's, kept as is
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            seg = _segmentation(hd, sources, frames, descriptions, series_description, algorithm_version)
    except (ValueError, TypeError, AttributeError) as e:
        raise DicomError(f"{where}: highdicom refused the segmentation ({e}); check that the source "
                         "files are one complete single-frame series") from None
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True)
    return atomic_write_bytes(out_path, buf.getvalue())


def _segmentation(hd: Any, sources: list[Dataset], frames: np.ndarray, descriptions: list[Any],
                  series_description: str, version: str) -> Any:
    """The highdicom binary Segmentation of ``frames`` (slice, row, column; segment numbers)."""
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=1000 + int(_number(sources[0].get("SeriesNumber")) or 0),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nxp2seg",
        manufacturer_model_name="nxp2seg", software_versions=str(version),
        device_serial_number="0", series_description=series_description)


def _segment_description(hd: Any, number: int, name: str, version: str) -> Any:
    """A highdicom SegmentDescription for label ``name`` (AUTOMATIC, algorithm nxp2seg)."""
    category, kind, region = _segment_codes(name)
    return hd.seg.SegmentDescription(
        segment_number=number, segment_label=name[:64],
        segmented_property_category=category, segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="nxp2seg", family=codes.cid7162.ArtificialIntelligence,
            version=str(version)),
        tracking_uid=hd.UID(), tracking_id=name[:64],
        anatomic_regions=[region] if region is not None else None)


def _segment_codes(name: str) -> tuple[Any, Any, Any]:
    """(category, type, anatomic region or None) SNOMED codes for a label name of the schema."""
    from nxp2seg.data.schema import MUSCLES

    low = name.lower()
    thigh = {m for comp in MUSCLES["thigh"].values() for m in comp}
    calf = {m for comp in MUSCLES["calf"].values() for m in comp}
    base = re.sub(r"_(right|left)$", "", low)
    region = (codes.SCT.Thigh if low.startswith("thigh") or base in thigh
              else codes.SCT.LowerLeg if low.startswith("calf") or base in calf else None)
    if "edema" in low or "oedema" in low:
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Edema, region
    if "bone" in low:
        return codes.SCT.Tissue, codes.SCT.Bone, region
    if "subcutaneous" in low:
        return codes.SCT.AnatomicalStructure, codes.SCT.SubcutaneousTissue, region
    if "fat" in low:
        return codes.SCT.Tissue, codes.SCT.AdiposeTissue, region
    if region is not None or "muscle" in low:
        return codes.SCT.Tissue, codes.SCT.SkeletalMuscle, region
    return codes.SCT.Tissue, codes.SCT.Tissue, region


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def _header(path: Path) -> Dataset:
    """A file's header (no pixels); :class:`DicomError` naming the file if it cannot be read."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, force=False)
    except _READ_ERRORS as e:
        raise DicomError(f"{path}: cannot read the DICOM header ({e}); the file changed or is damaged "
                         "since the folder was scanned: scan it again") from None


def _where(info: SeriesInfo) -> str:
    """``folder: series 'description'`` for messages (the first file's name if no description)."""
    desc = info.description or f"(no description; first file {info.files[0].name if info.files else '-'})"
    return f"{info.folder}: series {desc!r}"


def _floats(value: Any) -> np.ndarray:
    """A DICOM multi-valued number (DS/IS) as a float array."""
    return np.array([float(v) for v in value], dtype=float)


def _number(value: Any) -> float | None:
    """A single DICOM number, ``None`` if absent or empty."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _normal(ds: Dataset) -> np.ndarray:
    """The unit slice normal (LPS), ``cross(row direction, column direction)``."""
    iop = _floats(ds.ImageOrientationPatient)
    n = np.cross(iop[:3], iop[3:])
    return n / (np.linalg.norm(n) or 1.0)


def _scanning_sequence(ds: Dataset) -> set[str]:
    """ScanningSequence values (``SE``, ``IR``, ``GR``, ...) upper-case."""
    value = ds.get("ScanningSequence", "") or ""
    items = [value] if isinstance(value, str) else list(value)
    return {p.strip().upper() for v in items for p in str(v).split("\\") if p.strip()}


def _ds(value: float) -> str:
    """A number as a DICOM DS string (at most 16 characters)."""
    value = float(value)
    return "0" if abs(value) < 1e-12 else format_number_as_ds(value)


def _uid(seed: str | None, *parts: Any) -> str:
    """A new UID; deterministic from ``seed`` and ``parts`` when ``seed`` is given."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=["|".join([seed, *map(str, parts)])])  # joined: no ambiguity
