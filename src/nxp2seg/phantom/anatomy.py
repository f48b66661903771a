"""Cross-sectional anatomy of the thigh and the calf, evaluated at world points.

Each leg is described in its own frame: ``u`` lateral (mm, away from the
midline), ``v`` anterior (mm), ``t`` the level along the station's slab from
proximal (0) to distal (1). The outline is a Fourier-perturbed ellipse; bones
are discs with a cortex ring; compartments are sectors separated by wavy
intermuscular septa radiating from the bones (thigh: femur; calf: the
interosseous membrane and the fibula); muscles subdivide compartments by
angle and depth. A smooth per-subject displacement field bends the whole
template so no two subjects share a shape.

The evaluation returns, per point: the tissue class (for contrast), the
compartment and muscle (for labels), the region (compartment + side, also for
the subcutaneous sector over a compartment), and distances to the fascia and
to the nearest compartment boundary (for fascial edema and peripheral fat).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nxp2seg.data.schema import COMPARTMENTS, MUSCLES, SIDES
from nxp2seg.phantom.pelvis import evaluate_pelvis
from nxp2seg.phantom.tissues import Tissue

__all__ = ["Tissue", "LegParams", "sample_leg_params", "evaluate_leg", "StationAnatomy"]


def _wrap(a: np.ndarray) -> np.ndarray:
    """Wrap angles to (-pi, pi]."""
    return (a + np.pi) % (2 * np.pi) - np.pi


@dataclass
class LegParams:
    """Shape parameters of one leg at one station (mm, radians)."""

    station: str
    a: float  # fascia ellipse semi-axis along u (lateral) at t=0
    b: float  # fascia ellipse semi-axis along v (anterior) at t=0
    fourier: np.ndarray  # (K, 2): amplitude, phase for harmonics 2..K+1
    taper: float  # outline scale at t=1
    fat: float  # subcutaneous fat thickness (mm), before regional modulation
    skin: float
    fascia: float
    septum: float  # intermuscular septum width
    wave_amp: float  # septum waviness (rad)
    wave_len: float  # septum wavelength (mm)
    wave_phase: np.ndarray  # per septum
    # thigh
    femur_r: float = 0.0  # marrow radius
    femur_cortex: float = 0.0
    angles0: np.ndarray = field(default_factory=lambda: np.zeros(3))  # septum angles at t=0
    angles1: np.ndarray = field(default_factory=lambda: np.zeros(3))  # at t=1
    vi_thick: float = 0.0
    # calf
    tibia_r: float = 0.0
    tibia_cortex: float = 0.0
    fibula_r: float = 0.0
    fibula_cortex: float = 0.0
    deep_thick: float = 0.0
    soleus_thick: float = 0.0
    # vessels: (M, 4) rows of (u, v, radius, drift_u) at t=0 in the leg frame
    vessels: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


def sample_leg_params(station: str, rng: np.random.Generator, habitus: dict, jitter: float = 0.03) -> LegParams:
    """Draw one leg's shape. ``habitus`` holds the subject's ``scale`` and ``fat`` (mm)."""
    s = habitus["scale"] * (1 + jitter * rng.uniform(-1, 1))
    fat = habitus["fat"] * (1 + 2 * jitter * rng.uniform(-1, 1))
    four = np.stack([rng.uniform(0.01, 0.035, 3), rng.uniform(0, 2 * np.pi, 3)], axis=1)
    common = dict(
        fourier=four,
        taper=rng.uniform(0.83, 0.88),
        skin=rng.uniform(1.6, 2.4),
        fascia=rng.uniform(1.2, 1.8),
        septum=rng.uniform(1.0, 2.0),
        wave_amp=rng.uniform(0.04, 0.10),
        wave_len=rng.uniform(25, 55),
        wave_phase=rng.uniform(0, 2 * np.pi, 4),
    )
    deg = np.deg2rad
    if station == "thigh":
        p = LegParams(
            station=station,
            a=rng.uniform(52, 62) * s,
            b=rng.uniform(47, 56) * s,
            fat=fat,
            femur_r=rng.uniform(11.5, 14.0) * s,
            femur_cortex=rng.uniform(4.5, 6.0) * s,
            # septum angles: lateral (anterior|posterior), medial (anterior|medial),
            # posteromedial (medial|posterior); the medial compartment shrinks distally
            angles0=deg(np.array([rng.uniform(-18, -6), rng.uniform(138, 150), rng.uniform(-122, -110)])),
            angles1=deg(np.array([rng.uniform(-18, -6), rng.uniform(160, 170), rng.uniform(-140, -130)])),
            vi_thick=rng.uniform(14, 19) * s,
            **common,
        )
    else:
        p = LegParams(
            station=station,
            a=rng.uniform(38, 46) * s,
            b=rng.uniform(34, 41) * s,
            fat=fat * 0.45,
            tibia_r=rng.uniform(7.0, 8.5) * s,
            tibia_cortex=rng.uniform(4.0, 5.0) * s,
            fibula_r=rng.uniform(3.0, 3.8) * s,
            fibula_cortex=rng.uniform(2.2, 2.8) * s,
            angles0=deg(np.array([rng.uniform(55, 70), rng.uniform(-70, -55), 0.0])),
            angles1=deg(np.array([rng.uniform(50, 62), rng.uniform(-62, -50), 0.0])),
            deep_thick=rng.uniform(15, 20) * s,
            soleus_thick=rng.uniform(14, 19) * s,
            **common,
        )
    p.vessels = _vessel_table(p, rng)
    return p


# ---------------------------------------------------------------------------
# outline and bones
# ---------------------------------------------------------------------------


def _fascia_radius(p: LegParams, theta: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Radius of the deep fascia from the leg centre at angle theta, level t."""
    a, b = p.a, p.b
    r = a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)
    pert = 1.0
    for k, (amp, ph) in enumerate(p.fourier, start=2):
        pert = pert + amp * np.cos(k * theta + ph)
    return r * pert * (1.0 + (p.taper - 1.0) * t)


def _fat_thickness(p: LegParams, theta: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Subcutaneous fat: thinner laterally (thigh) and over the antero-medial tibia (calf)."""
    if p.station == "thigh":
        mod = 1.0 - 0.45 * np.clip(np.cos(theta), 0, None) + 0.15 * np.clip(-np.sin(theta), 0, None)
    else:
        d = _wrap(theta - np.deg2rad(125))
        mod = 1.0 - 0.85 * np.exp(-(d / 0.45) ** 2)
    return np.maximum(p.fat * mod * (1.0 - 0.1 * t), 1.0)


def _femur_centre(p: LegParams, t):
    return -(0.10 + 0.10 * t) * p.a, 0.10 * p.b + 0.0 * t


def _calf_bones(p: LegParams, t):
    """Tibia and fibula centres (u, v) at level t (scalars or arrays)."""
    th_t = np.deg2rad(125)
    rt = p.tibia_r + p.tibia_cortex
    rf_t = _fascia_radius(p, np.asarray(th_t), t)
    dt = rf_t - rt - 3.0
    tu, tv = dt * np.cos(th_t), dt * np.sin(th_t)
    th_f = np.deg2rad(-18)
    df = 0.62 * _fascia_radius(p, np.asarray(th_f), t)
    fu, fv = df * np.cos(th_f), df * np.sin(th_f)
    return tu, tv, fu, fv


def _vessel_table(p: LegParams, rng: np.random.Generator) -> np.ndarray:
    """Vessels as (u, v, radius, drift_u) in the leg frame at t=0."""
    rows = []
    if p.station == "thigh":
        fu, fv = _femur_centre(p, 0.0)
        phi = p.angles0[1]  # between the anterior and medial compartments
        d = p.femur_r + p.femur_cortex + rng.uniform(14, 20)
        for off, r in ((0.0, rng.uniform(1.6, 2.2)), (rng.uniform(5.0, 6.5), rng.uniform(2.0, 2.6))):
            rows.append((fu + d * np.cos(phi) - off * 0.3, fv + d * np.sin(phi) - off, r, -6.0))
        # great saphenous vein in the medial subcutaneous fat
        rm = _fascia_radius(p, np.asarray(np.pi * 0.95), 0.0) + 0.5 * p.fat
        rows.append((rm * np.cos(np.pi * 0.95), rm * np.sin(np.pi * 0.95), rng.uniform(1.5, 2.2), 0.0))
        # perforators
        for _ in range(3):
            th = rng.uniform(-np.pi, np.pi)
            rr = _fascia_radius(p, np.asarray(th), 0.0) * rng.uniform(0.45, 0.85)
            rows.append((rr * np.cos(th), rr * np.sin(th), rng.uniform(0.8, 1.2), rng.uniform(-4, 4)))
    else:
        tu, tv, fu, fv = _calf_bones(p, 0.0)
        du, dv = fu - tu, fv - tv
        n = np.hypot(du, dv)
        eu, ev = du / n, dv / n
        nu, nv = -ev, eu  # normal; make it point anteriorly
        if nv < 0:
            nu, nv = -nu, -nv
        for lam, off, r in ((0.5, 4.0, 1.6), (0.3, -p.deep_thick, 1.8), (0.8, -7.0, 1.5)):
            for k in range(2):  # artery and a companion vein
                rows.append((tu + lam * du + off * nu + 3.2 * k * eu, tv + lam * dv + off * nv + 3.2 * k * ev, r * (1 + 0.2 * k), 0.0))
        for th in (np.deg2rad(170), np.deg2rad(-100)):  # great and small saphenous veins
            rr = _fascia_radius(p, np.asarray(th), 0.0) + 0.5 * max(p.fat, 2.0)
            rows.append((rr * np.cos(th), rr * np.sin(th), rng.uniform(1.2, 1.8), 0.0))
        for _ in range(2):
            th = rng.uniform(-np.pi, np.pi)
            rr = _fascia_radius(p, np.asarray(th), 0.0) * rng.uniform(0.5, 0.85)
            rows.append((rr * np.cos(th), rr * np.sin(th), rng.uniform(0.7, 1.0), rng.uniform(-3, 3)))
    return np.asarray(rows, dtype=float)


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def _septum_angle(p: LegParams, k: int, t, d):
    """Wavy septum k's angle at level t and distance d from its origin."""
    base = p.angles0[k] + (p.angles1[k] - p.angles0[k]) * t
    return base + p.wave_amp * np.sin(2 * np.pi * d / p.wave_len + p.wave_phase[k])


def _in_arc(phi, lo, hi):
    """phi within the counter-clockwise arc from lo to hi, and the normalised position in it."""
    span = (hi - lo) % (2 * np.pi)
    rel = (phi - lo) % (2 * np.pi)
    return rel < span, rel / np.where(span > 0, span, 1.0)


def evaluate_leg(p: LegParams, u: np.ndarray, v: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
    """Evaluate the leg at points of its frame.

    Returns a dict of arrays shaped like ``u``:
      ``tissue`` (int8, :class:`Tissue`), ``compartment`` (int8, 0..2 per
      ``COMPARTMENTS[station]``, -1 outside the leg; also set for skin and fat
      = the sector over the compartment), ``muscle`` (int8 index into the
      compartment's ``MUSCLES`` list, -1 where not muscle-bearing),
      ``fascia_depth`` (mm inside the deep fascia, negative outside),
      ``boundary`` (mm to the nearest compartment boundary), ``theta`` (rad).
    """
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    r_f = _fascia_radius(p, theta, t)
    fat = _fat_thickness(p, theta, t)
    r_skin = r_f + fat + p.skin
    depth = r_f - rho
    tissue = np.full(u.shape, Tissue.MUSCLE, dtype=np.int8)
    tissue[depth < p.fascia] = Tissue.FASCIA
    tissue[rho > r_f] = Tissue.FAT
    tissue[rho > r_skin - p.skin] = Tissue.SKIN
    tissue[rho > r_skin] = Tissue.AIR
    comp = np.full(u.shape, -1, dtype=np.int8)
    muscle = np.full(u.shape, -1, dtype=np.int8)

    if p.station == "thigh":
        cu, cv = _femur_centre(p, t)
        du, dv = u - cu, v - cv
        d = np.hypot(du, dv)
        phi = np.arctan2(dv, du)
        r_bone = p.femur_r + p.femur_cortex
        ang = [_septum_angle(p, k, t, d) for k in range(3)]  # lateral, medial, posteromedial
        ant, a_pos = _in_arc(phi, ang[0], ang[1])
        med, m_pos = _in_arc(phi, ang[1], ang[2])
        pos = ~(ant | med)
        _, p_pos = _in_arc(phi, ang[2], ang[0])
        comp[ant] = 0
        comp[med] = 1
        comp[pos] = 2
        sept_d = np.min(np.stack([np.abs(_wrap(phi - a)) for a in ang]), axis=0) * d
        ratio = rho / r_f
        # anterior: VI deep around the femur, RF superficial central, sartorius superficial medial
        m = np.full(u.shape, 3, dtype=np.int8)  # vastus medialis by default
        m[a_pos < 0.42] = 2  # vastus lateralis
        m[(a_pos >= 0.35) & (a_pos < 0.62) & (ratio > 0.58)] = 1  # rectus femoris
        m[(d < r_bone + p.vi_thick * (1 - 0.2 * t)) & (a_pos > 0.08) & (a_pos < 0.78)] = 4  # vastus intermedius
        m[(a_pos > 0.86) & (depth < 16)] = 0  # sartorius
        muscle[ant] = m[ant]
        # medial: adductor longus, brevis (deep), magnus (posterior, large), gracilis (superficial)
        m = np.full(u.shape, 3, dtype=np.int8)
        m[m_pos < 0.30] = 1
        m[(m_pos >= 0.30) & (m_pos < 0.50) & (ratio < 0.75)] = 2
        m[(m_pos >= 0.30) & (m_pos < 0.72) & (depth < 11)] = 0
        muscle[med] = m[med]
        # posterior (from medial to lateral): semitendinosus / semimembranosus, biceps long / short
        m = np.full(u.shape, 2, dtype=np.int8)  # semimembranosus
        m[(p_pos < 0.45) & (ratio > 0.72)] = 3  # semitendinosus
        m[p_pos >= 0.45] = 0  # biceps long head
        m[(p_pos >= 0.55) & (ratio < 0.6 + 0.1 * t)] = 1  # short head, deep
        muscle[pos] = m[pos]
        bone_d = d
        inner = p.femur_r
        vessel_sept = sept_d
    else:
        tu, tv, fu, fv = _calf_bones(p, t)
        eu, ev = fu - tu, fv - tv
        ln = np.hypot(eu, ev)
        eu, ev = eu / ln, ev / ln
        nu, nv = -ev, eu
        flip = nv < 0
        nu = np.where(flip, -nu, nu)
        nv = np.where(flip, -nv, nv)
        sm = (u - tu) * nu + (v - tv) * nv  # signed distance to the membrane line, + anterior
        lam = ((u - tu) * eu + (v - tv) * ev) / ln  # 0 at tibia, 1 at fibula
        dfu, dfv = u - fu, v - fv
        dfib = np.hypot(dfu, dfv)
        phi_f = np.arctan2(dfv, dfu)
        a_as = _septum_angle(p, 0, t, dfib)
        a_ps = _septum_angle(p, 1, t, dfib)
        lat, _ = _in_arc(phi_f, a_ps, a_as)
        lat &= dfib > p.fibula_r + p.fibula_cortex - 0.5
        ant = (sm > 0) & ~lat
        post = (sm <= 0) & ~lat
        comp[ant] = 0
        comp[lat] = 1
        comp[post] = 2
        # septa: interosseous membrane (between the bones) and the two fibular septa
        memb = np.where((lam > 0) & (lam < 1), np.abs(sm), np.inf)
        sept_d = np.minimum(
            memb, np.minimum(np.abs(_wrap(phi_f - a_as)), np.abs(_wrap(phi_f - a_ps))) * dfib
        )
        # anterior: tibialis anterior (medial), EDL (lateral), EHL (deep, grows distally)
        m = np.full(u.shape, 0, dtype=np.int8)
        m[lam >= 0.48] = 2
        m[(lam > 0.32) & (lam < 0.68) & (sm < 6 + 10 * t)] = 1
        muscle[ant] = m[ant]
        # lateral: peroneus longus (superficial), brevis (deep, distal)
        m = np.full(u.shape, 0, dtype=np.int8)
        m[dfib < p.fibula_r + p.fibula_cortex + 6 + 12 * t] = 1
        muscle[lat] = m[lat]
        # posterior: deep (TP, FDL, FHL) behind the membrane, soleus, gastrocnemius heads
        m = np.full(u.shape, 2, dtype=np.int8)  # soleus
        gastro = -sm > p.deep_thick + p.soleus_thick * (0.7 + 0.8 * t)
        m[gastro & (u < 0.1 * p.a)] = 0  # medial head
        m[gastro & (u >= 0.1 * p.a)] = 1  # lateral head
        deep = (-sm < p.deep_thick) & (lam > -0.15) & (lam < 1.15)
        m[deep] = 3
        m[deep & (lam < 0.3)] = 5  # flexor digitorum longus (medial)
        m[deep & (lam > 0.7)] = 4  # flexor hallucis longus (lateral)
        muscle[post] = m[post]
        tsep = np.where(post & (lam > -0.15) & (lam < 1.15), np.abs(-sm - p.deep_thick), np.inf)
        bone_t = np.hypot(u - tu, v - tv)
        bone_d = np.minimum(bone_t, dfib)
        inner = None
        vessel_sept = np.minimum(sept_d, tsep * 2.5)  # deep transverse septum: thinner line

    inside = depth > 0
    boundary = np.minimum(depth, sept_d)
    sept = inside & (sept_d < p.septum / 2)
    if p.station == "calf":
        sept |= inside & (tsep < p.septum / 4)
    tissue[sept & (tissue == Tissue.MUSCLE)] = Tissue.SEPTUM

    # vessels: tubes along the slab, drifting
    for vu, vv, vr, drift in p.vessels:
        hit = (u - (vu + drift * t)) ** 2 + (v - vv) ** 2 < vr**2
        tissue[hit & (tissue != Tissue.AIR) & (tissue != Tissue.SKIN)] = Tissue.VESSEL

    # bones last: cortex ring around marrow
    if p.station == "thigh":
        bone = bone_d < p.femur_r + p.femur_cortex
        tissue[bone] = Tissue.CORTEX
        tissue[bone_d < inner] = Tissue.MARROW
    else:
        bt = bone_t < p.tibia_r + p.tibia_cortex
        bf = dfib < p.fibula_r + p.fibula_cortex
        tissue[bt | bf] = Tissue.CORTEX
        tissue[(bone_t < p.tibia_r) | (dfib < p.fibula_r)] = Tissue.MARROW
        bone = bt | bf
    muscle[~inside | bone] = -1
    comp[tissue == Tissue.AIR] = -1
    del vessel_sept
    return {
        "tissue": tissue,
        "compartment": comp,
        "muscle": muscle,
        "fascia_depth": depth.astype(np.float32),
        "boundary": boundary.astype(np.float32),
        "theta": theta.astype(np.float32),
    }


@dataclass
class StationAnatomy:
    """Both legs of one subject at one station, placed in world (RAS+) space.

    The patient's right leg lies at +x (RAS: x increases to the patient's right).
    ``z`` is superior; the slab spans ``z_top`` (proximal, t=0) to
    ``z_top - length`` (distal, t=1).
    """

    station: str
    legs: dict[str, LegParams]  # "right", "left"
    centres: dict[str, tuple[float, float]]  # leg centre (x, y) in world mm
    z_top: float
    length: float
    displacement: tuple | None = None  # three SmoothField callables (mm), or None
    pelvis: Any = None  # a PelvisParams: the slab continues above z_top through the pelvis
    absent: str | None = None  # a leg not in the field of view ("right" | "left"): air there

    def half_extent(self, centre: tuple[float, float], sides=SIDES) -> tuple[float, float]:
        """Half the width (x) and depth (y) of the bounding box of the legs ``sides`` about ``centre``, mm."""
        xs, ys = [], []
        for side, p in ((s, self.legs[s]) for s in sides):
            cx, cy = self.centres[side]
            r = max(p.a, p.b) * 1.1 + p.fat * 1.5 + p.skin
            xs += [abs(cx - centre[0]) + r]
            ys += [abs(cy - centre[1]) + r]
        return max(xs), max(ys)

    def bound_radius(self, side: str) -> float:
        """A radius around the leg centre beyond which every point is air (mm)."""
        p = self.legs[side]
        return max(p.a, p.b) * (1 + p.fourier[:, 0].sum()) + 1.2 * p.fat + p.skin + 2.0

    def evaluate(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, margin: float = 15.0) -> dict[str, np.ndarray]:
        """Evaluate anatomy at world points; adds ``side`` (0 right, 1 left, -1 air) and ``region``.

        ``region`` = side * 3 + compartment (the station's region order), -1 outside the legs.
        Points farther than :meth:`bound_radius` + ``margin`` from both legs are air
        without further work (``margin`` must exceed the displacement).
        """
        shape = np.shape(x)
        out = {
            "tissue": np.zeros(shape, np.int8),
            "compartment": np.full(shape, -1, np.int8),
            "muscle": np.full(shape, -1, np.int8),
            "fascia_depth": np.full(shape, -1e3, np.float32),
            "boundary": np.zeros(shape, np.float32),
            "theta": np.zeros(shape, np.float32),
            "side": np.full(shape, -1, np.int8),
            "deep_fat": np.zeros(shape, bool),
        }
        mid = 0.5 * (self.centres["right"][0] + self.centres["left"][0])
        for side_idx, side in enumerate(SIDES):
            if side == self.absent:
                continue
            cx, cy = self.centres[side]
            rb = self.bound_radius(side) + margin
            cand = ((x - cx) ** 2 + (y - cy) ** 2 < rb * rb) & ((x >= mid) if side == "right" else (x < mid))
            if not cand.any():
                continue
            xs, ys, zs = x[cand], y[cand], z[cand]
            if self.displacement is not None:
                dx, dy, dz = (f(xs, ys, zs) for f in self.displacement)
                xs, ys, zs = xs + dx, ys + dy, zs + dz
            t = np.clip((self.z_top - zs) / self.length, -0.2, 1.2).astype(np.float32)
            sgn = 1.0 if side == "right" else -1.0  # lateral = away from the midline
            u = ((xs - cx) * sgn).astype(np.float32)
            v = (ys - cy).astype(np.float32)
            res = evaluate_leg(self.legs[side], u, v, t)
            for k, val in res.items():
                out[k][cand] = val
            out["side"][cand] = np.where(res["tissue"] == Tissue.AIR, -1, side_idx)
        if self.pelvis is not None:
            self._evaluate_pelvis(x, y, z, mid, out)
        comp = out["compartment"]
        out["region"] = np.where(comp >= 0, out["side"] * 3 + comp, -1).astype(np.int8)
        return out

    def _evaluate_pelvis(self, x, y, z, mid: float, out: dict[str, np.ndarray]) -> None:
        """Points above the thigh slab (z > z_top) are the pelvis's (:mod:`nxp2seg.phantom.pelvis`)."""

        sel = np.asarray(z) > self.z_top
        if not sel.any():
            return
        res = evaluate_pelvis(self.pelvis, x[sel], y[sel], z[sel] - self.z_top)
        for k, fill in (("compartment", -1), ("muscle", -1), ("fascia_depth", -1e3), ("boundary", 0.0), ("theta", 0.0)):
            out[k][sel] = fill
        out["tissue"][sel] = res["tissue"]
        out["deep_fat"][sel] = res["deep_fat"]
        side = np.where(x[sel] >= mid, 0, 1).astype(np.int8)
        out["side"][sel] = np.where(res["tissue"] == Tissue.AIR, -1, side)


def muscle_label_table(station: str, schema_labels: dict[str, int]) -> np.ndarray:
    """(side, compartment, muscle) -> muscle-schema label value, as a (2, 3, 6) array (0 = unused)."""
    lut = np.zeros((2, 3, 6), dtype=np.uint8)
    for si, side in enumerate(SIDES):
        for ci, comp in enumerate(COMPARTMENTS[station]):
            for mi, m in enumerate(MUSCLES[station][comp]):
                lut[si, ci, mi] = schema_labels[f"{m}_{side}"]
    return lut
