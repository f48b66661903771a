"""MONAI dictionary transforms from a cohort's files to network-ready tensors.

Pipeline (keys ``t1``, ``stir``, ``label``; ``label`` optional)::

    LoadImaged (NibabelReader, channel first)
    Orientationd                      closest canonical orientation (RAS), no resampling
    ResampleToMatchd  stir -> t1      bilinear: STIR onto the T1 grid
    ConcatItemsd      t1, stir -> image (2, X, Y, Z)
    Spacingd                          target spacing; image bilinear, label nearest
    NormalizeForegroundd              per channel, inside the T1 body mask (gain-free)
    SpatialPadd                       at least one patch
                                      (whole-case mode: an empty label for cases
                                      without one, then pad to the canvas)
    ---- cached above, random below (training only) ----
    RandCropByPosNegLabeld            foreground-aware patches (labelled cases; patch mode)
    RandFlipSwapLRd                   mirror left-right *and* swap right/left labels
                                      and the per-region grade targets
    RandAffined                       small rotations and scaling
    RandBiasFieldd, RandScaleIntensityd, RandShiftIntensityd, RandGaussianNoised

Images and label maps are kept apart everywhere: a label is only ever
resampled with nearest neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.config import KeysCollection
from monai.data import MetaTensor

from nxp2seg.config_utils import dataclass_from_mapping
from nxp2seg.data.preprocessing import (
    CohortFingerprint,
    Preprocessing,
    fingerprint_cohort,
    plan_preprocessing,
)
from nxp2seg.data.schema import LabelSchema

__all__ = [
    "IMAGE_KEYS",
    "Augmentation",
    "Sampling",
    "NormalizeForeground",
    "NormalizeForegroundd",
    "RandFlipSwapLRd",
    "AddLateralityd",
    "laterality_map",
    "body_mask",
    "body_midline",
    "EnsureLabeld",
    "SAMPLING_MODES",
    "REGION_TARGET_KEYS",
    "lr_swap_lut",
    "world_lr_axis",
    "flip_swap_lr",
    "preprocess_transforms",
    "train_transforms",
    "eval_transforms",
    # re-exported planning API
    "Preprocessing",
    "CohortFingerprint",
    "fingerprint_cohort",
    "plan_preprocessing",
]

IMAGE_KEYS: tuple[str, str] = ("t1", "stir")
#: NIfTI's world axes (nibabel convention): x runs left to right, y posterior to anterior, z inferior to superior.
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


# ---------------------------------------------------------------------------
# configuration records (config blocks data.augmentation and data.sampling)
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation (config block ``data.augmentation``). Probabilities are per patch.

    Attributes:
        flip_lr_prob: mirror left-right and swap right/left labels (0 disables).
        affine_prob: probability of a random affine.
        rotate_deg: maximum rotation in degrees about each oriented axis
            (``[about L-R, about P-A, about I-S]``; the last is the in-plane one).
        scale: maximum relative zoom, e.g. 0.1 = +-10 %.
        bias_field_prob, bias_field_coeff: smooth multiplicative field (MONAI RandBiasField).
        scale_intensity_prob, scale_intensity: per-channel contrast factor +- this.
        shift_intensity_prob, shift_intensity: per-channel offset +- this (normalised units).
        noise_prob, noise_std: additive Gaussian noise (normalised units).
    """

    flip_lr_prob: float = 0.5
    affine_prob: float = 0.3
    rotate_deg: Sequence[float] = (2.0, 2.0, 15.0)
    scale: float = 0.1
    bias_field_prob: float = 0.2
    bias_field_coeff: float = 0.1
    scale_intensity_prob: float = 0.3
    scale_intensity: float = 0.1
    shift_intensity_prob: float = 0.3
    shift_intensity: float = 0.1
    noise_prob: float = 0.15
    noise_std: float = 0.05

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> Augmentation:
        return dataclass_from_mapping(cls, d, "data.augmentation")


#: ``data.sampling.mode`` values: ``auto`` is ``whole`` when the grading head is on, else ``patch``.
SAMPLING_MODES: tuple[str, ...] = ("auto", "patch", "whole")
#: Item keys holding one value per region of the station (station-relative order, right
#: side first): permuted together with the label swap of :class:`RandFlipSwapLRd`.
REGION_TARGET_KEYS: tuple[str, ...] = (
    "edema_target",
    "fat_target",
    "fascial_target",
    "subcut_target",
)


@dataclass(frozen=True)
class Sampling:
    """What a training sample is (config block ``data.sampling``).

    Attributes:
        mode: ``patch`` (random patches, foreground-weighted), ``whole`` (each
            sample a whole case padded to the planned canvas; what the grading
            head needs) or ``auto`` (``whole`` when grading is on, else ``patch``).
        num_samples: patches drawn from each volume per visit (patch mode).
        pos, neg: ratio of patches centred on labelled tissue vs on background (patch mode).
    """

    mode: str = "auto"
    num_samples: int = 1
    pos: float = 2.0
    neg: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"data.sampling.mode {self.mode!r}: choose one of {SAMPLING_MODES}")

    def resolve(self, grading: bool) -> str:
        """The effective mode, ``patch`` or ``whole``."""
        if self.mode == "auto":
            return "whole" if grading else "patch"
        return self.mode

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> Sampling:
        return dataclass_from_mapping(cls, d, "data.sampling")


# ---------------------------------------------------------------------------
# intensity normalisation
# ---------------------------------------------------------------------------


def _quantile(x: torch.Tensor, q: float, max_elems: int = 2_000_000) -> torch.Tensor:
    from nxp2seg.quantiles import quantile

    x = x.reshape(-1).float()
    if x.numel() > max_elems:  # a strided subsample is plenty
        x = x[:: math.ceil(x.numel() / max_elems)]
    return quantile(x, q)


class NormalizeForeground(mt.Transform):
    """Per-channel intensity normalisation inside a body mask taken from channel 0 (T1).

    The mask is ``img[0] > fraction * quantile(img[0], percentile / 100)``, so it
    scales with the image and the result is the same for any scanner gain.

    Args:
        mode: ``zscore_foreground`` ((x - mean) / std over the mask),
            ``scale_foreground`` (x / mean over the mask) or
            ``percentile_foreground`` ((x - q0.5) / (q99.5 - q0.5) over the mask).
        fraction, percentile: the mask threshold, see above.
        clip: clip the result to ``[-clip, clip]`` (``None``: no clip).

    Input and output: ``(C, X, Y, Z)``, float; metadata kept.
    """

    def __init__(
        self,
        mode: str = "zscore_foreground",
        fraction: float = 0.1,
        percentile: float = 99.0,
        clip: float | None = 5.0,
    ):
        self.mode = mode
        self.fraction = fraction
        self.percentile = percentile
        self.clip = clip

    def foreground(self, img: torch.Tensor) -> torch.Tensor:
        ref = torch.as_tensor(img[0]).float()
        mask = ref > self.fraction * _quantile(ref, self.percentile / 100.0)
        if int(mask.sum()) < 16:  # nothing stands out: use everything
            mask = torch.ones_like(ref, dtype=torch.bool)
        return mask

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        img = img if isinstance(img, torch.Tensor) else torch.as_tensor(img)
        out = img.clone().float() if not img.is_floating_point() else img.clone()
        mask = self.foreground(img)
        for c in range(img.shape[0]):
            vals = torch.as_tensor(out[c])[mask].float()
            if self.mode == "zscore_foreground":
                mean, std = vals.mean(), vals.std()
                out[c] = (out[c] - mean) / torch.clamp(std, min=1e-8)
            elif self.mode == "scale_foreground":
                out[c] = out[c] / torch.clamp(vals.mean().abs(), min=1e-8)
            elif self.mode == "percentile_foreground":
                lo, hi = _quantile(vals, 0.005), _quantile(vals, 0.995)
                out[c] = (out[c] - lo) / torch.clamp(hi - lo, min=1e-8)
            else:
                raise ValueError(f"unknown normalisation {self.mode!r}")
        if self.clip is not None:
            out = out.clamp(-self.clip, self.clip)
        return out


class NormalizeForegroundd(mt.MapTransform):
    """Dictionary twin of :class:`NormalizeForeground`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False, **kwargs: Any):
        super().__init__(keys, allow_missing_keys)
        self.normalizer = NormalizeForeground(**kwargs)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.normalizer(d[key])
        return d



# ---------------------------------------------------------------------------
# laterality channel: which leg is which, from the affine
# ---------------------------------------------------------------------------


def body_mask(t1: torch.Tensor) -> torch.Tensor:
    """Body voxels of a T1 volume ``(X, Y, Z)``: above 30% of the way from air to bright tissue.

    Shift- and scale-free (works on raw or normalised intensities).
    """
    ref = torch.as_tensor(t1).float()
    air, bright = _quantile(ref, 0.02), _quantile(ref, 0.98)
    return ref > air + 0.3 * (bright - air)


def body_midline(mask: torch.Tensor, axis: int) -> float:
    """Array index (along ``axis``) of the plane between the two legs.

    Start from the median of the body voxels' positions (the legs have similar
    volumes), then move to the emptiest plane of the body profile within
    +-20% of the body's extent around it (the gap, or the narrowest contact,
    between the legs).
    """
    dims = [d for d in range(mask.ndim) if d != axis]
    profile = mask.float().sum(dim=dims)
    n = profile.sum()
    if n <= 0:
        return (mask.shape[axis] - 1) / 2.0
    cum = torch.cumsum(profile, 0)
    median = int(torch.searchsorted(cum, n / 2))
    occupied = torch.nonzero(profile > 0).flatten()
    extent = int(occupied[-1] - occupied[0] + 1)
    half = max(1, int(0.2 * extent))
    lo, hi = max(0, median - half), min(len(profile), median + half + 1)
    window = profile[lo:hi]
    low = torch.nonzero(window <= window.min() + 1e-6).flatten().float()
    return float(lo + low.mean())


def laterality_map(image: torch.Tensor, affine: Any, scale_mm: float = 100.0) -> torch.Tensor:
    """Signed distance from the body midline along world x, positive on the patient's right.

    Args:
        image: ``(C, X, Y, Z)``; channel 0 is the T1 (for the body mask).
        affine: voxel-to-world (RAS+) affine of ``image``.
        scale_mm: distance unit (the map is ``mm / scale_mm``, clipped to +-3).

    Returns:
        ``(1, X, Y, Z)`` float32.
    """
    a = np.asarray(affine, dtype=float)
    axis = world_lr_axis(a)
    mid = body_midline(body_mask(image[0]), axis)
    step = float(a[0, axis])  # world x per voxel along that axis (+: towards the right)
    n = image.shape[axis + 1]
    coord = (torch.arange(n, dtype=torch.float32) - mid) * step / scale_mm
    shape = [1, 1, 1]
    shape[axis] = n
    lat = coord.reshape(shape).expand(*image.shape[1:])
    return lat.clamp(-3.0, 3.0)[None].contiguous()


class AddLateralityd(mt.MapTransform):
    """Append the :func:`laterality_map` channel to ``keys`` (whole volumes, before cropping)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            affine = img.affine if isinstance(img, MetaTensor) else torch.eye(4)
            lat = laterality_map(torch.as_tensor(img), affine).to(torch.as_tensor(img).dtype)
            out = torch.cat([torch.as_tensor(img), lat], dim=0)
            d[key] = MetaTensor(out, meta=img.meta) if isinstance(img, MetaTensor) else out
        return d


# ---------------------------------------------------------------------------
# left-right mirror with label swap
# ---------------------------------------------------------------------------


def lr_swap_lut(schema: LabelSchema) -> np.ndarray:
    """Lookup table mapping every ``*_right`` label value to its ``*_left`` twin and back.

    Other values (background, bone, ...) map to themselves.

    Raises:
        ValueError: when a sided label has no twin (the schema cannot be mirrored).
    """
    lut = np.arange(schema.max_label + 1, dtype=np.int64)
    for name, value in schema.labels.items():
        for side, other in (("_right", "_left"), ("_left", "_right")):
            if name.endswith(side):
                twin = name[: -len(side)] + other
                if twin not in schema.labels:
                    raise ValueError(
                        f"label {name!r} has no {other[1:]} twin {twin!r}; a left-right flip cannot keep "
                        "sides correct: set data.augmentation.flip_lr_prob=0"
                    )
                lut[value] = schema.labels[twin]
    return lut


def world_lr_axis(affine: np.ndarray | torch.Tensor) -> int:
    """Spatial array axis (0..2) that runs most nearly along world left-right (x)."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    cols = a / np.linalg.norm(a, axis=0, keepdims=True)
    return int(np.argmax(np.abs(cols[0])))


def flip_swap_lr(
    image: torch.Tensor | None,
    label: torch.Tensor | None,
    axis: int,
    lut: torch.Tensor | np.ndarray,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Mirror ``(C, X, Y, Z)`` arrays along spatial ``axis``; swap sided label values with ``lut``.

    The affine is left as it is: the result is a mirrored patient in the same
    world frame, so the tissue now on the world right is the former left leg and
    carries ``*_right`` labels again. Either input may be ``None``.
    """
    if image is not None:
        image = torch.flip(image, dims=(axis + 1,))
    if label is not None:
        flipped = torch.flip(label, dims=(axis + 1,))
        table = torch.as_tensor(lut, device=flipped.device)
        label = flipped.clone()
        label[...] = table[torch.as_tensor(flipped).long()].to(flipped.dtype)
    return image, label


class RandFlipSwapLRd(mt.RandomizableTransform, mt.MapTransform):
    """Randomly mirror the world left-right axis, swapping right and left labels.

    The flipped axis is read from the affine of the first image key (a
    ``MetaTensor``), never assumed from array order; every key is flipped, and
    the ``label_keys`` among them are remapped with :func:`lr_swap_lut`.

    Per-region vectors (grade targets, ``region_keys``) describe the legs, so
    they follow them: after the mirror the former left leg is the right one,
    and ``d[k]`` becomes ``d[k][d[perm_key]]``, where ``d[perm_key]`` gives, for
    each region slot, the slot of its other-side twin.

    Args:
        keys: image and label keys to flip together.
        label_keys: the keys holding label maps (remapped); others are only flipped.
        schema: the label schema (to pair ``*_right`` with ``*_left``).
        prob: probability of flipping a sample.
        region_keys: keys of per-region vectors (last axis = region slots) to permute;
            those absent from a sample are skipped.
        perm_key: key of the right/left slot permutation (``(R,)`` ints).
        laterality_channel: channel of the image keys holding the laterality map
            (:class:`AddLateralityd`); it is negated after the mirror, so the
            mirrored patient's right (the former left leg) is positive again.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection,
        schema: LabelSchema,
        prob: float = 0.5,
        allow_missing_keys: bool = False,
        region_keys: Sequence[str] = (),
        perm_key: str = "lr_perm",
        laterality_channel: int | None = None,
    ):
        mt.MapTransform.__init__(self, keys, allow_missing_keys)
        mt.RandomizableTransform.__init__(self, prob)
        self.label_keys = set([label_keys] if isinstance(label_keys, str) else label_keys)
        self.lut = torch.as_tensor(lr_swap_lut(schema))
        self.region_keys = tuple(region_keys)
        self.perm_key = perm_key
        self.laterality_channel = laterality_channel

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        ref = d[keys[0]]
        if not isinstance(ref, MetaTensor):
            raise TypeError(
                "RandFlipSwapLRd needs MetaTensors with an affine (use it before EnsureTyped(track_meta=False))"
            )
        axis = world_lr_axis(ref.affine)
        for key in keys:
            if key in self.label_keys:
                _, d[key] = flip_swap_lr(None, d[key], axis, self.lut)
            else:
                d[key], _ = flip_swap_lr(d[key], None, axis, self.lut)
                c = self.laterality_channel
                if c is not None and d[key].shape[0] > c:
                    d[key][c] = -d[key][c]
        present = [k for k in self.region_keys if k in d]
        if present:
            if self.perm_key not in d:
                raise KeyError(
                    f"RandFlipSwapLRd: the sample has region targets {present} but no {self.perm_key!r} "
                    "(the right/left slot permutation); the grade targets cannot follow the mirror"
                )
            perm = np.asarray(d[self.perm_key], dtype=np.int64)
            for key in present:
                d[key] = d[key][..., perm]
        return d


class EnsureLabeld(mt.MapTransform):
    """Give a case without a label map an empty one, and record which cases have one.

    Graded cases without masks train the grading head; an all-background label
    (never used by the segmentation loss, which skips samples with
    ``has_label == 0``) lets them collate with labelled cases. The empty label
    is a copy of the image's first channel's geometry (MetaTensor, same affine).

    Args:
        label_key: the label key (present for labelled cases).
        image_key: the image whose grid the empty label takes.
        flag_key: where to store ``1.0`` (has a label) or ``0.0``.
    """

    def __init__(
        self, label_key: str = "label", image_key: str = "image", flag_key: str = "has_label"
    ):
        super().__init__([label_key], allow_missing_keys=True)
        self.label_key, self.image_key, self.flag_key = label_key, image_key, flag_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        has = self.label_key in d and d[self.label_key] is not None
        if not has:
            image = d[self.image_key]
            d[self.label_key] = torch.zeros_like(image[:1])
        d[self.flag_key] = np.float32(1.0 if has else 0.0)
        return d


# ---------------------------------------------------------------------------
# pipelines
# ---------------------------------------------------------------------------


def preprocess_transforms(
    prep: Preprocessing, with_label: bool = True, optional_label: bool = False
) -> list[mt.Transform]:
    """Deterministic transforms from file paths to a normalised ``image`` (2, X, Y, Z) and ``label``.

    Expects keys ``t1``, ``stir`` (paths) and, when ``with_label``, ``label``.
    The output keys are ``image`` (float32 MetaTensor at the target spacing) and
    ``label`` (float32 label values, nearest-neighbour resampled).

    ``optional_label``: samples may lack ``label`` (graded cases without masks);
    follow with :class:`EnsureLabeld` to give them an empty one.
    """
    keys = [*IMAGE_KEYS, "label"] if with_label else list(IMAGE_KEYS)
    spatial = ["image", "label"] if with_label else ["image"]
    modes = [prep.image_interpolation, "nearest"] if with_label else [prep.image_interpolation]
    opt = bool(optional_label and with_label)
    return [
        mt.LoadImaged(
            keys=keys,
            reader="NibabelReader",
            image_only=True,
            ensure_channel_first=True,
            allow_missing_keys=opt,
        ),
        mt.Orientationd(
            keys=keys, axcodes=prep.orientation, labels=_AXIS_LABELS, allow_missing_keys=opt
        ),
        mt.ResampleToMatchd(
            keys="stir", key_dst="t1", mode=prep.image_interpolation, padding_mode="zeros",
            dtype=np.float32,
        ),
        mt.ConcatItemsd(keys=list(IMAGE_KEYS), name="image", dim=0),
        mt.DeleteItemsd(keys=list(IMAGE_KEYS)),
        mt.Spacingd(
            keys=spatial,
            pixdim=prep.target_spacing,
            mode=modes,
            padding_mode="border",
            dtype=np.float32,
            allow_missing_keys=opt,
        ),
        NormalizeForegroundd(
            keys="image",
            mode=prep.normalization,
            fraction=prep.foreground_fraction,
            percentile=prep.foreground_percentile,
            clip=prep.clip,
        ),
        *([AddLateralityd(keys="image")] if prep.laterality else []),
        mt.EnsureTyped(keys=spatial, dtype=torch.float32, allow_missing_keys=opt),
    ]


def train_transforms(
    prep: Preprocessing,
    schema: LabelSchema,
    augmentation: Augmentation | None = None,
    sampling: Sampling | None = None,
    with_label: bool = True,
    mode: str | None = None,
) -> mt.Compose:
    """The training pipeline: :func:`preprocess_transforms`, sampling and augmentation.

    Patch mode: foreground-weighted random patches of ``prep.patch_size``;
    ``with_label=False`` is a path for cases without masks (patches drawn
    uniformly; no label keys).

    Whole mode (``mode="whole"``): every sample is the whole case padded to
    ``prep.canvas_size`` (symmetric, constant 0; center-cropped only if a case
    is larger, which a planned canvas rules out for training cases). Samples
    may lack ``label``: they get an empty one and ``has_label = 0``
    (:class:`EnsureLabeld`). The left-right mirror also permutes the per-region
    grade targets (:data:`REGION_TARGET_KEYS`) with the sample's ``lr_perm``.

    Args:
        mode: ``patch`` or ``whole``; ``None`` = ``sampling.resolve(grading=False)``.
    """
    aug = augmentation or Augmentation()
    smp = sampling or Sampling()
    mode = mode or smp.resolve(grading=False)
    if mode not in ("patch", "whole"):
        raise ValueError(f"train_transforms: mode must be 'patch' or 'whole', got {mode!r}")
    whole = mode == "whole"
    with_label = with_label or whole
    spatial = ["image", "label"] if with_label else ["image"]
    nearest = ["bilinear", "nearest"] if with_label else ["bilinear"]
    pads = ["border", "zeros"] if with_label else ["border"]
    t: list[Any] = preprocess_transforms(prep, with_label, optional_label=whole)
    if whole:
        canvas = prep.canvas_size or prep.patch_size
        t.append(EnsureLabeld())
        t.append(mt.ResizeWithPadOrCropd(keys=spatial, spatial_size=canvas, mode="constant"))
    else:
        t.append(mt.SpatialPadd(keys=spatial, spatial_size=prep.patch_size, mode="constant"))
    if whole:
        pass  # the whole case is the sample
    elif with_label:
        t.append(
            mt.RandCropByPosNegLabeld(
                keys=spatial,
                label_key="label",
                spatial_size=prep.patch_size,
                pos=smp.pos,
                neg=smp.neg,
                num_samples=smp.num_samples,
            )
        )
    else:
        t.append(
            mt.RandSpatialCropSamplesd(
                keys=spatial,
                roi_size=prep.patch_size,
                num_samples=smp.num_samples,
                random_size=False,
            )
        )
    if aug.flip_lr_prob > 0:
        t.append(
            RandFlipSwapLRd(
                keys=spatial,
                label_keys=["label"],
                schema=schema,
                prob=aug.flip_lr_prob,
                region_keys=REGION_TARGET_KEYS if whole else (),
                laterality_channel=len(prep.channels) if prep.laterality else None,
            )
        )
    if aug.affine_prob > 0:
        t.append(
            mt.RandAffined(
                keys=spatial,
                prob=aug.affine_prob,
                rotate_range=[math.radians(float(r)) for r in aug.rotate_deg],
                scale_range=[aug.scale] * 3,
                mode=nearest,
                padding_mode=pads,
            )
        )
    if aug.bias_field_prob > 0:
        t.append(
            mt.RandBiasFieldd(
                keys="image", prob=aug.bias_field_prob, coeff_range=(0.0, aug.bias_field_coeff)
            )
        )
    if aug.scale_intensity_prob > 0:
        t.append(
            mt.RandScaleIntensityd(
                keys="image",
                factors=aug.scale_intensity,
                prob=aug.scale_intensity_prob,
                channel_wise=True,
            )
        )
    if aug.shift_intensity_prob > 0:
        t.append(
            mt.RandShiftIntensityd(
                keys="image",
                offsets=aug.shift_intensity,
                prob=aug.shift_intensity_prob,
                channel_wise=True,
            )
        )
    if aug.noise_prob > 0:
        t.append(mt.RandGaussianNoised(keys="image", prob=aug.noise_prob, std=aug.noise_std))
    t.append(mt.EnsureTyped(keys=spatial, dtype=torch.float32, track_meta=False))
    return mt.Compose(t)


def eval_transforms(
    prep: Preprocessing, with_label: bool = True, optional_label: bool = False
) -> mt.Compose:
    """Whole-volume pipeline for validation and test (no padding, no cropping).

    ``optional_label``: samples may lack ``label`` (graded cases without masks);
    they get an empty one and ``has_label = 0`` (:class:`EnsureLabeld`).
    """
    spatial = ["image", "label"] if with_label else ["image"]
    opt = bool(optional_label and with_label)
    extra: list[Any] = [EnsureLabeld()] if opt else []
    return mt.Compose(
        [
            *preprocess_transforms(prep, with_label, optional_label=opt),
            *extra,
            mt.EnsureTyped(keys=spatial, dtype=torch.float32, track_meta=False),
        ]
    )
