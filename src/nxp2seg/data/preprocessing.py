"""Preprocessing parameters, the cohort fingerprint they are planned from, and the plan.

The :class:`Preprocessing` record is what a trained model needs to see new
scans the way it saw its training data: the canonical orientation, the target
voxel spacing, the patch size of the sliding window and the intensity
normalisation. It is planned once from the training cases (as nnU-Net plans from
its dataset fingerprint), saved into the model bundle as ``preprocessing.json``
and re-used unchanged by inference.

Axes: every spacing and shape here is in the array axes *after* reorientation
to :attr:`Preprocessing.orientation` (``RAS``: axis 0 runs from the patient's
left to right, axis 1 from posterior to anterior, axis 2 from inferior to
superior; for axial stacks axis 2 is the slice axis).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from nxp2seg.config_utils import dataclass_from_mapping, packaged_defaults
from nxp2seg.io import atomic_write_text

__all__ = [
    "NORMALIZATIONS",
    "Preprocessing",
    "CohortFingerprint",
    "PlanOptions",
    "fingerprint_images",
    "fingerprint_cohort",
    "plan_preprocessing",
    "plan_canvas",
    "oriented_geometry",
]

#: Intensity normalisations that :class:`nxp2seg.data.transforms.NormalizeForeground` implements.
NORMALIZATIONS: tuple[str, ...] = ("zscore_foreground", "scale_foreground", "percentile_foreground")
PREPROCESSING_VERSION = 1


@dataclass(frozen=True)
class Preprocessing:
    """How images are brought to the network's grid and intensity range.

    Attributes:
        target_spacing: voxel size in mm ``(s0, s1, s2)`` in the oriented array axes.
        patch_size: training patch and sliding-window size in voxels, same axes;
            divisible by the network's total stride on each axis. With whole-case
            sampling (``data.sampling.mode=whole``) it equals :attr:`canvas_size`.
        canvas_size: whole-case training only (else ``None``): the fixed grid every
            training case is padded to, in voxels at the target spacing; the largest
            training case rounded up to the network's total stride
            (:func:`plan_canvas`). Larger volumes are graded on a grid padded to a
            multiple of the stride.
        orientation: canonical axis codes the arrays are reoriented to (closest
            canonical orientation; no resampling), ``"RAS"``.
        channels: input channel names, in order (nnU-Net channels 0, 1).
        laterality: add a third input channel, the signed distance (in units of
            100 mm) along world x from the body midline, positive on the
            patient's right. A network seeing a crop of one leg cannot tell the
            legs apart from the image alone; this channel, computed from the
            affine on the whole volume, tells it (see
            :class:`nxp2seg.data.transforms.AddLateralityd`).
        normalization: one of :data:`NORMALIZATIONS`; per channel, with statistics
            taken inside a body mask, so the result does not depend on scanner gain.
        foreground_fraction: the body mask is ``T1 > foreground_fraction * q(T1)``
            with ``q`` the :attr:`foreground_percentile` of the T1 volume.
        foreground_percentile: see above (99 by default).
        clip: normalised intensities are clipped to ``[-clip, clip]`` (``None``: no clip).
        image_interpolation: interpolation for image channels (``bilinear``).
        label_interpolation: interpolation for label maps (always ``nearest``).
        stir_to_t1: STIR is resampled onto the T1 grid (always true; recorded).
        fingerprint: summary of the cohort this plan came from (for the record).
        version: format version of this record.
    """

    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, int, int]
    orientation: str = "RAS"
    channels: tuple[str, ...] = ("T1", "STIR")
    laterality: bool = True
    normalization: str = "zscore_foreground"
    foreground_fraction: float = 0.1
    foreground_percentile: float = 99.0
    clip: float | None = 5.0
    image_interpolation: str = "bilinear"
    label_interpolation: str = "nearest"
    stir_to_t1: bool = True
    canvas_size: tuple[int, int, int] | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict, compare=False)
    version: int = PREPROCESSING_VERSION

    def __post_init__(self) -> None:
        ts = tuple(float(s) for s in self.target_spacing)
        ps = tuple(int(p) for p in self.patch_size)
        if len(ts) != 3 or any(not np.isfinite(s) or s <= 0 for s in ts):
            raise ValueError(
                f"Preprocessing.target_spacing must be 3 positive sizes in mm, got {self.target_spacing}"
            )
        if len(ps) != 3 or any(p < 1 for p in ps):
            raise ValueError(
                f"Preprocessing.patch_size must be 3 positive voxel counts, got {self.patch_size}"
            )
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(
                f"Preprocessing.normalization {self.normalization!r}: choose one of {NORMALIZATIONS}"
            )
        if self.label_interpolation != "nearest":
            raise ValueError(
                "label maps are resampled with nearest-neighbour only (label_interpolation='nearest')"
            )
        if len(self.orientation) != 3:
            raise ValueError(
                f"Preprocessing.orientation must be 3 axis codes such as 'RAS', got {self.orientation!r}"
            )
        if self.canvas_size is not None:
            cs = tuple(int(c) for c in self.canvas_size)
            if len(cs) != 3 or any(c < 1 for c in cs):
                raise ValueError(
                    f"Preprocessing.canvas_size must be 3 positive voxel counts or None, got {self.canvas_size}"
                )
            object.__setattr__(self, "canvas_size", cs)
        object.__setattr__(self, "target_spacing", ts)
        object.__setattr__(self, "patch_size", ps)
        object.__setattr__(self, "channels", tuple(str(c) for c in self.channels))
        object.__setattr__(self, "clip", None if self.clip is None else float(self.clip))

    @property
    def in_channels(self) -> int:
        return len(self.channels) + (1 if self.laterality else 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_spacing"] = list(self.target_spacing)
        d["patch_size"] = list(self.patch_size)
        d["channels"] = list(self.channels)
        if self.canvas_size is None:  # patch-mode records stay as before (older readers load them)
            del d["canvas_size"]
        else:
            d["canvas_size"] = list(self.canvas_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Preprocessing:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"preprocessing record has unknown keys {unknown}; it was written by a newer nxp2seg?"
            )
        version = int(d.get("version", PREPROCESSING_VERSION))
        if version > PREPROCESSING_VERSION:
            raise ValueError(
                f"preprocessing record version {version} is newer than this nxp2seg reads "
                f"({PREPROCESSING_VERSION}); upgrade nxp2seg"
            )
        return cls(**dict(d))

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Preprocessing:
        return cls.from_dict(json.loads(Path(path).read_text()))


# ---------------------------------------------------------------------------
# fingerprint
# ---------------------------------------------------------------------------


def oriented_geometry(
    affine: np.ndarray, shape: Sequence[int], orientation: str = "RAS"
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel spacing and shape of an image after reorientation to ``orientation``.

    Reorientation to the closest canonical orientation only permutes and flips
    axes, so this reads the header alone.

    Args:
        affine: ``(4, 4)`` voxel-to-world matrix.
        shape: the spatial shape (first three dimensions).
        orientation: target axis codes.

    Returns:
        ``(spacing_mm, shape)``, each of length 3, in the reoriented axes.
    """
    affine = np.asarray(affine, dtype=float)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    src = nib.orientations.io_orientation(affine)
    dst = nib.orientations.axcodes2ornt(tuple(orientation))
    tr = nib.orientations.ornt_transform(src, dst)  # tr[i, 0]: where input axis i goes
    spacing = np.empty(3)
    out_shape = np.empty(3, dtype=int)
    for i in range(3):
        j = int(tr[i, 0])
        spacing[j] = zooms[i]
        out_shape[j] = int(shape[i])
    return spacing, out_shape


@dataclass(frozen=True)
class CohortFingerprint:
    """Geometry of a set of training images, in the oriented axes.

    Attributes:
        spacings: ``(N, 3)`` voxel sizes in mm.
        shapes: ``(N, 3)`` voxel counts.
        orientation: the axis codes these are expressed in.
    """

    spacings: np.ndarray
    shapes: np.ndarray
    orientation: str = "RAS"

    @property
    def n_images(self) -> int:
        return int(len(self.spacings))

    @property
    def median_spacing(self) -> np.ndarray:
        return np.median(self.spacings, axis=0)

    @property
    def median_extent_mm(self) -> np.ndarray:
        return np.median(self.spacings * self.shapes, axis=0)

    def summary(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "orientation": self.orientation,
            "median_spacing_mm": [round(float(x), 4) for x in self.median_spacing],
            "min_spacing_mm": [round(float(x), 4) for x in self.spacings.min(axis=0)],
            "max_spacing_mm": [round(float(x), 4) for x in self.spacings.max(axis=0)],
            "median_shape": [int(x) for x in np.median(self.shapes, axis=0)],
            "median_extent_mm": [round(float(x), 2) for x in self.median_extent_mm],
        }


def fingerprint_images(
    paths: Iterable[str | os.PathLike], orientation: str = "RAS"
) -> CohortFingerprint:
    """Read the headers of ``paths`` (no voxel data) into a :class:`CohortFingerprint`."""
    spacings, shapes = [], []
    for p in paths:
        img = nib.load(str(p))
        s, sh = oriented_geometry(img.affine, img.shape[:3], orientation)
        spacings.append(s)
        shapes.append(sh)
    if not spacings:
        raise ValueError("cannot plan preprocessing from zero images; the training split is empty")
    return CohortFingerprint(np.asarray(spacings), np.asarray(shapes), orientation)


def fingerprint_cohort(
    cohort: Any, case_ids: Iterable[str], orientation: str = "RAS"
) -> CohortFingerprint:
    """Fingerprint the T1 images (the reference grid) of ``case_ids`` of a :class:`~nxp2seg.data.Cohort`."""
    return fingerprint_images((cohort.t1_path(c) for c in case_ids), orientation)


# ---------------------------------------------------------------------------
# planning
# ---------------------------------------------------------------------------


# the defaults are written once, in the config (configs/data/phantom.yaml)
_PLAN = packaged_defaults("data/phantom.yaml", "preprocessing")


def _seq(value: Any) -> tuple | None:
    return None if value is None else tuple(value)


@dataclass(frozen=True)
class PlanOptions:
    """Knobs of :func:`plan_preprocessing` (the ``data.preprocessing`` config block).

    Attributes:
        target_spacing: fixed spacing in mm, or ``None`` to plan it from the cohort.
        patch_size: fixed patch size, or ``None`` to plan it.
        max_patch_size: upper bound of a planned patch per axis (voxels).
        anisotropy_threshold: an axis whose median spacing exceeds this multiple
            of the finest axis is the thick (slice) axis and keeps its own spacing.
        thick_axis_percentile: percentile of the thick axis' spacings used as its
            target (nnU-Net uses 10; 50 = median, keeps the typical slice).
        patch_divisor: planned patch sizes are rounded up to a multiple of this per
            axis (the network's total stride; :func:`nxp2seg.models.networks.patch_divisor`).
        canvas_size: fixed whole-case canvas in voxels (``data.sampling.mode=whole``), or
            ``None`` to plan it (:func:`plan_canvas`); unused for patch sampling.
        orientation, laterality, normalization, foreground_fraction, foreground_percentile, clip:
            copied into :class:`Preprocessing`.
    """

    target_spacing: Sequence[float] | None = _seq(_PLAN["target_spacing"])
    patch_size: Sequence[int] | None = _seq(_PLAN["patch_size"])
    max_patch_size: Sequence[int] = _seq(_PLAN["max_patch_size"])
    anisotropy_threshold: float = _PLAN["anisotropy_threshold"]
    thick_axis_percentile: float = _PLAN["thick_axis_percentile"]
    patch_divisor: Sequence[int] = _seq(_PLAN["patch_divisor"])
    canvas_size: Sequence[int] | None = _seq(_PLAN["canvas_size"])
    orientation: str = _PLAN["orientation"]
    laterality: bool = _PLAN["laterality"]
    normalization: str = _PLAN["normalization"]
    foreground_fraction: float = _PLAN["foreground_fraction"]
    foreground_percentile: float = _PLAN["foreground_percentile"]
    clip: float | None = _PLAN["clip"]

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> PlanOptions:
        return dataclass_from_mapping(cls, d, "data.preprocessing")


def _plan_spacing(fp: CohortFingerprint, opts: PlanOptions) -> np.ndarray:
    med = fp.median_spacing
    target = med.copy()
    finest = med.min()
    thick = med > opts.anisotropy_threshold * finest
    for ax in np.flatnonzero(thick):
        target[ax] = np.percentile(fp.spacings[:, ax], opts.thick_axis_percentile)
    return target


def plan_preprocessing(
    fp: CohortFingerprint, options: PlanOptions | Mapping[str, Any] | None = None
) -> Preprocessing:
    """Plan target spacing and patch size from a fingerprint (nnU-Net's rules, simplified).

    * Spacing: the median spacing per axis; an anisotropic thick axis (median
      spacing above ``anisotropy_threshold`` times the finest) takes the
      ``thick_axis_percentile`` of its spacings instead, so thick slices are kept
      and never interpolated into many thin ones.
    * Patch: the median image shape at the target spacing, capped at
      ``max_patch_size`` and rounded up to a multiple of ``patch_divisor``
      (images smaller than the patch are padded).

    Args:
        fp: geometry of the training images.
        options: :class:`PlanOptions` or the mapping of the config block.

    Returns:
        The :class:`Preprocessing` record.
    """
    opts = options if isinstance(options, PlanOptions) else PlanOptions.from_mapping(options)
    if opts.target_spacing is not None:
        spacing = np.asarray(opts.target_spacing, dtype=float)
    else:
        spacing = _plan_spacing(fp, opts)
    if opts.patch_size is not None:
        patch = np.asarray(opts.patch_size, dtype=int)
    else:
        resampled = np.round(fp.spacings * fp.shapes / spacing).astype(int)
        median_shape = np.median(resampled, axis=0)
        patch = np.minimum(
            np.floor(median_shape).astype(int), np.asarray(opts.max_patch_size, dtype=int)
        )
        div = np.asarray(opts.patch_divisor, dtype=int)
        patch = np.maximum(div, np.ceil(patch / div).astype(int) * div)
    return Preprocessing(
        target_spacing=tuple(round(float(s), 4) for s in spacing),
        patch_size=tuple(int(p) for p in patch),
        orientation=opts.orientation,
        laterality=bool(opts.laterality),
        normalization=opts.normalization,
        foreground_fraction=opts.foreground_fraction,
        foreground_percentile=opts.foreground_percentile,
        clip=opts.clip,
        fingerprint=fp.summary(),
    )


def plan_canvas(
    fp: CohortFingerprint, target_spacing: Sequence[float], divisor: Sequence[int]
) -> tuple[int, int, int]:
    """The whole-case canvas: the largest training image at the target spacing, per axis.

    Every training case is padded to this grid so that whole cases batch
    together (the grading head sees each case entire). Rounded up to a multiple
    of ``divisor`` (the network's total stride).

    Args:
        fp: geometry of the training images (oriented axes).
        target_spacing: voxel size in mm after resampling.
        divisor: per-axis multiple (``PlanOptions.patch_divisor``).

    Returns:
        ``(x, y, z)`` voxels.
    """
    spacing = np.asarray(target_spacing, dtype=float)
    # the size Spacingd gives: extent / spacing, rounded (ceil guards rounding differences)
    resampled = np.ceil(fp.spacings * fp.shapes / spacing - 1e-3).astype(int)
    largest = resampled.max(axis=0)
    div = np.asarray(divisor, dtype=int)
    canvas = np.maximum(div, np.ceil(largest / div).astype(int) * div)
    return tuple(int(c) for c in canvas)  # type: ignore[return-value]
