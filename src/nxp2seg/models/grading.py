"""The grader: what the readers grade, read from inside each predicted region.

For each graded region of a station (its ``R`` slots, :mod:`nxp2seg.data.regions`)
the :class:`Grader` pools T1/STIR statistics in tissue units and, optionally,
the segmentation network's last decoder features inside the *soft* predicted
region (:class:`~nxp2seg.models.region_features.RegionFeatures`), then its
learned head (:class:`~nxp2seg.models.grading_head.GradingHead`) predicts:

* the edema grade on the cohort's scale (continuous ``0..max_grade``), the fat
  grade (``0..4``), fascial-edema and subcutaneous-edema probabilities, per region;
* the edema pattern (none / patchy / mixed / diffuse) per station, with probabilities;

and its **operating points** turn those into the reported calls
(:meth:`Grader.calls`): integer grades, flags, the pattern. Every number the
grader learned from the training cohort -- tissue thresholds, head weights,
operating points -- is a tensor of the module, so the bundle carries them;
how it is built is :class:`~nxp2seg.models.grading_spec.GraderSpec` (config).

Shapes: ``B`` cases, ``C`` label values, ``R`` region slots, ``X, Y, Z`` voxels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nxp2seg.data.schema import PATTERNS
from nxp2seg.models.grading_head import GRADING_OUTPUTS, READOUTS, GradingHead
from nxp2seg.models.grading_spec import GraderSpec
from nxp2seg.models.region_features import RegionFeatures
from nxp2seg.models.tissue import make_reference

__all__ = [
    "GRADING_OUTPUTS",
    "READOUTS",
    "FeatureTap",
    "Grader",
    "GradingHead",
    "RegionFeatures",
    "build_grader",
    "feature_layer",
]


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

    A forward pre-hook that records only inside :meth:`capture`, so other
    passes cost nothing. Not an ``nn.Module``: it holds no weights.

    Example::

        tap = FeatureTap(net)
        with tap.capture():
            logits = net(x)
        feats = tap.take(x.shape[2:])  # (B, tap.channels, X, Y, Z)
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
# the grader
# ---------------------------------------------------------------------------


class Grader(nn.Module):
    """:class:`RegionFeatures`, then :class:`GradingHead`, then the operating points.

    Buffers (set by the grading stage, :mod:`nxp2seg.models.grading_operating`):
    ``fascial_threshold``, ``subcut_threshold`` (flag = probability >= threshold),
    ``edema_cuts`` (``max_grade`` ascending cut-points: the integer grade is the
    number of cut-points at or below the continuous one; default ``k - 0.5``,
    rounding half up), ``fat_cuts`` (4), ``pattern_offset`` (added to the pattern
    log-probabilities before the argmax; default 0).
    """

    def __init__(self, features: RegionFeatures, head: GradingHead):
        super().__init__()
        self.features = features
        self.head = head
        top, fat = int(head.max_grade), int(head.max_fat)
        self.register_buffer("fascial_threshold", torch.tensor(0.5))
        self.register_buffer("subcut_threshold", torch.tensor(0.5))
        self.register_buffer("edema_cuts", torch.arange(top, dtype=torch.float32) + 0.5)
        self.register_buffer("fat_cuts", torch.arange(fat, dtype=torch.float32) + 0.5)
        self.register_buffer("pattern_offset", torch.zeros(len(PATTERNS)))

    @property
    def max_grade(self) -> float:
        return self.head.max_grade

    def forward(
        self,
        probs: torch.Tensor,
        image: torch.Tensor,
        decoder: torch.Tensor | None,
        membership: torch.Tensor,
        subcut: torch.Tensor,
        station_index: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """See :meth:`RegionFeatures.forward` and :meth:`GradingHead.forward`."""
        x = self.features(probs, image, decoder, membership, subcut)
        return self.head(x, station_index)

    def operating_points(self) -> dict[str, Any]:
        """The operating points as plain numbers."""
        return {
            "fascial_threshold": float(self.fascial_threshold),
            "subcut_threshold": float(self.subcut_threshold),
            "edema_cuts": self.edema_cuts.tolist(),
            "fat_cuts": self.fat_cuts.tolist(),
            "pattern_offset": dict(zip(PATTERNS, self.pattern_offset.tolist())),
        }

    def set_operating_points(self, points: Mapping[str, Any]) -> None:
        """Set any of :meth:`operating_points`' entries in place."""
        with torch.no_grad():
            for key, value in points.items():
                if key == "pattern_offset" and isinstance(value, Mapping):
                    value = [value[p] for p in PATTERNS]
                buf = getattr(self, key)
                new = torch.as_tensor(value, dtype=buf.dtype)
                if new.shape != buf.shape:
                    raise ValueError(f"Grader.{key}: shape {tuple(new.shape)}, expected {tuple(buf.shape)}")
                buf.copy_(new)

    def calls(self, out: Mapping[str, torch.Tensor], station_index: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probabilities and the reported calls from :meth:`forward`'s outputs.

        Returns:
            ``edema``, ``fat`` ``(B, R)`` continuous grades; ``edema_int``, ``fat_int``
            ``(B, R)`` integer grades at the operating points; ``fascial_prob``,
            ``subcut_prob`` ``(B, R)`` and ``fascial_flag``, ``subcut_flag`` (bool);
            ``pattern_prob`` ``(B, 4)`` and ``pattern_index`` ``(B,)``; ``slot_valid`` ``(B, R)``.
        """
        fascial = torch.sigmoid(out["fascial_logit"].float())
        subcut = torch.sigmoid(out["subcut_logit"].float())
        logp = torch.log_softmax(out["pattern_logits"].float(), dim=-1)
        edema, fat = out["edema"].float(), out["fat"].float()
        return {
            "edema": edema,
            "edema_int": (edema[..., None] >= self.edema_cuts.to(edema)).sum(-1),
            "fat": fat,
            "fat_int": (fat[..., None] >= self.fat_cuts.to(fat)).sum(-1),
            "fascial_prob": fascial,
            "fascial_flag": fascial >= self.fascial_threshold.to(fascial),
            "subcut_prob": subcut,
            "subcut_flag": subcut >= self.subcut_threshold.to(subcut),
            "pattern_prob": logp.exp(),
            "pattern_index": (logp + self.pattern_offset.to(logp)).argmax(dim=-1),
            "slot_valid": self.head.valid(station_index).to(edema.device),
        }


def build_grader(
    spec: Mapping[str, Any],
    feature_channels: int,
    spacing: Sequence[float],
    max_grade: int,
    n_regions: int = 6,
    slot_counts: Sequence[int] | None = None,
    bone_label: int | None = None,
    max_fat: int = 4,
    n_stations: int = 2,
    **legacy: Any,
) -> Grader:
    """The grader of a :class:`~nxp2seg.models.grading_spec.GraderSpec` (a mapping: the
    ``grading`` config block, or what a bundle recorded), for the network and the cohort.

    Args:
        spec: :meth:`GraderSpec.to_dict` (or the config node).
        feature_channels: the network's last decoder width (used with
            ``features.decoder_features``).
        spacing: target spacing (mm).
        max_grade: the cohort's edema scale's top grade.
        n_regions, slot_counts: region slots per station, real regions of each station.
        bone_label: the schema's ``bone`` label, if any.
        max_fat: top fat grade.
        n_stations: stations.

    Raises:
        ValueError: for arguments of another nxp2seg's grader (an older bundle).
    """
    if legacy:
        raise ValueError(
            f"this grading head was written by another nxp2seg version (arguments {sorted(legacy)}); "
            "train a new head on the bundle: python scripts/grading_stage_on_bundle.py BUNDLE --out NEW"
        )
    s = spec if isinstance(spec, GraderSpec) else GraderSpec.from_mapping(spec)
    fs = s.features
    features = RegionFeatures(
        make_reference(s.reference),
        spacing,
        stir_levels=fs.stir_levels,
        fat_levels=len(fs.fat_levels),
        feature_channels=int(feature_channels) if fs.decoder_features else 0,
        band_mm=fs.band_mm,
        sector_mm=fs.sector_mm,
        smooth_mm=fs.smooth_mm,
        hist_bins=fs.hist_bins,
        bone_label=bone_label,
    )
    head = GradingHead(
        features.out_features,
        max_grade,
        n_regions=n_regions,
        n_stations=n_stations,
        hidden=s.head.hidden,
        embed=s.head.embed,
        dropout=s.head.dropout,
        max_fat=max_fat,
        ensemble=s.head.ensemble,
        slot_counts=slot_counts,
    )
    return Grader(features, head)
