"""Intensity rules of the preprocessing: the body mask and foreground normalisation.

* :func:`body_mask`: the one rule for "which voxels are body" on a T1 volume,
  ``T1 > floor + fraction * (top - floor)`` between two intensity quantiles.
  Its three users choose their settings here, named:
  :data:`MIDLINE_BODY` (the laterality map's midline: conservative, so the
  legs stay apart), :data:`WINDOW_BODY` (the sliding window's body box on the
  normalised T1: generous, so no tissue is cut) and the normalisation's
  foreground (``data.preprocessing.foreground_fraction`` /
  ``foreground_percentile``, floor 0: gain-free on raw intensities);
* :class:`NormalizeForeground` / :class:`NormalizeForegroundd`: per-channel
  normalisation inside the T1's foreground (gain-free).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from monai import transforms as mt
from monai.config import KeysCollection

from nxp2seg.quantiles import sampled_quantile

__all__ = [
    "MIDLINE_BODY",
    "WINDOW_BODY",
    "BodyMaskSettings",
    "NormalizeForeground",
    "NormalizeForegroundd",
    "body_mask",
]


@dataclass(frozen=True)
class BodyMaskSettings:
    """Settings of :func:`body_mask`: ``T1 > floor + fraction * (top - floor)``.

    Attributes:
        fraction: how far from the floor towards the top the threshold lies.
        floor: quantile level of the floor (air); ``None``: zero (raw magnitude images).
        top: quantile level of the top (bright tissue).
    """

    fraction: float
    floor: float | None
    top: float


#: The laterality map's midline: 30% of the way from air (2nd percentile) to bright tissue (98th).
MIDLINE_BODY = BodyMaskSettings(fraction=0.3, floor=0.02, top=0.98)
#: The sliding window's body box on the normalised T1: a tenth of the way from the minimum to the 99th
#: percentile, as the normalisation's default foreground on raw intensities.
WINDOW_BODY = BodyMaskSettings(fraction=0.1, floor=0.0, top=0.99)


def body_mask(t1: torch.Tensor, settings: BodyMaskSettings = MIDLINE_BODY) -> torch.Tensor:
    """Body voxels of a T1: above ``floor + fraction * (top - floor)`` of its intensity quantiles.

    Args:
        t1: any shape (a volume ``(X, Y, Z)``, or a batch of them: the quantiles
            are then the batch's); raw or normalised intensities.
        settings: :data:`MIDLINE_BODY` (default), :data:`WINDOW_BODY`, or the
            normalisation's.

    Returns:
        Bool tensor of ``t1``'s shape. Scale-free; shift-free unless ``floor`` is ``None``.
    """
    ref = torch.as_tensor(t1).float()
    top = sampled_quantile(ref, settings.top)
    floor = sampled_quantile(ref, settings.floor) if settings.floor is not None else top.new_zeros(())
    return ref > floor + settings.fraction * (top - floor)


class NormalizeForeground(mt.Transform):
    """Per-channel intensity normalisation inside a body mask taken from channel 0 (T1).

    The mask is :func:`body_mask` with floor zero: ``img[0] > fraction *
    quantile(img[0], percentile / 100)``, so it scales with the image and the
    result is the same for any scanner gain.

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
        mask = body_mask(ref, BodyMaskSettings(self.fraction, None, self.percentile / 100.0))
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
                lo, hi = sampled_quantile(vals, 0.005), sampled_quantile(vals, 0.995)
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
