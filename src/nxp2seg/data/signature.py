"""Image signature of a cohort, and how far one exam lies from it (the out-of-distribution guard).

A model trained on one kind of image says nothing trustworthy about another:
a Dixon water image given as STIR to a T1/STIR model looks like STIR at a
glance (fat dark, muscle grey) and is segmented and graded with confidence.
The bundle therefore records its training cohort's *signature* and
``predict`` scores every exam against it.

Features of one exam (scale-free, logarithms):

* **contrast**, per channel: *bright tissue / muscle*, the median signal of the
  brightest quarter of the body outside muscle on channel 0 (subcutaneous fat
  and marrow, on T1 and Dixon fat images alike) over the median signal of
  muscle (T1: about 3; STIR: about 0.2; a Dixon fat image: 10 or more over
  normal muscle; a water image: under 0.1); and *muscle spread*, the
  muscle's interquartile range over its median (noise, texture, fatty
  infiltration); and the *correlation of the two channels inside muscle*
  (Fisher z).
* **geometry**: in-plane and slice spacing, matrix, field of view, slices.

Muscle is the exam's labelled (training) or predicted (``predict``) graded
regions; the body is where either channel exceeds 10% of its 99th percentile.

The score has two parts, and the exam's ``ood_score`` is the larger:

* the five contrast features together: their Mahalanobis distance from the
  training cases' mean under the training covariance (Ledoit-Wolf shrinkage,
  scikit-learn: a few dozen cases estimate a 5 x 5 covariance poorly; no
  direction's standard deviation below 0.15, so a cohort of a few exams does
  not make every new exam "unlike"). The
  features move together (fatty infiltration raises a T1's muscle signal
  and its spread at once), so a combination no training case showed (a
  water image's very dark fat *with* a fat image's spread) stands out even
  when each feature alone lies inside the training range;
* each geometry feature alone: its robust z (distance from the training
  median over 1.4826 x MAD, floored at 0.25 in log units: a feature every
  training case shares, such as the matrix, would otherwise flag any change).

Above the threshold (:data:`DEFAULT_THRESHOLD`, chosen on phantom validation
exams: docs/realdata.md) the exam is ``input_unlike_training``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["DEFAULT_THRESHOLD", "TOO_LITTLE_MUSCLE", "exam_features", "build_signature", "cohort_signature", "ood_score"]

#: Score above which an exam is unlike the training cohort.
DEFAULT_THRESHOLD = 4.5
#: ``feature`` of an exam whose segmentation holds too little muscle to be measured (flagged).
TOO_LITTLE_MUSCLE = "too_little_muscle"
#: Smallest robust scale of a geometry feature (log units).
_GEOMETRY_FLOOR = 0.25
#: Smallest standard deviation of a contrast feature (log units; Fisher z for the correlation).
_CONTRAST_FLOOR = 0.15
_EPS = 1e-6


def _is_contrast(name: str) -> bool:
    return name.endswith(("_bright_over_muscle", "_muscle_spread", "_muscle_correlation"))


def exam_features(
    channels: Sequence[np.ndarray], muscle: np.ndarray, affine: np.ndarray, names: Sequence[str]
) -> dict[str, float] | None:
    """The signature features of one exam (``None`` when it has too little muscle to measure).

    Args:
        channels: channel 0 and channel 1 on one grid ``(X, Y, Z)`` (channel 1 resampled
            onto channel 0's).
        muscle: ``(X, Y, Z)`` bool, the graded regions.
        affine: the grid's voxel -> world affine.
        names: the channel names (``T1``, ``STIR`` or ``FAT``, ``WATER``), for the keys.
    """
    c = [np.asarray(ch, dtype=np.float32) for ch in channels]
    body = np.zeros(c[0].shape, bool)
    for ch in c:
        body |= ch > 0.1 * np.percentile(ch, 99)
    muscle = np.asarray(muscle, bool) & body
    other = body & ~muscle
    if muscle.sum() < 50 or other.sum() < 50:
        return None
    bright = other & (c[0] >= np.percentile(c[0][other], 75))
    out: dict[str, float] = {}
    for name, ch in zip(names, c):
        m = float(np.median(ch[muscle]))
        q25, q75 = np.percentile(ch[muscle], [25, 75])
        key = name.lower()
        out[f"{key}_bright_over_muscle"] = float(np.log((np.median(ch[bright]) + _EPS) / (m + _EPS)))
        out[f"{key}_muscle_spread"] = float(np.log((q75 - q25 + _EPS) / (abs(m) + _EPS)))
    # how the channels move together inside muscle (Fisher z of their correlation): fatty infiltration
    # moves T1 and STIR apart; noise, edema and imperfect fat-water separation each leave their mark
    r = np.corrcoef(c[0][muscle], c[1][muscle])[0, 1]
    out["channels_muscle_correlation"] = float(np.arctanh(np.clip(np.nan_to_num(r), -0.999, 0.999)))
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    shape = np.asarray(c[0].shape[:3], float)
    order = np.argsort(spacing)  # the two finest axes are in-plane
    inplane, through = order[:2], order[2]
    out["inplane_spacing_mm"] = float(np.log(spacing[inplane].mean()))
    out["slice_spacing_mm"] = float(np.log(spacing[through]))
    out["matrix"] = float(np.log(shape[inplane].mean()))
    out["field_of_view_mm"] = float(np.log((shape[inplane] * spacing[inplane]).mean()))
    out["slices"] = float(np.log(shape[through]))
    return out


def build_signature(features: Iterable[Mapping[str, float]], channels: Sequence[str],
                    threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any] | None:
    """The training cohort's signature from its cases' features (``None`` without cases)."""
    from sklearn.covariance import LedoitWolf

    rows = [dict(f) for f in features if f]
    if not rows:
        return None
    names = sorted(set.intersection(*(set(r) for r in rows)))
    table = {}
    for n in names:
        v = np.array([r[n] for r in rows], float)
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med)))
        table[n] = {"median": med, "scale": max(1.4826 * mad, 0.0 if _is_contrast(n) else _GEOMETRY_FLOOR),
                    "min": float(v.min()), "max": float(v.max())}
    contrast = [n for n in names if _is_contrast(n)]
    x = np.array([[r[n] for n in contrast] for r in rows], float)
    cov = LedoitWolf().fit(x).covariance_ if len(rows) > 1 else np.zeros((len(contrast), len(contrast)))
    # no direction of the contrast features varies less than _CONTRAST_FLOOR (log units) between
    # exams of one protocol: a few training cases (a fine-tuning cohort of two gives a covariance
    # of rank one) would otherwise make every new exam "unlike"
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    cov = (vectors * np.maximum(values, _CONTRAST_FLOOR**2)) @ vectors.T
    return {"version": 2, "channels": list(channels), "n_cases": len(rows), "threshold": float(threshold),
            "features": table, "contrast": {"names": contrast, "mean": x.mean(axis=0).tolist(),
                                            "covariance": cov.tolist()}}


def ood_score(signature: Mapping[str, Any], features: Mapping[str, float] | None) -> dict[str, Any]:
    """How unlike the training cohort one exam is.

    Returns:
        ``{"ood_score": the larger of the contrast distance and the largest geometry z
        (NaN when the exam could not be measured), "feature": what gave it ("contrast", a
        geometry feature, or :data:`TOO_LITTLE_MUSCLE` when the segmentation holds too little
        muscle to measure the contrast: then the exam is flagged too), "contrast_distance": ..., "z": {feature: robust z},
        "unlike_training": bool}``.
    """
    nan = float("nan")
    if not features:  # the model found (almost) no muscle: nothing like a training exam, or a failed
        # segmentation; either way its outputs cannot be trusted, so the exam is flagged
        return {"ood_score": nan, "feature": TOO_LITTLE_MUSCLE, "contrast_distance": nan, "z": {},
                "unlike_training": True}
    z = {}
    for name, ref in signature["features"].items():
        if name in features:
            z[name] = abs(float(features[name]) - ref["median"]) / max(ref["scale"], _EPS)
    c = signature["contrast"]
    d = np.array([features[n] for n in c["names"]], float) - np.asarray(c["mean"], float)
    distance = float(np.sqrt(max(float(d @ np.linalg.pinv(np.asarray(c["covariance"], float)) @ d), 0.0)))
    parts = {"contrast": distance, **{n: v for n, v in z.items() if not _is_contrast(n)}}
    worst = max(parts, key=parts.get)
    score = float(parts[worst])
    return {"ood_score": score, "feature": worst, "contrast_distance": round(distance, 3),
            "z": {k: round(v, 3) for k, v in z.items()},
            "unlike_training": bool(score > float(signature["threshold"]))}


def cohort_signature(cohort: Any, case_ids: Iterable[str], threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any] | None:
    """The signature of a :class:`~nxp2seg.data.cohort.Cohort` over ``case_ids`` with masks."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    schema = cohort.dataset.schema
    muscle_values = sorted({v for r in schema.regions.values() for v in r.labels})
    names = [cohort.dataset.channel_names[k] for k in sorted(cohort.dataset.channel_names, key=int)]
    rows = []
    for cid in case_ids:
        if not cohort.has_label(cid):
            continue
        img0, img1 = nib.load(cohort.image_path(cid, 0)), nib.load(cohort.image_path(cid, 1))
        if img1.shape[:3] != img0.shape[:3] or not np.allclose(img1.affine, img0.affine, atol=1e-3):
            img1 = resample_from_to(img1, (img0.shape[:3], img0.affine), order=1)
        label = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
        rows.append(exam_features([img0.get_fdata(), img1.get_fdata()], np.isin(label, muscle_values),
                                  img0.affine, names))
    signature = build_signature(rows, names, threshold)
    if signature is not None:  # whether this cohort (this contrast) taught the model any edema grade
        grades = cohort.grades
        graded = grades[grades["case_id"].astype(str).isin(set(map(str, case_ids)))]
        signature["edema_graded_cases"] = int(graded.dropna(subset=["edema_grade"])["case_id"].nunique())
    return signature

