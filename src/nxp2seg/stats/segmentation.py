"""Segmentation quality: Dice and right/left swaps, on label maps or masks.

* :func:`dice`: the one implementation of the Dice coefficient on boolean
  masks (``evaluate`` per case and region; the grading stage's perturbation
  calibration). Training scores the same quantity with MONAI's ``DiceMetric``
  on one-hot tensors; ``tests/test_stats_segmentation.py`` holds the two equal.
* :func:`lr_swaps`: a *right/left swap* is the failure that matters most in a
  bilateral exam: a region of one leg labelled as the same structure of the
  other leg. Dice of the swapped pair drops to zero, but a mean Dice over many
  regions can hide it, so it is counted on its own, in ``evaluate`` and in
  training's validation alike.

Which label value is on which side is not decided here: callers pass the
schema's side table (:func:`nxp2seg.data.sides.side_lut`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["dice", "lr_swaps"]


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice ``2|P∩T| / (|P|+|T|)`` of two boolean masks; NaN when both are empty."""
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(np.logical_and(pred, truth))) / total


def lr_swaps(
    pred: np.ndarray,
    truth: np.ndarray,
    side_lut: np.ndarray,
    regions: Mapping[str, Sequence[int]],
    threshold: float = 0.5,
) -> dict[str, bool]:
    """Which true regions were mostly labelled as the other side.

    Args:
        pred, truth: label maps of one case, same shape.
        side_lut: side code of every label value (1 right, 2 left, 0 none;
            :func:`nxp2seg.data.sides.side_lut`).
        regions: ``{name: label values}`` of the regions to check; a region's
            side is the side of its values (regions without a side are skipped).
        threshold: a region is swapped when more than this fraction of its true
            voxels carry a label of the opposite side.

    Returns:
        ``{region: swapped}`` for every checked sided region present in ``truth``.

    Example:
        >>> sides = np.array([0, 1, 2])  # 0 background, 1 a right label, 2 its left twin
        >>> truth = np.array([1, 1, 2, 2]); pred = np.array([2, 2, 2, 2])
        >>> lr_swaps(pred, truth, sides, {"a_right": [1], "a_left": [2]})
        {'a_right': True, 'a_left': False}
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the truth {truth.shape}")
    lut = np.asarray(side_lut)
    pred_side = lut[pred.astype(np.intp)]
    out: dict[str, bool] = {}
    for name, values in regions.items():
        own = {int(lut[int(v)]) for v in values}
        if len(own) != 1 or 0 in own:
            continue
        mask = np.isin(truth, list(values))
        n = int(mask.sum())
        if n == 0:
            continue
        other = 3 - own.pop()
        out[name] = bool((pred_side[mask] == other).sum() > threshold * n)
    return out
