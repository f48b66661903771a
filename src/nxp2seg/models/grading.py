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
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nxp2seg.models.pooling import box_mean, kernel_voxels, masked_mean, pool_regions, region_masks
from nxp2seg.models.region_features import REFERENCES, RegionFeatures
from nxp2seg.models.tissue import lowest_peak

__all__ = [
    "GRADING_OUTPUTS",
    "READOUTS",
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
# head
# ---------------------------------------------------------------------------


#: Outputs of the linear read-outs of :class:`GradingHead`, in column order.
READOUTS: tuple[str, ...] = ("fat", "fascial", "subcutaneous")


class GradingHead(nn.Module):
    """Grades, flags and pattern from region feature vectors.

    **Edema** (and the pattern) need a nonlinear map: on ``beltrame6`` the grade
    is an extent class crossed with an intensity (3, global mild, sits between
    2 and 4), and the context of the station's other regions matters. Each
    region's vector, with the station's mean vector and a learned embedding of
    its slot (``R`` slots x ``n_stations``), goes through one MLP shared by all
    regions, giving a hidden vector ``h`` and the edema grade
    ``max_grade * sigmoid(.)`` (continuous, inside ``0..max_grade``).

    **Fat, fascial and subcutaneous edema** are read out *linearly* from the
    region's own standardised features: ``z = (x - mean) / std`` with the
    training features' statistics (buffers ``readout_mean``, ``readout_std``;
    identity until :func:`~nxp2seg.models.grading_stage.fit_readouts` sets
    them), then one ``Linear(F, 3)``: fat grade ``max_fat * sigmoid(.)``,
    fascial and subcutaneous logits. Findings are rare (about one region in
    ten) and the fat grade follows one measurement (how much of the muscle is
    fat-bright on T1); a shared MLP fitted to all outputs at once overfits
    them (cross-validated on the phantom: flag AUC 0.78-0.86 against the
    readers, fat kappa 0.76), penalised linear read-outs fitted apart do not
    (0.89-0.92, 0.80).

    The station's **pattern** logits (4) come from the ``R`` hidden vectors in
    slot order, concatenated with the regions' predicted grades and flags
    (detached: the pattern loss does not move them) and a station embedding.

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
        ensemble: MLP members (each its own initialisation, trained apart, averaged):
            on ~60 training cases one MLP's grades move with its seed by
            +-0.03 kappa; the mean of five does not.
        slot_counts: real regions of each station (``n_stations`` entries, at most
            ``n_regions``; default: every slot of every station). A station with fewer
            regions (a muscle-level schema: 26 thigh, 22 calf muscles) leaves its last
            slots empty: they are left out of the station context and the pattern, and
            their outputs are 0 (:func:`nxp2seg.data.regions.slot_counts`).
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
        ensemble: int = 1,
        slot_counts: Sequence[int] | None = None,
    ):
        super().__init__()
        if int(ensemble) < 1:
            raise ValueError(f"GradingHead: ensemble must be >= 1, got {ensemble}")
        self.max_grade = float(max_grade)
        self.max_fat = float(max_fat)
        self.n_regions = int(n_regions)
        counts = [int(n_regions)] * int(n_stations) if slot_counts is None else [int(c) for c in slot_counts]
        if len(counts) != int(n_stations) or not all(0 <= c <= self.n_regions for c in counts):
            raise ValueError(
                f"GradingHead: slot_counts {counts} must give 0..{self.n_regions} regions for each of "
                f"{n_stations} stations"
            )
        valid = torch.arange(self.n_regions)[None, :] < torch.tensor(counts)[:, None]
        self.register_buffer("slot_valid", valid, persistent=False)
        self.register_buffer("readout_mean", torch.zeros(in_features))
        self.register_buffer("readout_std", torch.ones(in_features))
        self.readout = nn.Linear(in_features, len(READOUTS))
        self.members = nn.ModuleList(
            _EdemaPatternNet(in_features, n_regions, n_stations, hidden, embed, dropout, n_patterns)
            for _ in range(int(ensemble))
        )
        #: Train one member at a time (:func:`~nxp2seg.models.grading_stage.fit_head`); ``None``: all, averaged.
        self.active_member: int | None = None

    def standardized(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - readout_mean) / readout_std``: the read-outs' input."""
        return (x - self.readout_mean) / self.readout_std

    def forward(self, x: torch.Tensor, station_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x`` ``(B, R, F)``, ``station_index`` ``(B,)`` -> the :data:`GRADING_OUTPUTS`.

        ``edema``, ``fat``, ``fascial_logit``, ``subcut_logit``: ``(B, R)``;
        ``pattern_logits``: ``(B, 4)`` (with an ensemble: the members' mean grade and
        mean pattern log-probabilities).
        """
        b, r, _ = x.shape
        if r != self.n_regions:
            raise ValueError(f"GradingHead was built for {self.n_regions} regions, got {r}")
        station = station_index.to(device=x.device, dtype=torch.long).view(b)
        valid = self.slot_valid[station].to(x.dtype)  # (B, R): real regions of each case's station
        x = x * valid[..., None]
        o = self.readout(self.standardized(x)) * valid[..., None]
        fat = self.max_fat * torch.sigmoid(o[..., 0]) * valid
        readouts = torch.stack([fat / self.max_fat, torch.sigmoid(o[..., 1]), torch.sigmoid(o[..., 2])], -1)
        members = self.members if self.active_member is None else [self.members[self.active_member]]
        grades, patterns = zip(*(m(x, station, readouts.detach() * valid[..., None], self.max_grade, valid)
                                 for m in members))
        edema = torch.stack(grades).mean(dim=0) * valid
        if len(patterns) == 1:
            pattern = patterns[0]
        else:
            pattern = torch.stack([torch.log_softmax(p, dim=-1) for p in patterns]).mean(dim=0)
        return {
            "edema": edema,
            "fat": fat,
            "fascial_logit": o[..., 1],
            "subcut_logit": o[..., 2],
            "pattern_logits": pattern,
        }


class _EdemaPatternNet(nn.Module):
    """One member of :class:`GradingHead`'s MLP: edema grade per region, pattern per station."""

    def __init__(self, in_features: int, n_regions: int, n_stations: int, hidden: int, embed: int,
                 dropout: float, n_patterns: int):
        super().__init__()
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
        self.edema_out = nn.Linear(hidden, 1)
        self.pattern_mlp = nn.Sequential(
            nn.Linear(n_regions * (hidden + 4) + embed, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_patterns),
        )

    def forward(self, x: torch.Tensor, station: torch.Tensor, readouts: torch.Tensor,
                max_grade: float, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, r, _ = x.shape
        slots = station[:, None] * r + torch.arange(r, device=x.device)[None, :]
        # the station's mean region vector, over its real regions only
        mean = (x * valid[..., None]).sum(dim=1, keepdim=True) / valid.sum(dim=1).clamp_min(1.0)[:, None, None]
        context = mean.expand_as(x)
        h = self.mlp(torch.cat([self.norm(torch.cat([x, context], -1)), self.slot(slots)], -1))
        h = h * valid[..., None]
        edema = max_grade * torch.sigmoid(self.edema_out(h)[..., 0])
        summary = torch.cat([(edema / max_grade).detach()[..., None], readouts], -1)
        pattern_in = torch.cat([torch.cat([h, summary], -1).reshape(b, -1), self.station(station)], -1)
        return edema, self.pattern_mlp(pattern_in)


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
    stir_thresholds: Sequence[float] = (1.15, 1.3, 1.5, 1.8, 2.2, 2.7),
    t1_thresholds: Sequence[float] = (0.1, 0.25, 0.5, 0.75),
    softness: float = 0.06,
    band_mm: float = 5.0,
    sector_mm: float = 30.0,
    learn_thresholds: bool = True,
    reference: str = "muscle",
    decoder_features: bool = True,
    bone_label: int | None = None,
    max_fat: int = 4,
    ensemble: int = 1,
    slot_counts: Sequence[int] | None = None,
) -> Grader:
    """The grader from config (``model.grading``; a partial completed at run time).

    ``feature_channels`` (from the network), ``spacing`` (target spacing),
    ``max_grade`` (the cohort's scale), ``n_regions`` (the schema's slots) and
    ``bone_label`` (the schema's ``bone``, if any) are filled in by
    :func:`nxp2seg.train.build_grader`; the rest is config. See
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
        decoder_features=decoder_features,
        bone_label=bone_label,
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
        ensemble=ensemble,
        slot_counts=slot_counts,
    )
    return Grader(features, head)
