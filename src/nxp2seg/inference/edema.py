"""Edema measured on STIR inside the predicted muscle (``edema_fraction``, the QC overlay).

The grades come from the model; this is a transparent measurement beside them,
in the readers' own terms: which share of a region is brighter on STIR than
normal muscle. It reads normal muscle exactly as the grader does -- the same
reference estimator, clean-muscle window and units
(:meth:`~nxp2seg.models.region_features.RegionFeatures.tissue`: STIR over
each leg's normal muscle, T1 as a fat index) -- and counts a voxel as edema
when it is muscle-like on T1 and its STIR ratio is above the grader's lowest
extent threshold (:attr:`~nxp2seg.models.region_features.RegionFeatures.edema_threshold`,
set from the training cohort's normal-muscle spread).

A segmentation-only bundle has no grader and no cohort statistics: the same
estimator then runs with the case's own statistics in their place (the
clean-muscle window and the threshold from this case's muscle peaks,
:mod:`nxp2seg.models.grading_scale`, in the default config's units).

Arrays are of one grid (the T1's native grid in ``predict``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nxp2seg.data.laterality import laterality_map
from nxp2seg.models.grading_scale import CohortSample, fit_cohort_scale, thresholds
from nxp2seg.models.grading_spec import FeatureSpec, ReferenceSpec
from nxp2seg.models.region_features import RegionFeatures
from nxp2seg.models.tissue import make_reference, stir_zero

__all__ = ["edema_map"]


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``mask`` (empty slices when it is empty)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 0))
    return tuple(box)


def _case_features(image: torch.Tensor, muscle: torch.Tensor, fat: torch.Tensor, zero: torch.Tensor) -> RegionFeatures:
    """The grader's tissue reading with this case's own statistics (no cohort at hand)."""
    ref_spec, feat_spec = ReferenceSpec(), FeatureSpec()
    reference = make_reference(ref_spec)
    m, f = muscle[0] > 0.5, fat[0] > 0.5
    sample = CohortSample(
        muscle=torch.stack([image[0, 0][m], image[0, 1][m], image[0, 2][m]]),
        fat=torch.stack([image[0, 0][f], image[0, 1][f]]),
        zero=zero[0],
    )
    scale = fit_cohort_scale([sample], reference, ref_spec.clean_sd, feat_spec.stir_high_quantile)
    features = RegionFeatures(reference, [1.0, 1.0, 1.0], feat_spec.stir_levels, len(feat_spec.fat_levels))
    features.set_thresholds(thresholds(scale, feat_spec, ref_spec))
    return features


@torch.no_grad()
def edema_map(stir: np.ndarray, t1: np.ndarray, muscle: np.ndarray, fat: np.ndarray,
              grader: Any | None = None, affine: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Boolean edema map inside ``muscle`` and the station's normal-muscle STIR it used.

    Args:
        stir, t1: intensities on one grid (STIR already resampled onto T1's).
        muscle, fat: boolean masks of the graded regions and of subcutaneous tissue.
        grader: the bundle's :class:`~nxp2seg.models.grading.Grader` (its reference,
            windows and threshold), or ``None`` (the case's own statistics).
        affine: voxel-to-world affine of the grid, for each leg's own reference
            (``None``: one reference for the station).

    Returns:
        ``(edema, reference)``; ``edema`` all False (and the reference NaN) when the case
        has no muscle or no subcutaneous fat to read normal muscle against.
    """
    edema = np.zeros(muscle.shape, bool)
    if not muscle.any() or not fat.any():
        return edema, float("nan")
    image_np = torch.as_tensor(np.stack([t1, stir]).astype(np.float32))
    # laterality: positive on the patient's right (all 0: one reference for the station)
    lateral = laterality_map(image_np[:1], affine) if affine is not None else torch.zeros_like(image_np[:1])
    box = _box(muscle | fat)
    image = torch.cat([image_np, lateral])[(slice(None), *box)][None]
    m = torch.as_tensor(muscle[box], dtype=torch.float32)[None]
    f = torch.as_tensor(fat[box], dtype=torch.float32)[None]
    features = grader.features if grader is not None else None
    percentile = features.reference_zero_percentile if features is not None else ReferenceSpec().zero_percentile
    zero = stir_zero(image_np[None], percentile)  # air: on the whole volume
    if features is None:
        features = _case_features(image, m, f, zero)
    # the bundle's grader lives where the network does (a GPU too): read the tissue on its device
    device = features.stir_tau.device
    q, fi, ref = features.tissue(image.to(device), m.to(device), f.to(device), zero.to(device))
    lo, hi = features.muscle_like_window
    inside = (q[0, 0] > features.edema_threshold) & (fi[0, 0] > lo) & (fi[0, 0] < hi)
    edema[box] = muscle[box] & inside.cpu().numpy()
    return edema, float(ref.stir_muscle[0])
