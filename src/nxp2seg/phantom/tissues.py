"""Tissue classes of the phantom: its own module so that the leg model (:mod:`~nxp2seg.phantom.anatomy`)
and the pelvis model (:mod:`~nxp2seg.phantom.pelvis`) share them without importing each other."""

from __future__ import annotations

__all__ = ["Tissue"]


class Tissue:
    """Tissue classes of the phantom (contrast is assigned per class)."""

    AIR = 0
    SKIN = 1
    FAT = 2  # subcutaneous fat
    FASCIA = 3
    MUSCLE = 4
    SEPTUM = 5  # intermuscular septum between compartments, interosseous membrane
    CORTEX = 6
    MARROW = 7
    VESSEL = 8
    FLUID = 9  # bladder (pelvic slices only)
    N = 10  # number of classes (contrast tables have this many entries)
