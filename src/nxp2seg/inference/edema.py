"""Edema measured on STIR inside the predicted compartments (``edema_fraction``, the QC overlay).

The grades come from the model; this is a transparent measurement beside them,
in the readers' own terms: which share of a compartment is brighter on STIR
than normal muscle. Normal muscle is not a fixed intensity (scanner gain, coil
bias), so each station is referenced to its own muscle:

1. *Clean muscle*: voxels of the muscle compartments whose T1 lies within
   ``[0.8, 1.15]`` x the median compartment T1 (drops fatty infiltration, which
   is bright on T1, and vessels and septa, which are dark or bright on T1).
2. *Reference*: the **lowest strong peak** of the clean-muscle log-STIR
   histogram (a peak at least 20% as high as the tallest one). Normal muscle is
   the darkest muscle population on STIR; the lowest peak finds it even when
   most of the muscle is edematous (the median or the tallest peak would not).
3. *Edema*: compartment voxels (T1 above 0.75 x the median, i.e. not vessels)
   with STIR above ``threshold`` x the reference (1.3 by default: mild edema
   is 1.4-1.9 x normal muscle on STIR, noise at a muscle SNR of 12 is ~0.08).

All pure numpy on arrays of one grid (the T1's native grid in ``predict``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["EDEMA_THRESHOLD", "edema_map", "normal_muscle_reference"]

EDEMA_THRESHOLD = 1.3
#: Fewer clean-muscle voxels than this give no reference (NaN).
MIN_REFERENCE_VOXELS = 50


def _clean_muscle(t1: np.ndarray, muscle: np.ndarray) -> tuple[np.ndarray, float]:
    t1_ref = float(np.median(t1[muscle])) if muscle.any() else float("nan")
    return muscle & (t1 > 0.8 * t1_ref) & (t1 < 1.15 * t1_ref), t1_ref


def _reference_from(stir: np.ndarray, clean: np.ndarray, min_voxels: int) -> float:
    v = stir[clean]
    v = v[v > 0]
    if v.size < min_voxels:
        return float("nan")
    lv = np.log(v)
    centre = float(np.median(lv))
    hist, edges = np.histogram(lv, bins=120, range=(centre - 1.5, centre + 1.5))
    smooth = ndimage.gaussian_filter1d(hist.astype(float), 2.0)
    top = smooth.max()
    peaks = [i for i in range(1, len(smooth) - 1)
             if smooth[i] >= smooth[i - 1] and smooth[i] >= smooth[i + 1] and smooth[i] >= 0.2 * top]
    if not peaks:
        return float(np.exp(centre))
    i = peaks[0]
    return float(np.exp(0.5 * (edges[i] + edges[i + 1])))


def normal_muscle_reference(stir: np.ndarray, t1: np.ndarray, muscle: np.ndarray,
                            min_voxels: int = MIN_REFERENCE_VOXELS) -> float:
    """STIR signal of normal muscle in this station (see the module docstring); NaN if too little muscle."""
    clean, _ = _clean_muscle(t1, muscle)
    return _reference_from(stir, clean, min_voxels)


def _muscle_box(muscle: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``muscle`` (empty slices when it is empty)."""
    box = []
    for axis in range(muscle.ndim):
        hit = np.flatnonzero(muscle.any(axis=tuple(a for a in range(muscle.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0))
    return tuple(box)


def edema_map(stir: np.ndarray, t1: np.ndarray, muscle: np.ndarray,
              threshold: float = EDEMA_THRESHOLD) -> tuple[np.ndarray, float]:
    """Boolean edema map inside ``muscle`` and the STIR reference it used.

    Computed on the bounding box of ``muscle`` (nothing outside it can be edema).

    Args:
        stir, t1: intensities on one grid (STIR already resampled onto T1's).
        muscle: boolean mask of the muscle compartments (the predicted labels).
        threshold: edema = STIR above ``threshold`` x the normal-muscle reference.

    Returns:
        ``(edema, reference)``; ``edema`` all False when no reference can be found.
    """
    edema = np.zeros(muscle.shape, bool)
    box = _muscle_box(muscle)
    m, t, s = muscle[box], t1[box], stir[box]
    clean, t1_ref = _clean_muscle(t, m)
    ref = _reference_from(s, clean, MIN_REFERENCE_VOXELS)
    if np.isfinite(ref):
        edema[box] = m & (t > 0.75 * t1_ref) & (s > threshold * ref)
    return edema, ref
