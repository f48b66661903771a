"""Tissue contrast and disease: signal of the two channels at world points.

The channels are T1 and STIR, or the Dixon fat and water images
(:mod:`nxp2seg.phantom.contrast` holds the table, as config). Signal is
relative to normal muscle (= 1) before gain, noise and bias (PHANTOM.md,
"Contrast"). Disease is placed per graded region from the true
grades drawn by :mod:`nxp2seg.phantom.disease`:

* **edema** inside muscle: one or more seeds; a voxel is edematous where its
  (anisotropic, noise-perturbed) distance to a seed is below a threshold chosen
  so that the requested fraction of the compartment is involved (focal 2–10%,
  segmented 15–50%, global 75–100%). Signal is textured (smooth multiplicative
  noise and feathery striations along a fascicle direction), with soft edges.
* **fatty infiltration**: fat fraction highest at the compartment periphery,
  streaky, scaled so the region's mean matches its true fraction.
* **fascial edema**: a 2–4 mm band on the deep fascia over an arc of the region.
* **subcutaneous edema**: a reticular network in the fat of the sector over the region.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nxp2seg.phantom.anatomy import StationAnatomy, Tissue
from nxp2seg.phantom.contrast import CHANNELS_BY_SEQUENCE, ContrastConfig, sample_tissue
from nxp2seg.phantom.fields import SmoothField

__all__ = ["Contrast", "sample_contrast", "RegionRender", "CaseRenderer"]


@dataclass
class Contrast:
    """Per-case relative signal of each tissue class on the case's two channels.

    ``c0`` is channel 0 (the fat-bright image: T1, or Dixon fat), ``c1``
    channel 1 (the fat-suppressed image: STIR, or Dixon water); index =
    :class:`Tissue` value.
    """

    channels: tuple[str, str]
    c0: np.ndarray  # (Tissue.N,)
    c1: np.ndarray  # (Tissue.N,)
    muscle_septum: tuple[float, float]
    intramuscular_fat: tuple[float, float]
    table: ContrastConfig

    @property
    def muscle(self) -> tuple[float, float]:
        return float(self.c0[Tissue.MUSCLE]), float(self.c1[Tissue.MUSCLE])


def sample_contrast(
    rng: np.random.Generator, table: ContrastConfig | None = None, sequence: str = "t1_stir", with_fluid: bool = False
) -> Contrast:
    """One case's tissue values, drawn from ``table`` in a fixed order (same table and stream, same values)."""
    table = ContrastConfig() if table is None else table
    channels = CHANNELS_BY_SEQUENCE[sequence]
    c0 = np.zeros(Tissue.N, np.float32)
    c1 = np.zeros(Tissue.N, np.float32)
    for tissue, name in (
        (Tissue.SKIN, "skin"),
        (Tissue.FAT, "fat"),
        (Tissue.FASCIA, "septa"),
        (Tissue.MUSCLE, "muscle"),
        (Tissue.SEPTUM, "septa"),
        (Tissue.CORTEX, "cortex"),
        (Tissue.MARROW, "marrow"),
        (Tissue.VESSEL, "vessel"),
    ):
        c0[tissue], c1[tissue] = sample_tissue(rng, getattr(table, name), channels)
    septum = sample_tissue(rng, table.muscle_septa, channels)
    infiltration = sample_tissue(rng, table.intramuscular_fat, channels)
    if with_fluid:  # drawn last, and only for cases with pelvic slices: the others keep their bytes
        c0[Tissue.FLUID], c1[Tissue.FLUID] = sample_tissue(rng, table.fluid, channels)
    return Contrast(channels, c0, c1, septum, infiltration, table)


@dataclass
class RegionRender:
    """How disease is drawn in one region (all in world mm)."""

    seeds: np.ndarray  # (k, 3)
    thresholds: np.ndarray  # (k,)
    edema: tuple[float, float]  # edema's level on channels 0, 1
    fascicle_dir: np.ndarray  # (2,) in-plane unit vector
    fat_kappa: float
    fat_lambda: float
    fascial: tuple[float, float, float, tuple[float, float]] | None  # theta_c, half_width, band_mm, levels
    subcut: tuple[float, float, tuple[float, float]] | None  # theta_c, half_width, levels
    seed_muscles: np.ndarray | None = None  # (k,) muscle index each seed is confined to, or None


_Z_SCALE = 0.5  # edema extends along the limb: z distances count half


def _arc(theta: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    return np.abs((theta - centre + np.pi) % (2 * np.pi) - np.pi) < half_width


class CaseRenderer:
    """Signal and truth of one case (one station of one subject) at world points.

    Args:
        anatomy: both legs at this station.
        regions: the station's true region grades, in the station's region order
            (right anterior.., left ..), objects with ``edema_fraction``,
            ``n_foci``, ``edema_intensity``, ``fat_fraction``, ``fascial_edema``,
            ``subcutaneous_edema``.
        contrast: per-case tissue contrast.
        box: (lo, hi) world corners covering every acquisition of the case.
        probe: world points ``(3, N)`` of the T1 voxel centres, used to place
            seeds and calibrate thresholds.
        rng: random generator.
        contrast_rng: where the regions' disease signal levels are drawn
            (default ``rng``): a separate stream keeps anatomy and disease
            identical whatever the contrast table draws.
    """

    def __init__(self, anatomy: StationAnatomy, regions, contrast: Contrast, box, probe: np.ndarray, rng, contrast_rng=None):
        self.anatomy = anatomy
        self.contrast = contrast
        self._crng = rng if contrast_rng is None else contrast_rng
        lo, hi = box
        self.edema_noise = SmoothField(rng, lo, hi, (10.0, 10.0, 25.0))
        self.texture = SmoothField(rng, lo, hi, (6.0, 6.0, 15.0))
        self.feather_phase = SmoothField(rng, lo, hi, (14.0, 14.0, 30.0))
        self.fat_streak = SmoothField(rng, lo, hi, (3.5, 6.0, 30.0))
        self.reticular = SmoothField(rng, lo, hi, (5.0, 5.0, 12.0))
        self.muscle_tex = SmoothField(rng, lo, hi, (8.0, 8.0, 20.0))
        px, py, pz = probe
        a = anatomy.evaluate(px, py, pz)
        self.plan = [self._plan_region(r, spec, a, probe, rng) for r, spec in enumerate(regions)]

    # -- planning -------------------------------------------------------------
    def _levels(self, rng, ranges) -> tuple[float, float]:
        """A disease level on the case's channels. The T1/STIR values are always drawn from
        ``rng``, so the disease drawn after them is the T1/STIR cohort's whatever the sequence;
        other channels take theirs from the contrast stream."""
        t1_stir = sample_tissue(rng, ranges, CHANNELS_BY_SEQUENCE["t1_stir"])
        return t1_stir if self._crng is rng else sample_tissue(self._crng, ranges, self.contrast.channels)

    def _edema_score(self, pts: np.ndarray, seed: np.ndarray) -> np.ndarray:
        d = np.sqrt((pts[0] - seed[0]) ** 2 + (pts[1] - seed[1]) ** 2 + (_Z_SCALE * (pts[2] - seed[2])) ** 2)
        return d * (1.0 + 0.35 * self.edema_noise(pts[0], pts[1], pts[2]))

    def _fat_raw(self, pts: np.ndarray, boundary: np.ndarray, lam: float) -> np.ndarray:
        streak = np.clip(0.6 + 0.7 * self.fat_streak(pts[0], pts[1], pts[2]), 0.05, 2.0)
        return np.exp(-np.maximum(boundary, 0) / lam) * streak

    def _plan_region(self, r: int, spec, a: dict, probe: np.ndarray, rng) -> RegionRender:
        sel = (a["region"] == r) & (a["tissue"] == Tissue.MUSCLE)
        pts = probe[:, sel]
        n = pts.shape[1]
        seeds = np.zeros((0, 3))
        thr = np.zeros(0)
        frac = float(spec.edema_fraction)
        seed_muscles = None
        if getattr(spec, "muscle_fractions", None) is not None:  # muscle-level cohorts
            seeds, thr, seed_muscles = self._plan_muscles(spec, a["muscle"][sel], pts, rng)
        elif frac > 0 and n > 0:
            k = max(int(spec.n_foci), 1)
            idx = rng.choice(n, size=k, replace=n < k)
            seeds = pts[:, idx].T.copy()
            thr = np.empty(k)
            for j in range(k):
                s = self._edema_score(pts, seeds[j])
                thr[j] = np.inf if frac >= 0.999 else np.quantile(s, min(frac / k, 1.0))
        table = self.contrast.table
        level = table.moderate_edema if spec.edema_intensity == "moderate" else table.mild_edema
        edema_level = self._levels(rng, level)
        ang = rng.uniform(0, np.pi)
        fdir = np.array([np.cos(ang), np.sin(ang)])
        F = float(spec.fat_fraction)
        lam = 4.0 + 30.0 * F
        kappa = 0.0
        if F > 0 and n > 0:
            raw = self._fat_raw(pts, a["boundary"][sel], lam)
            lo_k, hi_k = 0.0, 1.0
            while np.minimum(hi_k * raw, 0.95).mean() < F and hi_k < 1e4:
                hi_k *= 2
            for _ in range(40):
                mid = 0.5 * (lo_k + hi_k)
                if np.minimum(mid * raw, 0.95).mean() < F:
                    lo_k = mid
                else:
                    hi_k = mid
            kappa = 0.5 * (lo_k + hi_k)
        fascial = None
        if spec.fascial_edema:
            near = (a["region"] == r) & (a["fascia_depth"] > 0) & (a["fascia_depth"] < 4)
            th = a["theta"][near]
            centre = float(th[rng.integers(len(th))]) if len(th) else 0.0
            hw, band = rng.uniform(0.5, 1.3), rng.uniform(2.0, 4.0)
            fascial = (centre, hw, band, self._levels(rng, table.fascial_edema))
        subcut = None
        if spec.subcutaneous_edema:
            fat = (a["region"] == r) & (a["tissue"] == Tissue.FAT)
            th = a["theta"][fat]
            centre = float(th[rng.integers(len(th))]) if len(th) else 0.0
            hw = rng.uniform(0.6, 1.3)
            subcut = (centre, hw, self._levels(rng, table.subcutaneous_edema))
        return RegionRender(seeds, thr, edema_level, fdir, kappa, lam, fascial, subcut, seed_muscles)

    def _plan_muscles(self, spec, muscle: np.ndarray, pts: np.ndarray, rng
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Seeds and thresholds placing each muscle's own edema fraction inside that muscle."""
        seeds, thr, owner = [], [], []
        for m, (frac, foci) in enumerate(zip(spec.muscle_fractions, spec.muscle_foci)):
            mp = pts[:, muscle == m]
            if frac <= 0 or mp.shape[1] == 0:
                continue
            k = max(int(foci), 1)
            for i in rng.choice(mp.shape[1], size=k, replace=mp.shape[1] < k):
                seed = mp[:, i].copy()
                s = self._edema_score(mp, seed)
                seeds.append(seed)
                q = float(np.quantile(s, min(frac / k, 1.0)))
                thr.append(np.inf if frac >= 0.999 else max(q, 1e-3))  # a one-point muscle: q = 0
                owner.append(m)
        return (np.asarray(seeds).reshape(-1, 3), np.asarray(thr, dtype=float),
                np.asarray(owner, dtype=int))

    # -- rendering -------------------------------------------------------------
    def render(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> dict[str, np.ndarray]:
        """Signal and truth at world points shaped ``(A, B, T)`` (in-plane axes first).

        Returns float32 ``c0`` and ``c1`` (channels 0 and 1: T1 and STIR, or
        Dixon fat and water), ``edema`` (0..1 soft mask), ``fat`` (fraction),
        and the anatomy's ``tissue``, ``region``, ``side``,
        ``compartment``, ``muscle``.
        """
        a = self.anatomy.evaluate(x, y, z)
        c = self.contrast
        tissue = a["tissue"]
        t1 = c.c0[tissue].astype(np.float32)  # channel 0 (fat-bright); "st": channel 1 (fat-suppressed)
        st = c.c1[tissue].astype(np.float32)
        m0, m1 = c.muscle
        muscle = tissue == Tissue.MUSCLE
        # thin septa between muscles of one compartment: where the muscle index changes
        m = a["muscle"]
        edge = np.zeros(m.shape, bool)
        for ax in (0, 1):
            dif = np.diff(m, axis=ax) != 0
            sl = [slice(None)] * m.ndim
            sl[ax] = slice(0, -1)
            edge[tuple(sl)] |= dif
        edge &= muscle & (a["compartment"] >= 0)
        tex = 1.0 + 0.03 * self.muscle_tex(x[muscle], y[muscle], z[muscle])
        t1[muscle] *= tex
        st[muscle] *= tex
        t1[edge], st[edge] = c.muscle_septum
        edema = np.zeros(x.shape, np.float32)
        fat = np.zeros(x.shape, np.float32)
        region = a["region"]
        for r, plan in enumerate(self.plan):
            sel = (region == r) & muscle
            if not sel.any():
                continue
            pts = np.stack([x[sel], y[sel], z[sel]])
            if len(plan.seeds) and plan.seed_muscles is not None:  # each seed inside its muscle
                w = np.zeros(pts.shape[1], np.float32)
                m_sel = a["muscle"][sel]
                for seed, thr, owner in zip(plan.seeds, plan.thresholds, plan.seed_muscles):
                    inside = m_sel == owner
                    if np.isinf(thr):
                        w[inside] = 1.0
                        continue
                    s = self._edema_score(pts, seed)
                    w = np.maximum(w, np.clip((thr - s) / (0.25 * thr) + 0.5, 0, 1) * inside)
            elif len(plan.seeds):
                w = np.zeros(pts.shape[1], np.float32)
                for seed, thr in zip(plan.seeds, plan.thresholds):
                    if np.isinf(thr):
                        w[:] = 1.0
                        break
                    s = self._edema_score(pts, seed)
                    w = np.maximum(w, np.clip((thr - s) / (0.25 * thr) + 0.5, 0, 1))
            if len(plan.seeds):
                along = pts[0] * plan.fascicle_dir[0] + pts[1] * plan.fascicle_dir[1]
                feather = np.cos(2 * np.pi * along / 8.0 + 6.0 * self.feather_phase(*pts))
                amp = np.clip(1.0 + 0.25 * self.texture(*pts) + 0.12 * feather, 0.45, 1.5)
                edema[sel] = w
                st[sel] = st[sel] + (plan.edema[1] - m1) * w * amp
                t1[sel] = t1[sel] - (m0 - plan.edema[0]) * w
            if plan.fat_kappa > 0:
                f = np.minimum(plan.fat_kappa * self._fat_raw(pts, a["boundary"][sel], plan.fat_lambda), 0.95)
                fat[sel] = f
                t1[sel] = (1 - f) * t1[sel] + f * c.intramuscular_fat[0]
                st[sel] = (1 - f) * st[sel] + f * c.intramuscular_fat[1]
            if plan.fascial is not None:
                centre, hw, band, (v0, v1) = plan.fascial
                fsel = (
                    (region == r)
                    & (a["fascia_depth"] > -0.5)
                    & (a["fascia_depth"] < band)
                    & ((tissue == Tissue.MUSCLE) | (tissue == Tissue.FASCIA) | (tissue == Tissue.SEPTUM))
                )
                fsel[fsel] = _arc(a["theta"][fsel], centre, hw)
                wband = np.clip((band - a["fascia_depth"][fsel]) / 1.0, 0, 1)
                st[fsel] = st[fsel] + (v1 - st[fsel]) * wband
                t1[fsel] = t1[fsel] + (v0 - t1[fsel]) * wband
            if plan.subcut is not None:
                centre, hw, (v1, v2) = plan.subcut
                ssel = (region == r) & (tissue == Tissue.FAT)
                ssel[ssel] = _arc(a["theta"][ssel], centre, hw)
                if ssel.any():
                    net = np.abs(self.reticular(x[ssel], y[ssel], z[ssel]))
                    wnet = np.clip((0.45 - net) / 0.2, 0, 1)
                    t1[ssel] = t1[ssel] + (v1 - t1[ssel]) * wnet
                    st[ssel] = st[ssel] + (v2 - st[ssel]) * wnet
        out = {"c0": t1, "c1": st, "edema": edema, "fat": fat}
        for k in ("tissue", "region", "side", "compartment", "muscle", "deep_fat"):
            out[k] = a[k]
        return out
