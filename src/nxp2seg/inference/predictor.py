"""Segment and grade one exam with a model bundle: files in, arrays and grades out.

:class:`Predictor` holds the bundle's network, grader and preprocessing and
turns one :class:`~nxp2seg.inference.inputs.CaseInput` into a
:class:`CasePrediction`:

1. **load and check** T1 and STIR (NIfTI, or DICOM series read exactly;
   :func:`load_case_images`): 3D, finite, not empty, overlapping in space;
2. **preprocess** exactly as the bundle was trained (its
   :class:`~nxp2seg.data.preprocessing.Preprocessing`: closest canonical
   orientation, STIR onto T1, target spacing, normalisation, laterality);
3. **segment**: sliding-window inference with the bundle's settings (flip
   test-time augmentation included); the station is the given one, or the one
   whose compartments the unmasked network finds more of (reported as inferred);
   a given station the network clearly doubts gets a ``station_warning``;
4. **grade**: the grader inside the sliding-window segmentation of step 3
   (:meth:`~nxp2seg.models.myositis.GradingNet.grade_probabilities`; the grader
   was trained on exactly these probabilities), its integer grades, flags and
   pattern at the bundle's operating points (or the ``thresholds`` given);
5. **map back**: class probabilities resampled through the affines onto the
   T1's native grid, argmax there (:func:`~nxp2seg.inference.geometry.probabilities_to_labels`);
   region volumes and the STIR edema measurement (:mod:`nxp2seg.inference.edema`,
   with the grader's own normal-muscle reference) on that grid;
6. **scores** from the domain rules (:mod:`nxp2seg.grading.rules`).

Writing is :mod:`nxp2seg.inference.writers`' job; running a batch, the
``predict`` command's.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import monai.transforms as mt
import nibabel as nib
import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from monai.data.image_reader import NibabelReader
from monai.data.utils import correct_nifti_header_if_necessary
from monai.utils import ImageMetaKey

from nxp2seg.data.pipelines import preprocess_transforms
from nxp2seg.data.schema import PATTERNS, STATIONS
from nxp2seg.data.sides import lr_swap_lut, orientation_lr_axis
from nxp2seg.data.signature import TOO_LITTLE_MUSCLE
from nxp2seg.grading.tables import scores_table
from nxp2seg.inference.edema import edema_map
from nxp2seg.inference.geometry import describe_geometry, probabilities_to_labels, resample_to_grid
from nxp2seg.inference.inputs import CaseInput
from nxp2seg.inference.loading import MAX_VOXELS, CaseError, image_data, load_case_images
from nxp2seg.inference.writers import compartment_rows
from nxp2seg.models.segmenter import Segmenter, mask_logits

__all__ = ["MAX_VOXELS", "THRESHOLD_KEYS", "CaseError", "CasePrediction", "Predictor", "apply_thresholds",
           "load_case_images"]

#: A given station is questioned when the other station's mean foreground confidence is higher by this.
STATION_CONFIDENCE_MARGIN = 0.02


@dataclass
class CasePrediction:
    """Everything predicted for one exam (arrays on the T1's native grid)."""

    case_id: str
    subject_id: str
    station: str
    station_source: str  # given | inferred
    labels: np.ndarray
    t1_image: nib.Nifti1Image
    stir_native: np.ndarray
    edema: np.ndarray
    regions: list[dict[str, Any]]
    case: dict[str, Any]
    geometry: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------
# the predictor
# ---------------------------------------------------------------------------


def _as_loaded(img: nib.Nifti1Image, data: np.ndarray, source: Any) -> Any:
    """What the bundle's ``LoadImaged`` (MONAI ``NibabelReader``, channel first) gives for ``img``,
    from the voxels ``data`` already read and checked (the file is not decompressed twice)."""
    reader = NibabelReader(dtype=np.float32)
    reader.filenames = (str(source),)  # what NibabelReader.read would have set
    in_memory = correct_nifti_header_if_necessary(nib.Nifti1Image(data, img.affine, img.header))
    array, meta = reader.get_data(in_memory)
    meta[ImageMetaKey.FILENAME_OR_OBJ] = str(source)
    return mt.EnsureChannelFirst()(MetaTensor.ensure_torch_and_prune_meta(array, meta))


def _native_order(stir: Any, t1_img: nib.Nifti1Image) -> np.ndarray | None:
    """The STIR resampled onto the reoriented T1 (a MetaTensor), in the T1's own axis order.

    Reorienting is exact (axes permuted and flipped). ``None`` when the result
    is not exactly on the T1's grid (then the caller resamples).
    """
    data = np.asarray(stir.as_tensor() if hasattr(stir, "as_tensor") else stir, dtype=np.float32)[0]
    affine = np.asarray(stir.affine, dtype=float)
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.io_orientation(t1_img.affine))
    out = nib.orientations.apply_orientation(data, ornt)
    back = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    if out.shape != tuple(t1_img.shape[:3]) or not np.allclose(back, t1_img.affine, atol=1e-3):
        return None
    return np.ascontiguousarray(out, dtype=np.float32)


#: ``thresholds`` keys (predict's config) -> the grader's operating-point buffers.
THRESHOLD_KEYS: dict[str, str] = {"fascial": "fascial_threshold", "subcutaneous": "subcut_threshold"}


def apply_thresholds(grader: Any, thresholds: dict[str, float | None] | None) -> None:
    """Replace the grader's flag thresholds by the given ones (``None`` values: keep the bundle's)."""
    unknown = sorted(set(thresholds or {}) - set(THRESHOLD_KEYS))
    if unknown:
        raise ValueError(f"thresholds: unknown findings {unknown}; known: {sorted(THRESHOLD_KEYS)}")
    for key, value in (thresholds or {}).items():
        if value is not None and not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"thresholds.{key}={value}: a probability threshold is in [0, 1]")
    grader.set_operating_points({THRESHOLD_KEYS[k]: float(v) for k, v in (thresholds or {}).items() if v is not None})


class Predictor:
    """A bundle ready to segment and grade exams.

    Args:
        bundle: a loaded :class:`~nxp2seg.models.bundle.Bundle`.
        device: ``cpu``, ``cuda``, ``cuda:1``...
        flip_tta: override the bundle's flip test-time augmentation (``None``: keep it).
        sw_batch_size, overlap, crop_to_body: override the bundle's sliding-window settings.
        amp: mixed precision (bf16) on CUDA; ignored on CPU (it is slower there).
        thresholds: ``{"fascial": p, "subcutaneous": p}`` flag thresholds on the probability
            instead of the bundle's operating points (``None`` values keep the bundle's).
    """

    def __init__(self, bundle: Any, device: str | torch.device = "cpu", flip_tta: bool | None = None,
                 sw_batch_size: int | None = None, overlap: float | None = None, amp: bool = True,
                 crop_to_body: bool | None = None, thresholds: dict[str, float | None] | None = None):
        self.bundle = bundle
        self.device = torch.device(device)
        self.prep = bundle.preprocessing
        self.schema = bundle.schema
        self.scale = bundle.grade_scale
        self.model = bundle.build_model(self.device)  # GradingNet: net (+ grader)
        if self.model.grader is not None:
            apply_thresholds(self.model.grader, thresholds)
        inference = dict(bundle.config.get("model", {}).get("inference", {}) or {})
        for key, value in (("flip_tta", flip_tta), ("sw_batch_size", sw_batch_size), ("overlap", overlap),
                           ("crop_to_body", crop_to_body)):
            if value is not None:
                inference[key] = value
        self._lr_lut = lr_swap_lut(self.schema)
        self.segmenter = Segmenter(
            net=self.model.net,
            loss=torch.nn.Identity(),
            optimizer=torch.optim.SGD,
            patch_size=self.prep.patch_size,
            inference=inference,
            lr_permutation=[int(v) for v in lr_swap_lut(self.schema)],
            laterality_channel=len(self.prep.channels) if self.prep.laterality else None,
            lr_axis=orientation_lr_axis(self.prep.orientation),
        ).to(self.device).eval()
        steps = preprocess_transforms(self.prep, with_label=False)
        # split after STIR is resampled onto the (reoriented) T1: that STIR is also the one
        # post-processing measures edema on, back in the T1's own axis order
        cut = next(i for i, t in enumerate(steps) if isinstance(t, mt.ConcatItemsd))
        assert isinstance(steps[0], mt.LoadImaged)  # replaced by the images already read (_as_loaded)
        self._to_t1_grid, self._to_model = mt.Compose(steps[1:cut]), mt.Compose(steps[cut:])
        self.amp = bool(amp) and self.device.type == "cuda"
        self.n_classes = self.schema.max_label + 1

    @property
    def has_grading(self) -> bool:
        return self.model.grader is not None

    @property
    def measures_edema(self) -> bool:
        """Whether ``edema_fraction`` (and the red edema of ``qc.png``) is measured: always on STIR;
        on a Dixon water image only by a grader whose cohort had edema grades (the estimator reads
        STIR hyperintensity; a water image is not STIR, and nothing calibrated it there)."""
        from nxp2seg.inference.exam_checks import is_dixon

        if not is_dixon(self.prep.channels):
            return True
        return self.has_grading and int((self.bundle.signature or {}).get("edema_graded_cases", 0)) > 0

    def _autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _allowed(self, station: str | None) -> torch.Tensor | None:
        if station is None:
            return None
        allowed = torch.zeros(1, self.n_classes, dtype=torch.bool, device=self.device)
        allowed[0, sorted(self.schema.station_labels(station))] = True
        return allowed

    def _infer_station(self, logits: torch.Tensor) -> tuple[str, dict[str, float]]:
        """The station under whose label set the network is most confident.

        The network is trained with station-masked logits, so the logits of the
        other station's labels carry no meaning on their own; instead the logits
        are masked to each station in turn and the mean winning probability over
        the predicted foreground is compared (20/20 held-out phantom cases right).
        """
        confidence = {}
        for st in STATIONS:
            probs = torch.softmax(mask_logits(logits, self._allowed(st)).float(), dim=1)
            top, arg = probs.max(dim=1)
            fg = arg > 0
            confidence[st] = round(float(top[fg].mean()) if bool(fg.any()) else 0.0, 4)
        return max(confidence, key=confidence.get), confidence

    @torch.inference_mode()
    def predict_case(self, case: CaseInput) -> CasePrediction:
        """Segment and grade one exam. Raises :class:`CaseError` with an actionable message."""
        t: dict[str, float] = {}
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="nxp2seg-") as tmp:
            t1_img, stir_img, sources = load_case_images(case, Path(tmp))
            t1_native = image_data(t1_img, "T1", sources["t1"], case.case_id)
            stir_data = image_data(stir_img, "STIR", sources["stir"], case.case_id)
            t["load"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            try:
                on_t1 = self._to_t1_grid({"t1": _as_loaded(t1_img, t1_native, sources["t1"]),
                                          "stir": _as_loaded(stir_img, stir_data, sources["stir"])})
                stir_on_t1 = _native_order(on_t1["stir"], t1_img)
                item = self._to_model(on_t1)
            except Exception as e:  # noqa: BLE001 - MONAI wraps errors; say which case
                raise CaseError(f"{case.case_id}: preprocessing failed ({type(e).__name__}: "
                                f"{str(e).splitlines()[-1] if str(e) else ''})") from None
            t1_img = nib.Nifti1Image(t1_native, t1_img.affine, t1_img.header)  # data in memory
        image = item["image"]
        model_affine = np.asarray(image.affine, dtype=float)
        x = image.as_tensor()[None].float().to(self.device)
        t["preprocess"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        with self._autocast():
            logits = self.segmenter.infer(x, None)  # unmasked; masked to the station below
        notes = []
        likely, counts = self._infer_station(logits)
        station_warning = None
        if case.station is None:
            station, source = likely, "inferred"
            notes.append(f"station inferred as {station} (mean foreground confidence per station: {counts})")
        else:
            station, source = case.station, "given"
            other = next(s for s in STATIONS if s != station)
            if counts[other] - counts[station] > STATION_CONFIDENCE_MARGIN:
                station_warning = (
                    f"{case.case_id}: the station is given as {station}, but the network is more confident "
                    f"that this is a {other} exam (mean foreground confidence per station: {counts}); "
                    f"check the station in the manifest or cases.csv (the case was processed as {station})")
                notes.append(station_warning)
        logits = mask_logits(logits, self._allowed(station))
        probs = torch.softmax(logits.float(), dim=1)[0]
        t["network"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        grades = None
        if self.has_grading:
            with self._autocast():  # inside the segmentation written out
                grades = self.model.grade_probabilities(probs[None], x, [station])
            grades = {k: v.float().cpu().numpy()[0] for k, v in grades.items()}
        t["grading"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        values = sorted(self.schema.station_labels(station))
        labels = probabilities_to_labels(probs[values], values, model_affine, t1_native.shape, t1_img.affine)
        stir_native = (stir_on_t1 if stir_on_t1 is not None
                       else resample_to_grid(stir_data, stir_img.affine, t1_native.shape, t1_img.affine))
        region_names = self.schema.region_names(station)
        muscle = np.isin(labels, [v for r in region_names for v in self.schema.regions[r].labels])
        fat = np.isin(labels, [self.schema.labels[s] for s in ("subcutaneous_right", "subcutaneous_left")
                               if s in self.schema.labels])
        if self.measures_edema:
            edema, stir_ref = edema_map(stir_native, t1_native, muscle, fat, self.model.grader, t1_img.affine)
        else:  # Dixon water without a grader that learnt edema on it: no edema measured
            edema, stir_ref = np.zeros(labels.shape, bool), float("nan")
        voxel_ml = float(abs(np.linalg.det(t1_img.affine[:3, :3]))) / 1000.0
        present = self._one_leg(labels, t1_native, station, t1_img.affine)
        if present is not None:  # one leg: what the network called the other side is this leg's
            absent = "left" if present == "right" else "right"
            other = [v for n, v in self.schema.labels.items() if n.endswith(f"_{absent}")]
            labels = np.where(np.isin(labels, other), self._lr_lut[labels], labels).astype(labels.dtype)
        regions, case_row = self._tables(case, station, source, labels, edema, voxel_ml, grades)
        case_row["one_leg"] = present
        case_row["station_warning"] = station_warning
        self._exam_checks(case, station, labels, t1_native, stir_native, t1_img.affine, muscle, regions, case_row)
        t["postprocess"] = time.perf_counter() - t0
        geometry = {
            "t1": {**describe_geometry(t1_img), "source": case.source},
            "stir": {**describe_geometry(stir_img), "source": case.source},
            "model_grid": {"shape": [int(s) for s in x.shape[2:]],
                           "spacing_mm": [float(s) for s in self.prep.target_spacing],
                           "orientation": self.prep.orientation},
            "stir_normal_muscle_reference": stir_ref,
        }
        return CasePrediction(
            case_id=case.case_id, subject_id=case.subject_id, station=station,
            station_source=source, labels=labels, t1_image=t1_img, stir_native=stir_native,
            edema=edema, regions=regions, case=case_row, geometry=geometry, timings=t,
            notes=notes + list(case.notes),
        )

    def _one_leg(self, labels: np.ndarray, t1: np.ndarray, station: str, affine: np.ndarray) -> str | None:
        from nxp2seg.inference.exam_checks import one_leg

        return one_leg(labels, {n: self.schema.regions[n] for n in self.schema.region_names(station)}, affine, t1)

    def _exam_checks(self, case: CaseInput, station: str, labels: np.ndarray, c0: np.ndarray, c1: np.ndarray,
                     affine: np.ndarray, muscle: np.ndarray, rows: list[dict[str, Any]], case_row: dict[str, Any]) -> None:
        """The out-of-distribution guard, one leg, Dixon fat fractions, edema the model never learnt
        (:mod:`nxp2seg.inference.exam_checks`); adds to ``rows`` and ``case_row`` in place."""
        from nxp2seg.inference import exam_checks as checks
        from nxp2seg.inference.writers import add_warning

        signature = self.bundle.signature
        ood = checks.guard(signature, [c0, c1], muscle, affine, self.prep.channels)
        case_row["ood_score"] = float("nan") if ood is None else round(ood["ood_score"], 4)
        case_row["ood"] = ood
        if ood is not None and ood["unlike_training"]:
            why = ("the model found too little muscle in them to compare them"
                   if ood["feature"] == TOO_LITTLE_MUSCLE else
                   f"ood_score {ood['ood_score']:.1f} > {signature['threshold']:g}, most of all in {ood['feature']}")
            add_warning(case_row, "input_unlike_training", (
                f"{case.case_id}: the images are unlike the model's training images ({why}); "
                f"its segmentation and grades may be wrong: check the channels ({', '.join(self.prep.channels)}) "
                "and fine-tune on labelled exams of this kind (docs/realdata.md)"))
        regions = {n: self.schema.regions[n] for n in self.schema.region_names(station)}
        present = case_row.pop("one_leg", None)
        if present is not None:
            add_warning(case_row, "one_leg", (
                f"{case.case_id}: one leg in the field of view (the {present}); the other side's regions "
                "are left ungraded and the station score and asymmetry blank"))
            for row in rows:
                if regions[row["region"]].side != present:
                    row.update(edema_grade=float("nan"), edema_grade_int=None, fat_grade=None,
                               fat_grade_continuous=float("nan"), fascial_edema_prob=float("nan"),
                               subcutaneous_edema_prob=float("nan"), fascial_edema=None, subcutaneous_edema=None)
            case_row.update(station_score=float("nan"), station_score_continuous=float("nan"),
                            asymmetry=float("nan"))
        if checks.is_dixon(self.prep.channels):
            ff = checks.fat_fractions(c0, c1, labels, {n: r.labels for n, r in regions.items()})
            for row in rows:
                row["fat_fraction"] = ff[row["region"]]
        if self.has_grading and signature is not None and signature.get("edema_graded_cases", 1) == 0:
            for row in rows:  # the training cohort taught this contrast no edema grade
                row.update(edema_grade=float("nan"), edema_grade_int=None)
            case_row.update(station_score=float("nan"), station_score_continuous=float("nan"),
                            asymmetry=float("nan"), pattern="")

    def _tables(self, case: CaseInput, station: str, source: str, labels: np.ndarray,
                edema: np.ndarray, voxel_ml: float, grades: dict[str, np.ndarray] | None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Rows of ``regions.csv`` and the row of ``cases.csv`` for one case."""
        names = self.schema.region_names(station)
        rows = []
        for r, name in enumerate(names):
            reg = self.schema.regions[name]
            mask = np.isin(labels, list(reg.labels))
            n = int(mask.sum())
            row: dict[str, Any] = {
                "case_id": case.case_id, "region": name, "level": self.schema.graded_level,
                "station": reg.station, "compartment": reg.compartment,
                "muscle": self.schema.muscle_of(name), "side": reg.side,
                "edema_grade": float("nan"), "edema_grade_int": None,
                "fat_grade": None, "fat_grade_continuous": float("nan"),
                "fascial_edema_prob": float("nan"), "subcutaneous_edema_prob": float("nan"),
                "fascial_edema": None, "subcutaneous_edema": None,
                "volume_ml": n * voxel_ml,
                "edema_fraction": float(edema[mask].mean()) if n and self.measures_edema else float("nan"),
            }
            if grades is not None:
                e = float(grades["edema"][r])
                f = float(grades["fat"][r])
                row.update(  # integer grades and flags at the grader's operating points
                    edema_grade=e, edema_grade_int=int(grades["edema_int"][r]),
                    fat_grade=int(grades["fat_int"][r]), fat_grade_continuous=f,
                    fascial_edema_prob=float(grades["fascial_prob"][r]),
                    subcutaneous_edema_prob=float(grades["subcut_prob"][r]),
                    fascial_edema=bool(grades["fascial_flag"][r]),
                    subcutaneous_edema=bool(grades["subcut_flag"][r]),
                )
            rows.append(row)
        case_row: dict[str, Any] = {
            "case_id": case.case_id, "subject_id": case.subject_id, "station": station,
            "station_source": source, "status": "ok", "error": "",
            "pattern": "", **{f"p_{p}": float("nan") for p in PATTERNS},
            "station_score": float("nan"), "station_score_continuous": float("nan"),
            "asymmetry": float("nan"),
        }
        # a muscle-graded schema: compartment rows rolled up beside the muscle rows
        # (grading.rollup_regions); the scores and asymmetry sum those compartments
        comp_rows = compartment_rows(rows, self.schema, self.scale)
        scored, schema = (comp_rows, self.schema.compartment_schema()) if comp_rows else (rows, self.schema)
        if grades is not None:
            prob = grades["pattern_prob"]
            # the scores are the domain rules' (grading.tables.scores_table, as evaluate's):
            # station score and asymmetry of the reported integer grades, and the continuous score
            ints, _ = scores_table(self._long(case, scored, "edema_grade_int"), schema, self.scale)
            cont, _ = scores_table(self._long(case, scored, "edema_grade"), schema, self.scale)
            compartments = {f"asymmetry_{schema.regions[r['region']].compartment}" for r in scored}
            case_row.update(
                pattern=PATTERNS[int(grades["pattern_index"])],
                **{f"p_{p}": float(prob[i]) for i, p in enumerate(PATTERNS)},
                station_score=float(ints.at[0, "station_score"]),
                station_score_continuous=float(cont.at[0, "station_score"]),
                asymmetry=float(ints.at[0, "asymmetry"]),
                **{k: float(ints.at[0, k]) for k in ints.columns if k in compartments},
            )
        return rows + comp_rows, case_row

    @staticmethod
    def _long(case: CaseInput, rows: list[dict[str, Any]], column: str) -> pd.DataFrame:
        """``regions.csv`` rows as :func:`~nxp2seg.grading.tables.scores_table` reads them."""
        return pd.DataFrame({"case_id": case.case_id, "region": [r["region"] for r in rows],
                             "edema_grade": [float(r[column]) for r in rows]})
