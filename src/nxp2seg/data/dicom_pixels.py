"""The pixels of a DICOM stack, decoded and rescaled frame by frame.

Single-frame Part-10 files go through SimpleITK (GDCM decodes every standard
codec; its per-slice notes on stderr are silenced); anything else
(multi-frame objects, files without preamble, gzipped files) through pydicom,
which also takes over when SimpleITK fails. The geometry is not read here:
:func:`~nxp2seg.data.dicom_series.read_series` builds it from the frames.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from nxp2seg.data.dicom_headers import DicomError, load_dataset

__all__ = ["stack_pixels"]


def _where(info: Any) -> str:
    return f"{info.folder}: {info.label}"


def stack_pixels(info: Any) -> np.ndarray:
    """The frames' rescaled pixels, ``(slice, row, column)`` float32.

    Single-frame Part-10 files go through SimpleITK (GDCM decodes every
    standard codec), anything else (multi-frame, no preamble, gzipped) through
    pydicom, which also takes over when SimpleITK fails.
    """
    classic = all(f.index is None for f in info.frames)
    if classic and all(_kind_of(p) == "part10" for p in info.files):
        try:
            return _pixels_sitk(info)
        except DicomError:
            pass
    return _pixels_pydicom(info)


def _kind_of(path: Path) -> str:
    with open(path, "rb") as f:
        f.seek(128)
        return "part10" if f.read(4) == b"DICM" else "other"


def _pixels_sitk(info: Any) -> np.ndarray:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f.path) for f in info.frames])
    reader.SetOutputPixelType(sitk.sitkFloat32)
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # GDCM's per-slice notes are not the user's business
    try:
        image = reader.Execute()
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise DicomError(f"{_where(info)}: SimpleITK cannot read the series ({reason})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    array = sitk.GetArrayFromImage(image)
    if array.shape != (info.n_slices, info.rows, info.columns):
        raise DicomError(f"{_where(info)}: SimpleITK read shape {array.shape}")
    return array.astype(np.float32, copy=False)


def _pixels_pydicom(info: Any) -> np.ndarray:
    out = np.empty((info.n_slices, info.rows, info.columns), dtype=np.float32)
    by_file: dict[Path, list[int]] = defaultdict(list)
    for k, frame in enumerate(info.frames):
        by_file[frame.path].append(k)
    for path, ks in by_file.items():
        ds = load_dataset(path)
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise DicomError(f"{_where(info)}: {path.name} is a colour image; an MR magnitude image has "
                             "one sample per pixel: export the original MR series")
        try:
            array = ds.pixel_array
        except Exception as e:  # noqa: BLE001 - a missing codec or damaged pixel data
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", str(syntax))
            raise DicomError(f"{_where(info)}: the pixels of {path.name} cannot be decoded ({name}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); export the series "
                             "uncompressed or as single-frame files") from None
        array = np.asarray(array)
        if array.ndim == 2:
            array = array[None]
        for k in ks:
            frame = info.frames[k]
            out[k] = array[frame.index or 0].astype(np.float32) * frame.slope + frame.intercept
    return out
