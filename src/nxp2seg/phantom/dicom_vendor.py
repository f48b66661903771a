"""DICOM series built from real vendor files: a vendor's header and pixel stream, placed as a stack.

A hospital's exam cannot ship with the project, but the headers and pixel
streams of real scanners can: pydicom's test files (``pydicom`` and the
``pydicom-data`` package) hold MR images of Siemens, Philips, Toshiba and
GE (Enhanced MR) with every transfer syntax. :func:`series_from_template`
copies such a file once per slice, keeping every attribute of the vendor
(private tags, character set, transfer syntax, compressed pixel data),
and gives each copy new UIDs, the stack's geometry and the acquisition
parameters of a T1 or a STIR. Optionally the pixels are replaced by an
image (stored uncompressed), so that a model sees anatomy, and files can be
written without the Part-10 preamble or gzipped, as some exports are.

Used by the DICOM tests and by ``scripts/dicom_acceptance.py``.
"""

from __future__ import annotations

import copy
import gzip
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from nxp2seg.io import atomic_write_bytes

__all__ = ["pydicom_test_file", "series_from_template"]


def pydicom_test_file(name: str) -> Path:
    """A file of pydicom's test data, from the ``pydicom`` wheel or the ``pydicom-data`` package.

    Raises:
        FileNotFoundError: neither package has it (``pip install pydicom-data``).
    """
    import pydicom.data

    here = Path(pydicom.data.__file__).parent
    for folder in (here / "test_files", here / "charset_files"):
        if (folder / name).is_file():
            return folder / name
    try:
        import data_store  # the pydicom-data package

        path = Path(data_store.__file__).parent / "data" / name
        if path.is_file():
            return path
    except ImportError:
        pass
    raise FileNotFoundError(f"{name}: not in pydicom's test files; install the dev extra (pydicom-data)")


def _ds(value: float) -> str:
    value = float(value)
    return "0" if abs(value) < 1e-9 else format_number_as_ds(value)


def series_from_template(
    template: Path | Dataset,
    out_dir: Path,
    *,
    n_slices: int,
    origin: Sequence[float],
    row_dir: Sequence[float] = (1.0, 0.0, 0.0),
    col_dir: Sequence[float] = (0.0, 1.0, 0.0),
    pixel_spacing: Sequence[float] | None = None,
    slice_positions: Sequence[float] | None = None,
    slice_step: float = 5.0,
    series_number: int,
    description: str,
    study_uid: str,
    frame_of_reference_uid: str,
    scanning_sequence: str = "SE",
    inversion_time: float | None = None,
    repetition_time: float = 600.0,
    echo_time: float = 12.0,
    pixels: np.ndarray | None = None,
    extra: Mapping[str, Any] | None = None,
    uid_seed: str | None = None,
    file_pattern: str = "IM{k:04d}",
    raw: bool = False,
    gz: bool = False,
    order: Sequence[int] | None = None,
) -> list[Path]:
    """Write ``n_slices`` copies of a vendor file as one series (a stack of parallel slices).

    Slice ``k`` lies at ``origin + p_k * normal`` with ``normal = row_dir x col_dir``
    and ``p_k = slice_positions[k]`` (default ``k * slice_step``). ``pixels``
    ``(rows, columns, n_slices)`` replaces the vendor's pixel data (stored
    uncompressed as int16 when given so, else uint16); otherwise every slice keeps the template's pixel
    stream as it is (compressed or not). ``extra`` sets attributes by keyword.
    ``raw`` writes the dataset without preamble and file meta (implicit VR
    little endian, as dcm2niix still reads it); ``gz`` gzips each file.
    ``order`` permutes the instance numbers (files need not be in slice order).
    """
    base = pydicom.dcmread(template) if not isinstance(template, Dataset) else copy.deepcopy(template)
    row_dir, col_dir = np.asarray(row_dir, float), np.asarray(col_dir, float)
    normal = np.cross(row_dir, col_dir)
    positions = list(slice_positions) if slice_positions is not None else [k * slice_step
                                                                          for k in range(n_slices)]
    seed = uid_seed or generate_uid()
    series_uid = generate_uid(entropy_srcs=[seed, "series"])
    for keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "NumberOfFrames"):
        if keyword in base:
            delattr(base, keyword)
    base.StudyInstanceUID, base.SeriesInstanceUID = study_uid, series_uid
    base.FrameOfReferenceUID, base.Modality = frame_of_reference_uid, "MR"
    base.SOPClassUID = pydicom.uid.MRImageStorage
    base.SeriesNumber, base.SeriesDescription, base.ProtocolName = series_number, description, description
    base.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
    if pixel_spacing is not None:
        base.PixelSpacing = [_ds(v) for v in pixel_spacing]
    elif "PixelSpacing" not in base:
        base.PixelSpacing = ["1", "1"]
    base.SliceThickness = _ds(abs(np.median(np.diff(positions))) if n_slices > 1 else slice_step)
    base.ScanningSequence = scanning_sequence.split("\\") if "\\" in scanning_sequence else scanning_sequence
    base.SequenceVariant, base.ScanOptions = "NONE", ""  # the vendor's options (e.g. FS) are not this stack's
    base.RepetitionTime, base.EchoTime = _ds(repetition_time), _ds(echo_time)
    if inversion_time is not None:
        base.InversionTime = _ds(inversion_time)
    elif "InversionTime" in base:
        delattr(base, "InversionTime")
    for keyword, value in (extra or {}).items():
        setattr(base, keyword, value)
    if pixels is not None:
        pixels = np.asarray(pixels)
        base.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        for keyword in ("RescaleSlope", "RescaleIntercept"):
            if keyword in base:
                delattr(base, keyword)
    numbers = list(order) if order is not None else list(range(n_slices))
    out_dir = Path(out_dir)
    paths = []
    for k in range(n_slices):
        ds = copy.deepcopy(base)
        sop = generate_uid(entropy_srcs=[seed, "instance", str(k)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ipp = np.asarray(origin, float) + positions[k] * normal
        ds.ImagePositionPatient = [_ds(v) for v in ipp]
        ds.SliceLocation = _ds(float(ipp @ normal))
        ds.InstanceNumber = numbers[k] + 1
        if pixels is not None:
            plane = pixels[:, :, k] if pixels.dtype in (np.int16, np.uint16) else pixels[:, :, k].astype(np.uint16)
            ds.set_pixel_data(np.ascontiguousarray(plane), "MONOCHROME2", 16, generate_instance_uid=False)
        if raw:
            fp = DicomBytesIO()
            fp.is_little_endian, fp.is_implicit_VR = True, True
            write_dataset(fp, ds)  # no preamble, no file meta: "raw" DICOM
            data = fp.getvalue()
        else:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
        data = gzip.compress(data, mtime=0) if gz else data
        name = file_pattern.format(k=k + 1) + (".gz" if gz else "")
        paths.append(atomic_write_bytes(out_dir / name, data))
    return paths
