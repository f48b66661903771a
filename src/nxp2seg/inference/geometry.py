"""Geometry of prediction: everything is mapped through world coordinates, never array order.

Inputs arrive in any axis order (RAS, LPS, oblique), STIR on its own grid;
the model works on a canonical (RAS) grid at its own spacing; outputs go back
onto the input T1's native grid and affine. Each mapping here goes voxel ->
world (the source affine) -> voxel (the inverse target affine), so a label
lands on the same anatomy whatever the input's orientation.
"""

from __future__ import annotations

from collections.abc import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

__all__ = [
    "describe_geometry",
    "overlap_fraction",
    "probabilities_to_labels",
    "resample_to_grid",
    "voxel_map",
]


def voxel_map(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """The 4x4 matrix taking voxel indices of the destination grid to voxel indices of the source."""
    return np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)


def resample_to_grid(
    data: np.ndarray,
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample a 3D array from its grid onto another grid (trilinear by default), float32.

    Points of the destination grid outside the source get ``cval``.
    """
    m = voxel_map(src_affine, dst_affine)
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32), m[:3, :3], m[:3, 3], output_shape=tuple(int(s) for s in dst_shape),
        order=order, mode="grid-constant", cval=cval, prefilter=False,
    )


def probabilities_to_labels(
    probs: np.ndarray,
    values: Sequence[int],
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
) -> np.ndarray:
    """Label map on a destination grid from class probabilities on the model's grid.

    Each class's probability is resampled trilinearly through the affines (so
    boundaries fall between model voxels, not on their staircase), then the
    argmax is taken on the destination grid.

    Args:
        probs: ``(K, X, Y, Z)`` probabilities of the classes ``values`` (model grid).
        values: the label value of each of the ``K`` channels.
        src_affine: the model grid's affine; ``dst_*``: the native grid's.

    Returns:
        ``dst_shape`` array of label values, ``uint8`` (``uint16`` if a value exceeds 255).
    """
    m = voxel_map(src_affine, dst_affine)
    best = np.full(tuple(int(s) for s in dst_shape), -1.0, dtype=np.float32)
    dtype = np.uint8 if max(values) <= 255 else np.uint16
    out = np.zeros(best.shape, dtype=dtype)
    for k, v in enumerate(values):  # one channel at a time: memory stays at two float32 volumes
        p = ndimage.affine_transform(probs[k].astype(np.float32, copy=False), m[:3, :3], m[:3, 3],
                                     output_shape=best.shape, order=1, mode="nearest", prefilter=False)
        better = p > best
        best[better] = p[better]
        out[better] = v
    return out


def overlap_fraction(a: nib.spatialimages.SpatialImage, b: nib.spatialimages.SpatialImage) -> float:
    """Share of ``a``'s field of view (its 8 corners' box in world space) covered by ``b``'s."""

    def box(img: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
        shape = np.asarray(img.shape[:3], float) - 1
        corners = np.array([[i, j, k] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])])
        world = nib.affines.apply_affine(img.affine, corners)
        return world.min(0), world.max(0)

    (alo, ahi), (blo, bhi) = box(a), box(b)
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None)
    size = np.maximum(ahi - alo, 1e-6)
    return float(np.prod(inter / size))


def describe_geometry(img: nib.spatialimages.SpatialImage) -> dict:
    """Shape, spacing, axis codes and affine of an image (for reports; nothing identifying)."""
    aff = np.asarray(img.affine, float)
    return {
        "shape": [int(s) for s in img.shape[:3]],
        "spacing_mm": [round(float(s), 4) for s in np.sqrt((aff[:3, :3] ** 2).sum(0))],
        "axis_codes": "".join(nib.aff2axcodes(aff)),
        "affine": [[round(float(v), 6) for v in row] for row in aff],
    }
