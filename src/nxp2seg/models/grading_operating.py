"""Operating points: how the reported calls are chosen from the grader's continuous outputs.

The head gives continuous grades and probabilities; users read integer
grades, yes/no findings and one pattern. Where each cut lies is chosen on
predictions the head did not train on -- the training subjects' out-of-fold
predictions (:func:`~nxp2seg.models.grading_fit.cross_fit`) or the validation
cases -- never on the test subjects, by a rule from config
(:class:`~nxp2seg.models.grading_spec.OperatingSpec`):

* **flags** (:func:`flag_threshold`): ``youden`` maximises sensitivity +
  specificity against the readers' call; ``specificity`` takes the highest
  sensitivity whose specificity is at least ``min_specificity``; ``fixed`` a
  given probability. The flag is ``probability >= threshold``.
* **integer grades** (:func:`kappa_cuts`; ``grades`` for edema, ``fat_grades``
  for fat): ``round`` (half up); ``kappa`` moves each cut-point between
  adjacent grades to maximise the quadratic kappa against the readers' rounded
  mean (coordinate ascent from the rounding cuts).
* **pattern** (:func:`pattern_offsets`): ``argmax``; ``kappa`` adds per-pattern
  offsets to the log-probabilities that maximise the pattern kappa.

A user moves an operating point with predict's ``thresholds`` override or by
retraining with another rule (docs/grading.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nxp2seg.data.schema import FAT_SCALE
from nxp2seg.grading import integer_grade, readers_flag
from nxp2seg.stats.agreement import cohen_kappa

__all__ = ["choose_operating_points", "flag_threshold", "kappa_cuts", "pattern_offsets", "sensitivity_specificity"]


def sensitivity_specificity(call: np.ndarray, flag: np.ndarray) -> tuple[float, float]:
    """``(sensitivity, specificity)`` of ``flag`` (bool) against ``call`` (0/1); NaN without a class."""
    call, flag = np.asarray(call, bool), np.asarray(flag, bool)
    pos, neg = call.sum(), (~call).sum()
    sens = float((flag & call).sum() / pos) if pos else float("nan")
    spec = float((~flag & ~call).sum() / neg) if neg else float("nan")
    return sens, spec


def flag_threshold(prob: np.ndarray, share: np.ndarray, rule: str, min_specificity: float = 0.9,
                   fixed: float = 0.5) -> tuple[float, dict[str, Any]]:
    """The flag threshold by ``rule`` on held-out probabilities and the readers' shares.

    Args:
        prob: probabilities (any shape; NaN ignored).
        share: share of readers who saw the finding (the call is a strict majority).
        rule: ``youden`` | ``specificity`` | ``fixed``.

    Returns:
        ``(threshold, report)``; the report holds the sensitivity and specificity there and
        the number of positive and negative regions. Without both classes: ``fixed``.
    """
    p, s = np.asarray(prob, float).ravel(), np.asarray(share, float).ravel()
    keep = np.isfinite(p) & np.isfinite(s)
    p, call = p[keep], readers_flag(s[keep]).astype(bool)
    report: dict[str, Any] = {"rule": rule, "n_positive": int(call.sum()), "n_negative": int((~call).sum())}
    thr = float(fixed)
    if rule != "fixed" and call.any() and (~call).any():
        candidates = np.unique(p)
        sens = np.array([(p[call] >= t).mean() for t in candidates])
        spec = np.array([(p[~call] < t).mean() for t in candidates])
        if rule == "youden":
            best = int(np.argmax(sens + spec))
        else:
            ok = np.flatnonzero(spec >= float(min_specificity))
            best = int(ok[np.argmax(sens[ok])]) if ok.size else int(np.argmax(spec))
        # midway to the next lower probability: the same calls on these regions, less overfit
        lower = candidates[candidates < candidates[best]]
        thr = float(0.5 * (candidates[best] + lower.max())) if lower.size else float(candidates[best])
    elif rule != "fixed":
        report["fallback"] = "one class only: fixed threshold"
    report["threshold"] = thr
    report["sensitivity"], report["specificity"] = sensitivity_specificity(call, p >= thr)
    return thr, report


def _count_cuts(x: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    return (x[:, None] >= cuts[None, :]).sum(axis=1)


def kappa_cuts(pred: np.ndarray, target_int: np.ndarray, n_levels: int, passes: int = 3) -> np.ndarray:
    """Ascending cut-points on ``pred`` that maximise the quadratic kappa of
    ``count(pred >= cut)`` against ``target_int`` (labels ``0..n_levels-1``).

    Coordinate ascent from the rounding cuts ``k - 0.5``: each cut in turn takes the
    best of the midpoints between sorted predictions that keep the cuts ordered.
    """
    p, t = np.asarray(pred, float).ravel(), np.asarray(target_int, float).ravel()
    keep = np.isfinite(p) & np.isfinite(t)
    p, t = p[keep], t[keep].astype(int)
    cuts = np.arange(1, n_levels, dtype=float) - 0.5
    if p.size < 2:
        return cuts
    labels = np.arange(n_levels)
    u = np.unique(p)
    mids = np.r_[u[0] - 1e-6, 0.5 * (u[1:] + u[:-1]), u[-1] + 1e-6]

    def score(c: np.ndarray) -> float:
        k = cohen_kappa(_count_cuts(p, c), t, weights="quadratic", labels=labels)
        return float(k) if np.isfinite(k) else -np.inf

    best = score(cuts)
    for _ in range(passes):
        changed = False
        for j in range(len(cuts)):
            lo = cuts[j - 1] if j > 0 else -np.inf
            hi = cuts[j + 1] if j + 1 < len(cuts) else np.inf
            for m in mids[(mids > lo) & (mids < hi)]:
                trial = cuts.copy()
                trial[j] = m
                s = score(trial)
                if s > best + 1e-12:
                    best, cuts, changed = s, trial, True
        if not changed:
            break
    return cuts


def pattern_offsets(logp: np.ndarray, index: np.ndarray, grid: Sequence[float] = tuple(np.linspace(-2, 2, 41)),
                    passes: int = 2) -> np.ndarray:
    """Offsets added to the ``(N, 4)`` pattern log-probabilities (the first kept 0) that maximise
    the kappa of the argmax against the readers' majority ``index`` (``-1``: none given)."""
    lp, idx = np.asarray(logp, float), np.asarray(index).astype(int).ravel()
    keep = idx >= 0
    lp, idx = lp[keep], idx[keep]
    k = lp.shape[1] if lp.ndim == 2 else 4
    off = np.zeros(k)
    if not len(idx):
        return off

    def score(o: np.ndarray) -> float:
        v = cohen_kappa((lp + o).argmax(axis=1), idx, labels=np.arange(k))
        return float(v) if np.isfinite(v) else -np.inf

    best = score(off)
    for _ in range(passes):
        for j in range(1, k):
            for g in grid:
                trial = off.copy()
                trial[j] = g
                s = score(trial)
                if s > best + 1e-12:
                    best, off = s, trial
    return off


def choose_operating_points(rows: dict[str, np.ndarray], spec: Any, scale: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every operating point from held-out rows.

    Args:
        rows: ``edema``, ``edema_target``, ``fat``, ``fat_target``, ``fascial_prob``,
            ``fascial_target``, ``subcut_prob``, ``subcut_target`` ``(N, R)``,
            ``pattern_logp`` ``(N, 4)``, ``pattern_index`` ``(N,)``.
        spec: :class:`~nxp2seg.models.grading_spec.OperatingSpec`.
        scale: the edema :class:`~nxp2seg.data.schema.GradeScale`.

    Returns:
        ``(points, report)``: :meth:`~nxp2seg.models.grading.Grader.set_operating_points`'
        entries, and what decided them.
    """
    points: dict[str, Any] = {}
    report: dict[str, Any] = {}
    for key, prob, target in (("fascial_threshold", "fascial_prob", "fascial_target"),
                              ("subcut_threshold", "subcut_prob", "subcut_target")):
        points[key], report[key] = flag_threshold(rows[prob], rows[target], spec.flags,
                                                  spec.min_specificity, spec.threshold)
    if spec.grades == "kappa":
        points["edema_cuts"] = kappa_cuts(
            rows["edema"], integer_grade(rows["edema_target"], scale), scale.n_levels).tolist()
    if spec.fat_grades == "kappa":
        points["fat_cuts"] = kappa_cuts(
            rows["fat"], integer_grade(rows["fat_target"], FAT_SCALE), FAT_SCALE.n_levels).tolist()
    report["grades"] = {"rule": spec.grades, "fat_rule": spec.fat_grades,
                        **{k: points[k] for k in ("edema_cuts", "fat_cuts") if k in points}}
    if spec.pattern == "kappa":
        points["pattern_offset"] = pattern_offsets(rows["pattern_logp"], rows["pattern_index"]).tolist()
    report["pattern"] = {"rule": spec.pattern, "offset": points.get("pattern_offset")}
    return points, report
