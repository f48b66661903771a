"""Validation agreement of the grading head with the readers' mean (pure functions).

The statistics are :mod:`nxp2seg.stats.agreement`'s (reference-tested); this
module only arranges the validation cases' arrays for them and names the
logged keys. Every value is NaN when undefined on the cases at hand (e.g. an
AUC when no validation region has the finding).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from nxp2seg.data.schema import FAT_SCALE, PATTERNS, GradeScale

__all__ = ["GRADING_METRICS", "grading_metrics", "rater_edema_kappa"]

#: Keys :func:`grading_metrics` returns (logged as ``val/{key}``, ``test/{key}``).
GRADING_METRICS: tuple[str, ...] = (
    "edema_kappa_quadratic",
    "edema_icc",
    "edema_spearman",
    "edema_mae",
    "fat_kappa_quadratic",
    "pattern_kappa",
    "pattern_accuracy",
    "fascial_auc",
    "subcut_auc",
    "fascial_sensitivity",
    "fascial_specificity",
    "subcut_sensitivity",
    "subcut_specificity",
    "station_score_icc",
)


def _flag_auc(truth_share: np.ndarray, prob: np.ndarray) -> float:
    from nxp2seg.grading import readers_flag
    from nxp2seg.stats.agreement import roc_auc

    t, p = truth_share.ravel(), prob.ravel()
    keep = np.isfinite(t) & np.isfinite(p)
    # a finding is present when more than half of the readers saw it (grading.readers_flag)
    return roc_auc(readers_flag(t[keep]).astype(int), p[keep])


def _flag_rates(truth_share: np.ndarray, flag: np.ndarray | None) -> tuple[float, float]:
    from nxp2seg.grading import readers_flag

    if flag is None:
        return math.nan, math.nan
    from nxp2seg.models.grading_operating import sensitivity_specificity

    t, f = np.asarray(truth_share, float).ravel(), np.asarray(flag, float).ravel()
    keep = np.isfinite(t) & np.isfinite(f)
    return sensitivity_specificity(readers_flag(t[keep]) > 0.5, f[keep] > 0.5)


def grading_metrics(
    scale: GradeScale,
    edema: np.ndarray,
    edema_target: np.ndarray,
    fat: np.ndarray,
    fat_target: np.ndarray,
    fascial_prob: np.ndarray,
    fascial_target: np.ndarray,
    subcut_prob: np.ndarray,
    subcut_target: np.ndarray,
    pattern_prob: np.ndarray,
    pattern_index: np.ndarray,
    slot_valid: np.ndarray | None = None,
    edema_int: np.ndarray | None = None,
    fat_int: np.ndarray | None = None,
    fascial_flag: np.ndarray | None = None,
    subcut_flag: np.ndarray | None = None,
    pattern_pred: np.ndarray | None = None,
) -> dict[str, float]:
    """Agreement of the model with the readers' mean over a set of cases.

    Args:
        scale: the edema grade scale (kappa labels ``0..max_grade``).
        edema, edema_target: ``(N, R)`` model grades and rater means (NaN = not graded).
        fat, fat_target: ``(N, R)`` on ``0..4``.
        fascial_prob, fascial_target: ``(N, R)`` probability; share of readers (0..1).
        subcut_prob, subcut_target: likewise for subcutaneous edema.
        pattern_prob: ``(N, 4)`` probabilities; pattern_index ``(N,)`` readers'
            majority pattern (``-1`` = none given).
        slot_valid: ``(N, R)`` bool, the slots that are regions of the case's station
            (default: all); empty slots (a station with fewer regions than ``R``) are
            left out of the station score.
        edema_int, fat_int: ``(N, R)`` the model's integer grades at its operating points
            (default: the continuous grades rounded half up).
        fascial_flag, subcut_flag: ``(N, R)`` the model's flags (default: none, and
            NaN sensitivity and specificity).
        pattern_pred: ``(N,)`` the model's reported pattern (default: the argmax).

    Returns:
        :data:`GRADING_METRICS`: quadratic-weighted kappa of the integer grades
        (model rounded vs rounded rater mean, half up), ICC(2,1) absolute
        agreement, Spearman and mean absolute error of the continuous grades,
        unweighted kappa and accuracy of the pattern (argmax vs majority), ROC
        AUC of the flags (present = more than half of the readers), and the
        ICC(2,1) of the station score (sum of the regions' grades; cases with
        every region graded).
    """
    from nxp2seg.grading import integer_grade, station_score
    from nxp2seg.stats.agreement import cohen_kappa, icc, spearman

    e, et = np.asarray(edema, float), np.asarray(edema_target, float)
    graded = np.isfinite(et)
    pred_int = integer_grade(e, scale) if edema_int is None else np.asarray(edema_int, float)
    true_int = integer_grade(et, scale)
    out: dict[str, float] = {}
    labels = np.arange(scale.n_levels)
    out["edema_kappa_quadratic"] = cohen_kappa(
        pred_int[graded], true_int[graded], weights="quadratic", labels=labels
    )
    out["edema_icc"] = float(icc(np.column_stack([e[graded], et[graded]]))["icc"])
    out["edema_spearman"] = float(spearman(e[graded], et[graded])["r"])
    out["edema_mae"] = float(np.abs(e[graded] - et[graded]).mean()) if graded.any() else math.nan
    f, ft = np.asarray(fat, float), np.asarray(fat_target, float)
    fg = np.isfinite(ft)
    f_int = integer_grade(f, FAT_SCALE) if fat_int is None else np.asarray(fat_int, float)
    out["fat_kappa_quadratic"] = cohen_kappa(
        f_int[fg],
        integer_grade(ft[fg], FAT_SCALE),
        weights="quadratic",
        labels=np.arange(FAT_SCALE.n_levels),
    )
    pi = np.asarray(pattern_index).astype(int).ravel()
    rated = pi >= 0
    pred_pattern = (np.asarray(pattern_prob, float).argmax(axis=-1) if pattern_pred is None
                    else np.asarray(pattern_pred).astype(int).ravel())
    out["pattern_kappa"] = cohen_kappa(
        pred_pattern[rated], pi[rated], labels=np.arange(len(PATTERNS))
    )
    out["pattern_accuracy"] = (
        float((pred_pattern[rated] == pi[rated]).mean()) if rated.any() else math.nan
    )
    out["fascial_auc"] = _flag_auc(np.asarray(fascial_target, float), np.asarray(fascial_prob))
    out["subcut_auc"] = _flag_auc(np.asarray(subcut_target, float), np.asarray(subcut_prob))
    for name, target, flag in (("fascial", fascial_target, fascial_flag), ("subcut", subcut_target, subcut_flag)):
        out[f"{name}_sensitivity"], out[f"{name}_specificity"] = _flag_rates(target, flag)
    real = np.ones(et.shape, bool) if slot_valid is None else np.asarray(slot_valid, bool)
    truth_score = station_score(np.where(real, et, 0.0))  # NaN where a real region is not graded
    pred_score = station_score(np.where(real, e, 0.0))
    out["station_score_icc"] = float(icc(np.column_stack([pred_score, truth_score]))["icc"])
    return {k: float(out[k]) for k in GRADING_METRICS}


def rater_edema_kappa(
    grades: pd.DataFrame, scale: GradeScale, case_ids: Iterable[str] | None = None
) -> float:
    """Quadratic-weighted kappa of the readers' edema grades with each other, on the same regions.

    The reference a model's kappa against the rater mean is read against
    (issue: no more than 0.05 below it). Each pair of raters is compared on
    the regions both graded (integer grades, labels ``0..max_grade``); with
    more than two raters, the mean over the pairs.

    Args:
        grades: ``grades.csv`` (long: ``case_id``, ``rater``, ``region``, ``edema_grade``).
        scale: the edema grade scale.
        case_ids: the cases to compare on (default: all).

    Returns:
        The kappa, NaN with fewer than two raters or no region graded twice.
    """
    from nxp2seg.grading import integer_grade
    from nxp2seg.stats.agreement import cohen_kappa

    g = grades[["case_id", "rater", "region", "edema_grade"]].copy()
    g["case_id"] = g["case_id"].astype(str)
    if case_ids is not None:
        g = g[g["case_id"].isin({str(c) for c in case_ids})]
    g = g[np.isfinite(pd.to_numeric(g["edema_grade"], errors="coerce"))]
    wide = g.pivot_table(
        index=["case_id", "region"], columns="rater", values="edema_grade", aggfunc="mean"
    )
    labels = np.arange(scale.n_levels)
    kappas = []
    for a, b in itertools.combinations(wide.columns, 2):
        pair = wide[[a, b]].dropna().to_numpy(float)
        if len(pair):
            kappas.append(
                cohen_kappa(
                    integer_grade(pair[:, 0], scale),
                    integer_grade(pair[:, 1], scale),
                    weights="quadratic",
                    labels=labels,
                )
            )
    kappas = [k for k in kappas if np.isfinite(k)]
    return float(np.mean(kappas)) if kappas else math.nan
