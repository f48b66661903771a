"""The clinical table of a phantom cohort (PHANTOM.md, "Clinical table").

One row per subject, drawn through a Gaussian copula from the normal scores of
the subject's TRUE total MRI score (thigh + calf), so that the Spearman
correlations resemble the motivating study's Table 1.

Columns, units and marginals (defaults of :class:`ClinicalConfig`):

=========  ==================================================  ========
column     units and marginal                                  target r
=========  ==================================================  ========
age        years, from the subject's truth (18-67)             -0.35 (*)
sex        ``F``/``M``, from the subject's truth               --
bmi        kg/m^2, from the subject's truth (18-38)            --
vas        physician VAS of disease activity, integer 1-7      0.32
mmt8       manual muscle testing, 0-80: 80 (1 - Beta(1.5, 6))  -0.58
ck         creatine kinase, U/L, log-normal, median 1200       0.48
ldh        lactate dehydrogenase, U/L, log-normal, 350         0.37
ast        aspartate aminotransferase, U/L, log-normal, 60     0.47
ferritin   ng/mL, log-normal, median 220                       0.44
d_dimer    mg/L FEU, log-normal, median 0.9                    0.41
nse        neuron-specific enolase, ng/mL, log-normal, 17      0.42
platelets  10^9/L, normal 245 +- 70 (40-700)                   -0.33
albumin    g/L, normal 36 +- 5 (20-50)                         -0.40
nk_cells   NK cells, cells/uL, log-normal, median 110          -0.43
dysphagia  0/1, prevalence 0.35                                0.30
ild        interstitial lung disease, 0/1, prevalence 0.25     0.31
relapse    0/1, prevalence 0.25                                0
death      0/1, prevalence 0.06                                0
=========  ==================================================  ========

MMT8 is then mostly 50-80 (mean ~64). (*) Age is drawn with the disease
(``DiseaseConfig.age_severity_corr``) so that truth and table agree; it is
copied here.

Latent correlations are solved from the Spearman targets: ``2 sin(pi r / 6)``
for continuous marginals, and by quadrature for the ordinal VAS and the
binaries (whose observed correlation is attenuated by the cut). Muscle enzymes
(CK, LDH, AST) and inflammation markers (ferritin, D-dimer) also share a
residual factor, as they do in patients. With ``exact_sample_correlation``
the noise is orthogonalised against the score's normal scores within the
cohort, so each latent correlation holds exactly in every cohort: at 48
subjects the continuous variables typically land within 0.05 of their targets
(binaries, cut from the latent, still vary by ~0.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import ndtr, ndtri
from scipy.stats import beta, rankdata

from nxp2seg.phantom.disease import SubjectTruth

__all__ = ["ClinicalConfig", "simulate_clinical", "latent_correlation"]

_STREAM = 0x434C494E  # "CLIN": keeps clinical draws apart from the disease draws of the same seed
_Z = np.linspace(-8.5, 8.5, 3401)
_PHI = np.exp(-0.5 * _Z**2) / np.sqrt(2 * np.pi) * (_Z[1] - _Z[0])


@dataclass(frozen=True)
class ClinicalConfig:
    """Targets and marginals of the clinical table (see the module docstring for units)."""

    target_spearman: dict[str, float] = field(default_factory=lambda: {
        "vas": 0.32, "mmt8": -0.58, "ck": 0.48, "ldh": 0.37, "ast": 0.47, "ferritin": 0.44,
        "d_dimer": 0.41, "nse": 0.42, "platelets": -0.33, "albumin": -0.40, "nk_cells": -0.43,
        "dysphagia": 0.30, "ild": 0.31, "relapse": 0.0, "death": 0.0})
    lognormal: dict[str, tuple[float, float]] = field(default_factory=lambda: {  # (median, sigma)
        "ck": (1200.0, 1.3), "ldh": (350.0, 0.45), "ast": (60.0, 0.8), "ferritin": (220.0, 0.9),
        "d_dimer": (0.9, 0.8), "nse": (17.0, 0.4), "nk_cells": (110.0, 0.7)})
    normal: dict[str, tuple[float, float, float, float]] = field(default_factory=lambda: {
        "platelets": (245.0, 70.0, 40.0, 700.0),  # mean, sd, lo, hi
        "albumin": (36.0, 5.0, 20.0, 50.0)})
    vas_probs: tuple[float, ...] = (0.05, 0.12, 0.20, 0.25, 0.20, 0.12, 0.06)  # VAS 1..7
    mmt8_deficit_beta: tuple[float, float] = (1.5, 6.0)
    prevalence: dict[str, float] = field(default_factory=lambda: {
        "dysphagia": 0.35, "ild": 0.25, "relapse": 0.25, "death": 0.06})
    residual_groups: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "enzymes": ("ck", "ldh", "ast"), "inflammation": ("ferritin", "d_dimer")})
    residual_loading: float = 0.5  # share of a grouped variable's noise variance that is shared
    exact_sample_correlation: bool = True
    group_column: str = "diagnosis"  # the subject's diagnosis, in cohorts with disease.groups


_DECIMALS = {"ck": 0, "ldh": 0, "ast": 0, "ferritin": 1, "d_dimer": 2, "nse": 1, "nk_cells": 0,
             "platelets": 0, "albumin": 1}


def _spearman_discrete(rho: float, probs: np.ndarray) -> float:
    """Spearman between a normal Z and a variable cut from rho Z + noise into categories."""
    cuts = np.concatenate([[-np.inf], ndtri(np.cumsum(probs)[:-1]), [np.inf]])
    s = np.sqrt(max(1 - rho**2, 1e-12))
    mid = np.cumsum(probs) - probs / 2  # mid-rank of each category, on [0, 1]
    p_cat = ndtr((cuts[1:, None] - rho * _Z) / s) - ndtr((cuts[:-1, None] - rho * _Z) / s)
    e_uy = float((ndtr(_Z) * _PHI) @ (mid @ p_cat))
    var_y = float(probs @ mid**2 - (probs @ mid) ** 2)
    return (e_uy - 0.25) / np.sqrt(var_y / 12)


def latent_correlation(target: float, probs: tuple[float, ...] | None = None) -> float:
    """Latent (copula) correlation giving Spearman ``target`` with the score.

    Args:
        target: the wanted Spearman correlation.
        probs: category probabilities of a discrete marginal (binary: ``(1 - p, p)``);
            ``None`` for a continuous marginal.

    Returns:
        The correlation of the latent normal with the score's normal scores.
    """
    if probs is None:
        return float(2 * np.sin(np.pi * target / 6))
    p = np.asarray(probs, dtype=float) / np.sum(probs)
    lim = 0.999
    f = lambda r: _spearman_discrete(r, p) - target  # noqa: E731
    if f(lim) <= 0 or f(-lim) >= 0:  # unreachable target: the strongest latent correlation
        return float(np.sign(target) * lim)
    return float(brentq(f, -lim, lim))


def _orthonormal_noise(z: np.ndarray, raw: np.ndarray, exact: bool) -> np.ndarray:
    """Columns of ``raw`` made (if ``exact``) uncorrelated with z and of unit variance in sample."""
    if not exact or len(z) < 3:
        return raw
    basis = np.column_stack([np.ones_like(z), z])
    res = raw - basis @ np.linalg.lstsq(basis, raw, rcond=None)[0]
    sd = res.std(axis=0)
    return res / np.where(sd > 0, sd, 1.0)


def simulate_clinical(subjects: list[SubjectTruth], seed: int,
                      cfg: ClinicalConfig | None = None) -> pd.DataFrame:
    """Draw the clinical table of a cohort.

    Args:
        subjects: the cohort's truths; age, sex and bmi are copied from them.
        seed: clinical randomness (its own stream, distinct from the disease's).
        cfg: targets and marginals (defaults: :class:`ClinicalConfig`).

    Returns:
        One row per subject: ``subject_id, age, sex, bmi`` (and the
        diagnosis, ``group_column``, when the cohort has diagnosis groups),
        ``vas, mmt8, ck, ldh, ast, ferritin, d_dimer, nse, platelets, albumin,
        nk_cells, dysphagia, ild, relapse, death``.
    """
    cfg = cfg or ClinicalConfig()
    n = len(subjects)
    total = np.array([s.total_score for s in subjects], dtype=float)
    z = ndtri((rankdata(total) - 0.5) / n) if n else total
    z_std = (z - z.mean()) / z.std() if n > 2 and z.std() > 0 else z
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM]))
    names = list(cfg.target_spearman)
    groups = list(cfg.residual_groups)
    raw = rng.standard_normal((n, len(names) + len(groups)))
    noise = _orthonormal_noise(z_std, raw, cfg.exact_sample_correlation)
    lam = cfg.residual_loading
    out: dict[str, object] = {
        "subject_id": [s.subject_id for s in subjects], "age": [s.age for s in subjects],
        "sex": [s.sex for s in subjects], "bmi": [s.bmi for s in subjects]}
    if any(s.group is not None for s in subjects):
        out[cfg.group_column] = [s.group for s in subjects]
    for j, name in enumerate(names):
        e = noise[:, j]
        for gi, g in enumerate(groups):
            if name in cfg.residual_groups[g]:
                e = np.sqrt(lam) * noise[:, len(names) + gi] + np.sqrt(1 - lam) * e
                e = _orthonormal_noise(z_std, e[:, None], cfg.exact_sample_correlation)[:, 0]
        if name == "vas":
            probs: tuple[float, ...] | None = cfg.vas_probs
        elif name in cfg.prevalence:
            probs = (1 - cfg.prevalence[name], cfg.prevalence[name])
        else:
            probs = None
        rho = latent_correlation(cfg.target_spearman[name], probs)
        x = rho * z_std + np.sqrt(1 - rho**2) * e
        out[name] = _marginal(name, x, probs, cfg)
    return pd.DataFrame(out)


def _marginal(name: str, x: np.ndarray, probs: tuple[float, ...] | None,
              cfg: ClinicalConfig) -> np.ndarray:
    """Map a standard-normal latent to the variable's marginal (increasing in x)."""
    if probs is not None:
        p = np.asarray(probs, dtype=float) / np.sum(probs)
        cat = np.searchsorted(ndtri(np.cumsum(p)[:-1]), x)
        return (cat + 1 if name == "vas" else cat).astype(int)
    if name == "mmt8":
        a, b = cfg.mmt8_deficit_beta
        return np.rint(80 * (1 - beta.ppf(ndtr(-x), a, b))).astype(int)
    if name in cfg.lognormal:
        med, sig = cfg.lognormal[name]
        v = med * np.exp(sig * x)
    elif name in cfg.normal:
        mu, sd, lo, hi = cfg.normal[name]
        v = np.clip(mu + sd * x, lo, hi)
    else:
        raise ValueError(f"simulate_clinical: no marginal for {name!r}; add it to ClinicalConfig")
    d = _DECIMALS.get(name, 2)
    return np.round(v, d).astype(int) if d == 0 else np.round(v, d)
