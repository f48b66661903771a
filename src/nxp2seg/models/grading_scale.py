"""The training cohort's own tissue statistics, and the grader's thresholds set from them.

Nothing in the grader is an intensity typed into the code: what counts as
"muscle-like" T1, how bright STIR must be to count as edema, how wide the soft
thresholds are, all come from the training cohort, measured once before the
features are computed (:func:`fit_cohort_scale`) on the training cases whose
label maps exist:

* ``f_mode``, ``f_sd``: the peak and spread of the T1 fat index over the
  muscle voxels: where muscle sits between each case's muscle and fat T1, and
  how noisy it is;
* ``q_sd``: the spread of normal muscle on STIR, the clean-muscle voxels'
  STIR ratio around its peak at 1.

A spread is read from the peak's half width at half maximum on its narrower
side (:func:`peak_spread`; ``sd = HWHM / 1.1774`` for a normal peak): the
tails on either side are other tissues (fat infiltration and edema above,
partial volume with septa, vessels and cortex below), which inflate a MAD or
a half-normal fit (on the phantom 0.11 and 0.14 against 0.05 and 0.06).
* ``q_high``: a high quantile of the clean-muscle STIR ratio (the cohort's
  brightest muscle), ``q_fat``: the median STIR ratio of subcutaneous fat;
* ``log_q_range``: the 0.5-99.5th percentile of log clean-muscle STIR ratio.

:func:`thresholds` turns them, with the :class:`~nxp2seg.models.grading_spec.FeatureSpec`
and :class:`~nxp2seg.models.grading_spec.ReferenceSpec` (in units of these
statistics), into the numbers :class:`~nxp2seg.models.region_features.RegionFeatures`
uses; they are buffers of the grader, so the bundle carries them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from nxp2seg.models.tissue import ReferenceEstimator, fat_index, stir_zero, tissue_units
from nxp2seg.quantiles import quantile

__all__ = ["CohortSample", "CohortScale", "fit_cohort_scale", "sample_case", "thresholds"]

#: Voxels kept per case and tissue (a strided sample).
_PER_CASE = 40_000
#: Half width at half maximum of a normal peak, in SDs.
_HWHM_SD = math.sqrt(2.0 * math.log(2.0))


def peak_spread(values: torch.Tensor, centre: float, width: float, bins: int = 200,
                smooth: float = 2.0) -> tuple[float, float]:
    """``(mode, sd)`` of the peak of ``values`` within ``centre +- width``: the tallest bin of a
    smoothed histogram and its half width at half maximum on the narrower side, over 1.1774
    (less the smoothing's and the binning's own spread; at least one bin).

    Written by hand: no library gives a peak's width on its cleaner side, which
    is what a distribution with tissue tails on both sides needs.
    """
    h = torch.histc(values.float(), bins=bins, min=centre - width, max=centre + width)
    radius = max(1, int(3 * smooth))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / smooth) ** 2)
    h = torch.nn.functional.conv1d(h.view(1, 1, -1), (kernel / kernel.sum()).view(1, 1, -1), padding=radius).view(-1)
    step = 2.0 * width / bins
    k = int(torch.argmax(h))
    below = torch.nonzero(h < 0.5 * h[k]).flatten()
    up = below[below > k]
    down = below[below < k]
    sides = [(int(up[0]) - k) if up.numel() else bins, (k - int(down[-1])) if down.numel() else bins]
    measured = min(sides) * step / _HWHM_SD
    # the smoothing kernel and the binning widen the peak: take their variance back out
    sd = math.sqrt(max(measured**2 - (smooth * step) ** 2 - step**2 / 12.0, step**2))
    return centre - width + (k + 0.5) * step, sd


@dataclass
class CohortSample:
    """One case's voxels for :func:`fit_cohort_scale` (1D tensors, a strided sample).

    Attributes:
        muscle: ``(3, N)`` T1, STIR, laterality of muscle voxels (laterality 0 if none).
        fat: ``(2, M)`` T1, STIR of subcutaneous-fat voxels.
        zero: STIR of air of the whole volume.
    """

    muscle: torch.Tensor
    fat: torch.Tensor
    zero: torch.Tensor


def sample_case(image: torch.Tensor, label: torch.Tensor, muscle_values: Sequence[int],
                fat_values: Sequence[int], zero_percentile: float = 0.01) -> CohortSample | None:
    """The voxels of one preprocessed case with its label map; ``None`` without muscle or fat.

    Args:
        image: ``(K, X, Y, Z)`` T1, STIR (, laterality).
        label: ``(X, Y, Z)`` or ``(1, X, Y, Z)`` label values.
        muscle_values, fat_values: label values of the graded regions and of subcutaneous tissue.
    """
    image = image.float()
    lab = label.reshape(image.shape[1:]).long()
    muscle = torch.isin(lab, torch.as_tensor(list(muscle_values)))
    fat = torch.isin(lab, torch.as_tensor(list(fat_values)))
    if not bool(muscle.any()) or not bool(fat.any()):
        return None
    lat = image[2] if image.shape[0] > 2 else torch.zeros_like(image[0])
    m = torch.stack([image[0][muscle], image[1][muscle], lat[muscle]])
    f = torch.stack([image[0][fat], image[1][fat]])
    return CohortSample(
        muscle=m[:, :: max(1, m.shape[1] // _PER_CASE)],
        fat=f[:, :: max(1, f.shape[1] // _PER_CASE)],
        zero=stir_zero(image[None], zero_percentile)[0],
    )


@dataclass
class CohortScale:
    """The training cohort's tissue statistics (see the module docstring)."""

    f_mode: float
    f_sd: float
    q_sd: float
    q_high: float
    q_fat: float
    log_q_low: float
    log_q_high: float
    n_cases: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _as_image(s: CohortSample) -> tuple[torch.Tensor, ...]:
    """A sample as 1-voxel-high volumes for the reference estimator: image, muscle, fat, lateral."""
    n, k = s.muscle.shape[1], s.fat.shape[1]
    t1 = torch.cat([s.muscle[0], s.fat[0]])
    stir = torch.cat([s.muscle[1], s.fat[1]])
    lat = torch.cat([s.muscle[2], torch.zeros(k)])
    muscle = torch.cat([torch.ones(n), torch.zeros(k)])
    shape = (1, n + k, 1, 1)
    return (torch.stack([t1, stir]).view(1, 2, *shape[1:]), muscle.view(shape), (1 - muscle).view(shape),
            lat.view(shape))


def fit_cohort_scale(samples: Iterable[CohortSample], reference: ReferenceEstimator,
                     clean_sd: tuple[float, float], high_quantile: float) -> CohortScale:
    """The cohort's statistics from its training cases (:func:`sample_case`).

    Args:
        samples: one per training case with a label map.
        reference: the normal-muscle reference estimator (the grader's).
        clean_sd: the clean-muscle window, ``[below, above]`` the muscle peak in ``f_sd``.
        high_quantile: of the clean-muscle STIR ratio, for ``q_high``.

    Raises:
        ValueError: without any sample (no training case with muscle and fat in its label map).
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        raise ValueError(
            "grading: no training case has a label map with muscle and subcutaneous fat; the grader's "
            "tissue statistics are measured on them (keep the masks of some training subjects)"
        )
    volumes = [_as_image(s) for s in samples]
    f_all = []
    for image, muscle, fat, _ in volumes:
        t1m, t1f = fat_index(image[:, 0], muscle, fat)
        f_all.append((image[0, 0][muscle[0] > 0.5] - t1m[0]) / (t1f[0] - t1m[0]))
    f_mode, f_sd = peak_spread(torch.cat(f_all), 0.0, 0.5)
    clean = (f_mode - clean_sd[0] * f_sd, f_mode + clean_sd[1] * f_sd)
    q_clean, q_fat = [], []
    for (image, muscle, fat, lat), s in zip(volumes, samples):
        has_lat = bool((lat != 0).any())
        ref = reference(image, muscle, fat, clean, lateral=lat if has_lat else None, zero=s.zero.view(1))
        q, fi = tissue_units(image, ref, lat if has_lat else None)
        q, fi = q[0, 0].flatten(), fi[0, 0].flatten()
        m = muscle.flatten() > 0.5
        sel = m & (fi > clean[0]) & (fi < clean[1])
        q_clean.append(q[sel])
        q_fat.append(q[~m])
    qc = torch.cat(q_clean)
    _, q_sd = peak_spread(qc, 1.0, 0.6)
    lo, hi = quantile(qc.clamp_min(1e-3).log(), (0.005, 0.995))
    return CohortScale(
        f_mode=f_mode,
        f_sd=f_sd,
        q_sd=q_sd,
        q_high=float(quantile(qc, float(high_quantile))),
        q_fat=float(torch.cat(q_fat).median()),
        log_q_low=float(lo),
        log_q_high=float(hi),
        n_cases=len(samples),
    )


def thresholds(scale: CohortScale, features: Any, reference: Any) -> dict[str, Any]:
    """The grader's numbers from the cohort's statistics and the specs (in their units).

    Returns:
        ``stir_tau`` (log-spaced from normal muscle + ``stir_low_sd`` spreads to
        ``q_high``), ``t1_tau`` (the fat levels), ``soft_q``, ``soft_f``,
        ``clean`` and ``muscle_like`` windows, ``subcut_q``, ``subcut_f``,
        ``hist_range``.
    """
    low = 1.0 + float(features.stir_low_sd) * scale.q_sd
    high = max(scale.q_high, low * 1.05)  # a cohort without edema still gets increasing thresholds
    n = int(features.stir_levels)
    stir = [low * (high / low) ** (k / max(1, n - 1)) for k in range(n)] if n > 1 else [low]
    fm, fs = scale.f_mode, scale.f_sd
    return {
        "stir_tau": stir,
        "t1_tau": list(features.fat_levels),
        "soft_q": float(features.softness_sd) * scale.q_sd,
        "soft_f": float(features.softness_sd) * fs,
        "clean": (fm - reference.clean_sd[0] * fs, fm + reference.clean_sd[1] * fs),
        "muscle_like": (fm - features.muscle_sd[0] * fs, fm + features.muscle_sd[1] * fs),
        "subcut_q": math.exp((1.0 - float(features.subcut_stir_mix)) * math.log(max(scale.q_fat, 1e-3))),
        "subcut_f": float(features.subcut_fat_index),
        "hist_range": (scale.log_q_low, scale.log_q_high),
    }
