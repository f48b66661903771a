"""The pelvis above the thighs: proximal slices of a long thigh stack reach it.

Real thigh stacks (10-16 slices 20-26 mm apart, knee to hip) end in two to
four slices through the pelvis, where the legs have merged into one body. A
network trained on thigh slices alone labels those slices as thigh; this model
gives them what they hold: one body outline (a rounded box spanning both
hips), skin and subcutaneous fat, the femoral heads (marrow in cortex) and the
sacrum, the bladder (fluid: dark on T1, bright on STIR and water), pelvic fat
around it, and muscle everywhere else (gluteal, obturator, iliopsoas) -- none
of it graded: its muscle is background in the label maps, its bone is bone,
its skin and outer fat are subcutaneous tissue.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nxp2seg.phantom.tissues import Tissue

__all__ = ["PelvisParams", "sample_pelvis", "evaluate_pelvis"]


@dataclass(frozen=True)
class PelvisParams:
    """One subject's pelvis (world mm, RAS+)."""

    cx: float
    cy: float
    half_width: float
    half_depth: float
    fat: float
    skin: float
    head_dx: float  # femoral heads at cx +- head_dx
    head_r: float
    cortex: float
    sacrum_r: float
    bladder: tuple[float, float]  # semi-axes (x, y)


def sample_pelvis(rng: np.random.Generator, centres: dict[str, tuple[float, float]], legs: dict) -> PelvisParams:
    """A pelvis spanning both legs (``centres``: leg centres; ``legs``: their :class:`LegParams`)."""
    (rx, ry), (lx, ly) = centres["right"], centres["left"]
    a = 0.5 * (legs["right"].a + legs["left"].a)
    b = 0.5 * (legs["right"].b + legs["left"].b)
    fat = 0.5 * (legs["right"].fat + legs["left"].fat)
    return PelvisParams(
        cx=0.5 * (rx + lx), cy=0.5 * (ry + ly),
        half_width=0.5 * abs(rx - lx) + a * rng.uniform(1.0, 1.15),
        half_depth=b * rng.uniform(1.25, 1.45),
        fat=fat * rng.uniform(1.0, 1.3), skin=rng.uniform(1.6, 2.4),
        head_dx=0.5 * abs(rx - lx) * rng.uniform(0.75, 0.9), head_r=rng.uniform(20, 25), cortex=rng.uniform(2.5, 4.0),
        sacrum_r=rng.uniform(15, 22), bladder=(rng.uniform(25, 45), rng.uniform(18, 32)),
    )


def evaluate_pelvis(p: PelvisParams, x: np.ndarray, y: np.ndarray, depth_above: np.ndarray) -> dict[str, np.ndarray]:
    """Tissue at world points of the pelvic slab.

    Args:
        depth_above: mm above the top of the thigh slab (>= 0); the femoral heads
            shrink and the sacrum grows with it.

    Returns:
        ``tissue`` (:class:`~nxp2seg.phantom.tissues.Tissue` values), ``deep_fat``
        (fat inside the pelvis, not subcutaneous).
    """

    u, v = (x - p.cx) / p.half_width, (y - p.cy) / p.half_depth
    r = (np.abs(u) ** 3 + np.abs(v) ** 3) ** (1 / 3)  # rounded box
    scale = min(p.half_width, p.half_depth)
    inward = (1.0 - r) * scale  # ~mm inside the outline
    tissue = np.full(x.shape, Tissue.MUSCLE, np.int8)
    tissue[inward < p.fat + p.skin] = Tissue.FAT
    tissue[inward < p.skin] = Tissue.SKIN
    tissue[inward < 0] = Tissue.AIR
    deep_fat = np.zeros(x.shape, bool)
    # bladder in pelvic fat, anterior midline
    bu, bv = (x - p.cx) / p.bladder[0], (y - (p.cy + 0.2 * p.half_depth)) / p.bladder[1]
    rb = np.hypot(bu, bv)
    around = (rb < 1.35) & (inward > p.fat + p.skin + 3)
    tissue[around] = Tissue.FAT
    deep_fat |= around
    tissue[rb < 1.0] = Tissue.FLUID
    # femoral heads (shrinking proximally) and the sacrum (posterior midline)
    head_r = p.head_r * np.clip(1.0 - depth_above / 80.0, 0.3, 1.0)
    for sgn in (1.0, -1.0):
        d = np.hypot(x - (p.cx + sgn * p.head_dx), y - p.cy)
        tissue[d < head_r + p.cortex] = Tissue.CORTEX
        tissue[d < head_r] = Tissue.MARROW
    ds = np.hypot(x - p.cx, y - (p.cy - 0.62 * p.half_depth))
    sac_r = p.sacrum_r * np.clip(0.5 + depth_above / 60.0, 0.5, 1.2)
    tissue[ds < sac_r + p.cortex] = Tissue.CORTEX
    tissue[ds < sac_r] = Tissue.MARROW
    deep_fat &= tissue == Tissue.FAT
    return {"tissue": tissue, "deep_fat": deep_fat}
