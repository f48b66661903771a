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
4. **grade**: the grading head inside the sliding-window segmentation of step 3
   (:meth:`~nxp2seg.models.myositis.GradingNet.grade_probabilities`; the
   ``grading=staged`` head was trained on exactly these probabilities), or,
   for a head that reads decoder features, its own whole-volume pass
   (:meth:`~nxp2seg.models.myositis.GradingNet.predict`), the pass it was trained on;
5. **map back**: class probabilities resampled through the affines onto the
   T1's native grid, argmax there (:func:`~nxp2seg.inference.geometry.probabilities_to_labels`);
   region volumes and the STIR edema measurement (:mod:`nxp2seg.inference.edema`)
   on that grid;
6. **scores** from the domain rules (:mod:`nxp2seg.grading.rules`).

Writing is :mod:`nxp2seg.inference.writers`' job; running a batch, the
``predict`` command's.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from nxp2seg.data.schema import PATTERNS, STATIONS
from nxp2seg.grading.rules import asymmetry, integer_grade
from nxp2seg.inference.edema import edema_map
from nxp2seg.inference.geometry import (
    describe_geometry,
    overlap_fraction,
    probabilities_to_labels,
    resample_to_grid,
)
from nxp2seg.inference.inputs import CaseInput
from nxp2seg.models.segmenter import mask_logits

__all__ = ["MAX_VOXELS", "CaseError", "CasePrediction", "Predictor", "load_case_images"]

#: Larger images are refused before their data are read (header shape only).
MAX_VOXELS = 2048 * 2048 * 512
#: A T1 whose slice axis points further than this from the patient's superior axis is not axial.
MAX_AXIAL_TILT_DEG = 45.0
#: A given station is questioned when the other station's mean foreground confidence is higher by this.
STATION_CONFIDENCE_MARGIN = 0.02


class CaseError(ValueError):
    """This case cannot be predicted; the message says why and what to do."""


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
# loading and checking
# ---------------------------------------------------------------------------


def _load_nifti(path: Path, what: str, case_id: str) -> nib.Nifti1Image:
    try:
        img = nib.load(str(path))
    except Exception as e:  # noqa: BLE001 - anything nibabel raises means the same to the user
        raise CaseError(f"{case_id}: cannot read {what} {path} as NIfTI ({type(e).__name__}: {e}); "
                        "re-export it as .nii.gz") from None
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
        shape = shape[:3]
    if len(shape) != 3:
        raise CaseError(f"{case_id}: {what} {path} has shape {shape}; nxp2seg needs one 3D volume "
                        "(split 4D series, stack 2D slices into a volume)")
    if min(shape) < 2:
        raise CaseError(f"{case_id}: {what} {path} has shape {shape}: a single slice is not a volume")
    if math.prod(shape) > MAX_VOXELS:
        raise CaseError(f"{case_id}: {what} {path} has {math.prod(shape):,} voxels (shape {shape}), "
                        f"more than nxp2seg accepts ({MAX_VOXELS:,}); check the header or crop it")
    dtype = img.get_data_dtype()
    if dtype.kind not in "iuf" or dtype.names is not None:  # complex, bool, 1-bit, RGB, ...
        raise CaseError(f"{case_id}: {what} {path} has data type {dtype}; an MR magnitude image "
                        "is integer or real")
    return img


def _data(img: nib.Nifti1Image, what: str, path: Any, case_id: str) -> np.ndarray:
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # noqa: BLE001 - truncated or corrupt files
        raise CaseError(f"{case_id}: cannot read the voxels of {what} {path} ({type(e).__name__}: {e}); "
                        "the file is damaged: copy or export it again") from None
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise CaseError(f"{case_id}: {what} {path} has {bad} NaN/infinite voxels; fix the export")
    if float(np.ptp(data)) == 0.0:
        raise CaseError(f"{case_id}: {what} {path} is constant ({float(data.flat[0]):g} everywhere); "
                        "it holds no image")
    return data


def _check_axial(img: nib.Nifti1Image, what: str, path: Path, case_id: str) -> None:
    """Refuse an image whose slice axis (the axis of clearly largest spacing) is not superior-inferior.

    Near-isotropic grids (largest spacing within 10% of the next) say nothing about
    the acquisition plane and pass. DICOM series are checked by their slice normal.
    """
    a = np.asarray(img.affine, dtype=float)[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    order = np.argsort(spacing)
    k = int(order[-1])
    if not spacing[k] > 1.1 * spacing[order[-2]]:
        return
    tilt = float(np.degrees(np.arccos(min(1.0, abs(a[2, k]) / spacing[k]))))
    if tilt > MAX_AXIAL_TILT_DEG:
        plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(a[:, k])))]
        raise CaseError(f"{case_id}: {what} {path} is not an axial acquisition: its slice axis (array axis "
                        f"{k}, {spacing[k]:.3g} mm) points {tilt:.0f} degrees from the patient's superior "
                        f"axis ({plane} slices); nxp2seg expects axial T1 and STIR: export the axial series")


def load_case_images(case: CaseInput, work_dir: Path) -> tuple[nib.Nifti1Image, nib.Nifti1Image, dict]:
    """T1 and STIR of a case as NIfTI images, checked; DICOM series are read and written to ``work_dir``.

    Returns:
        ``(t1, stir, sources)``; ``sources`` maps ``t1``/``stir`` to the NIfTI paths the
        preprocessing reads (the input files, or converted copies in ``work_dir``).
    """
    if case.error:
        raise CaseError(case.error)
    sources: dict[str, Path] = {}
    images = {}
    for key in ("t1", "stir"):
        series = getattr(case, f"{key}_series")
        if series is not None:
            from nxp2seg.inference.dicom import DicomError, check_series, read_series

            try:
                check_series(series)
                img = read_series(series)
            except DicomError as e:
                raise CaseError(f"{case.case_id}: {key.upper()} series: {e}") from None
            path = work_dir / f"{key}.nii.gz"
            nib.save(img, str(path))
            img = nib.load(str(path))
        else:
            path = Path(case.stir if key == "stir" else case.t1)
            img = _load_nifti(path, key.upper(), case.case_id)
            if key == "t1":
                _check_axial(img, "T1", path, case.case_id)
        sources[key] = path
        images[key] = img
    t1, stir = images["t1"], images["stir"]
    frac = overlap_fraction(t1, stir)
    if frac < 0.5:
        raise CaseError(f"{case.case_id}: T1 ({sources['t1']}) and STIR ({sources['stir']}) overlap in "
                        f"only {100 * frac:.0f}% of the T1's field of view; they are not the same "
                        "station of the same exam (check the pairing and the affines)")
    return t1, stir, sources


# ---------------------------------------------------------------------------
# the predictor
# ---------------------------------------------------------------------------


def _as_loaded(img: nib.Nifti1Image, data: np.ndarray, source: Any) -> Any:
    """What the bundle's ``LoadImaged`` (MONAI ``NibabelReader``, channel first) gives for ``img``,
    from the voxels ``data`` already read and checked (the file is not decompressed twice)."""
    from monai.data import MetaTensor
    from monai.data.image_reader import NibabelReader
    from monai.data.utils import correct_nifti_header_if_necessary
    from monai.transforms import EnsureChannelFirst
    from monai.utils import ImageMetaKey

    reader = NibabelReader(dtype=np.float32)
    reader.filenames = (str(source),)  # what NibabelReader.read would have set
    in_memory = correct_nifti_header_if_necessary(nib.Nifti1Image(data, img.affine, img.header))
    array, meta = reader.get_data(in_memory)
    meta[ImageMetaKey.FILENAME_OR_OBJ] = str(source)
    return EnsureChannelFirst()(MetaTensor.ensure_torch_and_prune_meta(array, meta))


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


class Predictor:
    """A bundle ready to segment and grade exams.

    Args:
        bundle: a loaded :class:`~nxp2seg.models.bundle.Bundle`.
        device: ``cpu``, ``cuda``, ``cuda:1``...
        flip_tta: override the bundle's flip test-time augmentation (``None``: keep it).
        sw_batch_size, overlap, crop_to_body: override the bundle's sliding-window settings.
        amp: mixed precision (bf16) on CUDA; ignored on CPU (it is slower there).
    """

    def __init__(self, bundle: Any, device: str | torch.device = "cpu", flip_tta: bool | None = None,
                 sw_batch_size: int | None = None, overlap: float | None = None, amp: bool = True,
                 crop_to_body: bool | None = None):
        import monai.transforms as mt

        from nxp2seg.data.pipelines import preprocess_transforms
        from nxp2seg.data.sides import lr_swap_lut, orientation_lr_axis
        from nxp2seg.models.segmenter import Segmenter

        self.bundle = bundle
        self.device = torch.device(device)
        self.prep = bundle.preprocessing
        self.schema = bundle.schema
        self.scale = bundle.grade_scale
        self.model = bundle.build_model(self.device)  # GradingNet: net (+ grader)
        inference = dict(bundle.config.get("model", {}).get("inference", {}) or {})
        for key, value in (("flip_tta", flip_tta), ("sw_batch_size", sw_batch_size), ("overlap", overlap),
                           ("crop_to_body", crop_to_body)):
            if value is not None:
                inference[key] = value
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
            t1_native = _data(t1_img, "T1", sources["t1"], case.case_id)
            stir_data = _data(stir_img, "STIR", sources["stir"], case.case_id)
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
            with self._autocast():
                if self.model.grades_from_probabilities:  # inside the segmentation written out
                    grades = self.model.grade_probabilities(probs[None], x, [station])
                else:  # a grader reading decoder features: its own whole-volume pass
                    grades = self.model.predict(x, [station])
            grades = {k: v.float().cpu().numpy()[0] for k, v in grades.items() if k != "logits"}
        t["grading"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        values = sorted(self.schema.station_labels(station))
        labels = probabilities_to_labels(probs[values], values, model_affine, t1_native.shape, t1_img.affine)
        stir_native = (stir_on_t1 if stir_on_t1 is not None
                       else resample_to_grid(stir_data, stir_img.affine, t1_native.shape, t1_img.affine))
        region_names = self.schema.region_names(station)
        muscle = np.isin(labels, [v for r in region_names for v in self.schema.regions[r].labels])
        edema, stir_ref = edema_map(stir_native, t1_native, muscle)
        voxel_ml = float(abs(np.linalg.det(t1_img.affine[:3, :3]))) / 1000.0
        regions, case_row = self._tables(case, station, source, labels, edema, voxel_ml, grades)
        case_row["station_warning"] = station_warning
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

    def _tables(self, case: CaseInput, station: str, source: str, labels: np.ndarray,
                edema: np.ndarray, voxel_ml: float, grades: dict[str, np.ndarray] | None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Rows of ``regions.csv`` and the row of ``cases.csv`` for one case."""
        names = self.schema.region_names(station)
        rows = []
        for r, name in enumerate(names):
            mask = np.isin(labels, list(self.schema.regions[name].labels))
            n = int(mask.sum())
            row: dict[str, Any] = {
                "case_id": case.case_id, "region": name,
                "edema_grade": float("nan"), "edema_grade_int": None,
                "fat_grade": None, "fat_grade_continuous": float("nan"),
                "fascial_edema_prob": float("nan"), "subcutaneous_edema_prob": float("nan"),
                "fascial_edema": None, "subcutaneous_edema": None,
                "volume_ml": n * voxel_ml,
                "edema_fraction": float(edema[mask].mean()) if n else float("nan"),
            }
            if grades is not None:
                e = float(grades["edema"][r])
                f = float(grades["fat"][r])
                row.update(
                    edema_grade=e, edema_grade_int=int(integer_grade(e, self.scale)),
                    fat_grade=int(np.clip(np.floor(f + 0.5), 0, 4)), fat_grade_continuous=f,
                    fascial_edema_prob=float(grades["fascial_prob"][r]),
                    subcutaneous_edema_prob=float(grades["subcut_prob"][r]),
                    fascial_edema=bool(grades["fascial_prob"][r] >= 0.5),
                    subcutaneous_edema=bool(grades["subcut_prob"][r] >= 0.5),
                )
            rows.append(row)
        case_row: dict[str, Any] = {
            "case_id": case.case_id, "subject_id": case.subject_id, "station": station,
            "station_source": source, "status": "ok", "error": "",
            "pattern": "", **{f"p_{p}": float("nan") for p in PATTERNS},
            "station_score": float("nan"), "station_score_continuous": float("nan"),
            "asymmetry": float("nan"),
        }
        if grades is not None:
            prob = grades["pattern_prob"]
            ints = np.array([row["edema_grade_int"] for row in rows], dtype=float)
            cont = np.array([row["edema_grade"] for row in rows], dtype=float)
            regs = [self.schema.regions[n] for n in names]
            asym = asymmetry(ints, regs)
            case_row.update(
                pattern=PATTERNS[int(np.argmax(prob))],
                **{f"p_{p}": float(prob[i]) for i, p in enumerate(PATTERNS)},
                station_score=float(ints.sum()), station_score_continuous=float(cont.sum()),
                asymmetry=float(asym["asymmetry"]),
                **{k: float(v) for k, v in asym.items() if k != "asymmetry"},
            )
        return rows, case_row
