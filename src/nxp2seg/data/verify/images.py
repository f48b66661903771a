"""Checks of the images: headers (dimensions, geometry), data (finite, not constant),
STIR and T1 in the same space, label maps on the T1's grid with known values.

The image rules are :mod:`nxp2seg.data.images`' (``predict`` applies the same
ones), under :data:`~nxp2seg.data.images.VERIFY_POLICY`.
"""

from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np

from nxp2seg.data.images import (
    VERIFY_POLICY,
    constant_value,
    corners,
    field_of_view_overlap,
    geometry_codes,
    is_real_dtype,
    nonfinite_count,
    spatial_shape,
)
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
    volume, squeezed = spatial_shape(shape)
    if squeezed:
        msg = f"{role} is 3D with a trailing singleton 4th dimension {shape}: read as 3D"
        ctx.add(
            "image_dims", cid, rel, msg, warning=True, fix="fine; re-save as 3D for other tools"
        )
    elif volume is None:
        msg = f"{role} has {len(shape)} dimensions {shape}; a 3D volume is needed"
        return ctx.add("image_dims", cid, rel, msg)
    geometry_ok, codes, det = geometry_codes(img.header, affine)
    if not geometry_ok:
        msg = f"{role} has no usable orientation (sform/qform codes {codes}, |det| {det:.3g})"
        ctx.add("image_geometry_invalid", cid, rel, msg)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - truncated gzip, short file...
        msg = f"{role} data cannot be read: truncated or corrupt ({type(e).__name__}: {e})"
        return ctx.add("image_unreadable", cid, rel, msg)
    if not (is_real_dtype(data.dtype) or (role == "label" and data.dtype.kind == "b")):
        return ctx.add(
            "image_unreadable", cid, rel, f"{role} data type {data.dtype} is not real numbers"
        )
    bad = nonfinite_count(data)
    constant = constant_value(data) if role != "label" and not bad else None
    if bad:
        ctx.add("image_nonfinite", cid, rel, f"{role} has {bad} NaN/inf voxels")
    elif constant is not None:
        warning = not VERIFY_POLICY.constant_is_error
        ctx.add("image_constant", cid, rel, f"{role} is constant ({constant})", warning=warning)
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
    if t1 is not None and stir is not None and not _stir_overlap_ok(t1, stir):
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
    shift = float(np.max(np.linalg.norm((lab.affine - t1.affine) @ corners(t1.shape), axis=0)))
    tol = max(ctx.tol_mm, ctx.tol_vox * float(z_t1.min()))
    if shift > tol:
        msg = (
            f"label and T1 affines differ: voxels move {shift:.3g} mm (tolerance {tol:.3g} mm)"
        )
        ctx.add("label_affine_mismatch", cid, rel, msg)
    return None


def _check_label_values(ctx: Collector, cid: str, rel: str, data: np.ndarray) -> None:
    if data.dtype.kind == "f":
        if nonfinite_count(data):
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


def _stir_overlap_ok(t1: Any, stir: Any) -> bool:
    """Does the STIR cover enough of the T1's field of view (any overlap, for verify)?"""
    fraction = field_of_view_overlap(t1.shape, t1.affine, stir.shape, stir.affine)
    return VERIFY_POLICY.stir_overlap_ok(fraction)


def _unique_ints(data: np.ndarray) -> list[int]:
    """Distinct values of an integer-valued array (bincount when small and non-negative)."""
    if data.size == 0:
        return []
    lo, hi = int(data.min()), int(data.max())
    if lo >= 0 and hi < 65536:
        counts = np.bincount(data.ravel().astype(np.int64, copy=False), minlength=hi + 1)
        return np.flatnonzero(counts).tolist()
    return [int(v) for v in np.unique(data)]
