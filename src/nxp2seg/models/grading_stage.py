"""The grading stage: after the segmentation fit, learn the grader from the cohort.

``python -m nxp2seg.train`` runs it once the segmenter's best weights are
loaded (:func:`nxp2seg.train.run_grading_stage`); ``scripts/grading_stage_on_bundle.py``
runs it on an existing bundle. Steps:

1. **Perturbation** (optional, ``grading.fit.perturb``): the strength of the
   input perturbation under which the training cases the segmenter saw segment
   about as well as the validation cases (:mod:`nxp2seg.models.perturbation`).
2. **Cohort statistics**: the training cohort's tissue statistics on its
   labelled training cases set every threshold of the features
   (:mod:`nxp2seg.models.grading_scale`).
3. **Features**: every graded case of train, val and test, with or without a
   mask, segmented by the frozen network as predict segments it and pooled
   (:mod:`nxp2seg.models.grading_features`).
4. **Head**: read-outs by scikit-learn, the MLP by a Lightning Trainer
   (:mod:`nxp2seg.models.grading_fit`), on the training cases.
5. **Operating points** on held-out predictions: the training subjects'
   out-of-fold outputs (``grading.fit.folds`` >= 2) or the validation cases
   (:mod:`nxp2seg.models.grading_operating`).
6. **Agreement** on the validation and test cases
   (:func:`~nxp2seg.models.metrics.grading_metrics`, at the operating points)
   and the readers' own kappa on the same cases.

The grader then sits in the bundle beside the network (``grader.*``); the
network's weights are never changed.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nxp2seg.models.grading_features import CaseFeatures, cohort_scale, extract_features
from nxp2seg.models.grading_fit import cross_fit, fit_head, head_outputs
from nxp2seg.models.grading_operating import choose_operating_points
from nxp2seg.models.grading_scale import thresholds
from nxp2seg.models.grading_spec import GraderSpec
from nxp2seg.models.metrics import grading_metrics, rater_edema_kappa

__all__ = ["StageResult", "run_grading_stage", "stage_rows"]

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    """What :func:`run_grading_stage` returns.

    Attributes:
        metrics: ``{"val": {...}, "test": {...}}``: :data:`~nxp2seg.models.metrics.GRADING_METRICS`
            and ``edema_kappa_quadratic_rater_vs_rater`` per split (splits with graded cases).
        summary: plain facts of the stage for ``validation.json``: counts, the cohort's
            statistics and thresholds, the operating points and what chose them, seconds.
        features: ``{"train", "val", "test"}`` :class:`CaseFeatures` (for inspection and scripts).
    """

    metrics: dict[str, dict[str, float]]
    summary: dict[str, Any]
    features: dict[str, CaseFeatures] = field(repr=False)


def stage_rows(grader: Any, feats: CaseFeatures, out: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """The grader's calls on ``feats`` (or on given head outputs ``out``) with the readers' targets,
    as :func:`~nxp2seg.models.metrics.grading_metrics` and the operating points read them."""
    out = head_outputs(grader.head, feats) if out is None else out
    calls = {k: v.cpu().numpy() for k, v in grader.calls(out, feats.station_index).items()}
    t = {k: v.numpy() for k, v in feats.targets.items()}
    return {
        "edema": calls["edema"], "edema_target": t["edema_target"],
        "fat": calls["fat"], "fat_target": t["fat_target"],
        "fascial_prob": calls["fascial_prob"], "fascial_target": t["fascial_target"],
        "subcut_prob": calls["subcut_prob"], "subcut_target": t["subcut_target"],
        "pattern_prob": calls["pattern_prob"], "pattern_index": t["pattern_index"].reshape(-1),
        "slot_valid": calls["slot_valid"],
        "edema_int": calls["edema_int"], "fat_int": calls["fat_int"],
        "fascial_flag": calls["fascial_flag"], "subcut_flag": calls["subcut_flag"],
        "pattern_pred": calls["pattern_index"],
        "pattern_logp": np.log(np.clip(calls["pattern_prob"], 1e-12, 1.0)),
    }


def _metrics(scale: Any, rows: dict[str, np.ndarray]) -> dict[str, float]:
    return grading_metrics(scale, **{k: v for k, v in rows.items() if k != "pattern_logp"})


def _perturbation(fit: Any, datamodule: Any, segment: Any, model: Any,
                  unseen_dice: float | None) -> tuple[float, dict[str, Any]]:
    """The perturbation strength for the seen training cases, and what decided it."""
    if fit.perturb == 0:
        return 0.0, {"strength": 0.0, "mode": "off"}
    if fit.perturb != "auto":
        return float(fit.perturb), {"strength": float(fit.perturb), "mode": "fixed"}
    from monai import transforms as mt

    from nxp2seg.data.pipelines import preprocess_transforms
    from nxp2seg.models.perturbation import calibrate_strength

    n = int(fit.calibration_cases)
    seen = [i for i in datamodule.grading_items("train") if "label" in i][:n]
    unseen = [i for i in datamodule.grading_items("val") if "label" in i][:n]
    if not seen or not (unseen or unseen_dice is not None):
        return 0.0, {"strength": 0.0, "mode": "auto", "skipped": "needs training and validation cases with masks"}
    load = mt.Compose(preprocess_transforms(datamodule.preprocessing, with_label=True))
    schema = datamodule.schema

    def values_of(station: str) -> list[int]:
        return sorted(v for r in schema.region_names(station) for v in schema.regions[r].labels)

    strength, report = calibrate_strength(
        segment, seen, unseen, lambda it: load({k: it[k] for k in ("t1", "stir", "label")}),
        values_of, next(model.parameters()).device, seed=fit.seed, target=unseen_dice,
    )
    return strength, {**report, "mode": "auto"}


def _held_out(grader: Any, untrained: Any, feats: dict[str, CaseFeatures], fit: Any,
              accelerator: str) -> tuple[CaseFeatures | None, dict[str, torch.Tensor] | None, str]:
    """Cases and head outputs the head did not train on: the training subjects' out-of-fold
    outputs, else the validation cases (outputs ``None``: the fitted head's)."""
    train = feats["train"]
    n_subjects = len(set(train.subject_ids))
    if int(fit.folds) >= 2 and n_subjects >= 2:
        folds = min(int(fit.folds), n_subjects)
        oof = cross_fit(untrained, train, dataclasses.replace(fit, folds=folds), accelerator,
                        grader.features.feature_names())
        return train, oof, f"out-of-fold predictions on the training subjects ({folds} folds)"
    if "val" in feats:
        return feats["val"], None, "the validation cases"
    return None, None, "none (no held-out predictions: default operating points)"


def run_grading_stage(
    model: Any,
    datamodule: Any,
    spec: GraderSpec,
    segment: Any,
    unseen_dice: float | None = None,
    accelerator: str = "cpu",
    cached: StageResult | None = None,
) -> StageResult:
    """Learn ``model.grader`` (in place) from the cohort; score validation and test.

    Args:
        model: :class:`~nxp2seg.models.myositis.GradingNet` with the fitted network and a
            fresh grader (:func:`~nxp2seg.models.grading.build_grader`); put in eval mode.
        datamodule: the set-up :class:`~nxp2seg.data.datamodule.CohortDataModule`.
        spec: the grader's :class:`~nxp2seg.models.grading_spec.GraderSpec`.
        segment: the sliding-window inference ``nxp2seg.predict`` segments with.
        unseen_dice: the segmenter's ``val/dice_mean``, the perturbation's target (``None``:
            measured on the validation cases).
        accelerator: Lightning's for the head (``cpu``, ``gpu``).
        cached: an earlier result of the same segmenter and feature config: its features,
            thresholds and cohort statistics are reused (steps 1-3 skipped; scripts that
            compare head or operating-point settings).
    """
    grader = model.grader
    model.eval()
    t = {"start": time.perf_counter()}
    if cached is None:
        strength, perturbation = _perturbation(spec.fit, datamodule, segment, model, unseen_dice)
    else:
        perturbation = cached.summary["perturbation"]
    t["calibrate"] = time.perf_counter()
    if cached is None:
        scale = cohort_scale(datamodule, grader.features.reference, spec.reference.clean_sd,
                             spec.features.stir_high_quantile)
        grader.features.set_thresholds(thresholds(scale, spec.features, spec.reference))
        scale_report = scale.to_dict()
    else:
        grader.features.set_thresholds(cached.summary["thresholds"])
        scale_report = cached.summary["cohort_scale"]
    t["scale"] = time.perf_counter()
    feats: dict[str, CaseFeatures] = {} if cached is None else dict(cached.features)
    for split in ("train", "val", "test") if cached is None else ():
        items = datamodule.grading_items(split)
        if not items:
            if split == "train":
                raise ValueError("grading stage: no graded training case (grades.csv); the head has nothing to learn from")
            continue
        feats[split] = extract_features(model, items, datamodule, segment, split,
                                        perturb=strength if split == "train" else 0.0, seed=spec.fit.seed)
    t["extract"] = time.perf_counter()
    untrained = copy.deepcopy(grader.head)
    fitted = fit_head(grader.head, feats["train"], feats.get("val"), spec.fit, accelerator,
                      grader.features.feature_names())
    t["fit"] = time.perf_counter()
    held, held_out, source = _held_out(grader, untrained, feats, spec.fit, accelerator)
    scale_grades = datamodule.grade_scale
    operating: dict[str, Any] = {"chosen_on": source}
    if held is not None:
        rows = stage_rows(grader, held, held_out)
        points, operating["report"] = choose_operating_points(rows, spec.operating, scale_grades)
        grader.set_operating_points(points)
        operating["held_out_agreement"] = _metrics(scale_grades, stage_rows(grader, held, held_out))
    operating["points"] = grader.operating_points()
    t["operating"] = time.perf_counter()
    metrics: dict[str, dict[str, float]] = {}
    for split, f in feats.items():
        if split == "train":
            continue
        m = _metrics(scale_grades, stage_rows(grader, f))
        m["edema_kappa_quadratic_rater_vs_rater"] = rater_edema_kappa(datamodule.cohort.grades, scale_grades, f.case_ids)
        metrics[split] = {k: float(v) for k, v in m.items()}
    names = list(t)
    seconds = {b: round(t[b] - t[a], 2) for a, b in itertools.pairwise(names)}
    summary = {
        "spec": spec.to_dict(),
        "n_cases": {k: len(f) for k, f in feats.items()},
        "n_train_without_mask": int((~feats["train"].has_mask).sum()),
        "feature_size": int(grader.features.out_features),
        "cohort_scale": scale_report,
        "thresholds": grader.features.thresholds(),
        "perturbation": perturbation,
        "fit": fitted,
        "operating": operating,
        "seconds": {**seconds, "per_case_pass": round((t["extract"] - t["scale"]) / max(1, sum(map(len, feats.values()))), 3)},
    }
    log.info("grading stage: %d cases, head fitted in %.1f s, operating points on %s",
             sum(map(len, feats.values())), seconds["fit"], source)
    return StageResult(metrics=metrics, summary=summary, features=feats)
