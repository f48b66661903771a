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
import torch
from scipy import ndimage

from nxp2seg.argmax import channel_argmax

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
    if tuple(np.shape(data)) == tuple(int(s) for s in dst_shape) and np.allclose(m, np.eye(4), atol=1e-6):
        return np.array(data, dtype=np.float32)  # the same grid: nothing to interpolate
    return ndimage.affine_transform(
        np.asarray(data, dtype=np.float32), m[:3, :3], m[:3, 3], output_shape=tuple(int(s) for s in dst_shape),
        order=order, mode="grid-constant", cval=cval, prefilter=False,
    )


def probabilities_to_labels(
    probs: np.ndarray | torch.Tensor,
    values: Sequence[int],
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    chunk_voxels: int = 1_000_000,
    crop: bool = True,
) -> np.ndarray:
    """Label map on a destination grid from class probabilities on the model's grid.

    Class probabilities are resampled trilinearly through the affines, so
    boundaries fall between model voxels rather than on their staircase, and
    the argmax is taken on the destination grid; outside the model grid the
    nearest border value is used. Only destination voxels in a model-grid cell
    whose 8 corners disagree on the argmax are interpolated (elsewhere the
    interpolated argmax is the corners' label, exactly): a few percent of the
    voxels, near boundaries.

    Args:
        probs: ``(K, X, Y, Z)`` probabilities of the classes ``values`` (model grid).
        values: the label value of each of the ``K`` channels.
        src_affine: the model grid's affine; ``dst_*``: the native grid's.
        chunk_voxels: destination voxels per chunk (bounds memory to about
            ``120 * chunk_voxels`` bytes plus ``K`` floats per boundary voxel).
        crop: when label 0 (background) is among ``values``, resample only the
            destination box around the voxels where background does not win on the
            model grid (grown by two model voxels); the rest is background.

    Returns:
        ``dst_shape`` array of label values, ``uint8`` (``uint16`` if a value exceeds 255).
    """
    # resampled on the CPU whatever device the network ran on: the index arithmetic meets numpy
    p = torch.as_tensor(probs, dtype=torch.float32, device="cpu")
    _, *src_shape = p.shape
    dst_shape = tuple(int(s) for s in dst_shape)
    m_np = voxel_map(src_affine, dst_affine)
    m = torch.as_tensor(m_np, dtype=torch.float64)
    lut = torch.as_tensor(list(values), dtype=torch.int64)
    dtype = np.uint8 if max(values) <= 255 else np.uint16
    out = np.empty(dst_shape, dtype=dtype)
    box = _foreground_box(p, list(values), src_affine, dst_shape, dst_affine) if crop else None
    if box is not None:  # only the box around the predicted foreground is resampled
        if box == ():
            out[...] = 0
            return out
        lo, hi = box
        out[...] = 0
        sub = tuple(slice(a, b) for a, b in zip(lo, hi))
        shifted = dst_affine @ np.vstack([np.hstack([np.eye(3), np.asarray(lo, float)[:, None]]), [0, 0, 0, 1]])
        out[sub] = probabilities_to_labels(p, values, src_affine, [b - a for a, b in zip(lo, hi)], shifted,
                                           chunk_voxels=chunk_voxels, crop=False)
        return out
    # Trilinear interpolation of probabilities cannot change the argmax inside a model-grid cell
    # whose 8 corners share their argmax (every corner has p_c >= p_j, so does any convex
    # combination): label those destination voxels from the corners, interpolate only the rest.
    src_labels = channel_argmax(p).to(torch.uint8 if p.shape[0] <= 255 else torch.int64)
    limits = torch.tensor(src_shape, dtype=torch.float32) - 1.0
    per_slab = max(1, chunk_voxels // max(1, dst_shape[1] * dst_shape[2]))
    m32 = m.to(torch.float32)
    # source index = m[:3, :3] @ (i, j, k) + m[:3, 3]: the (j, k) part once, i added per slab
    jj, kk = torch.meshgrid(torch.arange(dst_shape[1], dtype=torch.float32),
                            torch.arange(dst_shape[2], dtype=torch.float32), indexing="ij")
    plane = jj[..., None] * m32[:3, 1] + kk[..., None] * m32[:3, 2] + m32[:3, 3]  # (Y, Z, 3)
    for i0 in range(0, dst_shape[0], per_slab):
        ii = torch.arange(i0, min(i0 + per_slab, dst_shape[0]), dtype=torch.float32)
        src = (ii[:, None, None, None] * m32[:3, 0] + plane).reshape(-1, 3)
        src = torch.minimum(src.clamp_min(0.0), limits)
        chosen = _trilinear_argmax(p, src_labels, src)
        out[i0 : i0 + len(ii)] = lut[chosen.long()].reshape(len(ii), *dst_shape[1:]).numpy().astype(dtype)
    return out


def _trilinear_argmax(p: torch.Tensor, src_labels: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Argmax channel of ``p`` (``(K, X, Y, Z)``) trilinearly interpolated at ``src`` (``(n, 3)`` voxel
    coordinates inside the grid), computing the interpolation only where the cell's corners disagree."""
    nx, ny, nz = p.shape[1:]
    top = torch.tensor([max(nx - 2, 0), max(ny - 2, 0), max(nz - 2, 0)])
    base = torch.minimum(src.floor().long(), top)  # (n, 3) lower corner
    frac = src - base.to(src.dtype)  # 0..1 (0 on an axis of length 1)
    flat0 = (base[:, 0] * ny + base[:, 1]) * nz + base[:, 2]
    strides = (ny * nz if nx > 1 else 0, nz if ny > 1 else 0, 1 if nz > 1 else 0)
    corners = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    offsets = [a * strides[0] + b * strides[1] + c * strides[2] for a, b, c in corners]
    labels_flat = src_labels.reshape(-1)
    chosen = labels_flat[flat0]
    mixed = torch.zeros(chosen.shape, dtype=torch.bool)
    for off in offsets[1:]:
        mixed |= labels_flat[flat0 + off] != chosen
    idx = torch.nonzero(mixed).flatten()
    if idx.numel():
        probs = p.reshape(p.shape[0], -1)
        f, f0 = frac[idx], flat0[idx]
        blend = torch.zeros(p.shape[0], idx.numel(), dtype=p.dtype)
        for (da, db, dc), off in zip(corners, offsets):
            w = ((f[:, 0] if da else 1 - f[:, 0]) * (f[:, 1] if db else 1 - f[:, 1])
                 * (f[:, 2] if dc else 1 - f[:, 2]))
            blend += probs[:, f0 + off] * w.to(p.dtype)
        chosen = chosen.clone()
        chosen[idx] = channel_argmax(blend).to(chosen.dtype)
    return chosen


def _foreground_box(p: torch.Tensor, values: list[int], src_affine: np.ndarray,
                    dst_shape: tuple[int, ...], dst_affine: np.ndarray, margin: int = 2):
    """Destination-voxel box ``(lo, hi)`` holding the model grid's foreground; ``()`` if none;
    ``None`` when there is no background channel (nothing to crop)."""
    if 0 not in values:
        return None
    fg = channel_argmax(p) != values.index(0)
    if not bool(fg.any()):
        return ()
    idx = torch.nonzero(fg)
    lo = (idx.min(0).values - margin).clamp_min(0).double().numpy()
    hi = (idx.max(0).values + margin).double().numpy()
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    to_dst = np.linalg.inv(np.asarray(dst_affine, float)) @ np.asarray(src_affine, float)
    ijk = nib.affines.apply_affine(to_dst, corners)
    dlo = np.clip(np.floor(ijk.min(0)).astype(int) - 1, 0, dst_shape)
    dhi = np.clip(np.ceil(ijk.max(0)).astype(int) + 2, 0, dst_shape)
    if np.any(dhi <= dlo):
        return ()
    return tuple(int(v) for v in dlo), tuple(int(v) for v in dhi)


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
