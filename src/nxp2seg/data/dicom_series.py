"""DICOM series: frames grouped into stacks, checked, and read with exact geometry.

:func:`find_series` groups the frames of every image under a folder
(:mod:`nxp2seg.data.dicom_headers`) into :class:`SeriesInfo` stacks: one
per SeriesInstanceUID, split further where frames cannot form one volume
(several orientations or sizes in one series, the stacks of a multi-frame
object, echoes or frame types at the same positions, or two table positions
far apart). Frames are sorted by their position along the slice normal,
``cross(row direction, column direction)``.

:func:`check_series` refuses what cannot be one volume (too few slices, a
duplicate position, missing slices); :func:`slice_spacing` tells whether the
slices are evenly spaced; :func:`read_series` reads the pixels and returns a
NIfTI image whose affine comes from the frames' own positions and
orientation. Unevenly spaced slices are resampled (linear along the slice
axis) onto the even grid dcm2niix's ``_Eq`` output uses (first to last slice,
no interval wider than the smallest gap): a voxel's position is then true everywhere, which one affine
over uneven slices cannot be.

Coordinates. DICOM positions are in the patient's LPS space; NIfTI affines
here are RAS, ``affine_ras = diag(-1, -1, 1) @ affine_lps``. Arrays are indexed
``(column, row, slice)``; slice ``k`` of an evenly spaced series is
``SeriesInfo.frames[k]``.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

from nxp2seg.data.dicom_headers import (
    Acquisition,
    DicomError,
    Frame,
    Scan,
    acquisition_of,
    frames_of,
    number,
    patient_key,
    scan_folder,
)
from nxp2seg.data.dicom_pixels import stack_pixels
from nxp2seg.data.dicom_roles import classify, plane_of
from nxp2seg.io import make_nifti

__all__ = [
    "LPS",
    "SeriesInfo",
    "SliceSpacing",
    "check_series",
    "find_series",
    "geometry",
    "group_series",
    "read_series",
    "read_series_grid",
    "slice_spacing",
]

log = logging.getLogger(__name__)

#: LPS <-> RAS (its own inverse).
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Slices whose positions leave an even grid by more than this (mm) are unevenly spaced.
EVEN_TOLERANCE_MM = 0.02
#: A gap above this many median spacings is missing slices; above ``STATION_GAP`` another station.
MISSING_GAP = 1.5
#: A gap along the slice normal this large (and 5 spacings) separates two stacks (stations) in one series.
STATION_GAP_MM = 30.0


@dataclass(frozen=True)
class SeriesInfo:
    """One stack of a DICOM series (headers only; no patient attribute).

    Attributes:
        series_uid, study_uid: SeriesInstanceUID, StudyInstanceUID.
        frame_of_reference_uid: FrameOfReferenceUID, ``None`` if absent.
        frames: the stack's frames, sorted along the slice normal.
        files: the distinct files of the frames, in frame order.
        description: SeriesDescription, else ProtocolName, else ``""``.
        modality: Modality (``"MR"``).
        role: ``"t1"``, ``"stir"`` or ``None``; ``role_reason`` says why
            (:func:`~nxp2seg.data.dicom_roles.classify`).
        rows, columns: the frames' size; n_slices: number of frames.
        body_part: BodyPartExamined, upper-case, or ``""``.
        folder: the deepest folder holding all of the files.
        series_number: SeriesNumber (``None`` if absent).
        plane: ``axial``, ``coronal`` or ``sagittal``.
        stack: what tells this stack from others of its series (``""`` if alone).
        acquisition: the :class:`~nxp2seg.data.dicom_headers.Acquisition`.
        time: SeriesDate+SeriesTime (else acquisition or content), for "the latest".
        patient: :func:`~nxp2seg.data.dicom_headers.patient_key` (a digest).
        multiframe: the frames come from multi-frame objects.
    """

    series_uid: str
    study_uid: str
    frame_of_reference_uid: str | None
    frames: tuple[Frame, ...]
    files: tuple[Path, ...]
    description: str
    modality: str
    role: str | None
    rows: int
    columns: int
    n_slices: int
    body_part: str
    folder: Path
    series_number: int | None = None
    plane: str = "axial"
    stack: str = ""
    role_reason: str = ""
    acquisition: Acquisition = field(default_factory=Acquisition)
    time: str = ""
    patient: str = ""
    multiframe: bool = False

    @property
    def normal(self) -> np.ndarray:
        return self.frames[0].normal

    @property
    def positions(self) -> np.ndarray:
        """Each frame's position along the slice normal (mm), ascending."""
        n = self.normal
        return np.array([np.asarray(f.position) @ n for f in self.frames])

    @property
    def label(self) -> str:
        """``series 5 't1_tse_tra'`` (and the stack) for messages."""
        number_ = f"series {self.series_number}" if self.series_number is not None else "series"
        desc = f" {self.description!r}" if self.description else " (no description)"
        return number_ + desc + (f" [{self.stack}]" if self.stack else "")


# ---------------------------------------------------------------------------
# grouping
# ---------------------------------------------------------------------------


def find_series(folder: Path) -> list[SeriesInfo]:
    """Every image stack under ``folder`` (recursive); see :func:`group_series`."""
    return group_series(scan_folder(folder))


def group_series(scan: Scan) -> list[SeriesInfo]:
    """The stacks of a :class:`~nxp2seg.data.dicom_headers.Scan`, ordered by folder,
    series number, description and UID."""
    groups: dict[tuple, list[tuple[Frame, Dataset]]] = defaultdict(list)
    for path, ds in scan.images:
        classic = _classic_key(ds)
        for frame in frames_of(path, ds):
            key = (str(ds.SeriesInstanceUID), frame.stack, classic, _rounded(frame.orientation),
                   frame.rows, frame.columns, _rounded(frame.spacing))
            groups[key].append((frame, ds))
    stacks = []
    by_series: dict[str, list[list[tuple[Frame, Dataset]]]] = defaultdict(list)
    for key, members in groups.items():
        for part in _split_far_apart(members):
            by_series[key[0]].append(part)
    for uid, parts in by_series.items():
        labels = _stack_labels(parts)
        stacks.extend(_series_info(uid, part, label) for part, label in zip(parts, labels))
    return sorted(stacks, key=lambda s: (str(s.folder), s.series_number or 0, s.description,
                                         s.series_uid, s.stack))


def _rounded(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 3) + 0.0 for v in values)


def _classic_key(ds: Dataset) -> str:
    """What makes single-frame images at one position different images: echo, TI, image type."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        return ""
    parts = []
    te, ti = number(ds.get("EchoTime")), number(ds.get("InversionTime"))
    if te is not None:
        parts.append(f"TE {te:g}")
    if ti is not None:
        parts.append(f"TI {ti:g}")
    itype = [str(v) for v in (ds.get("ImageType") or [])][2:]
    if itype:
        parts.append("/".join(itype))
    return ", ".join(parts)


def _split_far_apart(members: list[tuple[Frame, Dataset]]) -> list[list[tuple[Frame, Dataset]]]:
    """Frames sorted along the normal, split where two neighbours are a station apart."""
    normal = members[0][0].normal
    members = sorted(members, key=lambda m: (float(np.asarray(m[0].position) @ normal),
                                             number(m[1].get("InstanceNumber")) or 0.0,
                                             str(m[0].path), m[0].index or 0))
    pos = np.array([float(np.asarray(f.position) @ normal) for f, _ in members])
    d = np.diff(pos)
    steps = d[d > 0.01]
    med = float(np.median(steps)) if steps.size else 0.0
    cuts = [i + 1 for i in np.flatnonzero(d > max(STATION_GAP_MM, 5 * med))] if med else []
    bounds = [0, *cuts, len(members)]
    return [members[a:b] for a, b in itertools.pairwise(bounds)]


def _stack_labels(parts: list[list[tuple[Frame, Dataset]]]) -> list[str]:
    """Labels telling the stacks of one series apart (``""`` for a series of one stack): the stack's
    number, plane, and what differs between the stacks (stack id, echo, inversion, frame type)."""
    if len(parts) == 1:
        return [""]
    keys = [[p for p in (part[0][0].stack or _classic_key(part[0][1])).split(", ") if p] for part in parts]
    common = set.intersection(*(set(k) for k in keys))
    return [", ".join([f"stack {i + 1} of {len(parts)}", plane_of(part[0][0].normal),
                       *(p for p in key if p not in common)])
            for i, (part, key) in enumerate(zip(parts, keys))]


def _series_info(uid: str, members: list[tuple[Frame, Dataset]], stack: str) -> SeriesInfo:
    first = members[0][1]
    frames = tuple(f for f, _ in members)
    files = tuple(dict.fromkeys(f.path for f in frames))
    acq = acquisition_of(first)
    role, reason = classify(acq)
    for_uid = first.get("FrameOfReferenceUID")
    legacy = first.get("SharedFunctionalGroupsSequence")
    description = str(first.get("SeriesDescription") or first.get("ProtocolName") or "").strip()
    if not description and legacy:  # Legacy Converted: the classic description may sit in the shared group
        inner = legacy[0].get("UnassignedSharedConvertedAttributesSequence")
        if inner:
            description = str(inner[0].get("SeriesDescription") or inner[0].get("ProtocolName") or "").strip()
    plane = plane_of(frames[0].normal)
    number_ = number(first.get("SeriesNumber"))
    return SeriesInfo(
        series_uid=uid,
        study_uid=str(first.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(for_uid) if for_uid else None,
        frames=frames,
        files=files,
        description=description,
        modality=str(first.get("Modality", "") or ""),
        role=role,
        rows=frames[0].rows,
        columns=frames[0].columns,
        n_slices=len(frames),
        body_part=_body_part(first),
        folder=Path(os.path.commonpath([str(p.parent) for p in files])),
        series_number=int(number_) if number_ is not None else None,
        plane=plane,
        stack=stack,
        role_reason=reason,
        acquisition=acq,
        time=_series_time(first),
        patient=patient_key(first),
        multiframe=frames[0].index is not None,
    )


def _body_part(ds: Dataset) -> str:
    """BodyPartExamined, else (multi-frame) the shared FrameAnatomySequence's region, upper-case."""
    part = str(ds.get("BodyPartExamined", "") or "").strip()
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not part and shared and shared[0].get("FrameAnatomySequence"):
        region = shared[0].FrameAnatomySequence[0].get("AnatomicRegionSequence")
        part = str(region[0].get("CodeMeaning", "") or "") if region else ""
    return part.upper()


def _series_time(ds: Dataset) -> str:
    for date, time in (("SeriesDate", "SeriesTime"), ("AcquisitionDate", "AcquisitionTime"),
                       ("ContentDate", "ContentTime")):
        d, t = str(ds.get(date, "") or ""), str(ds.get(time, "") or "")
        if d or t:
            return f"{d}{t.split('.')[0]:0<6}"
    return str(ds.get("AcquisitionDateTime", "") or "")


# ---------------------------------------------------------------------------
# checking
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SliceSpacing:
    """The slice positions of a stack: ``step`` (mean, mm), ``even``, the largest departure from an
    even grid (``deviation_mm``) and the spacing an even resampling uses (``resampled_mm``)."""

    step: float
    even: bool
    deviation_mm: float
    resampled_mm: float
    n_even: int


def slice_spacing(info: SeriesInfo) -> SliceSpacing:
    """How evenly the slices of ``info`` (checked) are spaced."""
    pos = info.positions
    n = len(pos)
    step = float((pos[-1] - pos[0]) / (n - 1))
    deviation = float(np.max(np.abs(pos - (pos[0] + step * np.arange(n)))))
    smallest = float(np.min(np.diff(pos)))
    even = deviation <= EVEN_TOLERANCE_MM
    if even:
        return SliceSpacing(step=step, even=True, deviation_mm=deviation, resampled_mm=step, n_even=n)
    # dcm2niix's _Eq grid: from the first to the last slice, no interval wider than the smallest gap
    n_even = int(np.ceil((pos[-1] - pos[0]) / smallest - 1e-6)) + 1
    return SliceSpacing(step=step, even=False, deviation_mm=deviation,
                        resampled_mm=float((pos[-1] - pos[0]) / (n_even - 1)), n_even=n_even)


def check_series(info: SeriesInfo) -> None:
    """Raise :class:`DicomError` if the stack is not one complete axial volume.

    Refused: fewer than 2 slices; a slice normal more than 45 degrees from the
    patient's superior axis; two slices at one position; a gap over 1.5x the
    median slice spacing (missing slices). Unevenly spaced slices pass (they are
    resampled, :func:`read_series`).
    """
    where = _where(info)
    if info.n_slices < 2:
        raise DicomError(f"{where}: has {info.n_slices} slice; nxp2seg needs a stack of axial slices "
                         "(export the whole series)")
    if info.plane != "axial":
        tilt = float(np.degrees(np.arccos(min(1.0, abs(float(info.normal[2]))))))
        raise DicomError(f"{where}: {info.plane} slices (slice normal {tilt:.0f} degrees from the patient's "
                         "superior axis); nxp2seg expects axial slices: choose the axial T1/STIR series")
    pos = info.positions
    d = np.diff(pos)
    frames = info.frames
    dup = np.flatnonzero(d < 0.01)
    if dup.size:
        i = int(dup[0])
        raise DicomError(f"{where}: {dup.size} duplicate slice position(s), e.g. {_name(frames[i], info)} and "
                         f"{_name(frames[i + 1], info)} both at {pos[i]:.2f} mm; the folder holds the series "
                         "twice or several echoes: keep one copy of each slice")
    med = float(np.median(d))
    gaps = np.flatnonzero(d > MISSING_GAP * med)
    if gaps.size:
        counts = [max(1, int(np.rint(d[i] / med)) - 1) for i in gaps]
        missing = "; ".join(
            f"{c} between {_name(frames[i], info)} ({pos[i]:.1f} mm) and {_name(frames[i + 1], info)} "
            f"({pos[i + 1]:.1f} mm)" for c, i in zip(counts, gaps))
        raise DicomError(f"{where}: {sum(counts)} slice(s) missing ({missing}; slice spacing {med:.2f} mm); "
                         "re-export the complete series")


def _name(frame: Frame, info: SeriesInfo) -> str:
    """A frame's file relative to the series' folder (with its frame number if multi-frame)."""
    try:
        rel = frame.path.relative_to(info.folder)
    except ValueError:
        rel = Path(frame.path.name)
    return str(rel) if frame.index is None else f"{rel} frame {frame.index + 1}"


def _where(info: SeriesInfo) -> str:
    return f"{info.folder}: {info.label}"


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def read_series(info: SeriesInfo) -> nib.Nifti1Image:
    """The stack as a float32 NIfTI image, (column, row, slice) order, RAS affine from the frames.

    Rescale slope/intercept are applied per frame. Evenly spaced slices are
    returned as they are (slice ``k`` = ``info.frames[k]``); unevenly spaced
    ones resampled onto the even grid of :func:`slice_spacing`. Run
    :func:`check_series` first.
    """
    pixels = stack_pixels(info)  # (slice, row, column)
    data = np.ascontiguousarray(pixels.transpose(2, 1, 0), dtype=np.float32)
    affine_lps, positions = _affine_lps(info)
    spacing = slice_spacing(info)
    if not spacing.even:
        data, affine_lps = _resample_even(data, affine_lps, positions, spacing)
    return make_nifti(data, LPS @ affine_lps)


def read_series_grid(info: SeriesInfo) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The slices of the grid :func:`read_series` returns: positions ``(n, 3)`` (LPS, mm, of each
    slice's first pixel), orientation (ImageOrientationPatient) and spacing (between rows, between
    columns, between slices)."""
    affine, _ = _affine_lps(info)
    spacing = slice_spacing(info)
    step = affine[:3, 2] / np.linalg.norm(affine[:3, 2]) * spacing.resampled_mm
    if spacing.even:
        positions = np.array([f.position for f in info.frames], dtype=float)
    else:
        positions = affine[:3, 3] + np.arange(spacing.n_even)[:, None] * step
    f0 = info.frames[0]
    return positions, np.asarray(f0.orientation, dtype=float), (float(f0.spacing[0]), float(f0.spacing[1]),
                                                                float(spacing.resampled_mm))


def _affine_lps(info: SeriesInfo) -> tuple[np.ndarray, np.ndarray]:
    """The LPS affine of the frames (slice axis from the first to the last position) and positions."""
    f0, fn = info.frames[0], info.frames[-1]
    iop = np.asarray(f0.orientation, dtype=float)
    row_spacing, column_spacing = f0.spacing
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * column_spacing  # along a row: the column index i
    affine[:3, 1] = iop[3:] * row_spacing  # along a column: the row index j
    n = info.n_slices
    affine[:3, 2] = (np.asarray(fn.position) - np.asarray(f0.position)) / max(n - 1, 1)
    affine[:3, 3] = f0.position
    return affine, info.positions


def _resample_even(data: np.ndarray, affine: np.ndarray, pos: np.ndarray,
                   spacing: SliceSpacing) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation along the slice axis onto ``spacing.n_even`` slices ``resampled_mm`` apart."""
    target = pos[0] + spacing.resampled_mm * np.arange(spacing.n_even)
    upper = np.clip(np.searchsorted(pos, target, side="right"), 1, len(pos) - 1)
    lower = upper - 1
    w = np.clip((target - pos[lower]) / (pos[upper] - pos[lower]), 0.0, 1.0).astype(np.float32)
    out = data[:, :, lower] * (1.0 - w) + data[:, :, upper] * w
    direction = affine[:3, 2] / np.linalg.norm(affine[:3, 2])
    affine = affine.copy()
    affine[:3, 2] = direction * spacing.resampled_mm
    return np.ascontiguousarray(out, dtype=np.float32), affine


def geometry(info: SeriesInfo) -> dict[str, Any]:
    """Non-identifying facts about a stack (no UID, no patient attribute), for reports.

    ``spacing`` is in mm along (column, row, slice) and ``orientation`` the
    axis codes (e.g. ``"LPS"``) of the array :func:`read_series` returns.
    """
    affine_lps, _ = _affine_lps(info)
    spacing = slice_spacing(info)
    ras = LPS @ affine_lps
    return {
        "n_slices": info.n_slices,
        "rows": info.rows,
        "columns": info.columns,
        "spacing": [float(info.frames[0].spacing[1]), float(info.frames[0].spacing[0]),
                    float(spacing.resampled_mm)],
        "orientation": "".join(nib.aff2axcodes(ras)),
        "plane": info.plane,
        "even_spacing": spacing.even,
        "multiframe": info.multiframe,
    }
