"""Checks of the images: headers (dimensions, geometry), data (finite, not constant),
STIR and T1 in the same space, label maps on the T1's grid with known values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import nibabel as nib
import numpy as np

from nxp2seg.data.verify.report import Collector, _names

__all__ = ["check_case_images"]


def _load(ctx: Collector, cid: str, rel: str, role: str) -> tuple[Any, np.ndarray, bool] | None:
    """Header checks, then data checks: ``(image, data, geometry_ok)``, or None if unusable."""
    try:
        img = nib.load(ctx.root / rel)
        shape, affine = img.shape, np.asarray(img.affine, dtype=float)
    except Exception as e:  # noqa: BLE001 - not a NIfTI, bad header, permission...
        msg = f"{role} cannot be read as NIfTI ({type(e).__name__}: {e})"
        return ctx.add("image_unreadable", cid, rel, msg)
    if len(shape) == 4 and shape[3] == 1:
        msg = f"{role} is 3D with a trailing singleton 4th dimension {shape}: read as 3D"
        ctx.add(
            "image_dims", cid, rel, msg, warning=True, fix="fine; re-save as 3D for other tools"
        )
    elif len(shape) != 3:
        msg = f"{role} has {len(shape)} dimensions {shape}; a 3D volume is needed"
        return ctx.add("image_dims", cid, rel, msg)
    hdr = img.header
    codes = (int(hdr["sform_code"]), int(hdr["qform_code"])) if "sform_code" in hdr else (1, 1)
    det = abs(np.linalg.det(affine[:3, :3])) if np.all(np.isfinite(affine)) else 0.0
    geometry_ok = det > 1e-12 and codes != (0, 0)
    if not geometry_ok:
        msg = f"{role} has no usable orientation (sform/qform codes {codes}, |det| {det:.3g})"
        ctx.add("image_geometry_invalid", cid, rel, msg)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - truncated gzip, short file...
        msg = f"{role} data cannot be read: truncated or corrupt ({type(e).__name__}: {e})"
        return ctx.add("image_unreadable", cid, rel, msg)
    if data.dtype.kind not in "biuf":
        return ctx.add(
            "image_unreadable", cid, rel, f"{role} data type {data.dtype} is not real numbers"
        )
    bad = int(data.size - np.count_nonzero(np.isfinite(data))) if data.dtype.kind == "f" else 0
    if bad:
        ctx.add("image_nonfinite", cid, rel, f"{role} has {bad} NaN/inf voxels")
    elif role != "label" and data.size and data.min() == data.max():
        ctx.add(
            "image_constant", cid, rel, f"{role} is constant ({data.flat[0]})", warning=True
        )
    return img, data, geometry_ok


def _grid(ctx: Collector, cid: str, rel: str | None, role: str) -> Any | None:
    """Check one image; keep only its header, when its geometry is usable."""
    loaded = _load(ctx, cid, rel, role) if rel else None
    return loaded[0] if loaded is not None and loaded[2] else None


def check_case_images(ctx: Collector, cid: str, images: dict[str, str], label: str | None) -> None:
    """A case's T1, STIR and label map, one file's data in memory at a time."""
    t1, stir = (
        _grid(ctx, cid, images.get("T1"), "T1"),
        _grid(ctx, cid, images.get("STIR"), "STIR"),
    )
    if t1 is not None and stir is not None and not _overlap(t1, stir):
        ctx.add("stir_no_overlap", cid, images["STIR"], "STIR and T1 do not overlap in space")
    lab = _load(ctx, cid, label, "label") if label else None
    if lab is None:
        return
    if t1 is not None and lab[2]:
        _compare_grids(ctx, cid, label, lab[0], t1)
    _check_label_values(ctx, cid, label, lab[1])


def _compare_grids(ctx: Collector, cid: str, rel: str, lab: Any, t1: Any) -> None:
    if lab.shape[:3] != t1.shape[:3]:
        msg = f"label shape {lab.shape[:3]} differs from T1 shape {t1.shape[:3]}"
        ctx.add("label_shape_mismatch", cid, rel, msg)
    z_lab = np.asarray(lab.header.get_zooms()[:3], float)
    z_t1 = np.asarray(t1.header.get_zooms()[:3], float)
    if not np.allclose(z_lab, z_t1, rtol=ctx.spacing_rtol, atol=0):
        lab_mm, t1_mm = z_lab.round(4).tolist(), z_t1.round(4).tolist()
        msg = f"label spacing {lab_mm} mm differs from the T1's {t1_mm} mm"
        return ctx.add("label_spacing_mismatch", cid, rel, msg)
    shift = float(np.max(np.linalg.norm((lab.affine - t1.affine) @ _corners(t1.shape), axis=0)))
    tol = max(ctx.tol_mm, ctx.tol_vox * float(z_t1.min()))
    if shift > tol:
        msg = (
            f"label and T1 affines differ: voxels move {shift:.3g} mm (tolerance {tol:.3g} mm)"
        )
        ctx.add("label_affine_mismatch", cid, rel, msg)
    return None


def _check_label_values(ctx: Collector, cid: str, rel: str, data: np.ndarray) -> None:
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)):
            return  # reported as image_nonfinite
        if not np.array_equal(data, np.round(data)):
            return ctx.add(
                "label_values_noninteger", cid, rel, "label map holds non-integer values"
            )
    values = set(_unique_ints(data))
    schema = ctx.desc.schema
    known = set(schema.labels.values())
    if values - known:
        msg = f"label values {_names(sorted(values - known))} are not in the label schema"
        ctx.add("label_values_unknown", cid, rel, msg)
    station = ctx.station.get(cid)
    other = sorted((values & known) - schema.station_labels(station)) if station else []
    if other:
        names = _names(f"{schema.name_of(v)} ({v})" for v in other)
        ctx.add("label_values_other_station", cid, rel, f"a {station} case holds {names}")
    if values <= {0}:
        ctx.add("label_empty", cid, rel, "label map is all background", warning=True)
    return None


def _corners(shape: Sequence[int], pad: float = 0.0) -> np.ndarray:
    """Homogeneous voxel coordinates of the 8 corners of a grid, ``(4, 8)``.

    ``pad=0``: the corner voxel centres; ``pad=0.5``: the outer faces of the corner voxels.
    """
    ax = [(-pad, max(n - 1, 0) + pad) for n in shape[:3]]
    return np.array([[i, j, k, 1.0] for i in ax[0] for j in ax[1] for k in ax[2]]).T


def _overlap(a: Any, b: Any) -> bool:
    """Do the world bounding boxes of two images intersect? (Never a false 'no'.)"""
    (lo1, hi1), (lo2, hi2) = [
        (w.min(axis=1), w.max(axis=1))
        for w in ((img.affine @ _corners(img.shape, pad=0.5))[:3] for img in (a, b))
    ]
    return bool(np.all(lo1 <= hi2) and np.all(lo2 <= hi1))


def _unique_ints(data: np.ndarray) -> list[int]:
    """Distinct values of an integer-valued array (bincount when small and non-negative)."""
    if data.size == 0:
        return []
    lo, hi = int(data.min()), int(data.max())
    if lo >= 0 and hi < 65536:
        counts = np.bincount(data.ravel().astype(np.int64, copy=False), minlength=hi + 1)
        return np.flatnonzero(counts).tolist()
    return [int(v) for v in np.unique(data)]
