"""A feature vector per graded region: what a reader looks at, pooled inside the soft predicted region.

For each region slot of a station (:mod:`nxp2seg.data.regions`), voxel maps
are pooled (:func:`~nxp2seg.models.grading.masked_mean`, one batched matmul)
under four weights:

* the **region** ``w`` (soft mask; ``probs`` are detached, so the grading
  loss moves the segmentation only through the decoder features);
* its **outer rim** ``w * box_mean(P(subcutaneous of its side), band)``: the
  part of the region next to the subcutaneous tissue, where the deep fascia
  is (fascial edema is a bright band along it), and the **fat next to it**
  ``P(subcutaneous) * box_mean(w, band)`` (the fascia's other side: dark on
  STIR unless the fascia is edematous);
* its **subcutaneous sector** ``P(subcutaneous of its side) * box_mean(w, sector)``:
  the subcutaneous tissue over the region (subcutaneous edema).

With ``reference="muscle"`` (the default) intensities are in tissue units
(:mod:`nxp2seg.models.tissue`): ``q`` the STIR ratio to the case's normal
muscle, ``f`` the T1 fat index. Voxel maps:

* ``q``, ``q^2`` (mean and spread), ``f`` (fat), ``m`` = muscle-like T1
  (``f`` between about -0.3 and 0.3: not fat, septum, vessel or cortex);
* edema extent ``m * sigmoid((q - tau_k) / s)`` at several STIR thresholds
  ``tau_k`` (1.15 ... 2.7 times normal muscle), and ``q`` times the map at
  ``tau = 1.3`` (for the mean brightness of the edematous part);
* fat ``sigmoid((f - tau_k) / s)`` at several fat-index thresholds;
* bright STIR with fat-like T1 (reticular subcutaneous edema), and the fat
  fraction ``clip(f, 0, 1)``.

After pooling, for each of the three weights, the share of muscle-like
voxels above each STIR threshold (extent of edema in the muscle, whatever its
fat) and the mean ratio of the edematous voxels (mild vs moderate edema) are
added; then quantiles of ``q`` over the region's muscle-like voxels
(:data:`QUANTILES`: how bright its brightest and its darkest parts are) and
of ``f`` over the whole region (:data:`FAT_QUANTILES`), of ``q`` on the
outer rim and in the muscle beneath it (a dark fascia line over bright
muscle is muscle edema; a bright line is fascial edema),
``log(1 + volume ml)`` of the region and the case's
:func:`~nxp2seg.models.tissue.reference_context` with the two legs' own
normal-muscle references over the station's (the same for every region of a
case). STIR is read against the normal muscle of the region's own leg (the
laterality channel tells the legs apart): the coil's bias field often leaves
one leg 10-25% brighter than the other. ``reference="none"`` pools the normalised T1 and STIR as they
come (foreground z-scores) with soft thresholds in those units.

Optionally (``decoder_features``) the network's last decoder features are
pooled too (``F_dec`` channels under each weight).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

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
    CONTEXT_FEATURES,
    reference_context,
    stir_zero,
    tissue_reference,
    tissue_units,
)

__all__ = ["REFERENCES", "RegionFeatures"]

#: Intensity references of :class:`RegionFeatures`.
REFERENCES: tuple[str, ...] = ("none", "muscle")
#: The extent threshold whose map also weighs ``q`` (mean brightness of the edematous part).
_EDEMA_TAU = 1.3
#: Muscle-like fat-index window: ``sigmoid((f - lo) / s) * sigmoid((hi - f) / s)``, ``s`` =
#: :data:`_MUSCLE_SOFTNESS`: edematous muscle (T1 0.85-1) is in, vessels (T1 0.4-0.7 of
#: muscle, f ~ -0.2), septa and fat are out.
_MUSCLE_LIKE = (-0.12, 0.25)
_MUSCLE_SOFTNESS = 0.03
#: Bright STIR in fat-like T1: (STIR ratio above, fat index above).
_SUBCUT_EDEMA = (0.7, 0.3)
_WEIGHTS = 4  # region, outer rim, the fat next to it, subcutaneous sector
#: Levels of the STIR-ratio distribution of each region's muscle-like voxels.
QUANTILES: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
#: Levels of the fat-index distribution of each region's voxels.
FAT_QUANTILES: tuple[float, ...] = (0.5, 0.75, 0.9)
#: Levels of the STIR ratio on the outer rim, and beneath it (the muscle 1-3 rim widths in).
RIM_QUANTILES: tuple[float, ...] = (0.5, 0.75, 0.9)
BENEATH_QUANTILES: tuple[float, ...] = (0.5,)


class RegionFeatures(nn.Module):
    """Region feature vectors from soft region masks, the image and the decoder features.

    Args:
        feature_channels: decoder channels (:attr:`~nxp2seg.models.grading.FeatureTap.channels`).
        spacing: voxel size in mm (the target spacing), for volumes and kernels.
        stir_thresholds: ``tau`` of the STIR extent maps (STIR ratio with
            ``reference="muscle"``, z-score units with ``"none"``).
        t1_thresholds: ``tau`` of the fat maps (fat index / z-score units).
        softness: ``s`` of the soft thresholds (same units).
        band_mm, sector_mm: in-plane widths of the rim and sector filters.
        smooth_mm: in-plane width of the muscle-weighted local mean of ``q`` that the
            extent maps threshold (noise of single voxels is not edema; ``0``: none).
        learn_thresholds: make ``tau`` trainable (the joint mode).
        reference: ``"muscle"`` (tissue units, :mod:`nxp2seg.models.tissue`) or ``"none"``.
        decoder_features: also pool the decoder features.
        bone_label: label value of bone (marrow STIR in the reference context; ``None``: skipped).
        eps: of the pooled means.
    """

    def __init__(
        self,
        feature_channels: int,
        spacing: Sequence[float],
        stir_thresholds: Sequence[float] = (1.15, 1.3, 1.5, 1.8, 2.2, 2.7),
        t1_thresholds: Sequence[float] = (0.1, 0.25, 0.5, 0.75),
        softness: float = 0.06,
        band_mm: float = 5.0,
        sector_mm: float = 30.0,
        smooth_mm: float = 5.0,
        learn_thresholds: bool = True,
        reference: str = "muscle",
        decoder_features: bool = True,
        bone_label: int | None = None,
        eps: float = 1e-6,
    ):
        super().__init__()
        if reference not in REFERENCES:
            raise ValueError(f"RegionFeatures.reference must be one of {REFERENCES}, not {reference!r}")
        self.reference = reference
        self.decoder_features = bool(decoder_features)
        self.feature_channels = int(feature_channels) if self.decoder_features else 0
        self.spacing = [float(s) for s in spacing]
        self.softness = float(softness)
        self.bone_label = None if bone_label is None else int(bone_label)
        self.eps = float(eps)
        self.voxel_ml = math.prod(self.spacing) / 1000.0
        stir = torch.tensor([float(t) for t in stir_thresholds])
        t1 = torch.tensor([float(t) for t in t1_thresholds])
        if learn_thresholds:
            self.stir_tau = nn.Parameter(stir)
            self.t1_tau = nn.Parameter(t1)
        else:
            self.register_buffer("stir_tau", stir)
            self.register_buffer("t1_tau", t1)
        self._edema_k = int(torch.argmin((stir - _EDEMA_TAU).abs()))
        # in-plane only: fascia and subcutaneous tissue surround the region within a slice
        self.band_kernel = [kernel_voxels(band_mm, s) for s in self.spacing[:2]] + [1]
        self.beneath_kernel = [kernel_voxels(3 * band_mm, s) for s in self.spacing[:2]] + [1]
        self.sector_kernel = [kernel_voxels(sector_mm, s) for s in self.spacing[:2]] + [1]
        self.smooth_kernel = [kernel_voxels(smooth_mm, s) if smooth_mm > 0 else 1 for s in self.spacing[:2]] + [1]

    # -- sizes -------------------------------------------------------------------
    @property
    def n_stir(self) -> int:
        return int(self.stir_tau.numel())

    @property
    def voxel_channels(self) -> int:
        """Voxel maps pooled under each weight."""
        n = self.feature_channels + self.n_stir + int(self.t1_tau.numel())
        if self.reference == "none":
            return n + 4  # t1, stir, their squares
        return n + 7  # q, q^2, f, m, q * edema, subcutaneous edema, fat fraction

    @property
    def derived_features(self) -> int:
        """Ratios computed after pooling, per weight (``"muscle"`` only)."""
        return 0 if self.reference == "none" else self.n_stir + 1

    @property
    def context_features(self) -> int:
        """Case-level features appended to every region: the reference context and
        the two legs' references over the station's (``"muscle"`` only)."""
        return 0 if self.reference == "none" else len(CONTEXT_FEATURES) + 2

    @property
    def quantile_features(self) -> int:
        if self.reference == "none":
            return 0
        return len(QUANTILES) + len(FAT_QUANTILES) + len(RIM_QUANTILES) + len(BENEATH_QUANTILES)

    @property
    def out_features(self) -> int:
        per_weight = self.voxel_channels + self.derived_features
        return _WEIGHTS * per_weight + self.quantile_features + 1 + self.context_features

    def feature_names(self) -> list[str]:
        """Names of the :attr:`out_features` columns, in order (e.g. ``rim/extent>1.8``)."""
        stir = [f"{t:g}" for t in self.stir_tau.tolist()]
        t1 = [f"{t:g}" for t in self.t1_tau.tolist()]
        dec = [f"decoder{i}" for i in range(self.feature_channels)]
        if self.reference == "none":
            maps = dec + ["t1", "stir", "t1^2", "stir^2"] + [f"stir>{t}" for t in stir] + [f"t1>{t}" for t in t1]
            derived: list[str] = []
        else:
            maps = dec + ["q", "q^2", "f", "muscle_like"] + [f"extent>{t}" for t in stir]
            maps += [f"f>{t}" for t in t1] + ["q*edema", "subcut_edema", "fat_fraction"]
            derived = [f"share>{t}" for t in stir] + ["edema_brightness"]
        names = [f"{w}/{m}" for w in ("region", "rim", "fat_rim", "sector") for m in maps + derived]
        if self.quantile_features:
            names += [f"region/q_p{round(100 * p):02d}" for p in QUANTILES]
            names += [f"region/f_p{round(100 * p):02d}" for p in FAT_QUANTILES]
            names += [f"rim/q_p{round(100 * p):02d}" for p in RIM_QUANTILES]
            names += [f"beneath_rim/q_p{round(100 * p):02d}" for p in BENEATH_QUANTILES]
        names.append("log_volume_ml")
        if self.context_features:
            names += [f"case/{n}" for n in CONTEXT_FEATURES] + ["case/leg_right", "case/leg_left"]
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
    def _soft(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((x - tau.view(1, -1, 1, 1, 1)) / self.softness)

    def voxel_maps(self, image: torch.Tensor, decoder: torch.Tensor | None) -> torch.Tensor:
        """``(B, Fv, X, Y, Z)`` maps of ``image`` (``(B, 2, ...)``: T1, STIR in the reference's units)."""
        t1, stir = image[:, 0:1].float(), image[:, 1:2].float()
        maps = [decoder.float()] if self.feature_channels and decoder is not None else []
        if self.reference == "none":
            return torch.cat(
                maps + [t1, stir, t1 * t1, stir * stir, self._soft(stir, self.stir_tau), self._soft(t1, self.t1_tau)],
                dim=1,
            )
        q, f = stir.clamp(0.0, 6.0), t1.clamp(-1.0, 2.0)
        s = self.softness
        lo, hi = _MUSCLE_LIKE
        m = torch.sigmoid((f - lo) / _MUSCLE_SOFTNESS) * torch.sigmoid((hi - f) / _MUSCLE_SOFTNESS)
        # the muscle-weighted local mean of q: single noisy voxels are not edema
        q_local = box_mean(q * m, self.smooth_kernel) / (box_mean(m, self.smooth_kernel) + 1e-3)
        extent = m * self._soft(q_local, self.stir_tau)
        q_min, f_min = _SUBCUT_EDEMA
        subcut = torch.sigmoid((q - q_min) / (2 * s)) * torch.sigmoid((f - f_min) / (2 * s))
        edema_q = q * extent[:, self._edema_k : self._edema_k + 1]
        fat_fraction = f.clamp(0.0, 1.0)
        return torch.cat(
            maps + [q, q * q, f, m, extent, self._soft(f, self.t1_tau), edema_q, subcut, fat_fraction], dim=1
        )

    def _derived(self, pooled: torch.Tensor) -> torch.Tensor:
        """Per weight: extent among muscle-like voxels, mean STIR ratio of the edematous ones."""
        c = self.feature_channels
        m = pooled[..., c + 3 : c + 4]
        extent = pooled[..., c + 4 : c + 4 + self.n_stir]
        k = c + 4 + self.n_stir + int(self.t1_tau.numel())
        edema_q = pooled[..., k : k + 1]
        share = extent / (m + 1e-3)
        brightness = edema_q / (extent[..., self._edema_k : self._edema_k + 1] + 1e-3)
        return torch.cat([share, brightness], dim=-1)

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
            decoder: ``(B, D, X, Y, Z)`` decoder features (gradients flow), or ``None``
                without ``decoder_features``.
            membership: ``(B, R, C)`` region slots (:func:`nxp2seg.data.regions.region_membership`).
            subcut: ``(B, R, C)`` subcutaneous label of each slot's side.

        Returns:
            ``(B, R, out_features)``.
        """
        # sums over ~10^5-10^6 voxels: in float32 even under mixed precision
        with torch.autocast(device_type=probs.device.type, enabled=False):
            probs = probs.detach().float()
            b, r = membership.shape[0], membership.shape[-2]
            zero = stir_zero(image) if self.reference == "muscle" else None  # air: on the whole volume
            w = region_masks(probs, membership)  # (B, R, ...)
            side_fat = region_masks(probs, subcut)  # (B, R, ...): subcutaneous of each slot's side
            # everything below reads only voxels near the regions and their subcutaneous tissue
            box = self._box(w.sum(dim=1) + side_fat.amax(dim=1))
            w, side_fat, probs, image = w[box], side_fat[box], probs[box], image[box]
            decoder = decoder[box] if decoder is not None else None
            # box means are linear: filter the few subcutaneous label maps, then spread them to the slots
            cols = torch.nonzero(subcut.sum(dim=(0, 1)) > 0).flatten()
            sub_probs, sub_slots = probs[:, cols], subcut[:, :, cols].to(probs)

            def side_box(kernel: list[int]) -> torch.Tensor:
                return torch.einsum("bcxyz,brc->brxyz", box_mean(sub_probs, kernel), sub_slots)

            rim = w * side_box(self.band_kernel)
            fat_rim = side_fat * box_mean(w, self.band_kernel)
            sector = side_fat * box_mean(w, self.sector_kernel)
            weights = torch.cat([w, rim, fat_rim, sector], dim=1)  # (B, 4R, ...)
            extra: list[torch.Tensor] = []
            context = None
            if self.reference == "muscle":
                muscle, fat = w.sum(dim=1), side_fat.amax(dim=1)
                lateral = image[:, 2].float() if image.shape[1] > 2 else None
                ref = tissue_reference(image, muscle, fat, lateral, zero=zero)
                q, f = tissue_units(image, ref, lateral)
                bone = probs[:, self.bone_label] if self.bone_label is not None else torch.zeros_like(muscle)
                context = reference_context(q, f, muscle, fat, bone)
                sides = ref.stir_muscle_side if ref.stir_muscle_side is not None else ref.stir_muscle[:, None].expand(-1, 2)
                legs = (sides - ref.stir_zero[:, None]) / (ref.stir_muscle - ref.stir_zero)[:, None]
                context = torch.cat([context, legs], dim=-1)
                image = torch.cat([f, q], dim=1)
            maps = self.voxel_maps(image[:, :2], decoder)
            pooled = masked_mean(weights, maps, self.eps).view(b, _WEIGHTS, r, -1)  # (B, 3, R, Fv)
            if self.derived_features:
                pooled = torch.cat([pooled, self._derived(pooled)], dim=-1)
            if self.quantile_features:
                c = self.feature_channels
                muscle_like = maps[:, c + 3 : c + 4]
                extra.append(weighted_quantiles(maps[:, c : c + 1], w * muscle_like, QUANTILES))
                extra.append(weighted_quantiles(maps[:, c + 2 : c + 3], w, FAT_QUANTILES))
                beneath = (w * side_box(self.beneath_kernel) - rim).clamp_min(0.0)
                extra.append(weighted_quantiles(maps[:, c : c + 1], rim, RIM_QUANTILES))
                extra.append(weighted_quantiles(maps[:, c : c + 1], beneath * muscle_like, BENEATH_QUANTILES))
        pooled = pooled.permute(0, 2, 1, 3).reshape(b, r, -1)
        volume = torch.log1p(w.sum(dim=(2, 3, 4)) * self.voxel_ml).unsqueeze(-1)
        parts = [pooled, *extra, volume]
        if context is not None:
            parts.append(context.unsqueeze(1).expand(b, r, context.shape[-1]))
        return torch.cat(parts, dim=-1)
