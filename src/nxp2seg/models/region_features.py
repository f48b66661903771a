"""A feature vector per graded region: what a reader looks at, pooled inside the soft predicted region.

For each region slot of a station (:mod:`nxp2seg.data.regions`), voxel maps
are pooled (:func:`~nxp2seg.models.pooling.masked_mean`, one batched matmul)
under four weights:

* the **region** ``w`` (soft mask; ``probs`` are detached);
* its **outer rim** ``w * box_mean(P(subcutaneous of its side), band)``: the
  part of the region next to the subcutaneous tissue, where the deep fascia
  is (fascial edema is a bright band along it), and the **fat next to it**
  ``P(subcutaneous) * box_mean(w, band)`` (the fascia's other side);
* its **subcutaneous sector** ``P(subcutaneous of its side) * box_mean(w, sector)``:
  the subcutaneous tissue over the region (subcutaneous edema).

Intensities are in tissue units (:mod:`nxp2seg.models.tissue`): ``q`` the STIR
ratio to the normal muscle of the voxel's own leg (the configured reference
estimator), ``f`` the T1 fat index. Voxel maps:

* ``q``, ``q^2`` (mean and spread), ``f`` (fat), ``m`` = muscle-like T1 (``f``
  inside the cohort's muscle window: not fat, septum, vessel or cortex);
* edema extent ``m * sigmoid((q_local - tau_k) / s_q)`` at STIR ratios
  ``tau_k`` (``q_local``: the muscle-weighted local mean, so single noisy voxels
  are not edema), and ``q`` times the lowest one's map (the mean brightness of
  the edematous part);
* fat ``sigmoid((f - tau_k) / s_f)`` at fat-index levels;
* bright STIR with fat-like T1 (reticular subcutaneous edema), and the fat
  fraction ``clip(f, 0, 1)``;
* optionally the segmentation network's last decoder features (``F_dec`` channels).

After pooling: per weight the share of muscle-like voxels above each STIR
threshold and the mean ratio of the edematous voxels; quantiles of ``q`` over
the region's muscle-like voxels, of ``f`` over the region, of ``q`` on the
outer rim and in the muscle beneath it; ``log(1 + volume ml)``; and the case's
:func:`~nxp2seg.models.tissue.reference_context` with its two legs' references
over the station's (the same for every region of a case).

Every threshold (``tau``, ``s``, the windows, the histogram range) is a buffer
set from the training cohort's statistics (:meth:`RegionFeatures.set_thresholds`,
:mod:`nxp2seg.models.grading_scale`) before the features are first computed;
the bundle carries them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nxp2seg.models.pooling import (
    box_mean,
    kernel_voxels,
    masked_mean,
    region_masks,
    weighted_quantiles,
)
from nxp2seg.models.tissue import (
    ReferenceEstimator,
    context_names,
    reference_context,
    stir_zero,
    tissue_units,
)

__all__ = ["RegionFeatures"]

_WEIGHTS = 4  # region, outer rim, the fat next to it, subcutaneous sector
#: Levels of the STIR-ratio distribution of each region's muscle-like voxels.
QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
#: Levels of the fat-index distribution of each region's voxels.
FAT_QUANTILES: tuple[float, ...] = (0.5, 0.75, 0.9)
#: Levels of the STIR ratio on the outer rim, and beneath it (the muscle 1-3 rim widths in).
RIM_QUANTILES: tuple[float, ...] = (0.5, 0.75, 0.9)
BENEATH_QUANTILES: tuple[float, ...] = (0.5,)
#: Scalar thresholds set from the cohort (:func:`nxp2seg.models.grading_scale.thresholds`).
_SCALARS: tuple[str, ...] = ("soft_q", "soft_f", "subcut_q", "subcut_f")
_PAIRS: tuple[str, ...] = ("clean", "muscle_like", "hist_range")


class RegionFeatures(nn.Module):
    """Region feature vectors from soft region masks, the image and (optionally) decoder features.

    Args:
        reference: the normal-muscle reference estimator (:func:`nxp2seg.models.tissue.make_reference`).
        spacing: voxel size in mm (the target spacing), for volumes and kernels.
        stir_levels, fat_levels: numbers of STIR and fat-index thresholds.
        feature_channels: decoder channels pooled (``0``: none).
        band_mm, sector_mm: in-plane widths of the rim and sector filters.
        smooth_mm: in-plane width of the muscle-weighted local mean of ``q`` the extent
            maps threshold (``0``: none).
        hist_bins: bins of the reference context's histogram.
        bone_label: label value of bone (marrow STIR in the context; ``None``: skipped).
        eps: of the pooled means.
    """

    def __init__(
        self,
        reference: ReferenceEstimator,
        spacing: Sequence[float],
        stir_levels: int = 6,
        fat_levels: int = 4,
        feature_channels: int = 0,
        band_mm: float = 5.0,
        sector_mm: float = 30.0,
        smooth_mm: float = 5.0,
        hist_bins: int = 12,
        bone_label: int | None = None,
        eps: float = 1e-6,
    ):
        super().__init__()
        self.reference = reference
        self.feature_channels = int(feature_channels)
        self.spacing = [float(s) for s in spacing]
        self.hist_bins = int(hist_bins)
        self.bone_label = None if bone_label is None else int(bone_label)
        self.eps = float(eps)
        self.voxel_ml = math.prod(self.spacing) / 1000.0
        self.register_buffer("stir_tau", torch.zeros(int(stir_levels)))
        self.register_buffer("t1_tau", torch.zeros(int(fat_levels)))
        for name in _SCALARS:
            self.register_buffer(name, torch.zeros(()))
        for name in _PAIRS:
            self.register_buffer(name, torch.zeros(2))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # in-plane only: fascia and subcutaneous tissue surround the region within a slice
        self.band_kernel = [kernel_voxels(band_mm, s) for s in self.spacing[:2]] + [1]
        self.beneath_kernel = [kernel_voxels(3 * band_mm, s) for s in self.spacing[:2]] + [1]
        self.sector_kernel = [kernel_voxels(sector_mm, s) for s in self.spacing[:2]] + [1]
        self.smooth_kernel = [kernel_voxels(smooth_mm, s) if smooth_mm > 0 else 1 for s in self.spacing[:2]] + [1]

    def set_thresholds(self, values: Mapping[str, Any]) -> None:
        """Set the thresholds (:func:`nxp2seg.models.grading_scale.thresholds`) in place."""
        with torch.no_grad():
            for name in ("stir_tau", "t1_tau", *_SCALARS, *_PAIRS):
                new = torch.as_tensor(values[name], dtype=torch.float32)
                if new.shape != getattr(self, name).shape:
                    raise ValueError(f"RegionFeatures.{name}: shape {tuple(new.shape)}, built for "
                                     f"{tuple(getattr(self, name).shape)}")
                getattr(self, name).copy_(new)
            self.fitted.fill_(True)

    def thresholds(self) -> dict[str, Any]:
        """The thresholds in use, as plain numbers (for ``validation.json`` and predict)."""
        return {name: getattr(self, name).tolist() for name in ("stir_tau", "t1_tau", *_SCALARS, *_PAIRS)}

    @property
    def edema_threshold(self) -> float:
        """The STIR ratio above which muscle counts as edematous: the lowest extent threshold."""
        return float(self.stir_tau[0])

    @property
    def muscle_like_window(self) -> tuple[float, float]:
        """The fat-index window of muscle-like T1 (not fat, septum, vessel or cortex)."""
        return self._pair("muscle_like")

    def _pair(self, name: str) -> tuple[float, float]:
        lo, hi = getattr(self, name).tolist()
        return float(lo), float(hi)

    # -- sizes -------------------------------------------------------------------
    @property
    def n_stir(self) -> int:
        return int(self.stir_tau.numel())

    @property
    def voxel_channels(self) -> int:
        """Voxel maps pooled under each weight."""
        return self.feature_channels + self.n_stir + int(self.t1_tau.numel()) + 7

    @property
    def derived_features(self) -> int:
        """Ratios computed after pooling, per weight."""
        return self.n_stir + 1

    @property
    def context_features(self) -> int:
        """Case-level features appended to every region (context and the two legs' references)."""
        return len(context_names(self.hist_bins)) + 2

    @property
    def quantile_features(self) -> int:
        return len(QUANTILES) + len(FAT_QUANTILES) + len(RIM_QUANTILES) + len(BENEATH_QUANTILES)

    @property
    def out_features(self) -> int:
        per_weight = self.voxel_channels + self.derived_features
        return _WEIGHTS * per_weight + self.quantile_features + 1 + self.context_features

    def feature_names(self) -> list[str]:
        """Names of the :attr:`out_features` columns, in order (e.g. ``rim/extent3``)."""
        dec = [f"decoder{i}" for i in range(self.feature_channels)]
        stir = [str(k) for k in range(self.n_stir)]
        maps = dec + ["q", "q^2", "f", "muscle_like"] + [f"extent{k}" for k in stir]
        maps += [f"fat{k}" for k in range(int(self.t1_tau.numel()))] + ["q*edema", "subcut_edema", "fat_fraction"]
        derived = [f"share{k}" for k in stir] + ["edema_brightness"]
        names = [f"{w}/{m}" for w in ("region", "rim", "fat_rim", "sector") for m in maps + derived]
        names += [f"region/q_p{round(100 * p):02d}" for p in QUANTILES]
        names += [f"region/f_p{round(100 * p):02d}" for p in FAT_QUANTILES]
        names += [f"rim/q_p{round(100 * p):02d}" for p in RIM_QUANTILES]
        names += [f"beneath_rim/q_p{round(100 * p):02d}" for p in BENEATH_QUANTILES]
        names.append("log_volume_ml")
        names += [f"case/{n}" for n in context_names(self.hist_bins)] + ["case/leg_right", "case/leg_left"]
        return names

    def _box(self, tissue: torch.Tensor) -> tuple[slice, ...]:
        """``(:, :, x, y, z)`` slices around the voxels where ``tissue`` (``(B, X, Y, Z)``) exceeds
        1e-3, grown by the widest filter's half-width in-plane: every pooled weight and every
        filter window of a weighted voxel lies inside (the pooled values are those of the whole
        volume), at a fraction of its cost."""
        hit = (tissue > 1e-3).any(dim=0)
        if not bool(hit.any()):
            return (slice(None),) * 5
        grow = [max(a, b) // 2 + 1 for a, b in zip(self.sector_kernel, self.beneath_kernel)]
        out = []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            idx = torch.nonzero(hit.any(dim=other)).flatten()
            g = grow[axis] if axis < 2 else 0
            out.append(slice(max(0, int(idx[0]) - g), min(hit.shape[axis], int(idx[-1]) + 1 + g)))
        return (slice(None), slice(None), *out)

    # -- maps --------------------------------------------------------------------
    def voxel_maps(self, q: torch.Tensor, f: torch.Tensor, decoder: torch.Tensor | None) -> torch.Tensor:
        """``(B, Fv, X, Y, Z)`` maps of the STIR ratio ``q`` and fat index ``f`` (each ``(B, 1, ...)``)."""
        maps = [decoder.float()] if self.feature_channels and decoder is not None else []
        soft_q, soft_f = float(self.soft_q), float(self.soft_f)
        lo, hi = self._pair("muscle_like")
        m = torch.sigmoid((f - lo) / (0.5 * soft_f)) * torch.sigmoid((hi - f) / (0.5 * soft_f))
        # the muscle-weighted local mean of q: single noisy voxels are not edema
        q_local = box_mean(q * m, self.smooth_kernel) / (box_mean(m, self.smooth_kernel) + 1e-3)
        extent = m * torch.sigmoid((q_local - self.stir_tau.view(1, -1, 1, 1, 1)) / soft_q)
        fat = torch.sigmoid((f - self.t1_tau.view(1, -1, 1, 1, 1)) / soft_f)
        subcut = (torch.sigmoid((q - float(self.subcut_q)) / (2 * soft_q))
                  * torch.sigmoid((f - float(self.subcut_f)) / (2 * soft_f)))
        edema_q = q * extent[:, 0:1]
        return torch.cat(maps + [q, q * q, f, m, extent, fat, edema_q, subcut, f.clamp(0.0, 1.0)], dim=1)

    def _derived(self, pooled: torch.Tensor) -> torch.Tensor:
        """Per weight: extent among muscle-like voxels, mean STIR ratio of the edematous ones."""
        c = self.feature_channels
        m = pooled[..., c + 3 : c + 4]
        extent = pooled[..., c + 4 : c + 4 + self.n_stir]
        k = c + 4 + self.n_stir + int(self.t1_tau.numel())
        edema_q = pooled[..., k : k + 1]
        share = extent / (m + 1e-3)
        brightness = edema_q / (extent[..., 0:1] + 1e-3)
        return torch.cat([share, brightness], dim=-1)

    def tissue(self, image: torch.Tensor, muscle: torch.Tensor, fat: torch.Tensor,
               zero: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``(q, f, reference)`` of ``image`` (``(B, >=2, ...)``) with this grader's estimator and windows."""
        lateral = image[:, 2].float() if image.shape[1] > 2 else None
        ref = self.reference(image, muscle, fat, self._pair("clean"), lateral=lateral, zero=zero)
        q, f = tissue_units(image, ref, lateral)
        return q.clamp(0.0, 6.0), f.clamp(-1.0, 2.0), ref

    def forward(
        self,
        probs: torch.Tensor,
        image: torch.Tensor,
        decoder: torch.Tensor | None,
        membership: torch.Tensor,
        subcut: torch.Tensor,
    ) -> torch.Tensor:
        """Region feature vectors.

        Args:
            probs: ``(B, C, X, Y, Z)`` class probabilities (detached here).
            image: ``(B, >=2, X, Y, Z)`` normalised T1, STIR (, laterality).
            decoder: ``(B, D, X, Y, Z)`` decoder features (with ``feature_channels``), or ``None``.
            membership: ``(B, R, C)`` region slots (:func:`nxp2seg.data.regions.region_membership`).
            subcut: ``(B, R, C)`` subcutaneous label of each slot's side.

        Returns:
            ``(B, R, out_features)``.
        """
        if not bool(self.fitted):
            raise RuntimeError(
                "RegionFeatures: thresholds not set; they are fitted on the training cohort "
                "(nxp2seg.models.grading_scale) by the grading stage before features are computed"
            )
        if self.feature_channels and decoder is None:
            raise ValueError("RegionFeatures: built for decoder features, none given")
        # sums over ~10^5-10^6 voxels: in float32 even under mixed precision
        with torch.autocast(device_type=probs.device.type, enabled=False):
            probs = probs.detach().float()
            b, r = membership.shape[0], membership.shape[-2]
            zero = stir_zero(image, self.reference_zero_percentile)  # air: on the whole volume
            w = region_masks(probs, membership)  # (B, R, ...)
            side_fat = region_masks(probs, subcut)  # (B, R, ...): subcutaneous of each slot's side
            # everything below reads only voxels near the regions and their subcutaneous tissue
            box = self._box(w.sum(dim=1) + side_fat.amax(dim=1))
            w, side_fat, probs, image = w[box], side_fat[box], probs[box], image[box]
            decoder = decoder[box].float() if decoder is not None and self.feature_channels else None
            # box means are linear: filter the few subcutaneous label maps, then spread them to the slots
            cols = torch.nonzero(subcut.sum(dim=(0, 1)) > 0).flatten()
            sub_probs, sub_slots = probs[:, cols], subcut[:, :, cols].to(probs)

            def side_box(kernel: list[int]) -> torch.Tensor:
                return torch.einsum("bcxyz,brc->brxyz", box_mean(sub_probs, kernel), sub_slots)

            rim = w * side_box(self.band_kernel)
            fat_rim = side_fat * box_mean(w, self.band_kernel)
            sector = side_fat * box_mean(w, self.sector_kernel)
            weights = torch.cat([w, rim, fat_rim, sector], dim=1)  # (B, 4R, ...)
            muscle, fat = w.sum(dim=1), side_fat.amax(dim=1)
            q, f, ref = self.tissue(image, muscle, fat, zero)
            bone = probs[:, self.bone_label] if self.bone_label is not None else torch.zeros_like(muscle)
            context = reference_context(q, f, muscle, fat, bone, self._pair("clean"), self.edema_threshold,
                                        self._pair("hist_range"), self.hist_bins)
            sides = ref.stir_muscle_side if ref.stir_muscle_side is not None else ref.stir_muscle[:, None].expand(-1, 2)
            legs = (sides - ref.stir_zero[:, None]) / (ref.stir_muscle - ref.stir_zero)[:, None]
            context = torch.cat([context, legs], dim=-1)
            maps = self.voxel_maps(q, f, decoder)
            pooled = masked_mean(weights, maps, self.eps).view(b, _WEIGHTS, r, -1)  # (B, 4, R, Fv)
            pooled = torch.cat([pooled, self._derived(pooled)], dim=-1)
            c = self.feature_channels
            muscle_like = maps[:, c + 3 : c + 4]
            beneath = (w * side_box(self.beneath_kernel) - rim).clamp_min(0.0)
            extra = [
                weighted_quantiles(q, w * muscle_like, QUANTILES),
                weighted_quantiles(f, w, FAT_QUANTILES),
                weighted_quantiles(q, rim, RIM_QUANTILES),
                weighted_quantiles(q, beneath * muscle_like, BENEATH_QUANTILES),
            ]
        pooled = pooled.permute(0, 2, 1, 3).reshape(b, r, -1)
        volume = torch.log1p(w.sum(dim=(2, 3, 4)) * self.voxel_ml).unsqueeze(-1)
        return torch.cat([pooled, *extra, volume, context.unsqueeze(1).expand(b, r, context.shape[-1])], dim=-1)

    @property
    def reference_zero_percentile(self) -> float:
        return float(getattr(self.reference, "zero_percentile", 0.01))
