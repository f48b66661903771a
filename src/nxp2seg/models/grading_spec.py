"""What the grader is, as config: the ``grading`` block of ``train.yaml`` in dataclasses.

The grader has four parts, each a frozen dataclass built from its config node
(``configs/grading/staged.yaml``: every block names its dataclass as ``_target_``
and :func:`instantiate_spec` has Hydra instantiate them; each checks its values
on construction):

* :class:`ReferenceSpec` -- the normal-muscle STIR reference estimator
  (:mod:`nxp2seg.models.tissue`): which one and its settings;
* :class:`FeatureSpec` -- the region features (:mod:`nxp2seg.models.region_features`).
  No threshold here is an intensity: STIR thresholds are set from the training
  cohort's own statistics (:mod:`nxp2seg.models.grading_scale`), in units of its
  normal muscle's spread and its brightest muscle; T1 ones are fractions of each
  case's own muscle-to-fat range;
* :class:`HeadSpec` -- the learned head (:mod:`nxp2seg.models.grading_head`);
* :class:`FitSpec` -- how the head is fitted on cached features
  (:mod:`nxp2seg.models.grading_fit`), and :class:`OperatingSpec`, how the
  reported flags, integer grades and pattern are chosen from the fitted
  probabilities (:mod:`nxp2seg.models.grading_operating`).

The bundle records :meth:`GraderSpec.to_dict` and rebuilds the grader from it
(:func:`nxp2seg.models.grading.build_grader`); the fitted numbers themselves
(cohort statistics, weights, operating points) are tensors in the bundle's weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nxp2seg.config_utils import dataclass_from_mapping

__all__ = [
    "FLAG_RULES",
    "GRADE_RULES",
    "PATTERN_RULES",
    "FeatureSpec",
    "FitSpec",
    "GraderSpec",
    "HeadSpec",
    "OperatingSpec",
    "ReferenceSpec",
    "instantiate_spec",
]

FLAG_RULES: tuple[str, ...] = ("youden", "specificity", "fixed")
GRADE_RULES: tuple[str, ...] = ("round", "kappa")
PATTERN_RULES: tuple[str, ...] = ("argmax", "kappa")


def _pair(x: Any, what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in x)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be two numbers [low, high], got {x!r}") from None
    return lo, hi


@dataclass(frozen=True)
class ReferenceSpec:
    """The normal-muscle STIR reference (``grading.reference``).

    Attributes:
        name: the estimator (:data:`nxp2seg.models.tissue.REFERENCE_ESTIMATORS`).
        bins, smooth, share: the lowest histogram peak at least ``share`` as tall as the
            tallest, on ``bins`` bins over the 1st-99th percentile, Gaussian-smoothed
            with SD ``smooth`` bins.
        per_leg: each leg its own reference (the coil's bias field differs between legs).
        min_side_voxels: a leg with fewer clean-muscle voxels takes the station's reference.
        zero_percentile: the percentile of the real voxels' STIR taken as signal 0 (air).
        clean_sd: the clean-muscle window of the T1 fat index, ``[below, above]`` the
            training cohort's muscle peak in units of its spread (``f_sd``):
            clean muscle is not fat, septum or vessel.
    """

    name: str = "lowest_peak"
    bins: int = 96
    smooth: float = 2.0
    share: float = 0.2
    per_leg: bool = True
    min_side_voxels: int = 200
    zero_percentile: float = 0.01
    clean_sd: tuple[float, float] = (4.0, 3.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "clean_sd", _pair(self.clean_sd, "grading.reference.clean_sd"))
        if not (0 < float(self.share) <= 1 and int(self.bins) >= 8 and float(self.smooth) >= 0):
            raise ValueError(
                "grading.reference: share in (0, 1], bins >= 8 and smooth >= 0 "
                f"(got share={self.share}, bins={self.bins}, smooth={self.smooth})"
            )
        if not 0 <= float(self.zero_percentile) < 0.5:
            raise ValueError(f"grading.reference.zero_percentile must be in [0, 0.5), got {self.zero_percentile}")


@dataclass(frozen=True)
class FeatureSpec:
    """The region features (``grading.features``).

    Attributes:
        stir_levels: number of soft STIR-ratio thresholds (edema extent maps), spaced
            evenly in log between ``stir_low_sd`` and ``stir_high_quantile``.
        stir_low_sd: the lowest threshold: normal muscle plus this many of the
            cohort's normal-muscle spreads (``q_sd``).
        stir_high_quantile: the highest threshold: this quantile of the training
            cohort's clean-muscle STIR ratio (its brightest muscle).
        fat_levels: soft thresholds on the T1 fat index (0 muscle, 1 fat: a fraction of
            the case's own muscle-to-fat range).
        softness_sd: width of the soft thresholds, in the cohort's spreads (``q_sd`` on
            STIR, ``f_sd`` on T1).
        muscle_sd: the muscle-like window of the fat index, ``[below, above]`` the
            cohort's muscle peak in ``f_sd``.
        subcut_fat_index: fat-like T1 (subcutaneous edema map): fat index above this.
        subcut_stir_mix: bright STIR in fat: STIR ratio above
            ``q_fat ** (1 - mix)`` (``mix`` 0.5: the geometric middle between the
            cohort's fat and its normal muscle).
        band_mm, sector_mm: in-plane widths of the rim (fascia) and subcutaneous-sector filters.
        smooth_mm: in-plane width of the muscle-weighted local STIR mean the extent maps read.
        decoder_features: also pool the segmentation network's last decoder features.
        hist_bins: bins of the case's clean-muscle log STIR histogram (reference context).
    """

    stir_levels: int = 6
    stir_low_sd: float = 2.5
    stir_high_quantile: float = 0.99
    fat_levels: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75)
    softness_sd: float = 1.0
    muscle_sd: tuple[float, float] = (2.5, 5.5)
    subcut_fat_index: float = 0.3
    subcut_stir_mix: float = 0.5
    band_mm: float = 5.0
    sector_mm: float = 30.0
    smooth_mm: float = 5.0
    decoder_features: bool = True
    hist_bins: int = 12

    def __post_init__(self) -> None:
        object.__setattr__(self, "muscle_sd", _pair(self.muscle_sd, "grading.features.muscle_sd"))
        object.__setattr__(self, "fat_levels", tuple(float(v) for v in self.fat_levels))
        if int(self.stir_levels) < 1 or not self.fat_levels:
            raise ValueError("grading.features: stir_levels >= 1 and at least one fat level")
        if not 0.5 < float(self.stir_high_quantile) < 1:
            raise ValueError(
                f"grading.features.stir_high_quantile must be in (0.5, 1), got {self.stir_high_quantile}"
            )
        if float(self.softness_sd) <= 0 or float(self.band_mm) <= 0 or float(self.sector_mm) <= 0:
            raise ValueError("grading.features: softness_sd, band_mm and sector_mm must be > 0")


@dataclass(frozen=True)
class HeadSpec:
    """The learned head (``grading.head``; :class:`~nxp2seg.models.grading_head.GradingHead`).

    Attributes:
        hidden, embed, dropout: the edema/pattern MLP's width, slot/station embedding width, dropout.
        ensemble: MLP members trained apart (each its own seed) and averaged.
    """

    hidden: int = 64
    embed: int = 16
    dropout: float = 0.1
    ensemble: int = 5

    def __post_init__(self) -> None:
        if int(self.ensemble) < 1 or int(self.hidden) < 1:
            raise ValueError(f"grading.head: ensemble and hidden must be >= 1 (got {self.ensemble}, {self.hidden})")


@dataclass(frozen=True)
class FitSpec:
    """How the head is fitted on cached features (``grading.fit``).

    Attributes:
        epochs, lr, weight_decay, batch_size: the edema/pattern MLP's Lightning fit
            (AdamW, mini-batches of cases; ``batch_size`` 0: all cases in one).
        patience: early stopping on the validation loss after this many epochs
            without improvement, keeping the best epoch (``0``: a fixed schedule of
            ``epochs``, the last kept).
        seed: of the head's initialisation, batch order and dropout (member ``i``: ``seed + i``).
        readout_c: inverse L2 strength of the linear read-outs (scikit-learn's ``C``) for
            fat and the two flags, on standardised features; ``auto``: per read-out the
            value of ``readout_c_grid`` with the best out-of-fold score over folds of the
            training subjects (:func:`~nxp2seg.models.grading_fit.fit_readouts`).
        readout_c_grid: the candidates of ``readout_c: auto``.
        readout_features: per read-out (``fat``, ``fascial``, ``subcutaneous``) the
            ``fnmatch`` globs of the feature names it reads (``RegionFeatures.feature_names``;
            missing or empty: every feature).
        readout_exclude: per read-out, globs of the features it leaves out (default: the
            flags leave out the network's decoder channels, which the MLP reads).
        folds: cross-fitting folds over the training subjects: out-of-fold predictions
            on which the operating points are chosen (``0``: on the validation cases).
        perturb: the input perturbation while the segmenter segments the training cases
            whose masks it saw (:mod:`nxp2seg.models.perturbation`): ``auto`` (calibrated on
            the validation Dice), a strength, or ``0`` (none).
        calibration_cases: cases of each kind used to calibrate ``perturb=auto``.
        loss_weights: weights of the MLP's loss terms (``edema``, ``pattern``).
        regression, beta: the edema regression loss (``smooth_l1`` | ``mse``) and SmoothL1's zone.
    """

    epochs: int = 60
    lr: float = 3e-3
    weight_decay: float = 1e-2
    batch_size: int = 16
    patience: int = 0
    seed: int = 0
    readout_c: Any = "auto"
    readout_c_grid: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0)
    readout_features: Mapping[str, Any] = field(default_factory=lambda: {
        "fat": [], "fascial": ["rim/*", "fat_rim/*", "beneath_rim/*"], "subcutaneous": ["sector/*"]})
    readout_exclude: Mapping[str, Any] = field(default_factory=lambda: {
        "fascial": ["*/decoder*"], "subcutaneous": ["*/decoder*"]})
    folds: int = 5
    perturb: Any = "auto"
    calibration_cases: int = 16
    loss_weights: Mapping[str, float] = field(default_factory=lambda: {"edema": 1.0, "pattern": 0.5})
    regression: str = "smooth_l1"
    beta: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss_weights", {k: float(v) for k, v in dict(self.loss_weights).items()})
        bad = sorted(set(self.loss_weights) - {"edema", "pattern"})
        if bad:
            raise ValueError(f"grading.fit.loss_weights has unknown terms {bad}; known: edema, pattern")
        if not (self.perturb == "auto" or (isinstance(self.perturb, (int, float))
                                           and not isinstance(self.perturb, bool) and self.perturb >= 0)):
            raise ValueError(f"grading.fit.perturb must be 'auto' or a number >= 0, got {self.perturb!r}")
        if int(self.epochs) < 1 or int(self.batch_size) < 0 or int(self.patience) < 0:
            raise ValueError(
                "grading.fit: epochs must be >= 1, batch_size and patience >= 0 "
                f"(got epochs={self.epochs}, batch_size={self.batch_size}, patience={self.patience})"
            )
        object.__setattr__(self, "readout_c_grid", tuple(float(c) for c in self.readout_c_grid))
        for key in ("readout_features", "readout_exclude"):
            value = {str(k): [str(g) for g in (v or [])] for k, v in dict(getattr(self, key) or {}).items()}
            object.__setattr__(self, key, value)
            unknown = sorted(set(value) - {"fat", "fascial", "subcutaneous"})
            if unknown:
                raise ValueError(f"grading.fit.{key} has unknown read-outs {unknown}; known: fat, fascial, subcutaneous")
        if self.readout_c == "auto":
            if not self.readout_c_grid or min(self.readout_c_grid) <= 0:
                raise ValueError(f"grading.fit.readout_c_grid must list values > 0, got {list(self.readout_c_grid)}")
        elif isinstance(self.readout_c, bool) or not isinstance(self.readout_c, (int, float)) or self.readout_c <= 0:
            raise ValueError(f"grading.fit.readout_c must be 'auto' or a number > 0, got {self.readout_c!r}")
        if int(self.folds) == 1 or int(self.folds) < 0:
            raise ValueError(f"grading.fit.folds must be 0 (validation cases) or >= 2, got {self.folds}")
        if self.regression not in ("smooth_l1", "mse"):
            raise ValueError(f"grading.fit.regression {self.regression!r}: choose smooth_l1 or mse")


@dataclass(frozen=True)
class OperatingSpec:
    """How the reported calls are chosen from the fitted outputs (``grading.operating``).

    Attributes:
        flags: fascial and subcutaneous edema flag thresholds on the probability:
            ``youden`` (the highest sensitivity + specificity on the out-of-fold or
            validation predictions), ``specificity`` (the highest sensitivity with
            specificity >= ``min_specificity`` there) or ``fixed`` (``threshold``).
        min_specificity: of the ``specificity`` rule.
        threshold: of the ``fixed`` rule.
        grades: integer edema grades from the continuous ones: ``round`` (half up) or
            ``kappa`` (cut-points that maximise the quadratic kappa there).
        fat_grades: the same for the fat grades (default ``round``: on the default
            phantom the cut-points raised the validation fat kappa 0.715 -> 0.803 but
            lowered the test subjects' 0.832 -> 0.795; docs/training.md).
        pattern: the reported pattern: ``argmax`` of the head's probabilities, or
            ``kappa`` (per-pattern offsets of the log-probabilities that maximise the
            pattern kappa there).
    """

    flags: str = "youden"
    min_specificity: float = 0.9
    threshold: float = 0.5
    grades: str = "round"
    fat_grades: str = "round"
    pattern: str = "argmax"

    def __post_init__(self) -> None:
        for key, allowed in (("flags", FLAG_RULES), ("grades", GRADE_RULES), ("fat_grades", GRADE_RULES),
                             ("pattern", PATTERN_RULES)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"grading.operating.{key} {getattr(self, key)!r}: choose one of {allowed}")
        if not (0 < float(self.min_specificity) < 1 and 0 < float(self.threshold) < 1):
            raise ValueError("grading.operating: min_specificity and threshold must be in (0, 1)")


#: Hydra's keys in a config node, not fields of the dataclasses.
_HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_")


def _strip(d: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(d or {}).items() if k not in _HYDRA_KEYS}


@dataclass(frozen=True)
class GraderSpec:
    """The whole ``grading`` block (``enabled``: learn a grader after the segmentation fit)."""

    enabled: bool = True
    reference: ReferenceSpec = field(default_factory=ReferenceSpec)
    features: FeatureSpec = field(default_factory=FeatureSpec)
    head: HeadSpec = field(default_factory=HeadSpec)
    fit: FitSpec = field(default_factory=FitSpec)
    operating: OperatingSpec = field(default_factory=OperatingSpec)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> GraderSpec:
        """From a plain mapping (the resolved config node, or what a bundle recorded; Hydra's
        ``_target_`` keys ignored); unknown keys are an error naming them."""
        d = _strip(d)
        types = {"reference": ReferenceSpec, "features": FeatureSpec, "head": HeadSpec,
                 "fit": FitSpec, "operating": OperatingSpec}
        unknown = sorted(set(d) - {"enabled", *types})
        if unknown:
            raise ValueError(f"grading has unknown keys {unknown}; known: enabled, {', '.join(types)}")
        parts = {k: dataclass_from_mapping(t, _strip(d.get(k)), f"grading.{k}") for k, t in types.items()}
        return cls(enabled=bool(d.get("enabled", True)), **parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), as the bundle records them."""

        def plain(x: Any) -> Any:
            if isinstance(x, tuple):
                return [plain(v) for v in x]
            if isinstance(x, Mapping):
                return {k: plain(v) for k, v in x.items()}
            return x

        return plain(dataclasses.asdict(self))


def instantiate_spec(node: Any) -> GraderSpec:
    """The ``grading`` config node instantiated by Hydra (its ``_target_`` dataclasses).

    A node without ``_target_`` (an older config, a plain mapping) goes through
    :meth:`GraderSpec.from_mapping`. A misspelt key is a ``ValueError`` naming the block.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
    if "_target_" not in plain:
        return GraderSpec.from_mapping(plain)
    try:
        spec = instantiate(plain, _convert_="all")
    except InstantiationException as e:
        raise ValueError(f"grading: {e}; see configs/grading/staged.yaml for the keys") from None
    if not isinstance(spec, GraderSpec):
        raise ValueError(f"grading._target_ must be nxp2seg.models.grading_spec.GraderSpec, got {type(spec).__name__}")
    return spec
