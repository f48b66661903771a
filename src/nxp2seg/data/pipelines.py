"""MONAI pipelines from a cohort's files to network-ready tensors, and their config records.

Pipeline (keys ``t1``, ``stir``, ``label``; ``label`` optional)::

    LoadImaged (NibabelReader, channel first)
    Orientationd                      closest canonical orientation (RAS), no resampling
    ResampleToMatchd  stir -> t1      bilinear: STIR onto the T1 grid
    ConcatItemsd      t1, stir -> image (2, X, Y, Z)
    Spacingd                          target spacing; image bilinear, label nearest
    NormalizeForegroundd              per channel, inside the T1 body mask (gain-free)
    AddLateralityd                    signed distance from the midline (nxp2seg.data.laterality)
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

from nxp2seg.config_utils import dataclass_from_mapping, packaged_defaults
from nxp2seg.data.intensity import NormalizeForegroundd
from nxp2seg.data.laterality import AddLateralityd, RandFlipSwapLRd
from nxp2seg.data.preprocessing import Preprocessing
from nxp2seg.data.schema import LabelSchema

__all__ = [
    "IMAGE_KEYS",
    "Augmentation",
    "Sampling",
    "SAMPLING_MODES",
    "REGION_TARGET_KEYS",
    "EnsureLabeld",
    "preprocess_transforms",
    "train_transforms",
    "eval_transforms",
]

IMAGE_KEYS: tuple[str, str] = ("t1", "stir")
#: NIfTI's world axes (nibabel convention): x runs left to right, y posterior to anterior, z inferior to superior.
_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


# ---------------------------------------------------------------------------
# configuration records (config blocks data.augmentation and data.sampling)
# ---------------------------------------------------------------------------

# the defaults are written once, in the config (configs/data/phantom.yaml)
_AUGMENTATION = packaged_defaults("data/phantom.yaml", "augmentation")
_SAMPLING = packaged_defaults("data/phantom.yaml", "sampling")


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

    flip_lr_prob: float = _AUGMENTATION["flip_lr_prob"]
    affine_prob: float = _AUGMENTATION["affine_prob"]
    rotate_deg: Sequence[float] = tuple(_AUGMENTATION["rotate_deg"])
    scale: float = _AUGMENTATION["scale"]
    bias_field_prob: float = _AUGMENTATION["bias_field_prob"]
    bias_field_coeff: float = _AUGMENTATION["bias_field_coeff"]
    scale_intensity_prob: float = _AUGMENTATION["scale_intensity_prob"]
    scale_intensity: float = _AUGMENTATION["scale_intensity"]
    shift_intensity_prob: float = _AUGMENTATION["shift_intensity_prob"]
    shift_intensity: float = _AUGMENTATION["shift_intensity"]
    noise_prob: float = _AUGMENTATION["noise_prob"]
    noise_std: float = _AUGMENTATION["noise_std"]

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

    mode: str = _SAMPLING["mode"]
    num_samples: int = _SAMPLING["num_samples"]
    pos: float = _SAMPLING["pos"]
    neg: float = _SAMPLING["neg"]

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
