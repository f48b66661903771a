"""The phantom's contrast table, as config: tissue x channel -> a [lo, hi] range.

Signal is relative to normal muscle (= 1 on T1, STIR and the Dixon water
image) before gain, noise and bias (PHANTOM.md, "Contrast"). Every case draws
each tissue's value uniformly from its range, so a shifted cohort is one
override away::

    python -m nxp2seg.phantom out=/tmp/shifted preset=small contrast.mild_edema.stir=[1.2,1.6]

Channels: ``t1`` and ``stir`` (sequence ``t1_stir``, the default), ``fat`` and
``water`` (sequence ``dixon``: the fat-only and water-only images of a
chemical-shift acquisition, rendered from the same anatomy, disease and fat
fractions). A range whose ends are equal is a constant and draws nothing from
the random stream, so the defaults reproduce the cohorts written before the
table became config, byte for byte.

Dixon defaults are physics, not fitted to any real scan: fat and water images
share proton density, so fully fatty tissue's fat signal is close to normal
muscle's water signal (0.85-1.3: some T1 weighting of the gradient echo
brightens fat), normal muscle holds 2-6% fat, adult (yellow) marrow is 80-95%
fat, edema raises the water signal (free water) and leaves the fat signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["ChannelRanges", "ContrastConfig", "CHANNELS_BY_SEQUENCE", "SEQUENCES", "sample_tissue"]

Range = tuple[float, float]

#: Sequences the phantom renders -> its two channels (nnU-Net channel 0, 1).
CHANNELS_BY_SEQUENCE: dict[str, tuple[str, str]] = {"t1_stir": ("t1", "stir"), "dixon": ("fat", "water")}
SEQUENCES = tuple(CHANNELS_BY_SEQUENCE)


@dataclass(frozen=True)
class ChannelRanges:
    """One tissue's signal range per channel, relative to normal muscle."""

    t1: Range
    stir: Range
    fat: Range
    water: Range


def _t(t1: Range, stir: Range, fat: Range, water: Range):
    return field(default_factory=lambda: ChannelRanges(t1, stir, fat, water))


@dataclass(frozen=True)
class ContrastConfig:
    """The contrast table (PHANTOM.md): every tissue of the phantom, every channel.

    ``septa`` covers the deep fascia and the intermuscular septa between
    compartments; ``muscle_septa`` the thin lines between muscles of one
    compartment; ``intramuscular_fat`` the adipose tissue of fatty
    infiltration (a voxel with fat fraction f mixes muscle and this by f); ``fluid``
    the bladder of pelvic slices (drawn only for cases that have them).
    Edema, subcutaneous and fascial edema give the level the affected tissue
    moves towards.
    """

    muscle: ChannelRanges = _t((1.0, 1.0), (1.0, 1.0), (0.02, 0.06), (1.0, 1.0))
    fat: ChannelRanges = _t((3.0, 3.4), (0.15, 0.3), (0.85, 1.3), (0.03, 0.1))
    marrow: ChannelRanges = _t((3.0, 3.4), (0.15, 0.3), (0.75, 1.2), (0.08, 0.25))
    septa: ChannelRanges = _t((1.6, 2.0), (0.4, 0.6), (0.35, 0.8), (0.25, 0.55))
    muscle_septa: ChannelRanges = _t((1.3, 1.5), (0.6, 0.75), (0.2, 0.45), (0.55, 0.8))
    cortex: ChannelRanges = _t((0.05, 0.15), (0.05, 0.15), (0.02, 0.08), (0.02, 0.08))
    skin: ChannelRanges = _t((1.1, 1.3), (1.1, 1.4), (0.2, 0.5), (0.8, 1.2))
    vessel: ChannelRanges = _t((0.4, 0.7), (1.8, 2.6), (0.0, 0.05), (0.5, 1.6))
    mild_edema: ChannelRanges = _t((0.9, 1.0), (1.4, 1.9), (0.02, 0.06), (1.1, 1.3))
    moderate_edema: ChannelRanges = _t((0.85, 0.95), (2.2, 3.2), (0.02, 0.06), (1.3, 1.6))
    subcutaneous_edema: ChannelRanges = _t((2.0, 2.4), (1.6, 2.5), (0.6, 0.9), (0.4, 0.9))
    fascial_edema: ChannelRanges = _t((1.0, 1.0), (2.0, 3.0), (0.05, 0.15), (1.3, 1.8))
    intramuscular_fat: ChannelRanges = _t((3.2, 3.2), (0.2, 0.2), (0.85, 1.3), (0.03, 0.1))
    fluid: ChannelRanges = _t((0.3, 0.6), (2.5, 3.5), (0.0, 0.03), (1.5, 2.5))

    def tissues(self) -> list[str]:
        return [f.name for f in fields(self)]

    def check(self) -> None:
        """Raise ``ValueError`` naming the key of a range that is not ``0 <= lo <= hi``."""
        for name in self.tissues():
            ranges = getattr(self, name)
            for ch in ("t1", "stir", "fat", "water"):
                r = getattr(ranges, ch)
                if len(r) != 2 or not (0 <= float(r[0]) <= float(r[1])):
                    raise ValueError(
                        f"phantom option contrast.{name}.{ch}={list(r)}: give [lo, hi] with 0 <= lo <= hi"
                    )


def draw(rng: np.random.Generator, r: Range) -> float:
    """A uniform draw from ``[lo, hi]``; a constant (``lo == hi``) consumes no random number."""
    lo, hi = float(r[0]), float(r[1])
    return lo if lo == hi else float(rng.uniform(lo, hi))


def sample_tissue(rng: np.random.Generator, ranges: ChannelRanges, channels: tuple[str, str]) -> tuple[float, float]:
    """One case's (or region's) value of a tissue on the two channels, drawn in channel order."""
    a = draw(rng, getattr(ranges, channels[0]))
    b = draw(rng, getattr(ranges, channels[1]))
    return a, b
