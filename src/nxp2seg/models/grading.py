"""The grading head: what the readers grade, read from inside each predicted region.

For each graded region of a station (its ``R`` slots, :mod:`nxp2seg.data.regions`),
the head pools, inside the *soft* predicted region, the segmentation network's
last decoder features and T1/STIR statistics, then predicts the readers' grades:

* edema grade on the cohort's scale (continuous ``0..max_grade``), fat grade
  (``0..4``), fascial-edema and subcutaneous-edema logits, per region;
* the edema pattern (none / patchy / mixed / diffuse) per station, from all of
  its regions together.

Everything is batched over cases and regions: a soft region mask is one
einsum of the class probabilities with a ``(B, R, C)`` membership matrix
(:func:`region_masks`), a pooled mean one more (:func:`masked_mean`); there
is no Python loop over regions.

Shapes: ``B`` cases, ``C`` label values (network outputs), ``R`` region
slots, ``X, Y, Z`` voxels (RAS: ``X, Y`` in-plane, ``Z`` the slice axis),
``F`` feature channels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GRADING_OUTPUTS",
    "REFERENCES",
    "FeatureTap",
    "Grader",
    "GradingHead",
    "RegionFeatures",
    "box_mean",
    "build_grader",
    "feature_layer",
    "kernel_voxels",
    "lowest_peak",
    "masked_mean",
    "pool_regions",
    "region_masks",
]

#: Keys the grader adds to the model's output dict.
GRADING_OUTPUTS: tuple[str, ...] = (
    "edema",
    "fat",
    "fascial_logit",
    "subcut_logit",
    "pattern_logits",
)


# ---------------------------------------------------------------------------
# pooling (pure functions)
# ---------------------------------------------------------------------------


def region_masks(probs: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """Soft region masks: the probability of each region, summed over its member labels.

    Args:
        probs: ``(B, C, X, Y, Z)`` class probabilities (softmax of station-masked logits).
        membership: ``(B, R, C)`` (or ``(R, C)``, shared): 1 where label ``c`` belongs to region ``r``.

    Returns:
        ``(B, R, X, Y, Z)``, ``w[b, r] = sum_c membership[b, r, c] * probs[b, c]``.
    """
    m = membership.to(device=probs.device, dtype=probs.dtype)
    if m.ndim == 2:
        m = m.expand(probs.shape[0], *m.shape)
    return torch.einsum("bcxyz,brc->brxyz", probs, m)


def masked_mean(weights: torch.Tensor, features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weighted mean of every feature channel under every weight map (one batched matmul).

    Args:
        weights: ``(B, R, X, Y, Z)`` non-negative weights (soft masks).
        features: ``(B, F, X, Y, Z)``.
        eps: added to the weight sums (an empty region pools to ~0, not NaN).

    Returns:
        ``(B, R, F)``: ``sum(w * f) / (sum(w) + eps)`` over the voxels.
    """
    num = torch.einsum("brxyz,bfxyz->brf", weights, features.to(weights.dtype))
    den = weights.sum(dim=(2, 3, 4)).unsqueeze(-1)
    return num / (den + eps)


def pool_regions(
    probs: torch.Tensor, membership: torch.Tensor, features: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Mean of each feature channel inside each soft region: ``(B, C, ...)``, ``(B, R, C)``,
    ``(B, F, ...)`` -> ``(B, R, F)``. :func:`region_masks` then :func:`masked_mean`."""
    return masked_mean(region_masks(probs, membership), features, eps)


def kernel_voxels(mm: float, spacing: float) -> int:
    """Odd box-filter width in voxels covering about ``mm`` millimetres (at least 1)."""
    return 2 * max(0, round(mm / (2.0 * float(spacing)))) + 1


def box_mean(x: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Separable moving average over the spatial axes (zero-free at borders).

    Args:
        x: ``(B, K, X, Y, Z)``.
        kernel: odd widths per spatial axis (1 = untouched).

    Returns:
        Same shape; each voxel the mean over the window inside the volume.
    """
    out = x
    for axis, k in enumerate(kernel):
        k = int(k)
        if k <= 1:
            continue
        size = [1, 1, 1]
        size[axis] = k
        pad = [0, 0, 0]
        pad[axis] = k // 2
        out = F.avg_pool3d(out, size, stride=1, padding=pad, count_include_pad=False)
    return out


# ---------------------------------------------------------------------------
# decoder features
# ---------------------------------------------------------------------------


def feature_layer(net: nn.Module) -> nn.Module:
    """The network's last layer that maps decoder features to logits.

    MONAI ``DynUNet``: ``output_block`` (its input: the last decoder level,
    ``filters[0]`` channels, full resolution). Otherwise (MONAI ``UNet``, ...):
    the last ``Conv3d`` in module order (for ``UNet`` the final residual unit's
    convolution, whose input is the full-resolution decoder output).
    """
    if hasattr(net, "output_block") and isinstance(net.output_block, nn.Module):
        return net.output_block
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d))]
    if not convs:
        raise ValueError(f"{type(net).__name__} has no 3D convolution to read features from")
    return convs[-1]


def _in_channels(layer: nn.Module) -> int:
    for m in layer.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            return int(m.in_channels)
    raise ValueError(f"{type(layer).__name__} has no 3D convolution")


class FeatureTap:
    """Reads the input of the network's :func:`feature_layer` during a forward pass.

    A forward pre-hook that records only inside :meth:`capture`, so
    sliding-window passes outside it cost nothing. Not an ``nn.Module``: it
    holds no weights and adds nothing to the state dict.

    Example::

        tap = FeatureTap(net)
        with tap.capture():
            logits = net(x)
        feats = tap.features  # (B, tap.channels, X', Y', Z')
    """

    def __init__(self, net: nn.Module):
        self.layer = feature_layer(net)
        self.channels = _in_channels(self.layer)
        self._active = False
        self.features: torch.Tensor | None = None
        self._handle = self.layer.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._active:
            self.features = args[0]

    @contextlib.contextmanager
    def capture(self) -> Iterator[FeatureTap]:
        self._active, self.features = True, None
        try:
            yield self
        finally:
            self._active = False

    def take(self, size: Sequence[int]) -> torch.Tensor:
        """The captured features at spatial ``size`` (trilinear when the layer runs coarser)."""
        feats = self.features
        if feats is None:
            raise RuntimeError("FeatureTap: nothing captured; run the network inside capture()")
        self.features = None
        if tuple(feats.shape[2:]) != tuple(size):
            feats = F.interpolate(feats, size=tuple(size), mode="trilinear", align_corners=False)
        return feats

    def remove(self) -> None:
        self._handle.remove()


# ---------------------------------------------------------------------------
# region features
# ---------------------------------------------------------------------------

#: Intensity references of :class:`RegionFeatures`.
REFERENCES: tuple[str, ...] = ("none", "tissue", "peak")
#: Joint maps with a reference: (STIR above, T1 above, T1 below), in reference units.
_JOINT = ((1.4, 0.3, None), (1.8, None, 0.35))


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
    lo, hi = torch.quantile(v[:: max(1, v.numel() // 100_000)], torch.tensor([0.01, 0.99], device=v.device))
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


class RegionFeatures(nn.Module):
    """A feature vector per region: pooled network features and T1/STIR statistics.

    Voxel maps (``Fv`` channels): the decoder features; normalised T1 and STIR
    and their squares (mean and second moment once pooled); soft-threshold
    maps ``sigmoid((STIR - tau_k) / s)`` (share of bright STIR: edema extent)
    and ``sigmoid((T1 - tau_k) / s)`` (bright T1 in muscle: fat), with
    learnable thresholds ``tau``.

    Each map is pooled (:func:`masked_mean`) under three weights per region:

    * ``w``: the soft region (``probs`` are detached: the grading loss does
      not move the segmentation through the masks, only through the decoder
      features);
    * the boundary band ``w * (1 - box_mean(w, band))``: high on the rim of
      the region (fascial edema lies on the fascia);
    * the subcutaneous sector ``subcut_side * box_mean(w, sector)``: the
      subcutaneous tissue of the region's side near the region (subcutaneous
      edema over that compartment).

    Plus ``log(1 + volume_ml)`` of the region. Output: ``(B, R, 3 * Fv + 1)``.

    Args:
        feature_channels: decoder channels (:attr:`FeatureTap.channels`).
        spacing: voxel size in mm (the target spacing), for volumes and kernels.
        stir_thresholds, t1_thresholds: initial ``tau`` (normalised units).
        softness: ``s`` of the soft thresholds.
        band_mm, sector_mm: in-plane widths of the band and sector filters.
        learn_thresholds: make ``tau`` trainable.
        reference: ``"none"``: thresholds apply to the normalised intensities as
            they come (z-scores over the whole body); ``"tissue"``: each case is
            first re-referenced to its own tissues, STIR to 0 at the median of
            the subcutaneous fat and 1 at the median of the station's muscle
            (so edema of relative signal S reads about S), T1 to 0 at the
            muscle median and 1 at the fat median (a fat fraction). Whole-body
            z-scores move normal muscle by a case's edema and fat load; the
            tissue reference does not. Thresholds are then in those units.
            ``"peak"``: as ``"tissue"``, but normal muscle on STIR is the lowest
            strong peak of the STIR histogram of the station's *clean* muscle
            (T1 within -0.1..0.07 of the way from muscle to fat: no fat, no
            vessels), not its median: the darkest muscle population, which is
            normal muscle even when most of the muscle is edematous (the median
            is then edema). With a reference, two joint maps are added: bright
            STIR with fat-like T1 (subcutaneous edema: reticular strands in fat)
            and bright STIR with muscle-like T1 (fascial and muscle edema).
        eps: of :func:`masked_mean`.
    """

    def __init__(
        self,
        feature_channels: int,
        spacing: Sequence[float],
        stir_thresholds: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0),
        t1_thresholds: Sequence[float] = (-0.5, 0.0, 0.5, 1.0),
        softness: float = 0.25,
        band_mm: float = 5.0,
        sector_mm: float = 30.0,
        learn_thresholds: bool = True,
        reference: str = "none",
        eps: float = 1e-6,
    ):
        super().__init__()
        if reference not in REFERENCES:
            raise ValueError(f"RegionFeatures.reference must be one of {REFERENCES}, not {reference!r}")
        self.reference = reference
        self.feature_channels = int(feature_channels)
        self.spacing = [float(s) for s in spacing]
        self.softness = float(softness)
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
        # in-plane only: fascia and subcutaneous tissue surround the region within a slice
        self.band_kernel = [kernel_voxels(band_mm, s) for s in self.spacing[:2]] + [1]
        self.sector_kernel = [kernel_voxels(sector_mm, s) for s in self.spacing[:2]] + [1]

    @property
    def voxel_channels(self) -> int:
        joint = len(_JOINT) if self.reference != "none" else 0
        return self.feature_channels + 4 + len(self.stir_tau) + len(self.t1_tau) + joint

    @property
    def out_features(self) -> int:
        return 3 * self.voxel_channels + 1

    @staticmethod
    def _weighted_median(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Per case median of ``x`` ``(B, 1, ...)`` over voxels where ``w`` ``(B, ...)`` > 0.5."""
        out = []
        for b in range(x.shape[0]):  # cases, not regions
            vals = x[b, 0][w[b] > 0.5]
            out.append(vals.median() if vals.numel() else x.new_tensor(0.0))
        return torch.stack(out).view(-1, 1, 1, 1, 1)

    def referenced(self, image: torch.Tensor, muscle: torch.Tensor, fat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """T1 and STIR re-referenced to the case's muscle and subcutaneous fat (``reference``)."""
        t1, stir = image[:, 0:1].float(), image[:, 1:2].float()
        if self.reference == "none":
            return t1, stir
        m_t1, f_t1 = self._weighted_median(t1, muscle), self._weighted_median(t1, fat)
        f_st = self._weighted_median(stir, fat)
        t1 = (t1 - m_t1) / (f_t1 - m_t1).abs().clamp_min(1e-3)
        if self.reference == "peak":
            peaks = []
            for b in range(stir.shape[0]):  # cases, not regions
                clean = (muscle[b] > 0.5) & (t1[b, 0] > -0.1) & (t1[b, 0] < 0.07)
                peaks.append(lowest_peak(stir[b, 0][clean]))
            m_st = torch.stack(peaks).view(-1, 1, 1, 1, 1)
        else:
            m_st = self._weighted_median(stir, muscle)
        stir = (stir - f_st) / (m_st - f_st).abs().clamp_min(1e-3)
        return t1, stir

    def voxel_maps(self, image: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """``(B, Fv, X, Y, Z)``: decoder features, T1, STIR, squares, soft thresholds."""
        t1, stir = image[:, 0:1].float(), image[:, 1:2].float()
        s = self.softness
        stir_frac = torch.sigmoid((stir - self.stir_tau.view(1, -1, 1, 1, 1)) / s)
        t1_frac = torch.sigmoid((t1 - self.t1_tau.view(1, -1, 1, 1, 1)) / s)
        maps = [decoder.float(), t1, stir, t1 * t1, stir * stir, stir_frac, t1_frac]
        if self.reference != "none":  # intensities are in tissue units: joint maps mean something
            for st_min, t1_min, t1_max in _JOINT:
                m = torch.sigmoid((stir - st_min) / s)
                if t1_min is not None:
                    m = m * torch.sigmoid((t1 - t1_min) / s)
                if t1_max is not None:
                    m = m * torch.sigmoid((t1_max - t1) / s)
                maps.append(m)
        return torch.cat(maps, dim=1)

    def forward(
        self,
        probs: torch.Tensor,
        image: torch.Tensor,
        decoder: torch.Tensor,
        membership: torch.Tensor,
        subcut: torch.Tensor,
    ) -> torch.Tensor:
        """Region feature vectors.

        Args:
            probs: ``(B, C, X, Y, Z)`` class probabilities (detached here).
            image: ``(B, 2, X, Y, Z)`` normalised T1, STIR.
            decoder: ``(B, D, X, Y, Z)`` decoder features (gradients flow).
            membership: ``(B, R, C)`` region slots (:func:`nxp2seg.data.regions.region_membership`).
            subcut: ``(B, R, C)`` subcutaneous label of each slot's side.

        Returns:
            ``(B, R, out_features)``.
        """
        # sums over ~10^5-10^6 voxels: in float32 even under mixed precision
        with torch.autocast(device_type=probs.device.type, enabled=False):
            probs = probs.detach().float()
            r = membership.shape[-2]
            w = region_masks(probs, membership)  # (B, R, ...)
            band = w * (1.0 - box_mean(w, self.band_kernel))
            sector = region_masks(probs, subcut) * box_mean(w, self.sector_kernel)
            weights = torch.cat([w, band, sector], dim=1)  # (B, 3R, ...)
            if self.reference != "none":
                fat = region_masks(probs, subcut).amax(dim=1)
                t1, stir = self.referenced(image, w.sum(dim=1), fat)
                image = torch.cat([t1, stir, image[:, 2:].float()], dim=1)
            maps = self.voxel_maps(image, decoder)
            pooled = masked_mean(weights, maps, self.eps)  # (B, 3R, Fv)
        b, _, fv = pooled.shape
        pooled = pooled.view(b, 3, r, fv).permute(0, 2, 1, 3).reshape(b, r, 3 * fv)
        volume = torch.log1p(w.sum(dim=(2, 3, 4)) * self.voxel_ml).unsqueeze(-1)
        return torch.cat([pooled, volume], dim=-1)


# ---------------------------------------------------------------------------
# head
# ---------------------------------------------------------------------------


class GradingHead(nn.Module):
    """Grades, flags and pattern from region feature vectors (shared MLP over regions).

    Each region's vector, with the station's mean vector (context: the same
    case's other regions) and a learned embedding of its slot (``R`` slots x
    ``n_stations``), goes through one MLP shared by all regions, giving a
    hidden vector ``h``. From ``h``:

    * edema grade ``max_grade * sigmoid(.)``: continuous, inside ``0..max_grade``;
    * fat grade ``max_fat * sigmoid(.)``;
    * fascial and subcutaneous edema logits.

    The station's pattern logits (4) come from the ``R`` hidden vectors in slot
    order, concatenated with the regions' predicted grades and flags
    (detached: the pattern loss does not move the grades) and a station embedding.

    Why regression, not ordinal classification, for the grades: the target is
    the readers' *mean*, a continuous value (2.5 when the readers say 2 and
    3), and what the grades are judged by -- quadratic-weighted kappa, ICC,
    station scores that sum grades -- rewards being close, with the cost
    growing with the distance. A bounded regression with a distance loss
    (SmoothL1 / MSE) learns the mean directly and uses the order of the
    grades; an ordinal (cumulative-logit) head would need integer targets or
    soft labels and a rule to turn its distribution back into a grade. The
    integer grade is the rounded output (:func:`nxp2seg.grading.integer_grade`).

    Args:
        in_features: region feature length (:attr:`RegionFeatures.out_features`).
        max_grade: the edema scale's top grade (5 ``beltrame6``, 3 ``extent4``).
        n_regions, n_stations: slots per station, stations.
        hidden, embed: MLP width, embedding width.
        dropout: in the MLPs.
        max_fat: top fat grade (4).
        n_patterns: pattern classes (4).
    """

    def __init__(
        self,
        in_features: int,
        max_grade: int,
        n_regions: int = 6,
        n_stations: int = 2,
        hidden: int = 64,
        embed: int = 16,
        dropout: float = 0.1,
        max_fat: int = 4,
        n_patterns: int = 4,
    ):
        super().__init__()
        self.max_grade = float(max_grade)
        self.max_fat = float(max_fat)
        self.n_regions = int(n_regions)
        self.norm = nn.LayerNorm(2 * in_features)
        self.slot = nn.Embedding(n_stations * n_regions, embed)
        self.station = nn.Embedding(n_stations, embed)
        self.mlp = nn.Sequential(
            nn.Linear(2 * in_features + embed, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
        )
        self.region_out = nn.Linear(hidden, 4)
        self.pattern_mlp = nn.Sequential(
            nn.Linear(n_regions * (hidden + 4) + embed, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_patterns),
        )

    def forward(self, x: torch.Tensor, station_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` ``(B, R, F)``, ``station_index`` ``(B,)`` -> the :data:`GRADING_OUTPUTS`.

        ``edema``, ``fat``, ``fascial_logit``, ``subcut_logit``: ``(B, R)``;
        ``pattern_logits``: ``(B, 4)``.
        """
        b, r, _ = x.shape
        if r != self.n_regions:
            raise ValueError(f"GradingHead was built for {self.n_regions} regions, got {r}")
        station = station_index.to(device=x.device, dtype=torch.long).view(b)
        slots = station[:, None] * r + torch.arange(r, device=x.device)[None, :]
        context = x.mean(dim=1, keepdim=True).expand_as(x)
        h = self.mlp(torch.cat([self.norm(torch.cat([x, context], -1)), self.slot(slots)], -1))
        o = self.region_out(h)
        edema = self.max_grade * torch.sigmoid(o[..., 0])
        fat = self.max_fat * torch.sigmoid(o[..., 1])
        summary = torch.stack(
            [
                edema / self.max_grade,
                fat / self.max_fat,
                torch.sigmoid(o[..., 2]),
                torch.sigmoid(o[..., 3]),
            ],
            dim=-1,
        ).detach()
        pattern_in = torch.cat(
            [torch.cat([h, summary], -1).reshape(b, -1), self.station(station)], -1
        )
        return {
            "edema": edema,
            "fat": fat,
            "fascial_logit": o[..., 2],
            "subcut_logit": o[..., 3],
            "pattern_logits": self.pattern_mlp(pattern_in),
        }


class Grader(nn.Module):
    """:class:`RegionFeatures` then :class:`GradingHead`: probabilities and features -> grades."""

    def __init__(self, features: RegionFeatures, head: GradingHead):
        super().__init__()
        self.features = features
        self.head = head

    @property
    def max_grade(self) -> float:
        return self.head.max_grade

    def forward(
        self,
        probs: torch.Tensor,
        image: torch.Tensor,
        decoder: torch.Tensor,
        membership: torch.Tensor,
        subcut: torch.Tensor,
        station_index: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """See :meth:`RegionFeatures.forward` and :meth:`GradingHead.forward`."""
        x = self.features(probs, image, decoder, membership, subcut)
        return self.head(x, station_index)


def build_grader(
    feature_channels: int,
    spacing: Sequence[float],
    max_grade: int,
    n_regions: int = 6,
    n_stations: int = 2,
    hidden: int = 64,
    embed: int = 16,
    dropout: float = 0.1,
    stir_thresholds: Sequence[float] = (0.5, 1.0, 1.5, 2.0, 3.0),
    t1_thresholds: Sequence[float] = (-0.5, 0.0, 0.5, 1.0),
    softness: float = 0.25,
    band_mm: float = 5.0,
    sector_mm: float = 30.0,
    learn_thresholds: bool = True,
    reference: str = "none",
    max_fat: int = 4,
) -> Grader:
    """The grader from config (``model.grading``; a partial completed at run time).

    ``feature_channels`` (from the network), ``spacing`` (target spacing),
    ``max_grade`` (the cohort's scale) and ``n_regions`` (the schema's slots)
    are filled in by :func:`nxp2seg.train.train`; the rest is config. See
    :class:`RegionFeatures` and :class:`GradingHead`.
    """
    features = RegionFeatures(
        feature_channels,
        spacing,
        stir_thresholds=stir_thresholds,
        t1_thresholds=t1_thresholds,
        softness=softness,
        band_mm=band_mm,
        sector_mm=sector_mm,
        learn_thresholds=learn_thresholds,
        reference=reference,
    )
    head = GradingHead(
        features.out_features,
        max_grade,
        n_regions=n_regions,
        n_stations=n_stations,
        hidden=hidden,
        embed=embed,
        dropout=dropout,
        max_fat=max_fat,
    )
    return Grader(features, head)
