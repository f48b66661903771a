"""Checks of one MR image and of a T1/STIR pair: one set of rules for ``verify`` and ``predict``.

Each check decides *what is wrong* from a header or the voxels; the caller
says *where* (``verify``: a problem of the cohort report, file relative to
the cohort; ``predict``: the case's error, with its path) in its own words.
Where the two commands differ, the difference is an explicit
:class:`ImagePolicy` flag, not a second implementation:

================================  =========================  =========================
check                             ``verify`` (training data)  ``predict`` (an exam)
================================  =========================  =========================
constant image                    warning                    error (no image to segment)
STIR covers the T1's field of     any overlap                at least half
view
more voxels than ``MAX_VOXELS``   not checked                error, from the header
T1 slices not axial               not checked                error (tilt > 45 degrees)
================================  =========================  =========================

Nothing here reads torch: ``verify`` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MAX_AXIAL_TILT_DEG",
    "MAX_VOXELS",
    "PREDICT_POLICY",
    "VERIFY_POLICY",
    "AxialTilt",
    "ImagePolicy",
    "axial_tilt",
    "constant_value",
    "corners",
    "field_of_view_overlap",
    "geometry_codes",
    "is_real_dtype",
    "nonfinite_count",
    "spatial_shape",
]

#: Larger images are refused before their data are read (header shape only).
MAX_VOXELS = 2048 * 2048 * 512
#: A slice axis further than this from the patient's superior axis is not an axial acquisition.
MAX_AXIAL_TILT_DEG = 45.0


@dataclass(frozen=True)
class ImagePolicy:
    """How strict the checks are (see the module's table).

    Attributes:
        constant_is_error: a constant image is an error (else a warning).
        min_stir_overlap: share of the T1's field of view the STIR must cover;
            ``0`` accepts any overlap (the boxes only have to meet).
        max_voxels: refuse an image with more voxels (``None``: no limit).
        require_axial: refuse a T1 whose slice axis is tilted more than
            :data:`MAX_AXIAL_TILT_DEG` from superior-inferior.
    """

    constant_is_error: bool
    min_stir_overlap: float
    max_voxels: int | None
    require_axial: bool

    def stir_overlap_ok(self, fraction: float) -> bool:
        """Whether a STIR covering ``fraction`` of the T1's field of view passes."""
        return fraction > 0.0 if self.min_stir_overlap <= 0 else fraction >= self.min_stir_overlap


#: ``verify``: a cohort's images, reported and left to the user to judge.
VERIFY_POLICY = ImagePolicy(
    constant_is_error=False, min_stir_overlap=0.0, max_voxels=None, require_axial=False
)
#: ``predict``: an exam the model must segment.
PREDICT_POLICY = ImagePolicy(
    constant_is_error=True, min_stir_overlap=0.5, max_voxels=MAX_VOXELS, require_axial=True
)


def spatial_shape(shape: Sequence[int]) -> tuple[tuple[int, ...] | None, bool]:
    """``(shape of the 3D volume, squeezed)`` of a header shape; ``(None, False)`` if not 3D.

    A trailing singleton 4th dimension (``(X, Y, Z, 1)``) is a 3D volume
    (``squeezed`` is then True); anything else but three dimensions is not.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 4 and shape[3] == 1:
        return shape[:3], True
    return (shape, False) if len(shape) == 3 else (None, False)


def is_real_dtype(dtype: np.dtype) -> bool:
    """Integer or real voxels (not complex, bool/1-bit, RGB or another structured type)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iuf" and dtype.names is None


def geometry_codes(header: Any, affine: np.ndarray) -> tuple[bool, tuple[int, int], float]:
    """``(usable, (sform_code, qform_code), |det|)``: does the header say where the patient is?

    Usable when the affine is finite and invertible and at least one of the
    sform/qform codes is set (right and left come from it). Headers without
    the codes (not NIfTI) count as set.
    """
    codes = (int(header["sform_code"]), int(header["qform_code"])) if "sform_code" in header else (1, 1)
    a = np.asarray(affine, dtype=float)
    det = abs(float(np.linalg.det(a[:3, :3]))) if np.all(np.isfinite(a)) else 0.0
    return det > 1e-12 and codes != (0, 0), codes, det


def nonfinite_count(data: np.ndarray) -> int:
    """Number of NaN and infinite voxels (0 for integer data)."""
    data = np.asarray(data)
    if data.dtype.kind not in "fc":
        return 0
    return int(data.size - np.count_nonzero(np.isfinite(data)))


def constant_value(data: np.ndarray) -> float | int | None:
    """The value of a constant (non-empty) image, ``None`` when it varies."""
    data = np.asarray(data)
    if data.size == 0 or data.min() != data.max():
        return None
    return data.flat[0].item()


def corners(shape: Sequence[int], pad: float = 0.0) -> np.ndarray:
    """Homogeneous voxel coordinates of the 8 corners of a grid, ``(4, 8)``.

    ``pad=0``: the corner voxel centres; ``pad=0.5``: the outer faces of the corner voxels.
    """
    ax = [(-pad, max(int(n) - 1, 0) + pad) for n in shape[:3]]
    return np.array([[i, j, k, 1.0] for i in ax[0] for j in ax[1] for k in ax[2]]).T


def _box(shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    world = (np.asarray(affine, dtype=float) @ corners(shape, pad=0.5))[:3]
    return world.min(axis=1), world.max(axis=1)


def field_of_view_overlap(
    t1_shape: Sequence[int], t1_affine: np.ndarray, stir_shape: Sequence[int], stir_affine: np.ndarray
) -> float:
    """Share of the T1's field of view (its world bounding box) that the STIR's box covers.

    Boxes span the outer faces of the corner voxels; ``0`` when they do not
    meet (a touching face is a meeting, never a false "no overlap").
    """
    (alo, ahi), (blo, bhi) = _box(t1_shape, t1_affine), _box(stir_shape, stir_affine)
    if not (np.all(alo <= bhi) and np.all(blo <= ahi)):
        return 0.0
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None)
    size = np.maximum(ahi - alo, 1e-6)
    return max(float(np.prod(inter / size)), np.finfo(float).tiny)


@dataclass(frozen=True)
class AxialTilt:
    """The slice axis of a grid and how far it is from the patient's superior axis."""

    axis: int
    spacing_mm: float
    tilt_deg: float
    plane: str  # sagittal | coronal | axial: the plane the slices are closest to

    @property
    def axial(self) -> bool:
        return self.tilt_deg <= MAX_AXIAL_TILT_DEG


def axial_tilt(affine: np.ndarray) -> AxialTilt | None:
    """The slice axis (the axis of clearly largest spacing) and its tilt from superior-inferior.

    ``None`` for near-isotropic grids (largest spacing within 10% of the next):
    they say nothing about the acquisition plane.
    """
    a = np.asarray(affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    order = np.argsort(spacing)
    k = int(order[-1])
    if not spacing[k] > 1.1 * spacing[order[-2]]:
        return None
    tilt = float(np.degrees(np.arccos(min(1.0, abs(a[2, k]) / spacing[k]))))
    plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(a[:, k])))]
    return AxialTilt(axis=k, spacing_mm=float(spacing[k]), tilt_deg=tilt, plane=plane)
