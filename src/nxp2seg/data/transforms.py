"""The preprocessing and augmentation transforms, in one import (as ``monai.transforms``).

Each lives in the module of its job; this namespace re-exports them:

* :mod:`nxp2seg.data.intensity`: the body mask and foreground normalisation;
* :mod:`nxp2seg.data.sides`: which label, region and array axis is right or left;
* :mod:`nxp2seg.data.laterality`: the laterality channel and the left-right mirror;
* :mod:`nxp2seg.data.pipelines`: the preprocessing, training and evaluation
  pipelines and their config records (``data.augmentation``, ``data.sampling``).
"""

from __future__ import annotations

from nxp2seg.data.intensity import NormalizeForeground, NormalizeForegroundd, body_mask
from nxp2seg.data.laterality import (
    AddLateralityd,
    RandFlipSwapLRd,
    body_midline,
    flip_swap_lr,
    laterality_map,
)
from nxp2seg.data.pipelines import (
    IMAGE_KEYS,
    REGION_TARGET_KEYS,
    SAMPLING_MODES,
    Augmentation,
    EnsureLabeld,
    Sampling,
    eval_transforms,
    preprocess_transforms,
    train_transforms,
)
from nxp2seg.data.preprocessing import (
    CohortFingerprint,
    Preprocessing,
    fingerprint_cohort,
    plan_preprocessing,
)
from nxp2seg.data.sides import lr_swap_lut, world_lr_axis

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
