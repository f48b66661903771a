"""What predict measures and checks on each exam beyond segmentation and grades.

* **Out-of-distribution guard**: the exam's image signature against the
  bundle's training cohort (:mod:`nxp2seg.data.signature`): ``ood_score`` in
  ``report.json``, the warning ``input_unlike_training`` above the threshold.
* **One leg**: when the predicted graded regions of one side hold under 5% of
  the other side's, or lie mostly inside the other side's span along world x,
  the exam shows one leg: the warning ``one_leg``; the other side's labels are
  given to the present leg (its compartments' twins) and that side's regions
  are left ungraded (blank) rather than graded on nothing.
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

from nxp2seg.data.cohort import DIXON_CHANNELS
from nxp2seg.data.signature import exam_features, ood_score

__all__ = ["ONE_LEG_SHARE", "is_dixon", "fat_fractions", "one_leg", "guard"]

#: A side whose graded regions hold less than this share of the other side's is absent.
ONE_LEG_SHARE = 0.05
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


def one_leg(labels: np.ndarray, regions: Mapping[str, Any], affine: np.ndarray) -> str | None:
    """The side present when the exam shows one leg, else ``None``.

    One leg when one side's graded regions hold under :data:`ONE_LEG_SHARE` of the
    other's, or when most of them lie inside the other side's span along world x
    (the left-right axis): two legs lie side by side, while on a single leg a
    network misled by the laterality channel (whose midline is then that leg's
    centre) calls its medial half the other side.
    """
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


def _world_x(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.stack(np.nonzero(mask)).astype(float)
    return np.asarray(affine)[0, :3] @ idx + np.asarray(affine)[0, 3]


def guard(signature: Mapping[str, Any] | None, channels: Sequence[np.ndarray], muscle: np.ndarray,
          affine: np.ndarray, names: Sequence[str]) -> dict[str, Any] | None:
    """The exam scored against the bundle's signature (``None`` for a bundle without one)."""
    if not signature:
        return None
    return ood_score(signature, exam_features(channels, muscle, affine, names))
