"""Edema muscle by muscle, and two diagnoses (seed paper 004): the muscle-level disease model.

Used for cohorts graded per muscle (``grade_level=muscle``) and for cohorts
with diagnosis groups (``disease.groups``); the compartment model of
:mod:`nxp2seg.phantom.disease` stays the default. Per subject and station:

* each muscle ``m`` (both sides) gets an **extent4** grade 0..3 from an
  ordered probit: latent ``muscle_base[station] + shift[group][m] +
  muscle_severity * sigma + e`` (``e ~ N(0, 1)``, ``sigma`` the station
  severity) cut at ``muscle_cuts``; ``shift`` is ``group_muscle_shift`` of the
  subject's diagnosis (0 without groups, and for muscles a group does not
  list); with ``muscle_side_asymmetry`` one side moves one grade;
* the edema fraction of a muscle is drawn inside its grade's class
  (``muscle_fraction``: focal 5-25%, segmented 35-70%, global 80-100%, away
  from the extent4 cuts at 30% and 75%), and the renderer places it inside
  that muscle; intensity (mild / moderate) is drawn per compartment, moderate
  with probability ``Phi(sigma)``;
* the compartment truth follows from its muscles: the fraction is the mean of
  its muscles' fractions, its ``beltrame6`` grade that fraction's class
  (focal < 12% <= segmented < 60% <= global) at the compartment's intensity;
  fat, fascial and subcutaneous edema are drawn per compartment as in the
  compartment model, and each muscle carries its compartment's;
* the station pattern is :func:`~nxp2seg.grading.pattern_rule` of the muscles'
  extent4 grades.

Diagnoses: ``groups`` ``{name: relative size}`` are dealt exactly (largest
remainders: 11 and 14 of 25 for ``{DM: 11, IMNM: 14}``) in a random order of
their own stream. The default ``group_muscle_shift`` follows paper 004's
results: DM predominantly anterior (vasti, sartorius), semitendinosus,
biceps femoris short head and gracilis; IMNM semimembranosus, biceps femoris
long head and the adductors; rectus femoris alike in both (the paper: no
difference, p = 0.19). :func:`specified_directions` says which group each
muscle is worse in, the answer a group comparison should recover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtr

from nxp2seg.data.schema import (
    COMPARTMENTS,
    MUSCLES,
    SIDES,
    get_grade_scale,
    muscle_region_name,
    region_name,
)
from nxp2seg.grading import pattern_rule
from nxp2seg.phantom.disease import (
    DiseaseConfig,
    RegionTruth,
    StationTruth,
    SubjectTruth,
    _derive,
    _fat,
    _flags,
    sample_subject,
)

__all__ = [
    "MUSCLE_TRUTH_COLUMNS",
    "MuscleTruth",
    "assign_groups",
    "muscle_station",
    "muscle_truth_table",
    "sample_subjects_by_muscle",
    "specified_directions",
]

_EXTENT4 = get_grade_scale("extent4")
_CLASSES = ("none", "focal", "segmented", "global")
_GROUP_STREAM = 0x47525053  # "GRPS"
MUSCLE_TRUTH_COLUMNS = ["case_id", "subject_id", "station", "region", "compartment", "muscle",
                        "side", "edema_grade", "edema_grade_extent4", "edema_fraction", "n_foci",
                        "edema_intensity", "fat_grade", "fascial_edema", "subcutaneous_edema"]


@dataclass
class MuscleTruth(RegionTruth):
    """True state of one muscle of one side (a region of a muscle-graded cohort).

    ``edema_grade`` is on ``beltrame6`` (the class and the compartment's
    intensity); ``edema_grade_extent4`` follows from the fraction. Fat and the
    two flags are the compartment's.
    """

    muscle: str = ""
    compartment: str = ""
    side: str = ""


def assign_groups(n: int, seed: int, groups: dict[str, float]) -> list[str | None]:
    """The diagnosis of each of ``n`` subjects: exact counts by largest remainder, random order."""
    if not groups:
        return [None] * n
    names = list(groups)
    w = np.asarray([float(groups[k]) for k in names])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"disease.groups: sizes must be positive, got {groups}")
    share = n * w / w.sum()
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    labels = np.repeat(names, counts)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _GROUP_STREAM]))
    return [str(x) for x in rng.permutation(labels)]


def specified_directions(cfg: DiseaseConfig, groups: tuple[str, str], station: str = "thigh",
                         ) -> dict[str, int]:
    """Per muscle: +1 where the second group's shift is larger, -1 where smaller, 0 equal."""
    a, b = (cfg.group_muscle_shift.get(g, {}) for g in groups)
    muscles = [m for comp in COMPARTMENTS[station] for m in MUSCLES[station][comp]]
    return {m: int(np.sign(round(b.get(m, 0.0) - a.get(m, 0.0), 9))) for m in muscles}


def _class_of_fraction(f: float) -> str:
    if f <= 0:
        return "none"
    return "focal" if f < 0.12 else ("segmented" if f < 0.60 else "global")


_BELTRAME = {("none", False): 0, ("none", True): 0, ("focal", False): 1, ("focal", True): 1,
             ("segmented", False): 2, ("segmented", True): 4, ("global", False): 3,
             ("global", True): 5}


def muscle_station(subject_id: str, station: str, sev: float, rng: np.random.Generator,
                   cfg: DiseaseConfig, d: dict[str, Any], group: str | None) -> StationTruth:
    """One station of one subject, drawn muscle by muscle (see the module docstring)."""
    shift = cfg.group_muscle_shift.get(group, {}) if group else {}
    comps = COMPARTMENTS[station]
    grades: dict[tuple[int, int], np.ndarray] = {}  # (compartment, muscle) -> grade per side
    for c, comp in enumerate(comps):
        for m, muscle in enumerate(MUSCLES[station][comp]):
            z = (cfg.muscle_base[station] + shift.get(muscle, 0.0) + cfg.muscle_severity * sev
                 + rng.standard_normal())
            g = np.full(2, int(np.searchsorted(cfg.muscle_cuts, z)))
            if rng.random() < cfg.muscle_side_asymmetry:
                s = int(rng.integers(2))
                g[s] = int(np.clip(g[s] + rng.choice([-1, 1]), 0, 3))
            grades[(c, m)] = g
    moderate = rng.random(len(comps)) < ndtr(sev)
    frac = {k: np.array([rng.uniform(*cfg.muscle_fraction[_CLASSES[x]]) if x else 0.0 for x in g])
            for k, g in grades.items()}
    foci = {k: np.array([int(rng.integers(1, 3)) if x == 1 else int(x > 0) for x in g])
            for k, g in grades.items()}
    comp_g = np.zeros((2, len(comps)), dtype=int)
    comp_f = np.zeros((2, len(comps)))
    for s in range(2):
        for c, comp in enumerate(comps):
            fr = [frac[(c, m)][s] for m in range(len(MUSCLES[station][comp]))]
            comp_f[s, c] = float(np.mean(fr))
            comp_g[s, c] = _BELTRAME[(_class_of_fraction(comp_f[s, c]), bool(moderate[c]))]
    fat = _fat(station, sev, rng, cfg, d)
    fascial = _flags(d["fascial"][station], comp_g, sev, rng, cfg)
    subcut = _flags(d["subcut"][station], comp_g, sev, rng, cfg)
    regions: dict[str, RegionTruth] = {}
    muscles: dict[str, MuscleTruth] = {}
    ext4 = []
    for s, side in enumerate(SIDES):
        for c, comp in enumerate(comps):
            names = MUSCLES[station][comp]
            fg = int(fat[s, c])
            fat_frac = float(rng.uniform(*cfg.fat_fraction[fg - 1])) if fg else 0.0
            gc = int(comp_g[s, c])
            intensity = ("moderate" if moderate[c] else "mild") if gc else "none"
            name = region_name(station, comp, side)
            regions[name] = RegionTruth(
                region=name, edema_grade=gc, edema_extent=_class_of_fraction(comp_f[s, c]),
                edema_intensity=intensity, edema_fraction=float(comp_f[s, c]),
                n_foci=int(sum(foci[(c, m)][s] for m in range(len(names)))), fat_grade=fg,
                fat_fraction=fat_frac, fascial_edema=bool(fascial[s, c]),
                subcutaneous_edema=bool(subcut[s, c]),
                muscle_fractions=tuple(float(frac[(c, m)][s]) for m in range(len(names))),
                muscle_foci=tuple(int(foci[(c, m)][s]) for m in range(len(names))))
            for m, muscle in enumerate(names):
                g = int(grades[(c, m)][s])
                mname = muscle_region_name(station, muscle, side)
                muscles[mname] = MuscleTruth(
                    region=mname, edema_grade=_BELTRAME[(_CLASSES[g], bool(moderate[c]))],
                    edema_extent=_CLASSES[g],
                    edema_intensity=("moderate" if moderate[c] else "mild") if g else "none",
                    edema_fraction=float(frac[(c, m)][s]), n_foci=int(foci[(c, m)][s]),
                    fat_grade=fg, fat_fraction=fat_frac, fascial_edema=bool(fascial[s, c]),
                    subcutaneous_edema=bool(subcut[s, c]), muscle=muscle, compartment=comp,
                    side=side)
                ext4.append(g)
    pattern = pattern_rule(np.asarray(ext4), _EXTENT4)
    return StationTruth(case_id=f"{subject_id}_{station}", subject_id=subject_id, station=station,
                        pattern=pattern, drawn_pattern=pattern, regions=regions,
                        station_score=int(comp_g.sum()), muscles=muscles)


def sample_subjects_by_muscle(n: int, seed: int, cfg: DiseaseConfig | None = None
                              ) -> list[SubjectTruth]:
    """``n`` subjects ``P001...`` drawn with the muscle-level model; diagnoses from ``cfg.groups``.

    Subject ``i`` draws from child ``i`` of ``SeedSequence(seed)`` as
    :func:`~nxp2seg.phantom.disease.sample_subjects` does.
    """
    cfg = cfg or DiseaseConfig()
    unknown = sorted(set(cfg.groups) - set(cfg.group_muscle_shift))
    if unknown:
        known = sorted(cfg.group_muscle_shift)
        raise ValueError(f"disease.groups {unknown} have no disease.group_muscle_shift (known: {known}); "
                         "add a shift table for them, e.g. disease.group_muscle_shift.NAME.MUSCLE=1.0")
    _derive(cfg)
    width = max(3, len(str(n)))
    children = np.random.SeedSequence(seed).spawn(n)
    groups = assign_groups(n, seed, dict(cfg.groups))
    out = []
    for i, (ch, group) in enumerate(zip(children, groups)):
        def station_fn(sid, st, sev, rng, c, d, group=group):
            return muscle_station(sid, st, sev, rng, c, d, group)
        subj = sample_subject(f"P{i + 1:0{width}d}", np.random.default_rng(ch), cfg, station_fn)
        subj.group = group
        out.append(subj)
    return out


def muscle_truth_table(subjects: list[SubjectTruth]) -> pd.DataFrame:
    """One row per case and muscle region: :data:`MUSCLE_TRUTH_COLUMNS` (``truth/grades_muscle.csv``)."""
    rows = []
    for subj in subjects:
        for st in subj.stations.values():
            for m in (st.muscles or {}).values():
                rows.append([st.case_id, st.subject_id, st.station, m.region, m.compartment,
                             m.muscle, m.side, m.edema_grade, m.edema_grade_extent4,
                             m.edema_fraction, m.n_foci, m.edema_intensity, m.fat_grade,
                             m.fascial_edema, m.subcutaneous_edema])
    return pd.DataFrame(rows, columns=MUSCLE_TRUTH_COLUMNS)
