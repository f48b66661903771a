"""A label map as a DICOM SEG on its source T1 stack, carrying only what the SEG IOD needs.

:func:`write_dicom_seg` writes a binary Segmentation (highdicom) whose frames
lie exactly where the label map's slices lie: on the source frames for an
evenly spaced stack (each SEG frame then references its source image), on the
even grid of :func:`~nxp2seg.data.dicom_series.read_series` for an
unevenly spaced one (the grid ``seg.nii.gz`` is on), so that ``seg.nii.gz`` and
``seg.dcm`` agree in world space.

Privacy. highdicom copies every attribute of the source's Patient, Clinical
Trial Subject, General Study, Patient Study and Clinical Trial Study modules,
and the source's equipment (institution, station, device serial number) as
Contributing Equipment. nxp2seg gives it instead a copy of each source image
that holds only what the SEG IOD requires of the patient and study (the
Type 1 and 2 attributes: PatientName, PatientID, PatientBirthDate, PatientSex,
StudyInstanceUID, StudyDate, StudyTime, ReferringPhysicianName, StudyID,
AccessionNumber), the references (SOP class and instance, series, frame of
reference) and the geometry. PatientComments, PatientAge, PatientWeight,
PatientSize, StudyDescription, InstitutionName, StationName,
DeviceSerialNumber, OperatorsName and the rest are never copied. The SEG is
written in UTF-8 (``ISO_IR 192``), which encodes the names of every character
set a source may use (``ISO 2022 IR 87`` Japanese, Korean, Chinese, Cyrillic, ...).

Algorithm identification: name ``nxp2seg``, version
``{nxp2seg version} bundle {bundle hash}`` (the first 12 hex digits of the
digest of the bundle's files), so a SEG tells which model made it.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from nxp2seg.data.schema import MUSCLES
from nxp2seg.data.dicom_headers import DicomError, load_dataset
from nxp2seg.data.dicom_series import SeriesInfo, read_series_grid, slice_spacing
from nxp2seg.io import atomic_write_bytes

__all__ = ["SEG_ATTRIBUTES", "EmptySegmentation", "write_dicom_seg"]

#: The source attributes a SEG keeps: patient and study (the IOD's Type 1/2), references, geometry.
SEG_ATTRIBUTES = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "SeriesNumber", "Modality", "InstanceNumber",
    "FrameOfReferenceUID", "PositionReferenceIndicator",
    "Rows", "Columns", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "NumberOfFrames",
)
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
          "ReferringPhysicianName", "StudyID", "AccessionNumber")


class EmptySegmentation(DicomError):
    """No named label > 0 in the label map: there is nothing to write as a SEG."""


def write_dicom_seg(
    labels: np.ndarray,
    series: SeriesInfo,
    segment_names: Mapping[int, str],
    out_path: Path,
    *,
    series_description: str = "nxp2seg segmentation",
    algorithm_version: str = "0",
) -> Path:
    """Write a label map as a binary DICOM SEG on its source stack (atomically).

    Args:
        labels: on the grid :func:`~nxp2seg.data.dicom_series.read_series`
            returns for ``series``, ``(column, row, slice)``.
        series: the source T1 stack.
        segment_names: label value -> name; one segment per named value > 0
            present in ``labels``, numbered 1.. in increasing value. Property
            codes (SNOMED CT) follow the name (:func:`_segment_codes`).
        algorithm_version: see the module docstring.

    Raises:
        EmptySegmentation: nothing to write.
        DicomError: the label map is not on the source grid, or highdicom refused it.
    """
    import highdicom as hd

    where = f"{series.folder}: {series.label}: DICOM SEG"
    labels = np.asarray(labels)
    positions, orientation, spacing = read_series_grid(series)
    expected = (series.columns, series.rows, len(positions))
    if labels.shape != expected:
        raise DicomError(f"{where}: label map shape {labels.shape} is not the source grid (columns, rows, "
                         f"slices) = {expected}; resample the labels onto the source T1 first")
    present = {int(v) for v in np.unique(labels)}
    values = sorted(int(v) for v in segment_names if int(v) > 0 and int(v) in present)
    if not values:
        raise EmptySegmentation(f"{where}: no named label > 0 in the label map; nothing to write")
    frames = np.zeros(labels.shape[::-1], dtype=np.uint8 if len(values) < 256 else np.uint16)
    labels_srk = labels.transpose(2, 1, 0)  # (slice, row, column)
    for k, value in enumerate(values, start=1):
        frames[labels_srk == value] = k
    descriptions = [_segment_description(hd, k, str(segment_names[value]), algorithm_version)
                    for k, value in enumerate(values, start=1)]
    sources, on_sources = _sources(series, len(positions) if slice_spacing(series).even else -1)
    geometry = {} if on_sources else _plane_geometry(hd, positions, orientation, spacing)
    try:
        with warnings.catch_warnings():
            # highdicom warns about one-component names such as "ANON": the source's, kept as is
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            seg = hd.seg.Segmentation(
                source_images=sources, pixel_array=frames,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=hd.UID(),
                series_number=1000 + int(series.series_number or 0),
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nxp2seg",
                manufacturer_model_name="nxp2seg", software_versions=str(algorithm_version),
                device_serial_number="none", series_description=series_description,
                specific_character_set="ISO_IR 192", **geometry)
        buf = io.BytesIO()
        seg.save_as(buf, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, KeyError, LookupError) as e:
        raise DicomError(f"{where}: highdicom refused the segmentation ({type(e).__name__}: {e})") from None
    return atomic_write_bytes(out_path, buf.getvalue())


def _sources(series: SeriesInfo, n_planes: int) -> tuple[list[Dataset], bool]:
    """Minimal copies of the source images, and whether the SEG frames are exactly the source frames.

    Exact when the label map has one slice per source frame (``n_planes``; -1 for a resampled
    grid, which never is), and the frames are
    single-frame files, or all frames of one multi-frame file in its own order.
    """
    datasets = {p: load_dataset(p) for p in series.files}
    single = all(f.index is None for f in series.frames)
    if single:
        return [_minimal(datasets[f.path]) for f in series.frames], n_planes == series.n_slices
    path = series.frames[0].path
    ds = datasets[path]
    whole = (len(series.files) == 1 and n_planes == series.n_slices
             and [f.index for f in series.frames] == list(range(int(ds.get("NumberOfFrames", 0) or 0))))
    first = series.frames[0].index or 0
    return [_minimal(d, first) for d in datasets.values()], whole


def _minimal(ds: Dataset, frame: int = 0) -> Dataset:
    """A copy of ``ds`` with :data:`SEG_ATTRIBUTES` only (and the multi-frame geometry groups; a
    group given per frame only is also put in the shared groups from frame ``frame``, the stack's,
    which is where highdicom reads a source's orientation and pixel measures)."""
    out = Dataset()
    for keyword in SEG_ATTRIBUTES:
        if keyword in ds:
            out.add(ds.data_element(keyword))
        elif keyword in _TYPE2:
            setattr(out, keyword, "")
    out.SpecificCharacterSet = ds.get("SpecificCharacterSet", "ISO_IR 6")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        shared_seq = ds.get("SharedFunctionalGroupsSequence")
        shared = shared_seq[0] if shared_seq else Dataset()
        keep = ("PixelMeasuresSequence", "PlaneOrientationSequence", "PlanePositionSequence")
        new_shared = Dataset()
        for kw in keep:
            if kw in shared:
                setattr(new_shared, kw, shared[kw].value)
            elif kw != "PlanePositionSequence" and kw in per_frame[frame]:
                setattr(new_shared, kw, per_frame[frame][kw].value)
        out.SharedFunctionalGroupsSequence = [new_shared]
        items = []
        for item in per_frame:
            new = Dataset()
            for kw in keep:
                if kw in item:
                    setattr(new, kw, item[kw].value)
            items.append(new)
        out.PerFrameFunctionalGroupsSequence = items
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return out


def _plane_geometry(hd: Any, positions: np.ndarray, orientation: np.ndarray,
                    spacing: tuple[float, float, float]) -> dict[str, Any]:
    """highdicom plane positions, orientation and measures of the label map's own grid (LPS)."""
    iop = [float(v) for v in orientation]
    plane_positions = [hd.PlanePositionSequence(coordinate_system=hd.CoordinateSystemNames.PATIENT,
                                                image_position=[float(v) for v in p]) for p in positions]
    return {
        "plane_positions": plane_positions,
        "plane_orientation": hd.PlaneOrientationSequence(
            coordinate_system=hd.CoordinateSystemNames.PATIENT, image_orientation=iop),
        "pixel_measures": hd.PixelMeasuresSequence(pixel_spacing=[float(spacing[0]), float(spacing[1])],
                                                   slice_thickness=float(spacing[2]),
                                                   spacing_between_slices=float(spacing[2])),
    }


def _segment_description(hd: Any, number_: int, name: str, version: str) -> Any:
    """A highdicom SegmentDescription for label ``name`` (AUTOMATIC, algorithm nxp2seg)."""
    category, kind, region = _segment_codes(name)
    return hd.seg.SegmentDescription(
        segment_number=number_, segment_label=name[:64],
        segmented_property_category=category, segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="nxp2seg", family=codes.cid7162.ArtificialIntelligence, version=str(version)[:64]),
        tracking_uid=hd.UID(), tracking_id=name[:64],
        anatomic_regions=[region] if region is not None else None)


def _segment_codes(name: str) -> tuple[Any, Any, Any]:
    """(category, type, anatomic region or None) SNOMED codes for a label name of the schema.

    ``*edema*`` morphologically abnormal structure/edema, ``*bone*`` tissue/bone,
    ``subcutaneous*`` anatomical structure/subcutaneous tissue, ``*fat*``
    tissue/adipose tissue, compartments and muscles of the schema tissue/skeletal
    muscle (anatomic region thigh or lower leg), else tissue/tissue.
    """
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

