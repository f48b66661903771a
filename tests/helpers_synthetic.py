"""A tiny synthetic cohort for tests, independent of the phantom generator.

Anatomy is defined in world millimetres (RAS: +x is the patient's right,
+y anterior, +z superior) and rendered onto any voxel grid, so a case stored
with an LPS affine, or a STIR on a coarser grid, shows the same patient.

Per leg (right leg centred at world x = +leg_offset, left at -leg_offset):
an ellipse (the left leg 10 % smaller and 6 mm more posterior); the outer rim is subcutaneous fat (``subcutaneous_{side}``); a
central disc is bone; the muscle between is split into compartments by angle
around the leg centre (0 deg = lateral, 90 deg = anterior):

* thigh: anterior 30..150 deg, medial beyond +-150 deg, posterior the rest;
* calf: anterior 45..135 deg, lateral -45..45 deg, posterior the rest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from nxp2seg.data import CohortWriter, DatasetDescription, default_compartment_schema
from nxp2seg.io import make_nifti

__all__ = ["make_synthetic_cohort", "render_case", "grid_affine"]

# T1 / STIR signal relative to muscle
_T1 = {"muscle": 1.0, "fat": 3.0, "bone": 3.1, "septum": 1.8}
_STIR = {"muscle": 1.0, "fat": 0.2, "bone": 0.2, "septum": 0.5}
_COMPARTMENT_TINT = {"anterior": 1.0, "medial": 0.85, "posterior": 1.15, "lateral": 0.85}


def grid_affine(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], lps: bool = False
) -> np.ndarray:
    """Affine of a grid centred on the world origin; RAS axis order or LPS (x and y flipped)."""
    sx, sy, sz = spacing
    sign = np.array([-1.0, -1.0, 1.0]) if lps else np.ones(3)
    aff = np.diag([*(sign * np.asarray(spacing)), 1.0])
    aff[:3, 3] = -sign * (np.asarray(shape) - 1) / 2.0 * np.asarray(spacing)
    return aff


def _sector(station: str, theta_deg: np.ndarray) -> dict[str, np.ndarray]:
    t = theta_deg
    if station == "thigh":
        ant = (t >= 30) & (t < 150)
        med = np.abs(t) >= 150
        return {"anterior": ant, "medial": med, "posterior": ~ant & ~med}
    ant = (t >= 45) & (t < 135)
    lat = (t >= -45) & (t < 45)
    return {"anterior": ant, "lateral": lat, "posterior": ~ant & ~lat}


def render_case(
    affine: np.ndarray,
    shape: tuple[int, int, int],
    station: str,
    rng: np.random.Generator,
    leg_offset: float = 42.0,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render label, T1 and STIR (relative units, no gain) on the grid ``(affine, shape)``."""
    schema = default_compartment_schema()
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    vox = np.stack([ii, jj, kk, np.ones_like(ii)], axis=-1).reshape(-1, 4).T
    x, y, z = (affine @ vox)[:3].reshape(3, *shape)
    zfrac = (z - z.min()) / max(float(np.ptp(z)), 1e-6)
    a, b = (34.0, 38.0) if station == "thigh" else (27.0, 30.0)
    a, b = a * scale, b * scale
    label = np.zeros(shape, dtype=np.uint8)
    t1 = np.zeros(shape, dtype=np.float32)
    stir = np.zeros(shape, dtype=np.float32)
    # the legs differ a little (size, antero-posterior position), so a mirror image is a new patient
    for side, cx, cy, leg in (("right", leg_offset, 4.0, 1.0), ("left", -leg_offset, -2.0, 0.9)):
        lateral = np.sign(cx)
        taper = leg * (1.0 - 0.08 * zfrac)
        dx, dy = x - cx, y - cy
        r = np.sqrt((dx / (a * taper)) ** 2 + (dy / (b * taper)) ** 2)
        inside = r < 1.0
        subcut = inside & (r >= 0.8)
        bone = inside & (np.hypot(dx, dy) < 9.0 * scale)
        muscle = inside & ~subcut & ~bone
        theta = np.degrees(np.arctan2(dy, dx * lateral))
        for comp, sel in _sector(station, theta).items():
            m = muscle & sel
            label[m] = schema.labels[f"{station}_{comp}_{side}"]
            t1[m] = _T1["muscle"] * _COMPARTMENT_TINT[comp]
            stir[m] = _STIR["muscle"] * (2.0 - _COMPARTMENT_TINT[comp])
        label[subcut] = schema.labels[f"subcutaneous_{side}"]
        label[bone] = schema.labels["bone"]
        t1[subcut], stir[subcut] = _T1["fat"], _STIR["fat"]
        t1[bone], stir[bone] = _T1["bone"], _STIR["bone"]
    t1 *= 1.0 + 0.05 * rng.standard_normal(shape).astype(np.float32)
    stir *= 1.0 + 0.05 * rng.standard_normal(shape).astype(np.float32)
    return label, t1, stir


def make_synthetic_cohort(
    root: str | Path,
    subjects: int = 4,
    shape: tuple[int, int, int] = (40, 28, 6),
    spacing: tuple[float, float, float] = (4.0, 4.0, 6.0),
    test_subjects: int = 1,
    stations: tuple[str, ...] = ("thigh", "calf"),
    unlabeled: tuple[str, ...] = (),
    seed: int = 0,
) -> Path:
    """Write a cohort in the dataset contract to ``root`` and return ``root``.

    Cases alternate RAS and LPS affines; every third case has its STIR on a grid
    twice as coarse in-plane. The last ``test_subjects`` subjects get
    ``split=test``, the others ``train``. ``unlabeled`` case ids get no mask.
    Images carry a random gain per case and channel (arbitrary scanner units).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    writer = CohortWriter(root, DatasetDescription(name="synthetic test cohort"))
    rows = []
    n = 0
    for s in range(subjects):
        sid = f"S{s:03d}"
        split = "test" if s >= subjects - test_subjects else "train"
        scale = float(rng.uniform(0.9, 1.1))
        for station in stations:
            cid = f"{sid}_{station}"
            lps = n % 2 == 1
            aff = grid_affine(shape, spacing, lps=lps)
            label, t1, _ = render_case(aff, shape, station, rng, scale=scale)
            if n % 3 == 2:  # STIR on a coarser grid of its own
                s_shape = (shape[0] // 2, shape[1] // 2, shape[2])
                s_aff = grid_affine(s_shape, (spacing[0] * 2, spacing[1] * 2, spacing[2]), lps=lps)
            else:
                s_shape, s_aff = shape, aff
            _, _, stir = render_case(s_aff, s_shape, station, rng, scale=scale)
            g1, g2 = rng.uniform(100, 2000, size=2)
            t1 = (t1 * g1 + rng.normal(0, 0.02 * g1, shape)).clip(0).astype(np.float32)
            stir = (stir * g2 + rng.normal(0, 0.02 * g2, s_shape)).clip(0).astype(np.float32)
            writer.write_case(
                cid,
                make_nifti(t1, aff),
                make_nifti(stir, s_aff),
                None if cid in unlabeled else make_nifti(label, aff),
            )
            rows.append({"case_id": cid, "subject_id": sid, "station": station, "split": split})
            n += 1
    empty_grades = pd.DataFrame(columns=["case_id", "rater", "region"])
    writer.write_tables(
        pd.DataFrame(rows), empty_grades, pd.DataFrame(columns=["case_id", "rater", "pattern"])
    )
    writer.finish()
    return root
