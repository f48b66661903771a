"""Intensities in tissue units: STIR as a ratio to the case's normal muscle, T1 as a fat index.

Readers grade edema by how bright muscle is on STIR *compared with normal
muscle of the same scan*, and fat by how close muscle comes to subcutaneous
fat on T1. Scanner gain, the foreground z-score of preprocessing and each
case's edema and fat load all move the raw or normalised values; these
references do not:

* **STIR ratio** ``q = (STIR - zero) / (muscle - zero)``: ``zero`` is the
  signal of air (a low percentile of the image's real voxels: air, cortex and
  Rician noise floor all sit near 0 on STIR), ``muscle`` the *lowest strong
  peak* of the STIR histogram of the station's clean muscle
  (:func:`lowest_peak`): normal muscle is the darkest muscle population even
  when most muscle is edematous, so its peak, not the median, is the
  reference. Normal muscle reads ~1, mild edema ~1.4-1.9, moderate ~2.2-3.2,
  fat ~0.2.
* **fat index** ``f = (T1 - muscle_T1) / (fat_T1 - muscle_T1)``: 0 in muscle,
  1 in subcutaneous fat; inside a muscle it is close to its fat fraction.

"Clean" muscle is the confident interior of the predicted compartments with a
muscle-like fat index (no fat infiltration, septum or vessel). When a station
has almost no normal muscle left (diffuse disease), the lowest peak can be an
edema population; :func:`reference_context` then describes the case's
histogram and other tissues in the same units (fat, marrow, percentiles of
muscle) so that the grading head can tell.

All functions take batched tensors ``(B, ...)`` and loop over cases only
(histograms and quantiles are per case), never over regions or voxels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nxp2seg.quantiles import quantile

__all__ = [
    "CONTEXT_FEATURES",
    "TissueReference",
    "lowest_peak",
    "real_voxels",
    "reference_context",
    "stir_zero",
    "tissue_reference",
    "tissue_units",
]

#: Muscle-like fat-index window of "clean" muscle (no fat, septum, vessel).
CLEAN_WINDOW: tuple[float, float] = (-0.25, 0.12)
#: Percentiles of clean-muscle STIR ratio in :func:`reference_context`.
_PERCENTILES: tuple[float, ...] = (0.02, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90)
#: Bins of log STIR ratio in :func:`reference_context` (log 0.55 .. log 3.3).
_HIST_BINS, _HIST_LO, _HIST_HI = 12, -0.6, 1.2
#: Names of the :func:`reference_context` columns.
CONTEXT_FEATURES: tuple[str, ...] = (
    *(f"muscle_q{int(p * 100):02d}" for p in _PERCENTILES),
    "muscle_above_1.25",
    "fat_q50",
    "marrow_q50",
    *(f"muscle_hist{i:02d}" for i in range(_HIST_BINS)),
)


def lowest_peak(values: torch.Tensor, bins: int = 96, smooth: float = 2.0, share: float = 0.2) -> torch.Tensor:
    """The lowest histogram peak at least ``share`` as high as the tallest (Gaussian-smoothed bins).

    Args:
        values: 1D samples (any units; the histogram spans their 1st-99th percentile).

    Returns:
        A 0-d tensor: the peak's bin centre (the median when there is no peak or too few samples).
    """
    v = values.float().flatten()
    if v.numel() < 32:
        return v.median() if v.numel() else v.new_tensor(0.0)
    lo, hi = quantile(v[:: max(1, v.numel() // 100_000)], (0.01, 0.99))
    if not bool(hi > lo):
        return v.median()
    hist = torch.histc(v.clamp(lo, hi), bins=bins, min=float(lo), max=float(hi))
    radius = int(3 * smooth)
    x = torch.arange(-radius, radius + 1, device=v.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / smooth) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    h = F.conv1d(hist.view(1, 1, -1), kernel, padding=radius).view(-1)
    left = torch.cat([h.new_tensor([-1.0]), h[:-1]])
    right = torch.cat([h[1:], h.new_tensor([-1.0])])
    peaks = torch.nonzero((h >= left) & (h >= right) & (h >= share * h.max())).flatten()
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


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    step = max(1, x.numel() // 500_000)  # a strided sample is plenty
    return quantile(x[::step], q)


def stir_zero(image: torch.Tensor, percentile: float = 0.01) -> torch.Tensor:
    """``(B,)``: each case's STIR of air, a low percentile of its real (not padded) voxels."""
    stir, real = image[:, 1].float(), real_voxels(image)
    out = [_quantile(stir[b][real[b]], percentile) if bool(real[b].any()) else stir.new_tensor(0.0)
           for b in range(image.shape[0])]  # cases, not regions
    return torch.stack(out)


@dataclass
class TissueReference:
    """Per-case references, in the (normalised) units of the image; each ``(B,)``.

    Attributes:
        stir_zero: STIR of air (signal 0).
        stir_muscle: STIR of normal muscle (lowest strong peak of the station's clean muscle).
        t1_muscle: T1 median of the station's muscle.
        t1_fat: T1 median of the subcutaneous fat.
        stir_muscle_side: ``(B, 2)``, normal muscle of the right and the left leg apart
            (each leg's own lowest peak; the station's where a leg has too little
            muscle), or ``None`` without laterality.
    """

    stir_zero: torch.Tensor
    stir_muscle: torch.Tensor
    t1_muscle: torch.Tensor
    t1_fat: torch.Tensor
    stir_muscle_side: torch.Tensor | None = None


def tissue_reference(
    image: torch.Tensor,
    muscle: torch.Tensor,
    fat: torch.Tensor,
    lateral: torch.Tensor | None = None,
    zero: torch.Tensor | None = None,
    zero_percentile: float = 0.01,
    clean: tuple[float, float] = CLEAN_WINDOW,
    min_side_voxels: int = 200,
) -> TissueReference:
    """Each case's air, normal-muscle and fat references.

    Args:
        image: ``(B, >=2, X, Y, Z)``: normalised T1, STIR (further channels ignored).
        muscle: ``(B, X, Y, Z)`` soft mask of the station's muscle compartments.
        fat: ``(B, X, Y, Z)`` soft mask of the subcutaneous tissue.
        lateral: ``(B, X, Y, Z)`` signed distance from the midline (positive: the
            patient's right; the laterality channel), to also take each leg's own
            normal muscle: the coil's bias field often leaves one leg 10-25%
            brighter than the other on STIR.
        zero: ``(B,)`` STIR of air when already known (:func:`stir_zero` of the whole
            volume, e.g. before cropping to the body); ``None``: measured on ``image``.
        zero_percentile: the percentile of the real voxels' STIR taken as signal 0.
        clean: fat-index window of clean muscle.
        min_side_voxels: fewer clean voxels on a leg: that leg takes the station's reference.

    Returns:
        :class:`TissueReference`.
    """
    t1, stir = image[:, 0].float(), image[:, 1].float()
    zeros = stir_zero(image, zero_percentile) if zero is None else zero.to(stir)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("zero", "muscle", "t1m", "t1f", "side")}
    for b in range(image.shape[0]):  # cases, not regions
        m, f = muscle[b] > 0.5, fat[b] > 0.5
        t1m = _median(t1[b], m, 0.0)
        t1f = _median(t1[b], f, t1m + 1.0)
        if not bool((t1f - t1m).abs() > 1e-3):
            t1f = t1m + 1.0
        index = (t1[b] - t1m) / (t1f - t1m)
        zero = zeros[b]
        sel = m & (index > clean[0]) & (index < clean[1])
        peak = lowest_peak(stir[b][sel]) if bool(sel.any()) else _median(stir[b], m, zero + 1.0)
        if not bool(peak - zero > 1e-3):
            peak = zero + 1.0
        sides = []
        for sign in (1.0, -1.0):  # right, left
            if lateral is None:
                break
            leg = sel & (lateral[b] * sign > 0)
            p = lowest_peak(stir[b][leg]) if int(leg.sum()) >= min_side_voxels else peak
            sides.append(p if bool(p - zero > 1e-3) else peak)
        for k, v in zip(out, (zero, peak, t1m, t1f, torch.stack(sides) if sides else None)):
            out[k].append(v)
    s = {k: torch.stack(v) for k, v in out.items() if k != "side"}
    side = torch.stack(out["side"]) if lateral is not None else None
    return TissueReference(
        stir_zero=s["zero"], stir_muscle=s["muscle"], t1_muscle=s["t1m"], t1_fat=s["t1f"], stir_muscle_side=side
    )


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


def reference_context(
    stir_ratio: torch.Tensor,
    fat_index: torch.Tensor,
    muscle: torch.Tensor,
    fat: torch.Tensor,
    bone: torch.Tensor,
    clean: tuple[float, float] = CLEAN_WINDOW,
) -> torch.Tensor:
    """Case-level description of the STIR scale: ``(B, len(CONTEXT_FEATURES))``.

    Percentiles and a histogram of log STIR ratio of the clean muscle, the
    share above 1.25 (edematous muscle when the reference is right), the STIR
    ratio of subcutaneous fat and of marrow (~0.15-0.3 when the reference is
    normal muscle; lower when it is edema). With a wrong reference these move
    together, which is what the grading head reads them for.

    Args:
        stir_ratio, fat_index: ``(B, 1, X, Y, Z)`` (:func:`tissue_units`).
        muscle, fat, bone: ``(B, X, Y, Z)`` soft masks.
    """
    q, f = stir_ratio[:, 0], fat_index[:, 0]
    rows = []
    for b in range(q.shape[0]):  # cases, not regions
        sel = (muscle[b] > 0.5) & (f[b] > clean[0]) & (f[b] < clean[1])
        vals = q[b][sel]
        if vals.numel() < 8:
            vals = q[b][muscle[b] > 0.5]
        if vals.numel() == 0:
            vals = q.new_ones(1)
        vals = vals[:: max(1, vals.numel() // 500_000)]
        quant = quantile(vals, _PERCENTILES)
        above = (vals > 1.25).float().mean().view(1)
        fat_q = _median(q[b], (fat[b] > 0.5) & (f[b] > 0.8), 0.2).view(1)
        marrow = _median(q[b], (bone[b] > 0.5) & (f[b] > 0.7), 0.2).view(1)
        hist = torch.histc(vals.clamp_min(1e-3).log(), bins=_HIST_BINS, min=_HIST_LO, max=_HIST_HI)
        hist = hist / hist.sum().clamp_min(1.0)
        rows.append(torch.cat([quant, above, fat_q, marrow, hist]))
    return torch.stack(rows)
