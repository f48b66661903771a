"""Configuration of the phantom generator: presets and every distribution knob.

Everything is a dataclass field, so a shifted test set is one override away::

    python -m nxp2seg.phantom out=/tmp/shifted subjects=20 preset=small \\
        acquisition.snr=[8,15] acquisition.oblique_probability=1.0 \\
        contrast.mild_edema.stir=[1.2,1.6]

``sequence=dixon`` renders the Dixon fat and water images (channels FAT,
WATER) instead of T1 and STIR, from the same anatomy, disease and fat
fractions as the T1/STIR cohort of the same seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nxp2seg.phantom.clinical import ClinicalConfig
from nxp2seg.phantom.contrast import SEQUENCES, ContrastConfig
from nxp2seg.phantom.disease import DiseaseConfig
from nxp2seg.phantom.readers import ReaderConfig

__all__ = ["AcquisitionConfig", "PhantomConfig", "PRESETS", "make_config"]


@dataclass(frozen=True)
class AcquisitionConfig:
    """Scanner and protocol variation (PHANTOM.md, "Acquisition")."""

    matrix: tuple[int, int] = (160, 112)  # in-plane voxels (i, j) of the T1
    slices: int = 16
    min_spacing_thigh: float = 2.2  # mm; the field of view grows with the legs beyond this
    min_spacing_calf: float = 1.6
    slice_thickness: tuple[float, float] = (5.0, 8.0)
    slice_spacing: tuple[float, float] | None = None  # mm between slices; None = contiguous (= thickness)
    slice_count: tuple[int, int] | None = None  # slices per case drawn in [lo, hi]; None = `slices`
    pelvis_slices: tuple[int, int] = (0, 0)  # thigh: proximal slices through the pelvis, drawn in [lo, hi]
    leg_gap_thigh: tuple[float, float] = (4.0, 30.0)  # mm between the legs' skins; <= 0: legs touching
    leg_gap_calf: tuple[float, float] = (15.0, 50.0)
    one_leg_probability: float = 0.0  # the field of view holds one leg only
    fov_margin: tuple[float, float] = (1.08, 1.25)
    supersample: int = 2  # in-plane sub-samples per voxel and axis (partial volume)
    subslices: int = 2  # through-plane sub-samples per slice
    gain: tuple[float, float] = (100.0, 4000.0)  # muscle signal, scanner units (log-uniform)
    snr: tuple[float, float] = (12.0, 40.0)  # muscle SNR
    bias: float = 0.25  # max relative bias-field deviation
    contrast_jitter: float = 0.10
    lps_probability: float = 0.5  # LPS instead of RAS array axis order
    oblique_probability: float = 0.3
    oblique_max_deg: float = 5.0
    stir_coarse_probability: float = 0.3  # STIR at a coarser in-plane resolution
    stir_coarse_factor: tuple[float, float] = (1.2, 1.6)
    stir_shift_probability: float = 0.3  # STIR field of view shifted
    stir_shift_mm: float = 12.0
    stir_own_axcodes_probability: float = 0.15  # STIR stored in the other axis order
    deformation_mm: float = 4.0  # smooth random displacement of the template
    deformation_corr_mm: float = 45.0
    positioning_mm: float = 8.0  # legs off the centre of the field of view


@dataclass(frozen=True)
class PhantomConfig:
    """Everything that decides a phantom cohort. Same config and seed, same bytes."""

    out: str | None = None
    subjects: int = 48
    preset: str = "small"
    seed: int = 0
    label_level: str = "compartment"  # labelsTr level: "compartment" or "muscle"
    grade_scale: str = "beltrame6"  # readers' edema scale: "beltrame6" or "extent4"
    # what the readers grade: "compartment" or "muscle" (every muscle of each side; needs
    # label_level=muscle); null = as label_level
    grade_level: str | None = None
    sequence: str = "t1_stir"  # "t1_stir" (channels T1, STIR) or "dixon" (FAT, WATER)
    test_fraction: float = 0.2  # subjects held out (split=test)
    workers: int = 0  # processes; 0 = one per core
    overwrite: bool = False
    acquisition: AcquisitionConfig = field(default_factory=AcquisitionConfig)
    contrast: ContrastConfig = field(default_factory=ContrastConfig)
    disease: DiseaseConfig = field(default_factory=DiseaseConfig)
    readers: ReaderConfig = field(default_factory=ReaderConfig)
    clinical: ClinicalConfig = field(default_factory=ClinicalConfig)


PRESETS: dict[str, dict[str, Any]] = {
    # tests: ~48x32x6, a tiny cohort of 8 cases in a few seconds
    "tiny": {
        "matrix": (48, 32),
        "slices": 6,
        "min_spacing_thigh": 6.5,
        "min_spacing_calf": 4.8,
        "supersample": 4,
        "subslices": 2,
    },
    # the default demo: ~160x112x16 at ~2.5 mm in-plane
    "small": {},
    # real thigh stacks (docs/realdata.md): 512x512, 10-16 slices 20-26 mm apart, legs
    # touching, proximal slices through the pelvis, now and then one leg only
    "real": {
        "matrix": (512, 512),
        "slices": 16,
        "slice_count": (10, 16),
        "slice_thickness": (6.0, 10.0),
        "slice_spacing": (20.0, 26.0),
        "pelvis_slices": (1, 3),
        "leg_gap_thigh": (-12.0, 8.0),
        "one_leg_probability": 0.05,
        "min_spacing_thigh": 0.7,
        "min_spacing_calf": 0.5,
        "supersample": 2,
        "subslices": 2,
        "stir_coarse_probability": 0.0,
        "stir_shift_probability": 0.0,
    },
    # realistic: ~384x288x24 at ~1.0-1.3 mm in-plane
    "full": {
        "matrix": (384, 288),
        "slices": 24,
        "min_spacing_thigh": 1.0,
        "min_spacing_calf": 0.75,
        "supersample": 2,
        "subslices": 2,
    },
}


def _coerce(value: Any, current: Any) -> Any:
    if isinstance(current, dict) and isinstance(value, dict):  # merge, keep keys not overridden
        merged = dict(current)
        for k, v in value.items():
            merged[k] = _coerce(v, current[k]) if k in current else v
        return merged
    if isinstance(current, tuple) and isinstance(value, (list, tuple)):
        return tuple(_coerce(v, c) for v, c in zip(value, current)) if len(value) == len(current) else tuple(value)
    if isinstance(current, bool):
        return bool(value)
    if isinstance(current, float) and isinstance(value, (int, float)):
        return float(value)
    return value


def _apply(obj: Any, overrides: dict[str, Any], path: str = "") -> Any:
    changes = {}
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        if key not in names:
            raise ValueError(
                f"unknown phantom option {path + key!r}; valid keys here: {sorted(names)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"phantom option {path + key!r} is a group; set its keys, e.g. {path + key}.<name>=...")
            changes[key] = _apply(current, value, f"{path}{key}.")
        else:
            changes[key] = _coerce(value, current)
    return dataclasses.replace(obj, **changes)


def make_config(overrides: dict[str, Any] | None = None) -> PhantomConfig:
    """Build a config from nested overrides; ``preset`` selects acquisition defaults first."""
    overrides = dict(overrides or {})
    preset = overrides.get("preset", "small")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    cfg = _apply(PhantomConfig(preset=preset, acquisition=AcquisitionConfig(**PRESETS[preset])), overrides)
    check_config(cfg)
    return cfg


def check_config(cfg: PhantomConfig) -> None:
    """Raise ``ValueError`` naming the option that cannot be honoured."""
    if cfg.sequence not in SEQUENCES:
        raise ValueError(f"phantom option sequence={cfg.sequence!r}: choose one of {list(SEQUENCES)}")
    cfg.contrast.check()
