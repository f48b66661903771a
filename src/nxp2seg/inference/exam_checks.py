"""What predict measures and checks on each exam beyond segmentation and grades.

* **Out-of-distribution guard**: the exam's image signature against the
  bundle's training cohort (:mod:`nxp2seg.data.signature`): ``ood_score`` in
  ``report.json``, the warning ``input_unlike_training`` above the threshold.
* **One leg** (:func:`one_leg`): the image is asked first. When the T1's body
  outline shows two legs side by side (:func:`two_legs_seen`), the exam has
  two legs whatever the segmentation says: no warning, nothing relabelled (a
  weak segmentation of a two-leg exam must not erase a leg). Otherwise (one
  outline: one leg, or two legs that touch) the segmentation decides: when the
  predicted graded regions of one side hold under 5% of the other side's, or
  lie mostly inside the other side's span along world x, the exam shows one
  leg: the warning ``one_leg``; the other side's labels are given to the
  present leg (its compartments' twins) and that side's regions are left
  ungraded (blank) rather than graded on nothing.
* **Fat fraction** (Dixon inputs): per region, ``fat / (fat + water)``
  averaged over the region's voxels -- the estimator of the Huashan authors,
  which reproduces their published per-muscle table to four decimals from
  their labels -- over the voxels above a noise floor: five times the median
  of ``fat + water`` outside the body (magnitude images keep a Rician floor in
  air, where the ratio is noise).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from nxp2seg.data.cohort import DIXON_CHANNELS
from nxp2seg.data.convert_sides import slice_axis
from nxp2seg.data.intensity import MIDLINE_BODY, body_mask
from nxp2seg.data.signature import exam_features, ood_score

__all__ = [
    "LEG_SHARE",
    "ONE_LEG_SHARE",
    "TWO_LEG_SLICES",
    "fat_fractions",
    "guard",
    "is_dixon",
    "one_leg",
    "two_legs_seen",
]

#: A side whose graded regions hold less than this share of the other side's is absent.
ONE_LEG_SHARE = 0.05
#: An axial slice shows two legs when its body outline's two largest pieces each hold at least this
#: share of its body (and lie side by side along world x) ...
LEG_SHARE = 0.25
#: ... and the image shows two legs when more than this share of the slices with body do.
TWO_LEG_SLICES = 0.5
#: Voxels whose fat + water is under this many times the air's median are left out of fat fractions.
NOISE_FLOOR = 5.0


def is_dixon(channels: Sequence[str]) -> bool:
    return tuple(channels) == tuple(DIXON_CHANNELS[k] for k in sorted(DIXON_CHANNELS))


def fat_fractions(fat: np.ndarray, water: np.ndarray, labels: np.ndarray,
                  regions: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """``{region: mean fat / (fat + water)}`` over each region's voxels above the noise floor."""
    fat = np.asarray(fat, np.float32)
    water = np.asarray(water, np.float32)
    total = fat + water
    body = total > 0.1 * np.percentile(total, 99)
    air = total[~body]
    floor = NOISE_FLOOR * float(np.median(air)) if air.size else 0.0
    ok = total > max(floor, 1e-6)
    ratio = np.zeros_like(total)
    np.divide(fat, total, out=ratio, where=ok)
    out = {}
    for name, values in regions.items():
        sel = np.isin(labels, list(values)) & ok
        out[name] = float(ratio[sel].mean()) if sel.any() else float("nan")
    return out


def one_leg(labels: np.ndarray, regions: Mapping[str, Any], affine: np.ndarray,
            t1: np.ndarray) -> str | None:
    """The side present when the exam shows one leg, else ``None``.

    The image decides first: when the T1 shows two legs (:func:`two_legs_seen`),
    ``None`` whatever the segmentation says. Otherwise one leg when one side's
    graded regions hold under :data:`ONE_LEG_SHARE` of the other's, or when most
    of them lie inside the other side's span along world x (the left-right
    axis): two legs lie side by side, while on a single leg a network misled by
    the laterality channel (whose midline is then that leg's centre) calls its
    medial half the other side.

    Args:
        labels: ``(X, Y, Z)`` predicted label map on the T1's grid.
        regions: the station's graded regions (``.side``, ``.labels``).
        affine: voxel -> world RAS+ mm of that grid.
        t1: ``(X, Y, Z)`` the T1 (channel 0: the fat-bright image) on the same grid.
    """
    if np.shape(t1) != np.shape(labels):
        raise ValueError(f"one_leg: the T1 {np.shape(t1)} and the labels {np.shape(labels)} "
                         "must be on the same grid (resample the labels to the T1 first)")
    if two_legs_seen(t1, affine):
        return None
    voxels = {"right": [], "left": []}
    for r in regions.values():
        voxels[r.side].append(np.isin(labels, list(r.labels)))
    masks = {s: np.logical_or.reduce(v) if v else np.zeros(labels.shape, bool) for s, v in voxels.items()}
    size = {s: int(m.sum()) for s, m in masks.items()}
    big, small = max(size, key=size.get), min(size, key=size.get)
    if size[big] == 0:
        return None
    if size[small] < ONE_LEG_SHARE * size[big]:
        return big
    x = {s: _world_x(masks[s], affine) for s in masks}
    lo, hi = np.percentile(x[big], [2, 98])
    inside = float(((x[small] >= lo) & (x[small] <= hi)).mean())
    return big if inside > 0.5 else None


def two_legs_seen(t1: np.ndarray, affine: np.ndarray) -> bool:
    """Whether the T1's body outline shows two legs side by side.

    The body is :func:`~nxp2seg.data.intensity.body_mask` with
    :data:`~nxp2seg.data.intensity.MIDLINE_BODY` (conservative: the touching
    legs of the ``real`` phantom and of the Huashan thighs stay apart), holes filled
    per axial slice (a Dixon fat image's muscle is dark inside its ring of
    subcutaneous fat). A slice shows two legs when its two largest pieces each
    hold at least :data:`LEG_SHARE` of its body and their centres lie further
    apart along world x than across it; the image, when more than
    :data:`TWO_LEG_SLICES` of the slices with body do (pelvic slices, one
    outline, are outvoted). ``False`` says only that two legs are not seen:
    one leg, or legs pressed into one outline.

    Args:
        t1: ``(X, Y, Z)`` raw or normalised intensities (channel 0: fat bright).
        affine: voxel -> world RAS+ mm; the slices are taken along the axis
            closest to world z.
    """
    a = np.asarray(affine, dtype=float)
    body = body_mask(torch.as_tensor(np.asarray(t1, dtype=np.float32)), MIDLINE_BODY).numpy()
    axis = slice_axis(a)
    votes = []
    for k in range(body.shape[axis]):
        outline = ndimage.binary_fill_holes(np.take(body, k, axis=axis))
        if outline.any():
            votes.append(_two_legs_in_slice(outline, k, axis, a))
    return bool(votes) and sum(votes) > TWO_LEG_SLICES * len(votes)


def _two_legs_in_slice(body: np.ndarray, k: int, axis: int, affine: np.ndarray) -> bool:
    pieces, n = ndimage.label(body)
    if n < 2:
        return False
    sizes = np.asarray(ndimage.sum(body, pieces, range(1, n + 1)))
    first, second = np.argsort(-sizes, kind="stable")[:2] + 1
    if sizes[second - 1] < LEG_SHARE * body.sum():
        return False
    centres = [np.insert(np.asarray(c), axis, k) for c in ndimage.center_of_mass(body, pieces, [first, second])]
    apart = affine[:3, :3] @ (centres[0] - centres[1])  # world mm
    return bool(abs(apart[0]) > np.hypot(apart[1], apart[2]))


def _world_x(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.stack(np.nonzero(mask)).astype(float)
    return np.asarray(affine)[0, :3] @ idx + np.asarray(affine)[0, 3]


def guard(signature: Mapping[str, Any] | None, channels: Sequence[np.ndarray], muscle: np.ndarray,
          affine: np.ndarray, names: Sequence[str]) -> dict[str, Any] | None:
    """The exam scored against the bundle's signature (``None`` for a bundle without one)."""
    if not signature:
        return None
    return ood_score(signature, exam_features(channels, muscle, affine, names))
