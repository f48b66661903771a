"""``side: auto``: split sideless labels into the patient's right and left leg.

Masks made per muscle often give both legs the same value (Huashan: 1 = SA on
both thighs). The split is done in world coordinates (RAS+: the patient's
right at +x), never from array order: per axial slice, the labelled voxels'
world x coordinates are sorted and the empty runs between them of at least
``min_gap_mm`` are candidate gaps; the exam's midline is the median of the
slices' widest gaps (with 5% of the voxels or more on either side), and each
slice splits at its candidate nearest to it (a wide run inside one leg,
between two muscles, is not the midline). Voxels on the +x side are the right
leg's.

Legs that touch usually still leave a gap in a muscle mask (subcutaneous fat
and skin are not labelled). A slice whose labels show no gap of at least
``min_gap_mm`` takes the midline of the exam's other slices if its labels
lie clear of it (one leg, or labels on one side only); otherwise the split
is refused with :class:`SideSplitError`, naming the exam and the slices, and
the user gives the side in the label names or a sided mask instead.

The slices are taken along the array axis closest to world z (the through-plane
axis of an axial stack).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SideSplitError", "split_sides", "slice_axis"]


class SideSplitError(ValueError):
    """The legs cannot be told apart in a sideless mask."""


def slice_axis(affine: np.ndarray) -> int:
    """The array axis closest to world z (superior-inferior)."""
    return int(np.argmax(np.abs(affine[2, :3]) / np.linalg.norm(affine[:3, :3], axis=0)))


def split_sides(mask: np.ndarray, affine: np.ndarray, where: str, guide: np.ndarray | None = None,
                min_gap_mm: float = 2.0, margin_mm: float = 5.0, max_shift_mm: float = 40.0) -> np.ndarray:
    """Which leg every labelled voxel belongs to.

    Args:
        mask: ``(X, Y, Z)`` bool, the voxels to split (every sideless label).
        affine: voxel -> world RAS+ mm.
        where: the exam, named in errors (e.g. ``"exam S01 thigh (labels.nii.gz)"``).
        guide: where to look for the gap (default ``mask``): the muscle labels, whose
            gap survives legs that touch, when ``mask`` also holds subcutaneous fat.
        min_gap_mm: narrowest empty run (world x) accepted as the gap between the legs.
        margin_mm: a slice without its own gap borrows the exam's midline only if
            its labels lie at least this far from it.
        max_shift_mm: a slice's gap more than this from the median of the exam's
            gaps is a gap inside one leg, not the midline.

    Returns:
        ``(X, Y, Z)`` int8: +1 right, -1 left, 0 unlabelled.

    Raises:
        SideSplitError: no slice shows a gap, or a slice's labels straddle the
            midline without one.
    """
    mask = np.asarray(mask, bool)
    axis = slice_axis(affine)
    idx = np.nonzero(mask)
    if not len(idx[0]):
        return np.zeros(mask.shape, np.int8)
    x, slices = _world_x(idx, affine), idx[axis]
    gidx = idx if guide is None else np.nonzero(np.asarray(guide, bool))
    gx, gslices = _world_x(gidx, affine), gidx[axis]
    gaps = {int(k): _gaps(gx[gslices == k], min_gap_mm) for k in np.unique(gslices)}
    # the exam's midline: the median of the slices' widest gaps with 5% of the voxels or more on
    # either side; then each slice splits at its gap nearest to it (a wide run inside one leg,
    # between two muscles, is not the midline)
    widest = [g[0][0] for g in gaps.values() if g and g[0][1] >= 0.05]
    midline: dict[int, float] = {}
    if widest:
        centre = float(np.median(widest))
        for k, cand in gaps.items():
            near = min((c for c, _ in cand), key=lambda c: abs(c - centre), default=None)
            if near is not None and abs(near - centre) <= max_shift_mm:
                midline[k] = near
    if not midline:
        raise SideSplitError(
            f"{where}: the legs cannot be separated: no slice of the mask shows a gap of "
            f">= {min_gap_mm:g} mm between labelled voxels along the patient's left-right axis. "
            "Give sided label names (e.g. VL_R, VL_L) or a fixed side for this exam."
        )
    fallback = float(np.median(list(midline.values())))
    split = np.empty(len(x))
    bad = []
    for k in np.unique(slices):
        sel = slices == k
        if int(k) in midline:
            split[sel] = midline[int(k)]
            continue
        xs = x[sel]
        if np.all(xs > fallback + margin_mm) or np.all(xs < fallback - margin_mm):
            split[sel] = fallback
        else:
            bad.append(int(k))
    if bad:
        raise SideSplitError(
            f"{where}: the legs cannot be separated on slice(s) {bad} (array axis {axis}): the labels "
            f"touch across the midline (x = {fallback:.1f} mm) with no gap of >= {min_gap_mm:g} mm. "
            "Give sided label names (e.g. VL_R, VL_L) or a sided mask for this exam."
        )
    side = np.zeros(mask.shape, np.int8)
    side[idx] = np.where(x > split, 1, -1).astype(np.int8)
    return side


def _world_x(idx: tuple[np.ndarray, ...], affine: np.ndarray) -> np.ndarray:
    return affine[0, :3] @ np.stack(idx).astype(float) + affine[0, 3]


def _gaps(x: np.ndarray, min_gap_mm: float) -> list[tuple[float, float]]:
    """The empty runs of at least ``min_gap_mm`` between labelled voxels (world x), widest first:
    ``(centre, share of the voxels on its smaller side)``."""
    if len(x) < 2:
        return []
    xs = np.sort(x)
    d = np.diff(xs)
    n = len(xs)
    order = np.argsort(-d, kind="stable")
    return [(float((xs[j] + xs[j + 1]) / 2), min(j + 1, n - j - 1) / n) for j in order if d[j] >= min_gap_mm]
