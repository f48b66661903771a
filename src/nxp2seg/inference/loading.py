"""Load one exam's T1 and STIR and check them before anything is computed.

NIfTI files are checked from the header first (dimensions, voxel count, data
type, an axial T1), then the voxels (finite, not constant), then the pair
(the STIR covers the T1's field of view); DICOM series are read exactly
(:mod:`nxp2seg.data.dicom_series`) and written to NIfTI in a work folder. The
rules are :mod:`nxp2seg.data.images`' (``verify`` applies the same ones)
under :data:`~nxp2seg.data.images.PREDICT_POLICY`; every refusal is a
:class:`CaseError` naming the case, the file and what to do.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from nxp2seg.data.images import (
    MAX_VOXELS,
    PREDICT_POLICY,
    axial_tilt,
    constant_value,
    field_of_view_overlap,
    is_real_dtype,
    nonfinite_count,
    spatial_shape,
)
from nxp2seg.data.dicom_headers import DicomError
from nxp2seg.data.dicom_series import check_series, read_series
from nxp2seg.inference.inputs import CaseInput

__all__ = ["MAX_VOXELS", "CaseError", "image_data", "load_case_images"]

POLICY = PREDICT_POLICY


class CaseError(ValueError):
    """This case cannot be predicted; the message says why and what to do."""


def _load_nifti(path: Path, what: str, case_id: str) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - anything nibabel raises means the same to the user
        raise CaseError(f"{case_id}: cannot read {what} {path} as NIfTI ({type(e).__name__}: {e}); "
                        "re-export it as .nii.gz") from None
    shape = tuple(int(s) for s in img.shape)
    volume, squeezed = spatial_shape(shape)
    if squeezed:
        img = img.slicer[..., 0]
    if volume is None:
        raise CaseError(f"{case_id}: {what} {path} has shape {shape}; nxp2seg needs one 3D volume "
                        "(split 4D series, stack 2D slices into a volume)")
    if min(volume) < 2:
        raise CaseError(f"{case_id}: {what} {path} has shape {volume}: a single slice is not a volume")
    if POLICY.max_voxels is not None and math.prod(volume) > POLICY.max_voxels:
        raise CaseError(f"{case_id}: {what} {path} has {math.prod(volume):,} voxels (shape {volume}), "
                        f"more than nxp2seg accepts ({POLICY.max_voxels:,}); check the header or crop it")
    dtype = img.get_data_dtype()
    if not is_real_dtype(dtype):  # complex, bool, 1-bit, RGB, ...
        raise CaseError(f"{case_id}: {what} {path} has data type {dtype}; an MR magnitude image "
                        "is integer or real")
    return img


def image_data(img: nib.Nifti1Image, what: str, path: Any, case_id: str) -> np.ndarray:
    """The voxels of a checked image as float32, refused when not finite or constant."""
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # noqa: BLE001 - truncated or corrupt files
        raise CaseError(f"{case_id}: cannot read the voxels of {what} {path} ({type(e).__name__}: {e}); "
                        "the file is damaged: copy or export it again") from None
    bad = nonfinite_count(data)
    if bad:
        raise CaseError(f"{case_id}: {what} {path} has {bad} NaN/infinite voxels; fix the export")
    constant = constant_value(data)
    if constant is not None and POLICY.constant_is_error:
        raise CaseError(f"{case_id}: {what} {path} is constant ({float(constant):g} everywhere); "
                        "it holds no image")
    return data


def _check_axial(img: nib.Nifti1Image, what: str, path: Path, case_id: str) -> None:
    """Refuse an image whose slice axis (the axis of clearly largest spacing) is not superior-inferior.

    Near-isotropic grids say nothing about the acquisition plane and pass.
    DICOM series are checked by their slice normal.
    """
    tilt = axial_tilt(img.affine)
    if tilt is None or tilt.axial:
        return
    raise CaseError(f"{case_id}: {what} {path} is not an axial acquisition: its slice axis (array axis "
                    f"{tilt.axis}, {tilt.spacing_mm:.3g} mm) points {tilt.tilt_deg:.0f} degrees from the "
                    f"patient's superior axis ({tilt.plane} slices); nxp2seg expects axial T1 and STIR: "
                    "export the axial series")


def load_case_images(case: CaseInput, work_dir: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict]:
    """T1 and STIR of a case as NIfTI images, checked; DICOM series are read and written to ``work_dir``.

    Returns:
        ``(t1, stir, sources)``; ``sources`` maps ``t1``/``stir`` to the NIfTI paths the
        preprocessing reads (the input files, or converted copies in ``work_dir``).
    """
    if case.error:
        raise CaseError(case.error)
    sources: dict[str, Path] = {}
    images = {}
    for key in ("t1", "stir"):
        series = getattr(case, f"{key}_series")
        if series is not None:
            try:
                check_series(series)
                img = read_series(series)
            except DicomError as e:
                raise CaseError(f"{case.case_id}: {key.upper()} series: {e}") from None
            path = work_dir / f"{key}.nii.gz"
            nib.save(img, str(path))
            img = nib.load(str(path))
        else:
            path = Path(case.stir if key == "stir" else case.t1)
            img = _load_nifti(path, key.upper(), case.case_id)
            if key == "t1" and POLICY.require_axial:
                _check_axial(img, "T1", path, case.case_id)
        sources[key] = path
        images[key] = img
    t1, stir = images["t1"], images["stir"]
    frac = field_of_view_overlap(t1.shape[:3], t1.affine, stir.shape[:3], stir.affine)
    if not POLICY.stir_overlap_ok(frac):
        raise CaseError(f"{case.case_id}: T1 ({sources['t1']}) and STIR ({sources['stir']}) overlap in "
                        f"only {100 * frac:.0f}% of the T1's field of view; they are not the same "
                        "station of the same exam (check the pairing and the affines)")
    return t1, stir, sources
