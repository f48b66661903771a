"""Intensities in tissue units, and the normal-muscle STIR reference (its one home).

Readers grade edema by how bright muscle is on STIR *compared with normal
muscle of the same scan*, and fat by how close muscle comes to subcutaneous
fat on T1. Scanner gain, the foreground z-score of preprocessing and each
case's edema and fat load all move the raw or normalised values; these
references do not:

* **STIR ratio** ``q = (STIR - zero) / (muscle - zero)``: ``zero`` is the
  signal of air (a low percentile of the image's real voxels: air, cortex and
  Rician noise floor all sit near 0 on STIR), ``muscle`` the STIR of normal
  muscle from a **reference estimator** (below). Normal muscle reads 1.
* **fat index** ``f = (T1 - muscle_T1) / (fat_T1 - muscle_T1)``: 0 in muscle
  (its median), 1 in subcutaneous fat (its median); inside a muscle it is
  close to its fat fraction.

**The reference estimator** is a strategy object, chosen by config
(``grading.reference.name``, :data:`REFERENCE_ESTIMATORS`) and used by every
consumer: the grader's features (:mod:`nxp2seg.models.region_features`) and
predict's ``edema_fraction`` (:mod:`nxp2seg.inference.edema`). The one shipped,
:class:`LowestPeakReference`, takes the *lowest strong peak* of the STIR
histogram of the clean muscle of each leg: normal muscle is the darkest muscle
population even when most muscle is edematous, so its peak, not the median, is
the reference. "Clean" muscle is the predicted muscle whose fat index lies in
a window the training cohort sets (no fat infiltration, septum or vessel;
:mod:`nxp2seg.models.grading_scale`). A diagnostic can pass its own estimator
(any callable with :class:`LowestPeakReference`'s signature), e.g. one that
knows a phantom's truth (``scripts/grading_reference_ceiling.py``).

All functions take batched tensors ``(B, ...)`` and loop over cases only
(histograms and quantiles are per case), never over regions or voxels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from nxp2seg.quantiles import quantile

__all__ = [
    "CONTEXT_PERCENTILES",
    "REFERENCE_ESTIMATORS",
    "LowestPeakReference",
    "ReferenceEstimator",
    "TissueReference",
    "context_names",
    "fat_index",
    "lowest_peak",
    "make_reference",
    "real_voxels",
    "reference_context",
    "stir_zero",
    "tissue_units",
]

#: Percentiles of the clean-muscle STIR ratio in :func:`reference_context`.
CONTEXT_PERCENTILES: tuple[float, ...] = (0.02, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90)


def lowest_peak(values: torch.Tensor, bins: int = 96, smooth: float = 2.0, share: float = 0.2) -> torch.Tensor:
    """The lowest histogram peak at least ``share`` as high as the tallest (Gaussian-smoothed bins).

    Written by hand (rather than ``scipy.signal.find_peaks``) to stay a torch
    operation on the device, per case, with no host round trip per peak.

    Args:
        values: 1D samples (any units; the histogram spans their 1st-99th percentile).
        bins: histogram bins.
        smooth: SD of the Gaussian smoothing, in bins.
        share: a peak counts when at least this share of the tallest.

    Returns:
        A 0-d tensor: the peak's bin centre (the median when there is no peak or too few samples).
    """
    v = values.float().flatten()
    if v.numel() < 32:
        return v.median() if v.numel() else v.new_tensor(0.0)
    lo, hi = quantile(v[:: max(1, v.numel() // 100_000)], (0.01, 0.99))
    if not bool(hi > lo):
        return v.median()
    hist = torch.histc(v.clamp(lo, hi), bins=int(bins), min=float(lo), max=float(hi))
    if smooth > 0:
        radius = max(1, int(3 * smooth))
        x = torch.arange(-radius, radius + 1, device=v.device, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (x / smooth) ** 2)
        kernel = (kernel / kernel.sum()).view(1, 1, -1)
        hist = F.conv1d(hist.view(1, 1, -1), kernel, padding=radius).view(-1)
    left = torch.cat([hist.new_tensor([-1.0]), hist[:-1]])
    right = torch.cat([hist[1:], hist.new_tensor([-1.0])])
    peaks = torch.nonzero((hist >= left) & (hist >= right) & (hist >= share * hist.max())).flatten()
    if peaks.numel() == 0:
        return v.median()
    width = (hi - lo) / bins
    return lo + (peaks[0].float() + 0.5) * width


def real_voxels(image: torch.Tensor) -> torch.Tensor:
    """``(B, X, Y, Z)`` bool: voxels of the image, not zero padding (every channel exactly 0)."""
    return (image[:, :2] != 0).any(dim=1)


def _median(x: torch.Tensor, mask: torch.Tensor, default: torch.Tensor | float) -> torch.Tensor:
    vals = x[mask]
    if vals.numel() == 0:
        return torch.as_tensor(default, dtype=x.dtype, device=x.device)
    return vals.median()


def _quantile(x: torch.Tensor, q: float | Sequence[float]) -> torch.Tensor:
    step = max(1, x.numel() // 500_000)  # a strided sample is plenty
    return quantile(x[::step], q)


def stir_zero(image: torch.Tensor, percentile: float = 0.01) -> torch.Tensor:
    """``(B,)``: each case's STIR of air, a low percentile of its real (not padded) voxels."""
    stir, real = image[:, 1].float(), real_voxels(image)
    out = [_quantile(stir[b][real[b]], percentile) if bool(real[b].any()) else stir.new_tensor(0.0)
           for b in range(image.shape[0])]  # cases, not regions
    return torch.stack(out)


def fat_index(t1: torch.Tensor, muscle: torch.Tensor, fat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B,)`` T1 medians of muscle and subcutaneous fat: the fat index's 0 and 1.

    Args:
        t1: ``(B, X, Y, Z)``.
        muscle, fat: ``(B, X, Y, Z)`` soft masks (voxels above 0.5 count).
    """
    t1m, t1f = [], []
    for b in range(t1.shape[0]):  # cases, not regions
        m = _median(t1[b], muscle[b] > 0.5, 0.0)
        f = _median(t1[b], fat[b] > 0.5, m + 1.0)
        if not bool((f - m).abs() > 1e-3):
            f = m + 1.0
        t1m.append(m)
        t1f.append(f)
    return torch.stack(t1m), torch.stack(t1f)


@dataclass
class TissueReference:
    """Per-case references, in the (normalised) units of the image; each ``(B,)``.

    Attributes:
        stir_zero: STIR of air (signal 0).
        stir_muscle: STIR of normal muscle of the station.
        t1_muscle: T1 median of the station's muscle.
        t1_fat: T1 median of the subcutaneous fat.
        stir_muscle_side: ``(B, 2)``, normal muscle of the right and the left leg apart,
            or ``None`` (no laterality, or an estimator without legs).
    """

    stir_zero: torch.Tensor
    stir_muscle: torch.Tensor
    t1_muscle: torch.Tensor
    t1_fat: torch.Tensor
    stir_muscle_side: torch.Tensor | None = None


class ReferenceEstimator(Protocol):
    """What a normal-muscle reference estimator is: ``estimator(image, muscle, fat, clean, ...)``."""

    def __call__(
        self,
        image: torch.Tensor,
        muscle: torch.Tensor,
        fat: torch.Tensor,
        clean: tuple[float, float],
        lateral: torch.Tensor | None = None,
        zero: torch.Tensor | None = None,
    ) -> TissueReference: ...


class LowestPeakReference:
    """Normal muscle = the lowest strong STIR histogram peak of each leg's clean muscle.

    Args:
        bins, smooth, share: of :func:`lowest_peak`.
        per_leg: each leg its own peak (needs the laterality channel); else the station's.
        min_side_voxels: fewer clean voxels on a leg: it takes the station's reference.
        zero_percentile: the percentile of the real voxels' STIR taken as air.
    """

    name = "lowest_peak"

    def __init__(self, bins: int = 96, smooth: float = 2.0, share: float = 0.2, per_leg: bool = True,
                 min_side_voxels: int = 200, zero_percentile: float = 0.01):
        self.bins, self.smooth, self.share = int(bins), float(smooth), float(share)
        self.per_leg, self.min_side_voxels = bool(per_leg), int(min_side_voxels)
        self.zero_percentile = float(zero_percentile)

    def peak(self, values: torch.Tensor) -> torch.Tensor:
        return lowest_peak(values, self.bins, self.smooth, self.share)

    def __call__(
        self,
        image: torch.Tensor,
        muscle: torch.Tensor,
        fat: torch.Tensor,
        clean: tuple[float, float],
        lateral: torch.Tensor | None = None,
        zero: torch.Tensor | None = None,
    ) -> TissueReference:
        """Each case's air, normal-muscle and fat references.

        Args:
            image: ``(B, >=2, X, Y, Z)``: normalised T1, STIR (further channels ignored).
            muscle: ``(B, X, Y, Z)`` soft mask of the station's muscle.
            fat: ``(B, X, Y, Z)`` soft mask of the subcutaneous tissue.
            clean: fat-index window of clean muscle ``(low, high)``.
            lateral: ``(B, X, Y, Z)`` signed distance from the midline (positive: the
                patient's right; the laterality channel), for each leg's own reference.
            zero: ``(B,)`` STIR of air when already known (e.g. measured on the whole
                volume before cropping); ``None``: :func:`stir_zero` of ``image``.

        Returns:
            :class:`TissueReference`.
        """
        t1, stir = image[:, 0].float(), image[:, 1].float()
        zeros = stir_zero(image, self.zero_percentile) if zero is None else zero.to(stir)
        t1m, t1f = fat_index(t1, muscle, fat)
        peaks, sides = [], []
        for b in range(image.shape[0]):  # cases, not regions
            m = muscle[b] > 0.5
            index = (t1[b] - t1m[b]) / (t1f[b] - t1m[b])
            sel = m & (index > clean[0]) & (index < clean[1])
            z = zeros[b]
            peak = self.peak(stir[b][sel]) if bool(sel.any()) else _median(stir[b], m, z + 1.0)
            if not bool(peak - z > 1e-3):
                peak = z + 1.0
            peaks.append(peak)
            if lateral is not None and self.per_leg:
                legs = []
                for sign in (1.0, -1.0):  # right, left
                    leg = sel & (lateral[b] * sign > 0)
                    p = self.peak(stir[b][leg]) if int(leg.sum()) >= self.min_side_voxels else peak
                    legs.append(p if bool(p - z > 1e-3) else peak)
                sides.append(torch.stack(legs))
        return TissueReference(
            stir_zero=zeros, stir_muscle=torch.stack(peaks), t1_muscle=t1m, t1_fat=t1f,
            stir_muscle_side=torch.stack(sides) if sides else None,
        )


#: Reference estimators by config name (``grading.reference.name``).
REFERENCE_ESTIMATORS: dict[str, Callable[..., ReferenceEstimator]] = {"lowest_peak": LowestPeakReference}


def make_reference(spec: Any) -> ReferenceEstimator:
    """The estimator of a :class:`~nxp2seg.models.grading_spec.ReferenceSpec`."""
    try:
        cls = REFERENCE_ESTIMATORS[spec.name]
    except KeyError:
        raise ValueError(
            f"grading.reference.name {spec.name!r}: choose one of {sorted(REFERENCE_ESTIMATORS)}"
        ) from None
    return cls(bins=spec.bins, smooth=spec.smooth, share=spec.share, per_leg=spec.per_leg,
               min_side_voxels=spec.min_side_voxels, zero_percentile=spec.zero_percentile)


def tissue_units(
    image: torch.Tensor, ref: TissueReference, lateral: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(stir_ratio, fat_index)``, each ``(B, 1, X, Y, Z)``: STIR over normal muscle, T1 from muscle to fat.

    With ``lateral`` (``(B, X, Y, Z)``, positive on the right) and per-leg references,
    each voxel's STIR is read against the normal muscle of its own leg.
    """
    v = (-1, 1, 1, 1, 1)
    t1, stir = image[:, 0:1].float(), image[:, 1:2].float()
    muscle = ref.stir_muscle.view(v)
    if lateral is not None and ref.stir_muscle_side is not None:
        right, left = ref.stir_muscle_side[:, 0].view(v), ref.stir_muscle_side[:, 1].view(v)
        muscle = torch.where(lateral[:, None] > 0, right, left)
    q = (stir - ref.stir_zero.view(v)) / (muscle - ref.stir_zero.view(v))
    f = (t1 - ref.t1_muscle.view(v)) / (ref.t1_fat - ref.t1_muscle).view(v)
    return q, f


def context_names(hist_bins: int) -> list[str]:
    """Names of the :func:`reference_context` columns."""
    return [
        *(f"muscle_q{int(p * 100):02d}" for p in CONTEXT_PERCENTILES),
        "muscle_above_lowest_threshold",
        "fat_q50",
        "marrow_q50",
        *(f"muscle_hist{i:02d}" for i in range(int(hist_bins))),
    ]


def reference_context(
    stir_ratio: torch.Tensor,
    fat_idx: torch.Tensor,
    muscle: torch.Tensor,
    fat: torch.Tensor,
    bone: torch.Tensor,
    clean: tuple[float, float],
    above: float,
    hist_range: tuple[float, float],
    hist_bins: int,
    fat_like: float = 0.5,
) -> torch.Tensor:
    """Case-level description of the STIR scale: ``(B, len(context_names(hist_bins)))``.

    Percentiles and a histogram of log STIR ratio of the clean muscle, its share
    above ``above`` (edematous muscle when the reference is right), the STIR
    ratio of subcutaneous fat and of marrow (fat-like voxels of the fat and bone
    masks: fat index above ``fat_like``). With a wrong reference these move
    together, which is what the grading head reads them for.

    Args:
        stir_ratio, fat_idx: ``(B, 1, X, Y, Z)`` (:func:`tissue_units`).
        muscle, fat, bone: ``(B, X, Y, Z)`` soft masks.
        clean: fat-index window of clean muscle.
        above: STIR ratio of the share feature (the lowest extent threshold).
        hist_range: ``(low, high)`` of the log STIR ratio histogram (the training cohort's).
        hist_bins: its bins.
        fat_like: fat index above which a voxel of the fat or bone mask is fat or marrow.
    """
    q, f = stir_ratio[:, 0], fat_idx[:, 0]
    rows = []
    for b in range(q.shape[0]):  # cases, not regions
        sel = (muscle[b] > 0.5) & (f[b] > clean[0]) & (f[b] < clean[1])
        vals = q[b][sel]
        if vals.numel() < 8:
            vals = q[b][muscle[b] > 0.5]
        if vals.numel() == 0:
            vals = q.new_ones(1)
        vals = vals[:: max(1, vals.numel() // 500_000)]
        quant = quantile(vals, CONTEXT_PERCENTILES)
        share = (vals > above).float().mean().view(1)
        fat_q = _median(q[b], (fat[b] > 0.5) & (f[b] > fat_like), 0.0).view(1)
        marrow = _median(q[b], (bone[b] > 0.5) & (f[b] > fat_like), 0.0).view(1)
        hist = torch.histc(vals.clamp_min(1e-3).log(), bins=int(hist_bins), min=hist_range[0], max=hist_range[1])
        hist = hist / hist.sum().clamp_min(1.0)
        rows.append(torch.cat([quant, share, fat_q, marrow, hist]))
    return torch.stack(rows)
