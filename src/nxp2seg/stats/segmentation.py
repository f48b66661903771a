"""Segmentation quality beyond Dice: right/left swaps.

A *right/left swap* is the failure that matters most in a bilateral exam: a
region of one leg labelled as the same structure of the other leg. Dice of the
swapped pair drops to zero, but a mean Dice over many regions can hide it, so
it is counted on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["side_lut", "lr_swaps"]


def side_lut(labels: Mapping[str, int], size: int = 256) -> np.ndarray:
    """Side of every label value: 1 right, 2 left, 0 unsided (background, bone).

    Sides are read from the label names (``*_right`` / ``*_left``), the
    convention of :mod:`nxp2seg.data.schema`.
    """
    lut = np.zeros(size, dtype=np.int8)
    for name, value in labels.items():
        if name.endswith("_right"):
            lut[int(value)] = 1
        elif name.endswith("_left"):
            lut[int(value)] = 2
    return lut


def lr_swaps(
    pred: np.ndarray,
    truth: np.ndarray,
    labels: Mapping[str, int],
    regions: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, bool]:
    """Which true regions were mostly labelled as the other side.

    Args:
        pred, truth: label maps of one case, same shape (values of ``labels``).
        labels: ``{name: value}`` of the schema.
        regions: sided label names to check (default: every ``*_right``/``*_left``
            label present in ``truth``).
        threshold: a region is swapped when more than this fraction of its true
            voxels carry a label of the opposite side.

    Returns:
        ``{region: swapped}`` for every checked region present in ``truth``.

    Example:
        >>> labels = {"background": 0, "a_right": 1, "a_left": 2}
        >>> truth = np.array([1, 1, 2, 2]); pred = np.array([2, 2, 2, 2])
        >>> lr_swaps(pred, truth, labels)
        {'a_right': True, 'a_left': False}
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from the truth {truth.shape}")
    lut = side_lut(labels)
    pred_side = lut[pred.astype(np.intp)]
    names = regions if regions is not None else [n for n in labels if n.endswith(("_right", "_left"))]
    out: dict[str, bool] = {}
    for name in names:
        v = int(labels[name])
        mask = truth == v
        n = int(mask.sum())
        if n == 0:
            continue
        own = 1 if name.endswith("_right") else 2
        other = 3 - own
        out[name] = bool((pred_side[mask] == other).sum() > threshold * n)
    return out
