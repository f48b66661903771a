"""Two simulated readers grade every region of every case (PHANTOM.md, "Readers").

Edema is read *by attribute*, as a radiologist reads the ``beltrame6`` scale:
a reader judges the extent class (none < focal < segmented < global) and the
STIR intensity (mild vs moderate) of each region, and the grade follows from
the pair (focal 1; segmented 2/4; global 3/5). Per region and reader:

* absent edema is called present (focal) with ``absent_called_present``
  (2%): real readers rarely see edema that is not there;
* with ``extent_error`` the extent class moves one step (a focal region
  missed, segmented called global, ...), up with the rater's ``upgrade``
  probability, clipped to the classes;
* with ``intensity_error`` the intensity flips; mild -> moderate is scaled
  by ``2 upgrade`` and moderate -> mild by ``2 (1 - upgrade)``, so reader B
  (``upgrade`` 0.65, A 0.55) calls moderate a little more often.

Why by attribute: on ``beltrame6`` an intensity disagreement alone is two
grades (2 vs 4, 3 vs 5), so two-grade disagreements are common. The spec's
"75% exact, 22% off by one, 3% off by two" and its inter-reader quadratic
kappa of ~0.80 cannot both hold: with this cohort's spread of true grades
(variance ~3.5), independent errors of that size give a kappa of ~0.93, and
with 75% exact reads the kappa stays above 0.81 even when every error is two
grades. The kappa is the target kept. Calibrated by Monte Carlo (20,000
subjects): pooled quadratic kappa 0.80 (48 subjects: SD 0.018), reads equal
to the truth 73% (A) and 74% (B), off by one 11%, by two 13%, by three 3%;
reader B reads 0.1 grade higher than A on average. On ``extent4`` the kappa
is ~0.91 (no intensity to disagree on); for fat grades ~0.90.

On ``extent4`` the reader judges the extent class only (the true class comes
from the edema fraction), with the same detection and extent errors.
Fat grades (0..4) use a numeric error model: ``fat_error_probs`` = (exact,
off by one, off by two) for infiltrated regions, ``fat_absent_called_present``
otherwise, clipped to the scale. Flags flip with ``flag_flip``. Each reader's
pattern is :func:`~nxp2seg.phantom.disease.pattern_rule` of their own grades,
moved to an adjacent category (none - patchy - mixed - diffuse) with
``pattern_adjacent``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from nxp2seg.data.schema import FAT_SCALE, PATTERNS, get_grade_scale
from nxp2seg.phantom.disease import SubjectTruth, pattern_rule

__all__ = ["ReaderConfig", "simulate_readers", "GRADE_COLUMNS", "PATTERN_COLUMNS"]

GRADE_COLUMNS = ["case_id", "rater", "region", "edema_grade", "fat_grade", "fascial_edema",
                 "subcutaneous_edema"]
PATTERN_COLUMNS = ["case_id", "rater", "pattern"]
_STREAM = 0x52454144  # "READ": keeps reader draws apart from the disease draws of the same seed

# beltrame6: grade -> (extent class index, moderate); (class, moderate) -> grade
_EXTENT = np.array([0, 1, 2, 3, 2, 3])
_MODERATE = np.array([0, 0, 0, 0, 1, 1])
_TO_GRADE = np.array([[0, 0], [1, 1], [2, 4], [3, 5]])


@dataclass(frozen=True)
class ReaderConfig:
    """How the simulated readers disagree with the truth and with each other.

    Attributes:
        raters: rater names, one reading per rater per region.
        extent_error: probability that the extent class is read one step off.
        intensity_error: probability that mild/moderate is read the other way
            (for a rater with ``upgrade`` 0.5; see the module docstring).
        absent_called_present: probability of calling focal edema where there is none.
        upgrade: per rater, probability that an error goes up (0.5 for raters not listed).
        fat_error_probs: (exact, off by one, off by two) for fat grades above 0.
        fat_absent_called_present: probability of calling traces of fat where there is none.
        flag_flip: probability that a fascial or subcutaneous flag is read wrong.
        pattern_adjacent: probability that a rater calls an adjacent pattern.
    """

    raters: tuple[str, ...] = ("A", "B")
    extent_error: float = 0.25
    intensity_error: float = 0.29
    absent_called_present: float = 0.02
    upgrade: dict[str, float] = field(default_factory=lambda: {"A": 0.55, "B": 0.65})
    fat_error_probs: tuple[float, float, float] = (0.75, 0.22, 0.03)
    fat_absent_called_present: float = 0.04
    flag_flip: float = 0.08
    pattern_adjacent: float = 0.08


def _read_extent(cls: np.ndarray, top: int, up: float, cfg: ReaderConfig,
                 rng: np.random.Generator) -> np.ndarray:
    """Extent class 0..top as read: detection errors on 0, one-step errors otherwise."""
    n = cls.size
    step = np.where(rng.random(n) < up, 1, -1)
    shifted = np.clip(cls + step, 0, top)
    out = np.where((cls > 0) & (rng.random(n) < cfg.extent_error), shifted, cls)
    return np.where((cls == 0) & (rng.random(n) < cfg.absent_called_present), 1, out)


def _read_edema(true: np.ndarray, ext4: np.ndarray, scale_name: str, up: float,
                cfg: ReaderConfig, rng: np.random.Generator) -> np.ndarray:
    if scale_name == "extent4":
        return _read_extent(ext4, 3, up, cfg, rng)
    if scale_name != "beltrame6":
        raise ValueError(f"simulate_readers: no reader model for grade scale {scale_name!r}; "
                         "use 'beltrame6' or 'extent4'")
    cls = _read_extent(_EXTENT[true], 3, up, cfg, rng)
    mod = _MODERATE[true]
    u = rng.random(true.size)
    p_flip = np.where(mod == 0, 2 * up, 2 * (1 - up)) * cfg.intensity_error
    flip = u < p_flip
    # a focal region read as segmented keeps the true region's intensity (mild for focal)
    return _TO_GRADE[cls, np.where(flip, 1 - mod, mod)]


def _read_numeric(true: np.ndarray, top: int, probs: tuple[float, float, float], fp: float,
                  up: float, rng: np.random.Generator) -> np.ndarray:
    n = true.size
    p = np.asarray(probs, dtype=float) / np.sum(probs)
    mag = rng.choice(3, size=n, p=p)
    err = mag * np.where(rng.random(n) < up, 1, -1)
    err = np.where(true == 0, (rng.random(n) < fp).astype(int), err)
    return np.clip(true + err, 0, top)


def _adjacent(patterns: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    code = np.array([PATTERNS.index(x) for x in patterns])
    move = rng.random(code.size) < p
    step = np.where(rng.random(code.size) < 0.5, 1, -1)
    step = np.where(code == 0, 1, np.where(code == len(PATTERNS) - 1, -1, step))
    return np.asarray(PATTERNS, dtype=object)[np.where(move, code + step, code)]


def simulate_readers(subjects: list[SubjectTruth], seed: int, cfg: ReaderConfig | None = None,
                     grade_scale: str = "beltrame6", level: str = "compartment"
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every rater grades every region of every case from the truth.

    Args:
        subjects: the cohort's truths (:func:`~nxp2seg.phantom.disease.sample_subjects`).
        seed: reader randomness; each rater draws from its own child stream.
        cfg: the reader model (defaults: :class:`ReaderConfig`).
        grade_scale: ``beltrame6`` (default) or ``extent4`` for the edema grades.
        level: ``compartment`` (default): every compartment of each side is
            read; ``muscle``: every muscle of each side (the stations' muscle
            truths of :mod:`nxp2seg.phantom.muscles`), with the same error
            model per muscle (fat and the two flags are each muscle's
            compartment's, read independently per muscle).

    Returns:
        ``(grades_df, patterns_df)``: long tables in the dataset contract,
        columns :data:`GRADE_COLUMNS` (grades and 0/1 flags as ints) and
        :data:`PATTERN_COLUMNS`; rows by case, then rater, then region in schema order.
    """
    cfg = cfg or ReaderConfig()
    scale = get_grade_scale(grade_scale)
    if level not in ("compartment", "muscle"):
        raise ValueError(f"simulate_readers: level must be 'compartment' or 'muscle', not {level!r}")
    cases = [st for s in subjects for st in s.stations.values()]
    if not cases:
        return pd.DataFrame(columns=GRADE_COLUMNS), pd.DataFrame(columns=PATTERN_COLUMNS)

    def read(st):
        if level == "compartment":
            return list(st.regions.values())
        if st.muscles is None:
            raise ValueError(f"simulate_readers: {st.case_id} has no muscle truth; draw the cohort "
                             "with nxp2seg.phantom.muscles for level='muscle'")
        return list(st.muscles.values())
    per_case = [read(st) for st in cases]
    regions = [r for rs in per_case for r in rs]
    n_reg = np.array([len(rs) for rs in per_case])
    bounds = np.cumsum(n_reg)[:-1]
    true = np.array([r.edema_grade for r in regions], dtype=int)
    ext4 = np.array([r.edema_grade_extent4 for r in regions], dtype=int)
    fat = np.array([r.fat_grade for r in regions], dtype=int)
    flags = np.array([[r.fascial_edema, r.subcutaneous_edema] for r in regions], dtype=bool)
    case_ids = np.repeat([st.case_id for st in cases], n_reg)
    names = [r.region for r in regions]
    streams = np.random.SeedSequence([seed, _STREAM]).spawn(len(cfg.raters))
    grade_tabs, pattern_tabs = [], []
    for rater, ss in zip(cfg.raters, streams):
        rng = np.random.default_rng(ss)
        up = cfg.upgrade.get(rater, 0.5)
        edema = _read_edema(true, ext4, scale.name, up, cfg, rng)
        fat_read = _read_numeric(fat, FAT_SCALE.max_grade, cfg.fat_error_probs,
                                 cfg.fat_absent_called_present, up, rng)
        flag_read = flags ^ (rng.random(flags.shape) < cfg.flag_flip)
        grade_tabs.append(pd.DataFrame({
            "case_id": case_ids, "rater": rater, "region": names, "edema_grade": edema,
            "fat_grade": fat_read, "fascial_edema": flag_read[:, 0].astype(int),
            "subcutaneous_edema": flag_read[:, 1].astype(int)}))
        if len(set(n_reg.tolist())) == 1:  # one call for all cases
            pats = pattern_rule(edema.reshape(len(cases), int(n_reg[0])), scale)
        else:
            pats = [pattern_rule(e, scale) for e in np.split(edema, bounds)]
        pattern_tabs.append(pd.DataFrame({
            "case_id": [st.case_id for st in cases], "rater": rater,
            "pattern": _adjacent(np.asarray(pats), cfg.pattern_adjacent, rng)}))
    grades = pd.concat(grade_tabs, ignore_index=True)
    patterns = pd.concat(pattern_tabs, ignore_index=True)
    # by case, then rater (in cfg order), then region: stable sort on the case position
    case_pos = {c: i for i, c in enumerate(st.case_id for st in cases)}
    grades = grades.iloc[np.argsort(grades.case_id.map(case_pos).to_numpy(), kind="stable")]
    patterns = patterns.iloc[np.argsort(patterns.case_id.map(case_pos).to_numpy(), kind="stable")]
    return (grades[GRADE_COLUMNS].reset_index(drop=True),
            patterns[PATTERN_COLUMNS].reset_index(drop=True))
