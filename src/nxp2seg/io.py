"""File writing that never leaves a partial file behind, and deterministic NIfTI I/O.

Every file nxp2seg writes goes through :func:`atomic_write_bytes`: the bytes go
to a temporary file in the same folder, are flushed to disk, and the file is
renamed into place. A crash leaves either the old file or the new one, never
half of one. NIfTI files are gzip-compressed with a zero timestamp so that the
same image gives the same bytes.
"""

from __future__ import annotations

import gzip
import io
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_nifti", "write_csv", "nifti_bytes"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def nifti_bytes(img: nib.Nifti1Image, compress: bool = True, compresslevel: int = 1) -> bytes:
    """Serialise a NIfTI-1 image; gzip with mtime 0 so equal images give equal bytes."""
    raw = img.to_bytes()
    if not compress:
        return raw
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=compresslevel, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def save_nifti(img: nib.Nifti1Image, path: str | os.PathLike, compresslevel: int = 1) -> Path:
    """Atomically save a NIfTI image (``.nii`` or ``.nii.gz`` by suffix)."""
    path = Path(path)
    return atomic_write_bytes(path, nifti_bytes(img, compress=path.name.endswith(".gz"), compresslevel=compresslevel))


def make_nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A NIfTI-1 image with both qform and sform set to ``affine`` (code 1, scanner)."""
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=float))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def write_csv(df: pd.DataFrame, path: str | os.PathLike, float_format: str | None = "%.6g") -> Path:
    """Atomically write a table as CSV (no index, blank for missing)."""
    return atomic_write_text(path, df.to_csv(index=False, float_format=float_format, na_rep=""))
