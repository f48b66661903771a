"""Intensity rules of the preprocessing: the body mask and foreground normalisation.

* :func:`body_mask`: the one rule for "which voxels are body" on a T1 volume
  (the laterality map's midline and the sliding window's body box read it);
* :class:`NormalizeForeground` / :class:`NormalizeForegroundd`: per-channel
  normalisation inside the T1's foreground (gain-free).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import torch
from monai import transforms as mt
from monai.config import KeysCollection

from nxp2seg.quantiles import quantile

__all__ = ["body_mask", "NormalizeForeground", "NormalizeForegroundd"]


def _quantile(x: torch.Tensor, q: float, max_elems: int = 2_000_000) -> torch.Tensor:
    x = x.reshape(-1).float()
    if x.numel() > max_elems:  # a strided subsample is plenty
        x = x[:: math.ceil(x.numel() / max_elems)]
    return quantile(x, q)


class NormalizeForeground(mt.Transform):
    """Per-channel intensity normalisation inside a body mask taken from channel 0 (T1).

    The mask is ``img[0] > fraction * quantile(img[0], percentile / 100)``, so it
    scales with the image and the result is the same for any scanner gain.

    Args:
        mode: ``zscore_foreground`` ((x - mean) / std over the mask),
            ``scale_foreground`` (x / mean over the mask) or
            ``percentile_foreground`` ((x - q0.5) / (q99.5 - q0.5) over the mask).
        fraction, percentile: the mask threshold, see above.
        clip: clip the result to ``[-clip, clip]`` (``None``: no clip).

    Input and output: ``(C, X, Y, Z)``, float; metadata kept.
    """

    def __init__(
        self,
        mode: str = "zscore_foreground",
        fraction: float = 0.1,
        percentile: float = 99.0,
        clip: float | None = 5.0,
    ):
        self.mode = mode
        self.fraction = fraction
        self.percentile = percentile
        self.clip = clip

    def foreground(self, img: torch.Tensor) -> torch.Tensor:
        ref = torch.as_tensor(img[0]).float()
        mask = ref > self.fraction * _quantile(ref, self.percentile / 100.0)
        if int(mask.sum()) < 16:  # nothing stands out: use everything
            mask = torch.ones_like(ref, dtype=torch.bool)
        return mask

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = img if isinstance(img, torch.Tensor) else torch.as_tensor(img)
        out = img.clone().float() if not img.is_floating_point() else img.clone()
        mask = self.foreground(img)
        for c in range(img.shape[0]):
            vals = torch.as_tensor(out[c])[mask].float()
            if self.mode == "zscore_foreground":
                mean, std = vals.mean(), vals.std()
                out[c] = (out[c] - mean) / torch.clamp(std, min=1e-8)
            elif self.mode == "scale_foreground":
                out[c] = out[c] / torch.clamp(vals.mean().abs(), min=1e-8)
            elif self.mode == "percentile_foreground":
                lo, hi = _quantile(vals, 0.005), _quantile(vals, 0.995)
                out[c] = (out[c] - lo) / torch.clamp(hi - lo, min=1e-8)
            else:
                raise ValueError(f"unknown normalisation {self.mode!r}")
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out


class NormalizeForegroundd(mt.MapTransform):
    """Dictionary twin of :class:`NormalizeForeground`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any):
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeForeground(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d


def body_mask(t1: torch.Tensor) -> torch.Tensor:
    """Body voxels of a T1 volume ``(X, Y, Z)``: above 30% of the way from air to bright tissue.

    Shift- and scale-free (works on raw or normalised intensities).
    """
    ref = torch.as_tensor(t1).float()
    air, bright = _quantile(ref, 0.02), _quantile(ref, 0.98)
    return ref > air + 0.3 * (bright - air)
