"""Segmentation quality of a prediction folder against the cohort's label maps.

Compared on the **native T1 grid**: ``predict`` writes ``seg.nii.gz`` on the
T1's grid and affine, and ``labelsTr`` maps live on the same grid (dataset
contract), so no resampling is involved and nothing is interpolated.

Both maps are first rolled up to the compartment schema
(``LabelSchema.rollup_lut``) through their own schemas (the bundle's for the
prediction, the cohort's for the truth), so a muscle-level model is scored per
compartment region like a compartment-level one. When both the model and the
cohort label muscles, every muscle is also scored on the maps as they are
(rows named like the muscle-graded regions, ``thigh_semimembranosus_right``);
``graded`` marks the rows of the level the cohort grades, which ``dice_mean``
averages. Per case and region:

* **Dice** ``2|P∩T| / (|P|+|T|)`` (:func:`nxp2seg.stats.segmentation.dice`); a region absent from both maps is not
  scored (NaN); absent from one only scores 0;
* **HD95** in mm: the 95th percentile of the symmetric surface distances,
  as MONAI's ``compute_hausdorff_distance(percentile=95, spacing=voxel size)``
  (checked against it in the tests) but with SciPy's distance transform on the
  masks' bounding box, which is many times faster on full-size images;
  undefined (NaN) when either mask is empty -- the Dice of 0 shows that miss;
* **right/left swap** (:func:`nxp2seg.stats.segmentation.lr_swaps`): more than
  half of a true region's voxels labelled as the other leg.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from nxp2seg.data.schema import (
    COMPARTMENTS,
    MUSCLES,
    SIDES,
    STRUCTURES,
    LabelSchema,
    default_compartment_schema,
    muscle_region_name,
)
from nxp2seg.data.sides import side_lut
from nxp2seg.evaluation.inputs import EvaluationSet
from nxp2seg.stats.segmentation import dice, lr_swaps

__all__ = ["SEGMENTATION_COLUMNS", "case_segmentation", "evaluate_segmentation", "hd95",
           "muscle_segmentation"]

SEGMENTATION_COLUMNS = ["case_id", "subject_id", "station", "region", "graded", "dice", "hd95_mm",
                        "truth_voxels", "pred_voxels", "lr_swap"]
_COMPARTMENT = default_compartment_schema()
_SIDES = side_lut(_COMPARTMENT)
# Non-graded structures are also scored (Dice, HD95): :data:`~nxp2seg.data.schema.STRUCTURES`,
# by their compartment-schema names.


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: the mask minus its erosion (face connectivity), as MONAI's edges."""
    return mask & ~ndimage.binary_erosion(mask)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, ...]) -> float:
    """95th-percentile symmetric Hausdorff distance in mm; NaN when a mask is empty.

    Distances from every boundary voxel of one mask to the nearest boundary
    voxel of the other (exact Euclidean distance transform with the voxel
    ``spacing``), the 95th percentile of each direction (linear
    interpolation), and the larger of the two: MONAI's
    ``compute_hausdorff_distance(percentile=95, directed=False)``, computed on
    the masks' bounding box (which the distances do not depend on) to stay
    fast on full-size images.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if not pred.any() or not truth.any():
        return math.nan
    both = np.argwhere(pred | truth)
    lo, hi = both.min(axis=0), both.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p = np.pad(pred[box], 1)
    t = np.pad(truth[box], 1)
    ps, ts = _surface(p), _surface(t)
    to_truth = ndimage.distance_transform_edt(~ts, sampling=spacing)[ps]
    to_pred = ndimage.distance_transform_edt(~ps, sampling=spacing)[ts]
    return float(max(np.percentile(to_truth, 95), np.percentile(to_pred, 95)))


def _rolled(data: np.ndarray, schema: LabelSchema, what: str) -> np.ndarray:
    """Label values mapped to the compartment schema through ``schema.rollup_lut()``."""
    lut = schema.rollup_lut()
    if data.dtype.kind not in "iu":
        rounded = np.rint(data)
        if not np.array_equal(rounded, data, equal_nan=False):
            raise ValueError(f"{what} holds non-integer label values; labels need nearest-neighbour "
                             "resampling")
        data = rounded
    if data.size and (data.min() < 0 or data.max() >= len(lut)):
        bad = [int(v) for v in np.unique(data) if v < 0 or v >= len(lut)]
        raise ValueError(f"{what} holds label values {bad[:10]} that its schema does not define")
    return lut[data.astype(np.intp, copy=False)]


def case_segmentation(pred: np.ndarray, truth: np.ndarray, station: str,
                      spacing: tuple[float, ...], *, with_hd95: bool = True) -> list[dict]:
    """Dice, HD95 and swap per region of one case; maps in compartment values (rolled up).

    Returns one dict per graded region of ``station`` and per structure
    (subcutaneous right / left, bone; ``graded`` False).
    """
    labels = _COMPARTMENT.labels
    graded = _COMPARTMENT.region_names(station)
    regions = _COMPARTMENT.regions
    swaps = lr_swaps(pred, truth, _SIDES, {n: regions[n].labels for n in graded})
    rows = []
    for name in (*graded, *STRUCTURES):
        p, t = pred == labels[name], truth == labels[name]
        rows.append({"region": name, "graded": name in graded, "dice": dice(p, t),
                     "hd95_mm": hd95(p, t, spacing) if with_hd95 else math.nan,
                     "truth_voxels": int(t.sum()), "pred_voxels": int(p.sum()),
                     "lr_swap": swaps.get(name, False) if name in graded else False})
    return rows


def muscle_segmentation(pred: np.ndarray, truth: np.ndarray, station: str, pred_schema: LabelSchema,
                        truth_schema: LabelSchema, spacing: tuple[float, ...], *, graded: bool,
                        with_hd95: bool = True) -> list[dict]:
    """Dice and HD95 per muscle of ``station`` on two muscle-level maps (each in its own schema)."""
    rows = []
    for side in SIDES:
        for comp in COMPARTMENTS[station]:
            for muscle in MUSCLES[station][comp]:
                label = f"{muscle}_{side}"
                if label not in pred_schema.labels or label not in truth_schema.labels:
                    continue
                p, t = pred == pred_schema.labels[label], truth == truth_schema.labels[label]
                rows.append({"region": muscle_region_name(station, muscle, side), "graded": graded,
                             "dice": dice(p, t), "hd95_mm": hd95(p, t, spacing) if with_hd95 else math.nan,
                             "truth_voxels": int(t.sum()), "pred_voxels": int(p.sum()), "lr_swap": False})
    return rows


def _load_pair(es: EvaluationSet, case_id: str, raw: bool = False) -> tuple[np.ndarray, ...]:
    seg_path = es.predictions.seg_path(case_id)
    truth_path = es.cohort.label_path(case_id)
    if not seg_path.is_file():
        raise ValueError(f"{seg_path}: missing although the case is listed as finished; predict it again")
    seg, truth = nib.load(seg_path), nib.load(truth_path)
    if seg.shape[:3] != truth.shape[:3]:
        raise ValueError(f"{seg_path} has shape {seg.shape} but {truth_path} has {truth.shape}; "
                         "both must be on the case's T1 grid")
    tolerance = 0.05 * float(np.min(truth.header.get_zooms()[:3]))  # verify's: 5% of a voxel
    if not np.allclose(seg.affine, truth.affine, atol=tolerance):
        raise ValueError(f"{seg_path} and {truth_path} have different affines; both must be on the "
                         "case's T1 grid")
    p_raw = np.asarray(seg.dataobj).reshape(seg.shape[:3])
    t_raw = np.asarray(truth.dataobj).reshape(truth.shape[:3])
    p = _rolled(p_raw, es.prediction_schema, str(seg_path))
    t = _rolled(t_raw, es.schema, str(truth_path))
    zooms = tuple(float(z) for z in truth.header.get_zooms()[:3])
    return (p, t, zooms, p_raw, t_raw) if raw else (p, t, zooms)


def evaluate_segmentation(es: EvaluationSet, *, with_hd95: bool = True,
                          progress: Callable[[str], None] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Per case and region segmentation figures for the evaluated cases that have a label map.

    Returns:
        ``(table, notes)``: :data:`SEGMENTATION_COLUMNS`, one row per case and
        region; notes name the cases that could not be compared and why.
    """
    rows, notes = [], []
    labelled = [c for c in es.cases.itertuples(index=False) if es.cohort.has_label(c.case_id)]
    muscles = es.schema.level == "muscle" and es.prediction_schema.level == "muscle"
    by_muscle = es.schema.graded_level == "muscle"
    for i, case in enumerate(labelled):
        if progress is not None:
            progress(f"segmentation {i + 1}/{len(labelled)}: {case.case_id}")
        try:
            pred, truth, spacing, p_raw, t_raw = _load_pair(es, case.case_id, raw=True)
        except (ValueError, OSError, nib.filebasedimages.ImageFileError) as e:
            notes.append(f"segmentation of {case.case_id} not evaluated: {e}")
            continue
        case_rows = case_segmentation(pred, truth, case.station, spacing, with_hd95=with_hd95)
        if by_muscle:  # the cohort grades muscles: the compartments are reported, not averaged
            for row in case_rows:
                row["graded"] = False
        if muscles:
            case_rows += muscle_segmentation(p_raw, t_raw, case.station, es.prediction_schema,
                                             es.schema, spacing, graded=by_muscle,
                                             with_hd95=with_hd95)
        for row in case_rows:
            rows.append({"case_id": case.case_id, "subject_id": case.subject_id,
                         "station": case.station, **row})
    return pd.DataFrame(rows, columns=SEGMENTATION_COLUMNS), notes
