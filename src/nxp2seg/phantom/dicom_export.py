"""Phantom (and test) exams exported as DICOM: classic single-frame series and Enhanced MR.

:func:`write_series` writes an image as an MR series, one file per slice;
:func:`write_enhanced_series` writes one or several images as one Enhanced
MR multi-frame object (each image a stack, with per-frame position and
orientation in the functional groups, as Philips and Siemens XA scanners
export). Used by the tests and by ``scripts/predict_consistency.py`` /
``scripts/dicom_acceptance.py``; prediction only reads DICOM
(:mod:`nxp2seg.data.dicom_series`).
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from nxp2seg.io import atomic_write_bytes

__all__ = ["ENHANCED_MR_STORAGE", "write_enhanced_series", "write_series"]

#: LPS <-> RAS (its own inverse).
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"


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
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``img`` as an MR DICOM series, one file per slice (the third array axis).

    Positions and orientation come from the image's RAS affine (any axis
    order, oblique allowed; not sheared). Pixels are uint16 with
    RescaleSlope/Intercept mapping the data range onto 0..65535 (integer
    data within 0..65535 is stored as is). With ``uid_seed`` the UIDs are
    deterministic. Files are ``{series_number:04d}_{slice:04d}.dcm`` in ``out_dir``.
    ``extra`` sets further attributes by keyword on every slice (e.g. a
    character set and names in it, or identifiers a privacy test looks for).
    """
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"write_series: need a 3D image, got shape {data.shape}")
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
    for keyword, value in (extra or {}).items():
        setattr(base, keyword, value)
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
        raise ValueError("write_series: the affine has a zero-length axis")
    unit = m / spacing
    row_dir, col_dir, slice_dir = unit.T
    normal = np.cross(row_dir, col_dir)
    if abs(row_dir @ col_dir) > 1e-4 or abs(abs(slice_dir @ normal) - 1.0) > 1e-6:
        raise ValueError("write_series: the affine is sheared (axes not orthogonal); DICOM slices "
                         "cannot represent it: resample the image onto an orthogonal grid first")
    clean = [np.where(np.abs(v) < 1e-12, 0.0, v) for v in (row_dir, col_dir)]
    return clean[0], clean[1], spacing


def _to_uint16(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored uint16 values, slope and intercept (as written to DS) for float ``data``."""
    if not np.all(np.isfinite(data)):
        raise ValueError("write_series: the image holds NaN or infinite values; replace them first")
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


def write_enhanced_series(
    images: Sequence[nib.Nifti1Image],
    out_path: Path,
    *,
    series_description: str,
    series_number: int,
    study_uid: str,
    frame_of_reference_uid: str,
    patient_id: str = "ANON",
    patient_name: str = "ANON",
    body_part: str = "",
    inversion_time: float | None = None,
    repetition_time: float = 600.0,
    echo_time: float = 10.0,
    spin_echo: bool = True,
    uid_seed: str | None = None,
    frame_order: Sequence[int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``images`` (one stack each, same in-plane size) as one Enhanced MR multi-frame file.

    Per frame: ``FrameContentSequence`` (StackID = the image's number from 1,
    InStackPositionNumber, DimensionIndexValues), ``PlanePositionSequence``; the
    orientation and pixel measures are shared when all stacks share them, else
    per frame. The acquisition is in the Enhanced MR attributes
    (``EchoPulseSequence``, ``InversionRecovery``, ``MRModifierSequence``
    ``InversionTimes``, ``MRTimingAndRelatedParametersSequence`` ``RepetitionTime``,
    ``MREchoSequence`` ``EffectiveEchoTime``). Pixels are uint16 with one shared
    rescale. ``frame_order`` permutes the frames as stored (a scanner need not
    store them in position order).
    """
    stacks = []
    for img in images:
        data = np.asarray(img.dataobj, dtype=np.float64)
        data = data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data
        if data.ndim != 3:
            raise ValueError(f"write_enhanced_series: need 3D images, got shape {data.shape}")
        stacks.append((data, _LPS @ np.asarray(img.affine, dtype=float)))
    if len({d.shape[:2] for d, _ in stacks}) != 1:
        raise ValueError("write_enhanced_series: every stack of one object has the same rows and columns")
    stored, slope, intercept = _to_uint16(np.concatenate([d.reshape(-1) for d, _ in stacks]))
    series_uid = _uid(uid_seed, "series", study_uid, series_number, series_description)
    ds = _series_dataset(
        series_description=series_description, series_number=series_number, study_uid=study_uid,
        series_uid=series_uid, frame_of_reference_uid=frame_of_reference_uid, patient_id=patient_id,
        patient_name=patient_name, body_part=body_part, scanning_sequence="SE", inversion_time=None,
        repetition_time=repetition_time, echo_time=echo_time)
    for keyword in ("ScanningSequence", "SequenceVariant", "ScanOptions", "RepetitionTime", "EchoTime",
                    "EchoTrainLength", "AcquisitionNumber"):
        delattr(ds, keyword)
    ds.SOPClassUID = ENHANCED_MR_STORAGE
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.ContentQualification, ds.PulseSequenceName = "PRODUCT", series_description[:16]
    ds.EchoPulseSequence = "SPIN" if spin_echo else "GRADIENT"
    ds.InversionRecovery = "YES" if inversion_time is not None else "NO"
    ds.MultipleSpinEcho, ds.MultiPlanarExcitation, ds.PhaseContrast = "NO", "NO", "NO"
    ds.SpectrallySelectedSuppression = "NONE"
    ds.AcquisitionContrast = "T1" if inversion_time is None else "UNKNOWN"
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.AcquisitionDateTime = "20260101120000"
    shared = Dataset()
    axes = [_dicom_axes(a) for _, a in stacks]
    same_plane = all(np.allclose(np.r_[r, c, s], np.r_[axes[0][0], axes[0][1], axes[0][2]]) for r, c, s in axes)
    timing = Dataset()
    timing.RepetitionTime, timing.EchoTrainLength, timing.FlipAngle = float(repetition_time), 1, 90.0
    shared.MRTimingAndRelatedParametersSequence = [timing]
    echo = Dataset()
    echo.EffectiveEchoTime = float(echo_time)
    shared.MREchoSequence = [echo]
    modifier = Dataset()
    modifier.InversionRecovery = ds.InversionRecovery
    if inversion_time is not None:
        modifier.InversionTimes = [float(inversion_time)]
    modifier.FlowCompensation, modifier.Spoiling = "NONE", "NONE"
    modifier.T2Preparation, modifier.SpectrallySelectedExcitation = "NO", "NONE"
    modifier.SpatialPresaturation, modifier.PartialFourier = "NONE", "NO"
    shared.MRModifierSequence = [modifier]
    rescale = Dataset()
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = _ds(intercept), _ds(slope), "US"
    shared.PixelValueTransformationSequence = [rescale]
    ftype = Dataset()
    ftype.FrameType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ftype.PixelPresentation, ftype.VolumetricProperties = "MONOCHROME", "VOLUME"
    ftype.VolumeBasedCalculationTechnique, ftype.ComplexImageComponent = "NONE", "MAGNITUDE"
    ftype.AcquisitionContrast = ds.AcquisitionContrast
    shared.MRImageFrameTypeSequence = [ftype]
    if same_plane:
        shared.PlaneOrientationSequence = [_orientation_item(*axes[0][:2])]
        shared.PixelMeasuresSequence = [_measures_item(axes[0][2])]
    frames, pixels = [], []
    offset = 0
    for stack_id, ((data, affine), (row_dir, col_dir, spacing)) in enumerate(zip(stacks, axes), start=1):
        n = data.shape[2]
        for k in range(n):
            item = Dataset()
            content = Dataset()
            content.StackID, content.InStackPositionNumber = str(stack_id), k + 1
            content.DimensionIndexValues = [stack_id, k + 1]
            item.FrameContentSequence = [content]
            position = Dataset()
            ipp = affine[:3, :3] @ np.array([0.0, 0.0, float(k)]) + affine[:3, 3]
            position.ImagePositionPatient = [_ds(v) for v in ipp]
            item.PlanePositionSequence = [position]
            if not same_plane:
                item.PlaneOrientationSequence = [_orientation_item(row_dir, col_dir)]
                item.PixelMeasuresSequence = [_measures_item(spacing)]
            frames.append(item)
            pixels.append(stored[offset + np.arange(data.shape[0] * data.shape[1]) * n + k])
        offset += data.size
    order = list(frame_order) if frame_order is not None else list(range(len(frames)))
    if sorted(order) != list(range(len(frames))):
        raise ValueError("write_enhanced_series: frame_order must permute the frames")
    rows, columns = stacks[0][0].shape[1], stacks[0][0].shape[0]
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [frames[i] for i in order]
    dim_uid = _uid(uid_seed, "dimension", series_uid)
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = [org]
    ds.DimensionIndexSequence = [_dimension(dim_uid, 0x00209056, "Stack ID"),
                                 _dimension(dim_uid, 0x00209057, "In-Stack Position Number")]
    ds.NumberOfFrames = len(frames)
    ds.InstanceNumber = 1
    sop_uid = _uid(uid_seed, "instance", series_uid, "enhanced")
    ds.SOPInstanceUID = sop_uid
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    planes = np.stack([pixels[i].reshape(columns, rows).T for i in order])  # (frame, row, column)
    ds.set_pixel_data(np.ascontiguousarray(planes), "MONOCHROME2", 16, generate_instance_uid=False)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ENHANCED_MR_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return atomic_write_bytes(Path(out_path), buf.getvalue())


def _orientation_item(row_dir: np.ndarray, col_dir: np.ndarray) -> Dataset:
    item = Dataset()
    item.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
    return item


def _measures_item(spacing: np.ndarray) -> Dataset:
    item = Dataset()
    item.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]
    item.SliceThickness = item.SpacingBetweenSlices = _ds(spacing[2])
    return item


def _dimension(org_uid: str, pointer: int, label: str) -> Dataset:
    item = Dataset()
    item.DimensionOrganizationUID = org_uid
    item.DimensionIndexPointer = pointer
    item.FunctionalGroupPointer = 0x00209111  # FrameContentSequence
    item.DimensionDescriptionLabel = label
    return item

def _ds(value: float) -> str:
    """A number as a DICOM DS string (at most 16 characters)."""
    value = float(value)
    return "0" if abs(value) < 1e-12 else format_number_as_ds(value)


def _uid(seed: str | None, *parts: Any) -> str:
    """A new UID; deterministic from ``seed`` and ``parts`` when ``seed`` is given."""
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=["|".join([seed, *map(str, parts)])])  # joined: no ambiguity
