"""MONAI dictionary transforms from a cohort's files to network-ready tensors.

Pipeline (keys ``t1``, ``stir``, ``label``; ``label`` optional)::

    LoadImaged (NibabelReader, channel first)
    Orientationd                      closest canonical orientation (RAS), no resampling
    ResampleToMatchd  stir -> t1      bilinear: STIR onto the T1 grid
    ConcatItemsd      t1, stir -> image (2, X, Y, Z)
    Spacingd                          target spacing; image bilinear, label nearest
    NormalizeForegroundd              per channel, inside the T1 body mask (gain-free)
    SpatialPadd                       at least one patch
    ---- cached above, random below (training only) ----
    RandCropByPosNegLabeld            foreground-aware patches (labelled cases)
    RandFlipSwapLRd                   mirror left-right *and* swap right/left labels
    RandAffined                       small rotations and scaling
    RandBiasFieldd, RandScaleIntensityd, RandShiftIntensityd, RandGaussianNoised

Images and label maps are kept apart everywhere: a label is only ever
resampled with nearest neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.config import KeysCollection
from monai.data import MetaTensor

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


def _from_mapping(cls: type, d: Mapping[str, Any] | None, where: str) -> Any:
    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; known keys: {sorted(known)}")
    return cls(**d)


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
        return _from_mapping(cls, d, "data.augmentation")


@dataclass(frozen=True)
class Sampling:
    """Patch sampling (config block ``data.sampling``).

    Attributes:
        num_samples: patches drawn from each volume per visit.
        pos, neg: ratio of patches centred on labelled tissue vs on background.
    """

    num_samples: int = 1
    pos: float = 2.0
    neg: float = 1.0

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> Sampling:
        return _from_mapping(cls, d, "data.sampling")


# ---------------------------------------------------------------------------
# intensity normalisation
# ---------------------------------------------------------------------------


def _quantile(x: torch.Tensor, q: float, max_elems: int = 2_000_000) -> torch.Tensor:
    x = x.reshape(-1).float()
    if x.numel() > max_elems:  # torch.quantile has a size limit; a strided subsample is plenty
        x = x[:: math.ceil(x.numel() / max_elems)]
    return torch.quantile(x, q)


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

    Args:
        keys: image and label keys to flip together.
        label_keys: the keys holding label maps (remapped); others are only flipped.
        schema: the label schema (to pair ``*_right`` with ``*_left``).
        prob: probability of flipping a sample.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection,
        schema: LabelSchema,
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ):
        mt.MapTransform.__init__(self, keys, allow_missing_keys)
        mt.RandomizableTransform.__init__(self, prob)
        self.label_keys = set([label_keys] if isinstance(label_keys, str) else label_keys)
        self.lut = torch.as_tensor(lr_swap_lut(schema))

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
        return d


# ---------------------------------------------------------------------------
# pipelines
# ---------------------------------------------------------------------------


def preprocess_transforms(prep: Preprocessing, with_label: bool = True) -> list[mt.Transform]:
    """Deterministic transforms from file paths to a normalised ``image`` (2, X, Y, Z) and ``label``.

    Expects keys ``t1``, ``stir`` (paths) and, when ``with_label``, ``label``.
    The output keys are ``image`` (float32 MetaTensor at the target spacing) and
    ``label`` (float32 label values, nearest-neighbour resampled).
    """
    keys = [*IMAGE_KEYS, "label"] if with_label else list(IMAGE_KEYS)
    spatial = ["image", "label"] if with_label else ["image"]
    modes = [prep.image_interpolation, "nearest"] if with_label else [prep.image_interpolation]
    return [
        mt.LoadImaged(
            keys=keys, reader="NibabelReader", image_only=True, ensure_channel_first=True
        ),
        mt.Orientationd(keys=keys, axcodes=prep.orientation, labels=_AXIS_LABELS),
        mt.ResampleToMatchd(
            keys="stir", key_dst="t1", mode=prep.image_interpolation, padding_mode="zeros"
        ),
        mt.ConcatItemsd(keys=list(IMAGE_KEYS), name="image", dim=0),
        mt.DeleteItemsd(keys=list(IMAGE_KEYS)),
        mt.Spacingd(
            keys=spatial,
            pixdim=prep.target_spacing,
            mode=modes,
            padding_mode="border",
            dtype=np.float32,
        ),
        NormalizeForegroundd(
            keys="image",
            mode=prep.normalization,
            fraction=prep.foreground_fraction,
            percentile=prep.foreground_percentile,
            clip=prep.clip,
        ),
        mt.EnsureTyped(keys=spatial, dtype=torch.float32),
    ]


def train_transforms(
    prep: Preprocessing,
    schema: LabelSchema,
    augmentation: Augmentation | None = None,
    sampling: Sampling | None = None,
    with_label: bool = True,
) -> mt.Compose:
    """The training pipeline: :func:`preprocess_transforms`, patch sampling and augmentation.

    ``with_label=False`` is the path for graded cases without masks (patches
    drawn uniformly; no label keys).
    """
    aug = augmentation or Augmentation()
    smp = sampling or Sampling()
    spatial = ["image", "label"] if with_label else ["image"]
    nearest = ["bilinear", "nearest"] if with_label else ["bilinear"]
    pads = ["border", "zeros"] if with_label else ["border"]
    t: list[Any] = preprocess_transforms(prep, with_label)
    t.append(mt.SpatialPadd(keys=spatial, spatial_size=prep.patch_size, mode="constant"))
    if with_label:
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
                keys=spatial, label_keys=["label"], schema=schema, prob=aug.flip_lr_prob
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


def eval_transforms(prep: Preprocessing, with_label: bool = True) -> mt.Compose:
    """Whole-volume pipeline for validation and test (no padding, no cropping)."""
    spatial = ["image", "label"] if with_label else ["image"]
    return mt.Compose(
        [
            *preprocess_transforms(prep, with_label),
            mt.EnsureTyped(keys=spatial, dtype=torch.float32, track_meta=False),
        ]
    )
