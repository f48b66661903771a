"""DICOM files as a hospital exports them: which files are images, and each image's frames.

A PACS export holds single-frame images, multi-frame images (Enhanced MR,
Legacy Converted Enhanced MR: a series, or several stacks, in one file), files
without the Part-10 preamble ("raw" DICOM, read as dcm2niix reads them: the
first element belongs to group 0002 or 0008), gzipped files, and objects that
are not images (DICOMDIR, reports, presentation states, SEG).
:func:`scan_folder` sorts every file into a :class:`Scan`, so that nothing
that looks like imaging is dropped in silence: ``images`` (DICOM images with
geometry; :func:`frames_of` reads each frame's position and orientation from
the functional groups of a multi-frame object, or the classic attributes),
``unusable`` (looks like imaging, cannot be used: the reason), ``nifti`` (by
name) and ``other`` (counted per kind for the log).

:func:`acquisition_of` reads the parameters that tell a T1 from a STIR from
the classic attributes or the Enhanced MR functional groups. No patient
attribute leaves this module: a patient is :func:`patient_key`, a digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = [
    "Acquisition",
    "DicomError",
    "Frame",
    "Scan",
    "Unusable",
    "acquisition_of",
    "floats",
    "frames_of",
    "load_dataset",
    "number",
    "patient_key",
    "read_header",
    "scan_folder",
]

log = logging.getLogger(__name__)

DICOMDIR_UID = "1.2.840.10008.1.3.10"
#: Multi-frame MR image storage: Enhanced MR, Legacy Converted Enhanced MR.
ENHANCED_MR_UIDS = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4")
#: A gzipped file is decompressed in memory up to this size (a bigger one is named, not read).
MAX_GZIP_BYTES = 2 << 30
#: File names that look like images even when they cannot be read (the rest is ignored when unreadable).
IMAGE_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima", ".img", ".gz")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: What pydicom raises on a file that is not (intact) DICOM.
READ_ERRORS = (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError, IndexError,
               AttributeError, struct.error, NotImplementedError)


class DicomError(ValueError):
    """A DICOM folder or series nxp2seg cannot use; the message names it and the fix."""


@dataclass(frozen=True)
class Frame:
    """One 2D image: a single-frame file, or frame ``index`` (0-based) of a multi-frame file.

    ``position`` is ImagePositionPatient (LPS, mm) of the first pixel,
    ``orientation`` ImageOrientationPatient (row then column direction
    cosines), ``spacing`` PixelSpacing (between rows, between columns, mm).
    ``stack`` tells frames of one multi-frame object apart when they form
    several stacks (StackID, plus anything that makes frames at one position
    different images: echo, inversion time, temporal position, frame type).
    """

    path: Path
    index: int | None
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float]
    rows: int
    columns: int
    stack: str = ""
    slope: float = 1.0
    intercept: float = 0.0

    @property
    def normal(self) -> np.ndarray:
        """The unit slice normal (LPS), ``cross(row direction, column direction)``."""
        iop = np.asarray(self.orientation, dtype=float)
        n = np.cross(iop[:3], iop[3:])
        return n / (np.linalg.norm(n) or 1.0)

    @property
    def name(self) -> str:
        """The file's name, with the frame number for a multi-frame file."""
        return self.path.name if self.index is None else f"{self.path.name} frame {self.index + 1}"


@dataclass(frozen=True)
class Acquisition:
    """The acquisition parameters of a series that tell its contrast (no identifier).

    ``scanning`` and ``variant`` are ScanningSequence / SequenceVariant values
    (``SE``, ``IR``, ``GR``; ``SK``, ``SP``, ``MP``...), also derived from an
    Enhanced MR header; times in ms (``None`` when absent); ``fat_suppressed``
    from ScanOptions (``FS``, ``SFS``, ``FAT``...) or SpectrallySelectedSuppression;
    ``text`` SeriesDescription, ProtocolName and SequenceName together.
    """

    scanning: frozenset[str] = frozenset()
    variant: frozenset[str] = frozenset()
    inversion_time: float | None = None
    repetition_time: float | None = None
    echo_time: float | None = None
    fat_suppressed: bool = False
    text: str = ""
    image_type: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unusable:
    """A file that looks like imaging but cannot be used, and why."""

    path: Path
    reason: str
    study_uid: str | None = None


@dataclass
class Scan:
    """Every file of a folder, sorted (see the module docstring)."""

    root: Path
    images: list[tuple[Path, Dataset]] = field(default_factory=list)
    unusable: list[Unusable] = field(default_factory=list)
    nifti: list[Path] = field(default_factory=list)
    other: Counter = field(default_factory=Counter)


# ---------------------------------------------------------------------------
# reading one file
# ---------------------------------------------------------------------------


def _looks_raw(head: bytes) -> bool:
    """DICOM without preamble, as dcm2niix accepts it: the first tag is of group 0002 or 0008."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and element < 0x0200


def _open(path: Path) -> tuple[bytes | None, str]:
    """The bytes to parse (``None`` = read the file itself) and the file's kind.

    Kinds: ``part10`` (preamble and ``DICM``), ``raw`` (no preamble), ``gzip``
    (decompressed in memory), ``gzip-too-large``, ``gzip-broken``, ``other``.
    """
    with open(path, "rb") as f:
        head = f.read(132)
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as g:
                data = g.read(MAX_GZIP_BYTES + 1)
        except (OSError, EOFError):
            return None, "gzip-broken"
        if len(data) > MAX_GZIP_BYTES:
            return None, "gzip-too-large"
        if data[128:132] == b"DICM" or _looks_raw(data[:8]):
            return data, "gzip"
        return None, "gzip-other"
    if head[128:132] == b"DICM":
        return None, "part10"
    if _looks_raw(head[:8]):
        return None, "raw"
    return None, "other"


def read_header(path: Path, *, pixels: bool = False) -> Dataset | None:
    """The DICOM dataset of a file (Part-10, raw or gzipped), else ``None``.

    Without ``pixels`` only the header is parsed. The file's kind is kept in
    ``ds.nxp2seg_kind`` (``part10``, ``raw``, ``gzip``).
    """
    try:
        data, kind = _open(path)
        if kind not in ("part10", "raw", "gzip"):
            return None
        source = io.BytesIO(data) if data is not None else str(path)
        ds = pydicom.dcmread(source, stop_before_pixels=not pixels, force=kind != "part10")
    except READ_ERRORS:
        return None
    ds.nxp2seg_kind = kind
    meta = getattr(ds, "file_meta", None)
    if kind != "part10" and (meta is None or "TransferSyntaxUID" not in meta):
        # raw DICOM has no file meta: its encoding is what pydicom found while parsing
        implicit, little = getattr(ds, "original_encoding", (True, True))
        if meta is None:
            ds.file_meta = meta = pydicom.dataset.FileMetaDataset()
        meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit
                                  else pydicom.uid.ExplicitVRLittleEndian if little
                                  else pydicom.uid.ExplicitVRBigEndian)
    return ds


def load_dataset(path: Path) -> Dataset:
    """A file's whole dataset (pixels included); :class:`DicomError` naming the file if it cannot be read."""
    ds = read_header(path, pixels=True)
    if ds is None:
        raise DicomError(f"{path}: cannot read it as DICOM any more; the file changed or is damaged since "
                         "the folder was scanned: scan it again")
    return ds


# ---------------------------------------------------------------------------
# a folder
# ---------------------------------------------------------------------------


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, in sorted order (symlinked folders not followed)."""
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / f for f in sorted(files) if not f.startswith("."))
    return out


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def scan_folder(folder: Path) -> Scan:
    """Sort every file under ``folder`` (recursive, hidden files skipped) into a :class:`Scan`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: not a folder; point the input at a folder of DICOM files")
    scan = Scan(root=folder)
    for path in _walk(folder):
        if _is_nifti(path):
            scan.nifti.append(path)
            continue
        try:
            _data, kind = _open(path)
        except OSError as e:
            scan.unusable.append(Unusable(path, f"cannot be opened ({e.strerror or e})"))
            continue
        if kind in ("gzip-broken", "gzip-too-large", "gzip-other"):
            scan.unusable.append(Unusable(path, {
                "gzip-broken": "a damaged gzip file (it cannot be decompressed): copy it again",
                "gzip-too-large": f"a gzip file larger than {MAX_GZIP_BYTES >> 30} GiB decompressed: "
                                  "decompress it first",
                "gzip-other": "a gzip file that holds neither DICOM nor NIfTI: decompress it and "
                              "check what it is",
            }[kind]))
            continue
        ds = read_header(path) if kind != "other" else None
        if ds is None:
            if kind != "other" or path.suffix.lower() in IMAGE_SUFFIXES:
                scan.unusable.append(Unusable(path, "named or marked like DICOM, but not readable as "
                                                    "DICOM (damaged or truncated): export it again"))
            else:
                scan.other[path.suffix.lower() or "(no extension)"] += 1
            continue
        _sort_dataset(scan, path, ds)
    return scan


def _sort_dataset(scan: Scan, path: Path, ds: Dataset) -> None:
    """Put one readable DICOM file into ``scan``: an image with geometry, unusable, or other."""
    sop_class = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None),
                                                         "MediaStorageSOPClassUID", ""))
    if sop_class == DICOMDIR_UID or "DirectoryRecordSequence" in ds:
        scan.other["DICOMDIR"] += 1
        return
    if "SOPClassUID" not in ds and "Rows" not in ds:
        scan.unusable.append(Unusable(path, "a DICOM file without SOP Class UID or image attributes "
                                            "(damaged or truncated): export it again"))
        return
    if "PixelData" not in ds and "Rows" not in ds:  # reports, presentation states, key objects...
        scan.other[f"DICOM {ds.get('Modality', '') or 'object'} without pixels"] += 1
        return
    modality = str(ds.get("Modality", "") or "")
    if modality == "SEG" or "SegmentSequence" in ds:
        scan.other["DICOM SEG"] += 1
        return
    study = str(ds.get("StudyInstanceUID", "") or "") or None
    if "SeriesInstanceUID" not in ds:
        scan.unusable.append(Unusable(path, "a DICOM image without SeriesInstanceUID: its series "
                                            "cannot be told; export it again from the PACS", study))
        return
    if not frames_of(path, ds):
        scan.unusable.append(Unusable(path, f"a DICOM {modality or 'image'} without slice position or "
                                            "orientation (secondary capture, screenshot or damaged "
                                            "header): it cannot be placed in space", study))
        return
    scan.images.append((path, ds))


# ---------------------------------------------------------------------------
# frames and acquisition parameters
# ---------------------------------------------------------------------------


def floats(value: Any) -> np.ndarray:
    """A DICOM multi-valued number (DS/IS/FD) as a float array."""
    return np.array([float(v) for v in value], dtype=float)


def number(value: Any) -> float | None:
    """A single DICOM number, ``None`` if absent, empty or not a number."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None


def _item(groups: Any, keyword: str) -> Dataset | None:
    """The first item of sequence ``keyword`` inside a functional-groups item, else ``None``."""
    if groups is None:
        return None
    seq = groups.get(keyword)
    return seq[0] if seq else None


def _group(shared: Dataset | None, frame: Dataset | None, keyword: str) -> Dataset | None:
    """A functional group of one frame: its own item, else the shared one."""
    return _item(frame, keyword) or _item(shared, keyword)


def frames_of(path: Path, ds: Dataset) -> list[Frame]:
    """The frames of a DICOM image with geometry (``[]`` when position or orientation is missing).

    A multi-frame object (``PerFrameFunctionalGroupsSequence``) gives one frame per
    item, with position, orientation, pixel spacing and rescale from the frame's
    own functional groups or the shared ones, and its stack key; a classic image
    gives one frame from its root attributes.
    """
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError):
        return []
    if rows <= 0 or columns <= 0:
        return []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        return _multi_frames(path, ds, per_frame, rows, columns)
    try:
        frame = Frame(path=path, index=None, position=tuple(floats(ds.ImagePositionPatient)),
                      orientation=tuple(floats(ds.ImageOrientationPatient)),
                      spacing=tuple(floats(ds.PixelSpacing)), rows=rows, columns=columns,
                      slope=number(ds.get("RescaleSlope")) or 1.0,
                      intercept=number(ds.get("RescaleIntercept")) or 0.0)
    except (AttributeError, TypeError, ValueError):
        return []
    if len(frame.position) != 3 or len(frame.orientation) != 6 or len(frame.spacing) != 2:
        return []
    return [frame]


def _multi_frames(path: Path, ds: Dataset, per_frame: Any, rows: int, columns: int) -> list[Frame]:
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    frames = []
    for i, item in enumerate(per_frame):
        pos = _group(shared, item, "PlanePositionSequence")
        ori = _group(shared, item, "PlaneOrientationSequence")
        meas = _group(shared, item, "PixelMeasuresSequence")
        if pos is None or ori is None or meas is None:
            return []
        try:
            position = tuple(floats(pos.ImagePositionPatient))
            orientation = tuple(floats(ori.ImageOrientationPatient))
            spacing = tuple(floats(meas.PixelSpacing))
        except (AttributeError, TypeError, ValueError):
            return []
        if len(position) != 3 or len(orientation) != 6 or len(spacing) != 2:
            return []
        rescale = _group(shared, item, "PixelValueTransformationSequence")
        slope = number(rescale.get("RescaleSlope")) if rescale is not None else None
        intercept = number(rescale.get("RescaleIntercept")) if rescale is not None else None
        frames.append(Frame(path=path, index=i, position=position, orientation=orientation,
                            spacing=spacing, rows=rows, columns=columns, stack=_stack_key(shared, item),
                            slope=slope if slope is not None else number(ds.get("RescaleSlope")) or 1.0,
                            intercept=intercept if intercept is not None
                            else number(ds.get("RescaleIntercept")) or 0.0))
    return frames


def _stack_key(shared: Dataset | None, item: Dataset) -> str:
    """What separates frames of one multi-frame object into stacks (see :class:`Frame`)."""
    parts = []
    content = _item(item, "FrameContentSequence")
    if content is not None and content.get("StackID") not in (None, ""):
        parts.append(f"stack {content.StackID}")
    if content is not None and content.get("TemporalPositionIndex") not in (None, ""):
        parts.append(f"time {content.TemporalPositionIndex}")
    echo = _group(shared, item, "MREchoSequence")
    te = number(echo.get("EffectiveEchoTime")) if echo is not None else None
    if te is not None:
        parts.append(f"TE {te:g}")
    modifier = _group(shared, item, "MRModifierSequence")
    ti = number(modifier.get("InversionTimes")) if modifier is not None else None
    if ti is not None:
        parts.append(f"TI {ti:g}")
    ftype = _group(shared, item, "MRImageFrameTypeSequence")
    if ftype is not None and ftype.get("FrameType"):
        values = list(ftype.FrameType) if not isinstance(ftype.FrameType, str) else [ftype.FrameType]
        if len(values) > 2:
            parts.append("/".join(str(v) for v in values[2:]))
    return ", ".join(parts)


_FAT_OPTIONS = {"FS", "SFS", "FAT", "FATSAT", "FSAT", "SPAIR", "SPIR", "CHESS", "FS_SPIR", "FS_SPAIR"}


def acquisition_of(ds: Dataset) -> Acquisition:
    """The :class:`Acquisition` of a classic or Enhanced MR header."""
    text = " ".join(str(ds.get(k, "") or "") for k in
                    ("SeriesDescription", "ProtocolName", "SequenceName", "PulseSequenceName"))
    scanning, variant = _values(ds.get("ScanningSequence")), _values(ds.get("SequenceVariant"))
    options = _values(ds.get("ScanOptions"))
    ti, tr, te = (number(ds.get(k)) for k in ("InversionTime", "RepetitionTime", "EchoTime"))
    fat = bool(options & _FAT_OPTIONS)
    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    first_seq = ds.get("PerFrameFunctionalGroupsSequence")
    first = first_seq[0] if first_seq else None
    if shared is not None or first is not None or "EchoPulseSequence" in ds:  # Enhanced MR attributes
        pulse = str(ds.get("EchoPulseSequence", "") or "").upper()
        scanning = scanning | ({"SE"} if pulse in ("SPIN", "BOTH") else set()) | (
            {"GR"} if pulse in ("GRADIENT", "BOTH") else set())
        if str(ds.get("InversionRecovery", "") or "").upper() == "YES":
            scanning = scanning | {"IR"}
        modifier = _group(shared, first, "MRModifierSequence")
        if modifier is not None:
            if str(modifier.get("InversionRecovery", "") or "").upper() == "YES":
                scanning = scanning | {"IR"}
            ti = number(modifier.get("InversionTimes")) if ti is None else ti
        timing = _group(shared, first, "MRTimingAndRelatedParametersSequence")
        if timing is not None and tr is None:
            tr = number(timing.get("RepetitionTime"))
        echo = _group(shared, first, "MREchoSequence")
        if echo is not None and te is None:
            te = number(echo.get("EffectiveEchoTime"))
        suppression = str(ds.get("SpectrallySelectedSuppression", "") or "").upper()
        fat = fat or suppression in ("FAT", "FAT_AND_WATER", "SILICON_GEL_AND_FAT")
        legacy = _group(shared, first, "UnassignedSharedConvertedAttributesSequence")
        if legacy is not None:  # Legacy Converted Enhanced MR keeps the classic attributes here
            inner = acquisition_of(legacy)
            scanning, variant = scanning | inner.scanning, variant | inner.variant
            ti = ti if ti is not None else inner.inversion_time
            tr = tr if tr is not None else inner.repetition_time
            te = te if te is not None else inner.echo_time
            fat = fat or inner.fat_suppressed
            text = f"{text} {inner.text}"
    image_type = tuple(str(v).upper() for v in _list(ds.get("ImageType")))
    return Acquisition(scanning=frozenset(scanning), variant=frozenset(variant), inversion_time=ti,
                       repetition_time=tr, echo_time=te, fat_suppressed=fat, text=" ".join(text.split()),
                       image_type=image_type)


def _list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return [value] if isinstance(value, (str, bytes)) else list(value)


def _values(value: Any) -> set[str]:
    """A CS multi-value (``SE\\IR``) as upper-case strings."""
    return {p.strip().upper() for v in _list(value) for p in str(v).split("\\") if p.strip()}


def patient_key(ds: Dataset) -> str:
    """A one-way digest of the patient (PatientID, PatientName, PatientBirthDate), 10 hex digits.

    It tells two studies of one patient apart from two patients without carrying
    the identifiers; ``""`` when the header has none of them. Anyone holding the
    hospital's patient list could recompute it: treat it as a pseudonym, not as
    anonymous.
    """
    parts = [str(ds.get(k, "") or "").strip() for k in ("PatientID", "PatientName", "PatientBirthDate")]
    if not any(parts):
        return ""
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()[:10]
