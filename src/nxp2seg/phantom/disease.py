"""Who has what disease: true grades, patterns and flags of a phantom cohort (tables only).

The model (PHANTOM.md, "Disease model"); the renderer turns it into images.

* Latent severity ``s ~ N(0, 1)`` per subject; per station
  ``sigma = sqrt(r) s + sqrt(1 - r) e`` (``r = station_severity_corr``).
* Pattern: the ordinal category (none < patchy < mixed < diffuse) of
  ``rho sigma + sqrt(1 - rho^2) e'`` cut at the quantiles of the spec's
  frequencies (exact frequencies; severe subjects more often diffuse).
* A compartment is involved with ``expit(base_c + shift_pattern + v sigma)``,
  ``base_c`` solved by quadrature so that its marginal frequency is the
  study's; on both sides with ``bilateral[pattern]``, else on one.
* Grades (``beltrame6``: focal 1, segmented 2/4, global 3/5) per compartment,
  copied to both sides, among those the pattern allows. Each choice
  (segmented, global, moderate) has ``p = Phi(grade_base + severity_shift +
  severity_weight sigma)`` and is drawn over the involved compartments
  independently or (patterns in ``systematic``) as exactly ``floor(n p + U)``
  of ``n``, which keeps the within-subject spread small. ``severity_shift``
  and ``severity_weight`` are fitted by Monte Carlo (20,000 subjects) to the
  study's thigh scores: patchy 6.9 +- 4.9, mixed 17.9 +- 5.0, diffuse 24.6 +- 2.2.
* ``side_asymmetry``: one side of a bilateral compartment moves one grade where
  the pattern allows (patchy, mixed); about a third of thigh stations end so.
* Fat, fascial and subcutaneous edema: a station has it with the spec's
  per-subject frequency, more often when severe (logistic in ``sigma``, the
  intercept solved to keep the frequency); then regions are chosen (flags
  among regions with edema, weighted by grade).
* Age: Gaussian copula with ``s`` (Spearman ~ -0.35 with the total score).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, ndtr, ndtri

from nxp2seg.data.schema import COMPARTMENTS, PATTERNS, SIDES, STATIONS
from nxp2seg.data.schema import get_grade_scale, region_name
from nxp2seg.grading import pattern_rule  # the one home of the rule; re-exported here

__all__ = ["DiseaseConfig", "RegionTruth", "StationTruth", "SubjectTruth", "pattern_rule",
           "extent4_grade", "sample_subject", "sample_subjects", "truth_tables",
           "REGION_COLUMNS", "STATION_COLUMNS", "SUBJECT_COLUMNS"]

REGION_COLUMNS = ["case_id", "subject_id", "station", "region", "edema_grade",
                  "edema_grade_extent4", "edema_extent", "edema_intensity", "edema_fraction",
                  "n_foci", "fat_grade", "fat_fraction", "fascial_edema", "subcutaneous_edema"]
STATION_COLUMNS = ["case_id", "subject_id", "station", "pattern", "drawn_pattern", "station_score"]
SUBJECT_COLUMNS = ["subject_id", "sex", "age", "bmi", "severity", "thigh_score", "calf_score",
                   "total_score"]

_BELTRAME = get_grade_scale("beltrame6")
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(60)
_GH_W = _GH_W / _GH_W.sum()  # E[f(X)] for X ~ N(0, 1) is  _GH_W @ f(_GH_X)


def _per_station(thigh: Any, calf: Any) -> Any:
    return _const({"thigh": thigh, "calf": calf})


def _const(value: dict) -> Any:
    return field(default_factory=lambda: {k: (dict(v) if isinstance(v, dict) else v)
                                          for k, v in value.items()})


@dataclass(frozen=True)
class DiseaseConfig:
    """Every frequency and knob of the disease model (defaults: PHANTOM.md and the study).

    Frequencies are per subject and station. ``station_involved`` is the
    share with any edema; ``pattern_probs`` and ``involvement`` (per
    compartment, either side) are given the station is involved.
    ``fat_prevalence``, ``fascial_edema`` and ``subcutaneous_edema`` are the
    shares of subjects with it in at least one region of the station.
    Shifts, weights and bases are probit (grades) or logit (involvement,
    flags) units per SD of station severity; ``severity_shift`` and
    ``severity_weight`` are calibrated, so refit them after changing
    ``grade_base``, ``bilateral`` or ``involvement_pattern_shift``.
    Fractions are of the compartment volume; ``fat_fraction`` and
    ``fat_grade_probs`` are per fat grade 1..4. Age in years, BMI in kg/m^2.
    """

    station_involved: dict[str, float] = _per_station(1.0, 0.85)
    pattern_probs: dict[str, dict[str, float]] = _per_station(
        {"patchy": 0.50, "mixed": 0.25, "diffuse": 0.25},
        {"patchy": 0.41, "mixed": 0.34, "diffuse": 0.25})
    involvement: dict[str, dict[str, float]] = _per_station(
        {"anterior": 46 / 48, "medial": 43 / 48, "posterior": 37 / 48},
        {"anterior": 37 / 41, "lateral": 27 / 41, "posterior": 37 / 41})
    involvement_pattern_shift: dict[str, float] = _const(
        {"patchy": -0.8, "mixed": 0.8, "diffuse": 4.0})
    involvement_severity: float = 0.3
    bilateral: dict[str, float] = _const({"patchy": 0.85, "mixed": 0.9, "diffuse": 0.98})
    side_asymmetry: float = 0.5
    station_severity_corr: float = 0.6  # between the thigh's and the calf's severity
    pattern_severity_corr: float = 0.7
    grade_base: dict[str, dict[str, float]] = _const({
        "patchy": {"segmented": 0.0, "moderate": -0.7},
        "mixed": {"global": 0.0, "segmented": 0.7, "moderate": 0.0},
        "diffuse": {"moderate": 0.0}})
    severity_shift: dict[str, float] = _const(
        {"patchy": -0.431, "mixed": -0.101, "diffuse": -0.011})
    severity_weight: dict[str, float] = _const(
        {"patchy": 3.451, "mixed": 0.637, "diffuse": 0.226})
    systematic: tuple[str, ...] = ("mixed", "diffuse")  # patterns drawn by systematic sampling
    edema_fraction: dict[str, tuple[float, float]] = _const(
        {"focal": (0.02, 0.10), "segmented": (0.15, 0.50), "global": (0.75, 1.00)})
    max_foci: int = 3
    fat_prevalence: dict[str, float] = _per_station(34 / 48, 15 / 48)
    fat_compartment: dict[str, dict[str, float]] = _per_station(
        {"anterior": 0.35, "medial": 0.55, "posterior": 0.85},
        {"anterior": 0.25, "lateral": 0.45, "posterior": 0.90})
    fat_grade_probs: tuple[float, ...] = (0.38, 0.34, 0.21, 0.07)
    fat_fraction: tuple[tuple[float, float], ...] = (
        (0.03, 0.08), (0.10, 0.28), (0.32, 0.58), (0.62, 0.85))
    fat_bilateral: float = 0.8
    fat_severity: float = 0.3
    fascial_edema: dict[str, float] = _per_station(24 / 48, 11 / 48)
    subcutaneous_edema: dict[str, float] = _per_station(15 / 48, 7 / 48)
    flag_severity: float = 1.0
    flag_region_prob: float = 0.4  # per region with edema, once a station has the flag
    female: float = 0.6
    age_range: tuple[float, float] = (18.0, 67.0)
    age_mean_sd: tuple[float, float] = (46.0, 13.0)
    age_severity_corr: float = -0.51  # gives Spearman(age, total score) ~ -0.35
    bmi_range: tuple[float, float] = (18.0, 38.0)
    bmi_mean_sd: tuple[float, float] = (24.0, 4.0)
    # -- per-muscle edema on extent4 and diagnosis groups (nxp2seg.phantom.muscles) --------
    groups: dict[str, float] = _const({})  # diagnosis -> relative size, e.g. {DM: 11, IMNM: 14}
    group_muscle_shift: dict[str, dict[str, float]] = _const({  # latent shift per muscle (004)
        "DM": {"sartorius": 1.0, "rectus_femoris": 0.8, "vastus_lateralis": 1.5,
               "vastus_medialis": 1.2, "vastus_intermedius": 1.5, "gracilis": 1.0,
               "adductor_longus": -1.2, "adductor_brevis": -1.2, "adductor_magnus": -1.2,
               "biceps_femoris_long_head": -1.3, "biceps_femoris_short_head": 1.0,
               "semimembranosus": -1.5, "semitendinosus": 1.2},
        "IMNM": {"sartorius": -0.8, "rectus_femoris": 0.8, "vastus_lateralis": -1.0,
                 "vastus_medialis": -0.8, "vastus_intermedius": -1.0, "gracilis": -0.8,
                 "adductor_longus": 1.3, "adductor_brevis": 1.3, "adductor_magnus": 1.3,
                 "biceps_femoris_long_head": 1.5, "biceps_femoris_short_head": -0.8,
                 "semimembranosus": 1.8, "semitendinosus": -0.8}})
    muscle_base: dict[str, float] = _per_station(0.3, 0.0)  # latent intercept per station
    muscle_severity: float = 0.6  # latent weight of the station severity
    muscle_cuts: tuple[float, float, float] = (-0.3, 0.5, 1.3)  # latent -> extent4 grade 0..3
    muscle_side_asymmetry: float = 0.2  # one side one grade off
    muscle_fraction: dict[str, tuple[float, float]] = _const(
        {"focal": (0.05, 0.25), "segmented": (0.35, 0.70), "global": (0.80, 1.00)})


@dataclass
class RegionTruth:
    """True state of one region (compartment and side) of one station.

    Grades on ``beltrame6`` (edema, 0..5) and the fat scale (0..4); fractions
    of the compartment volume; ``n_foci`` counts focal blobs (1 for
    segmented or global edema, 0 for none).
    """

    region: str
    edema_grade: int
    edema_extent: str
    edema_intensity: str
    edema_fraction: float
    n_foci: int
    fat_grade: int
    fat_fraction: float
    fascial_edema: bool
    subcutaneous_edema: bool
    # muscle-level cohorts (nxp2seg.phantom.muscles): edema fraction and foci of each muscle of
    # the compartment (MUSCLES order), which the renderer then places muscle by muscle
    muscle_fractions: tuple[float, ...] | None = None
    muscle_foci: tuple[int, ...] | None = None

    @property
    def edema_grade_extent4(self) -> int:
        """The true grade on ``extent4``, from the edema fraction."""
        return extent4_grade(self.edema_fraction)


@dataclass
class StationTruth:
    """True state of one case (one station of one subject); regions in schema order."""

    case_id: str
    subject_id: str
    station: str
    pattern: str
    drawn_pattern: str
    regions: dict[str, RegionTruth]
    station_score: int
    muscles: dict[str, Any] | None = None  # muscle-level cohorts: MuscleTruth per muscle region


@dataclass
class SubjectTruth:
    """A phantom subject: demographics, latent severity and both stations."""

    subject_id: str
    sex: str
    age: float
    bmi: float
    severity: float
    stations: dict[str, StationTruth]
    total_score: int
    group: str | None = None  # diagnosis, in cohorts with DiseaseConfig.groups


def extent4_grade(fraction: float) -> int:
    """``extent4`` grade of an edema fraction: 0 none, 1 <30%, 2 30-75%, 3 >75%.

    The cut-offs are the scale's (:meth:`~nxp2seg.data.schema.GradeScale.grade_of_fraction`).
    """
    return int(get_grade_scale("extent4").grade_of_fraction(fraction))


# -- constants derived from a config (solved once per config) ---------------------------

def _solve(fn: Any, target: float) -> float:
    """Root of ``fn(b) = target`` for an increasing ``fn``; -inf/+inf for targets 0/1."""
    if target <= 0 or target >= 1:
        return -np.inf if target <= 0 else np.inf
    return brentq(lambda b: fn(b) - target, -30, 30)


def _intercept(target: float, slope: float) -> float:  # E[expit(a + slope X)] = target
    return _solve(lambda a: float(_GH_W @ expit(a + slope * _GH_X)), target)


_DERIVED: dict[str, dict[str, Any]] = {}


def _derive(cfg: DiseaseConfig) -> dict[str, Any]:
    key = repr(cfg)
    if key in _DERIVED:
        return _DERIVED[key]
    rho, d = cfg.pattern_severity_corr, {"cuts": {}, "inv": {}, "fat": {}, "fascial": {},
                                        "subcut": {}}
    s = np.sqrt(1 - rho**2)
    shifts = np.array([cfg.involvement_pattern_shift[p] for p in PATTERNS[1:]])[:, None]
    for st in STATIONS:
        p_inv = cfg.station_involved[st]
        probs = [1 - p_inv] + [p_inv * cfg.pattern_probs[st].get(p, 0.0) for p in PATTERNS[1:]]
        cum = np.clip(np.cumsum(probs) / sum(probs), 0, 1)
        cuts = d["cuts"][st] = np.concatenate([[-np.inf], ndtri(cum[:-1]), [np.inf]])
        # P(pattern | sigma) at the quadrature nodes, given the station is involved
        p_pat = ndtr((cuts[1:, None] - rho * _GH_X) / s) - ndtr((cuts[:-1, None] - rho * _GH_X) / s)
        p_pat = p_pat[1:] / max(p_inv, 1e-12)

        def marginal(b: float, p_pat: np.ndarray = p_pat) -> float:
            q = expit(b + shifts + cfg.involvement_severity * _GH_X)
            return float((p_pat * q).sum(0) @ _GH_W)

        d["inv"][st] = {c: _solve(marginal, t) for c, t in cfg.involvement[st].items()}
        d["fat"][st] = _intercept(cfg.fat_prevalence[st], cfg.fat_severity)
        d["fascial"][st] = _intercept(cfg.fascial_edema[st], cfg.flag_severity)
        d["subcut"][st] = _intercept(cfg.subcutaneous_edema[st], cfg.flag_severity)
    _DERIVED[key] = d
    return d


# -- sampling ----------------------------------------------------------------------------

def _choose(n: int, p: float, rng: np.random.Generator, systematic: bool, lo: int = 0,
            hi: int | None = None) -> np.ndarray:
    """Boolean mask of ``n`` choices of probability ``p``, with ``lo..hi`` of them True.

    ``systematic``: exactly ``floor(n p + U)`` True at random places (least
    spread); else independent draws, with the count then pushed into ``[lo, hi]``.
    """
    hi = n if hi is None else hi
    order = rng.permutation(n)
    if systematic:
        mask = np.zeros(n, dtype=bool)
        mask[order[: int(np.clip(math.floor(n * p + rng.random()), lo, hi))]] = True
        return mask
    mask = rng.random(n) < p
    k = int(mask.sum())
    if k < lo:
        mask[order[~mask[order]][: lo - k]] = True
    elif k > hi:
        mask[order[mask[order]][: k - hi]] = False
    return mask


def _edema_grades(station: str, pattern: str, sev: float, rng: np.random.Generator,
                  cfg: DiseaseConfig, d: dict[str, Any]) -> np.ndarray:
    """True beltrame6 grades, shape ``(2 sides, n compartments)``, schema order."""
    n = len(COMPARTMENTS[station])
    g = np.zeros((2, n), dtype=int)
    if pattern == "none":
        return g
    base = np.array([d["inv"][station][c] for c in COMPARTMENTS[station]])
    q = expit(base + cfg.involvement_pattern_shift[pattern] + cfg.involvement_severity * sev)
    if not (q > 0).any():
        raise ValueError(f"DiseaseConfig.involvement: no {station} compartment can be involved")
    inv = rng.random(n) < q
    while not inv.any():  # the station is involved: condition on at least one compartment
        inv = rng.random(n) < q
    idx = np.flatnonzero(inv)
    both = rng.random(n) < cfg.bilateral[pattern]
    lone_side = rng.integers(0, 2, n)
    if pattern == "mixed" and len(idx) == 1:
        both[idx] = True  # mixed needs two regions

    def p(choice: str) -> float:
        z = cfg.grade_base[pattern][choice] + cfg.severity_shift[pattern]
        return float(ndtr(z + cfg.severity_weight[pattern] * sev))

    k, sys_ = len(idx), pattern in cfg.systematic
    cg = np.zeros((2, k), dtype=int)  # per side, per involved compartment
    moderate = _choose(k, p("moderate"), rng, sys_)
    if pattern == "diffuse":
        cg[:] = np.where(moderate, 5, 3)
    else:
        seg = _choose(k, p("segmented"), rng, sys_)
        nonglobal = np.where(seg, np.where(moderate, 4, 2), 1)
        if pattern == "patchy":
            cg[:] = nonglobal
        else:
            glob = _choose(k, p("global"), rng, sys_, 1, k - 1) if k > 1 else np.ones(1, bool)
            cg[:] = np.where(glob, np.where(moderate, 5, 3), nonglobal)
            if k == 1:  # one compartment: global on one side, not on the other
                cg[rng.integers(0, 2), 0] = nonglobal[0]
    for j, c in enumerate(idx):
        for s in ((0, 1) if both[c] else (lone_side[c],)):
            g[s, c] = cg[s, j]
    if pattern != "diffuse" and rng.random() < cfg.side_asymmetry:
        _asymmetry(g, pattern, both & inv, rng)
    return g


def _asymmetry(g: np.ndarray, pattern: str, bilateral: np.ndarray,
               rng: np.random.Generator) -> None:
    """Move one side of one bilateral compartment by one grade, keeping the pattern."""
    cands = []
    for c in np.flatnonzero(bilateral):
        for s in (0, 1):
            for new in (g[s, c] - 1, g[s, c] + 1):
                if 1 <= new <= _BELTRAME.max_grade:
                    trial = g.copy()
                    trial[s, c] = new
                    if pattern_rule(trial.ravel(), _BELTRAME) == pattern:
                        cands.append((s, c, new))
    if cands:
        s, c, new = cands[rng.integers(len(cands))]
        g[s, c] = new


def _pick(n: int, weights: np.ndarray, prob: Any, rng: np.random.Generator) -> np.ndarray:
    """Each of ``n`` regions with probability ``prob``; at least one, forced by ``weights``."""
    mask = rng.random(n) < np.asarray(prob)
    if not mask.any():
        w = weights if weights.sum() > 0 else np.ones(n)
        mask[rng.choice(n, p=w / w.sum())] = True
    return mask


def _fat(station: str, sev: float, rng: np.random.Generator, cfg: DiseaseConfig,
         d: dict[str, Any]) -> np.ndarray:
    n = len(COMPARTMENTS[station])
    f = np.zeros((2, n), dtype=int)
    if rng.random() >= expit(d["fat"][station] + cfg.fat_severity * sev):
        return f
    pc = np.array([cfg.fat_compartment[station][c] for c in COMPARTMENTS[station]])
    probs = np.asarray(cfg.fat_grade_probs) / np.sum(cfg.fat_grade_probs)
    for c in np.flatnonzero(_pick(n, pc, pc, rng)):
        grade = 1 + rng.choice(len(probs), p=probs)
        if rng.random() < cfg.fat_bilateral:  # the other side: same grade or one off
            other = grade if rng.random() < 0.7 else np.clip(grade + rng.choice([-1, 1]), 1, 4)
            side = rng.integers(0, 2)
            f[side, c], f[1 - side, c] = grade, other
        else:
            f[rng.integers(0, 2), c] = grade
    return f


def _flags(intercept: float, g: np.ndarray, sev: float, rng: np.random.Generator,
           cfg: DiseaseConfig) -> np.ndarray:
    flat = np.zeros(g.size, dtype=bool)
    if rng.random() >= expit(intercept + cfg.flag_severity * sev):
        return flat.reshape(g.shape)
    cand = np.flatnonzero(g.ravel() > 0)
    if cand.size == 0:
        cand = np.arange(g.size)
    flat[cand[_pick(cand.size, g.ravel()[cand] + 1.0, cfg.flag_region_prob, rng)]] = True
    return flat.reshape(g.shape)


def _station(subject_id: str, station: str, sev: float, rng: np.random.Generator,
             cfg: DiseaseConfig, d: dict[str, Any]) -> StationTruth:
    rho = cfg.pattern_severity_corr
    t = rho * sev + np.sqrt(1 - rho**2) * rng.standard_normal()
    drawn = PATTERNS[int(np.searchsorted(d["cuts"][station], t)) - 1]
    g = _edema_grades(station, drawn, sev, rng, cfg, d)
    fat = _fat(station, sev, rng, cfg, d)
    fascial = _flags(d["fascial"][station], g, sev, rng, cfg)
    subcut = _flags(d["subcut"][station], g, sev, rng, cfg)
    regions: dict[str, RegionTruth] = {}
    for s, side in enumerate(SIDES):
        for c, comp in enumerate(COMPARTMENTS[station]):
            gr, fg = int(g[s, c]), int(fat[s, c])
            ext = _BELTRAME.extent[gr]
            frac = float(rng.uniform(*cfg.edema_fraction[ext])) if gr else 0.0
            foci = int(rng.integers(1, cfg.max_foci + 1)) if ext == "focal" else int(gr > 0)
            fat_frac = float(rng.uniform(*cfg.fat_fraction[fg - 1])) if fg else 0.0
            name = region_name(station, comp, side)
            regions[name] = RegionTruth(
                region=name, edema_grade=gr, edema_extent=ext,
                edema_intensity=_BELTRAME.intensity[gr], edema_fraction=frac, n_foci=foci,
                fat_grade=fg, fat_fraction=fat_frac, fascial_edema=bool(fascial[s, c]),
                subcutaneous_edema=bool(subcut[s, c]))
    pattern = pattern_rule(g.ravel(), _BELTRAME)
    if pattern != drawn:  # the grade sampler guarantees this; fail loudly if it is broken
        raise AssertionError(f"{subject_id} {station}: grades give {pattern!r}, drawn {drawn!r}")
    return StationTruth(case_id=f"{subject_id}_{station}", subject_id=subject_id,
                        station=station, pattern=pattern, drawn_pattern=drawn, regions=regions,
                        station_score=int(g.sum()))


def _truncated_normal(z: float, mean_sd: tuple[float, float],
                      lo_hi: tuple[float, float]) -> float:
    """The normal(mean, sd) truncated to [lo, hi] at the quantile of a standard normal z."""
    (mu, sd), (lo, hi) = mean_sd, lo_hi
    a, b = ndtr((lo - mu) / sd), ndtr((hi - mu) / sd)
    return float(mu + sd * ndtri(a + (b - a) * ndtr(z)))


def sample_subject(subject_id: str, rng: np.random.Generator,
                   cfg: DiseaseConfig | None = None, station_fn: Any = None) -> SubjectTruth:
    """Draw one subject: demographics, latent severity, and both stations' truths.

    Age is drawn through a Gaussian copula with the latent severity
    (``age_severity_corr``), so younger subjects score higher (Spearman ~ -0.35).
    ``station_fn(subject_id, station, severity, rng, cfg, derived)`` draws a
    station (default: the compartment model; :mod:`nxp2seg.phantom.muscles`
    passes its per-muscle one).
    """
    cfg = cfg or DiseaseConfig()
    d = _derive(cfg)
    s = float(rng.standard_normal())
    r = cfg.station_severity_corr
    stations = {}
    for st in STATIONS:
        sev = float(np.sqrt(r) * s + np.sqrt(1 - r) * rng.standard_normal())
        stations[st] = (station_fn or _station)(subject_id, st, sev, rng, cfg, d)
    sex = "F" if rng.random() < cfg.female else "M"
    ra = cfg.age_severity_corr
    z_age = ra * s + np.sqrt(1 - ra**2) * rng.standard_normal()
    age = _truncated_normal(z_age, cfg.age_mean_sd, cfg.age_range)
    bmi_mu, bmi_sd = cfg.bmi_mean_sd
    bmi_mu += -0.5 if sex == "F" else 0.5
    bmi = _truncated_normal(rng.standard_normal(), (bmi_mu, bmi_sd), cfg.bmi_range)
    return SubjectTruth(subject_id=subject_id, sex=sex, age=round(age, 1), bmi=round(bmi, 1),
                        severity=s, stations=stations,
                        total_score=sum(t.station_score for t in stations.values()))


def sample_subjects(n: int, seed: int, cfg: DiseaseConfig | None = None) -> list[SubjectTruth]:
    """Draw ``n`` subjects ``P001, P002, ...``; subject i from child i of ``SeedSequence(seed)``.

    Deterministic, and the first subjects of a larger cohort are the smaller cohort.
    """
    cfg = cfg or DiseaseConfig()
    width = max(3, len(str(n)))
    children = np.random.SeedSequence(seed).spawn(n)
    return [sample_subject(f"P{i + 1:0{width}d}", np.random.default_rng(ch), cfg)
            for i, ch in enumerate(children)]


def truth_tables(subjects: list[SubjectTruth]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Long truth tables ``(region_df, station_df, subject_df)`` for ``truth/``.

    Columns: :data:`REGION_COLUMNS` (one row per case and region),
    :data:`STATION_COLUMNS` (per case) and :data:`SUBJECT_COLUMNS` (per subject).
    """
    reg, sta, sub = [], [], []
    for subj in subjects:
        for st in subj.stations.values():
            sta.append([st.case_id, st.subject_id, st.station, st.pattern, st.drawn_pattern,
                        st.station_score])
            reg += [[st.case_id, st.subject_id, st.station, r.region, r.edema_grade,
                     r.edema_grade_extent4, r.edema_extent, r.edema_intensity, r.edema_fraction,
                     r.n_foci, r.fat_grade, r.fat_fraction, r.fascial_edema,
                     r.subcutaneous_edema] for r in st.regions.values()]
        sub.append([subj.subject_id, subj.sex, subj.age, subj.bmi, subj.severity,
                    subj.stations["thigh"].station_score, subj.stations["calf"].station_score,
                    subj.total_score])
    subject_df = pd.DataFrame(sub, columns=SUBJECT_COLUMNS)
    if any(s.group is not None for s in subjects):
        subject_df.insert(1, "group", [s.group for s in subjects])
    return (pd.DataFrame(reg, columns=REGION_COLUMNS),
            pd.DataFrame(sta, columns=STATION_COLUMNS), subject_df)
