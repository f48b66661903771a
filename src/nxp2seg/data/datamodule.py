"""Lightning data module over a cohort in the dataset contract.

* Which cohort: ``cohort=DIR``, or (``cohort=None``) a cohort source such as
  the built-in phantom (:class:`nxp2seg.phantom.cache.PhantomCohort`, wired
  in by ``data=phantom``), generated once into a cache folder by
  :meth:`CohortDataModule.prepare_data`.
* Which cases: cases whose ``split`` is ``test`` are held out (their subjects
  entirely); the rest is split into train and validation **by subject**, never
  by case, with a seed (or by ``split=val`` rows where ``cases.csv`` has them):
  :mod:`nxp2seg.data.split`.
  Cases without a label map are left out of segmentation-only training; with
  ``grading`` on, they stay in when the readers graded them (the grading head
  trains on them, the segmentation loss skips them).
* What a sample is (``sampling.mode``): a random patch (``patch``), or the
  whole case padded to a canvas planned from the training cases (``whole``,
  the default when grading is on: the head pools over whole regions).
* What a batch holds: ``image`` ``(B, 2, X, Y, Z)`` float32 (T1, STIR),
  ``label`` ``(B, 1, X, Y, Z)`` float32 label values, ``allowed_labels``
  ``(B, num_classes)`` bool (the label values the case's station may hold: a
  thigh case never gets a calf label), and the lists ``case_id``,
  ``subject_id``, ``station``. Training batches hold ``batch_size *
  num_samples`` patches (or ``batch_size`` whole cases); validation and test
  batches one whole volume (unpadded).
* With ``grading`` on, also: ``has_label`` ``(B,)`` (0 = empty stand-in label),
  the readers' targets ``edema_target``, ``fat_target``, ``fascial_target``,
  ``subcut_target`` ``(B, R)`` (rater means, NaN = not graded),
  ``pattern_target`` ``(B, 4)``, ``pattern_index`` ``(B,)``, and the station's
  slots: ``region_membership`` and ``subcut_membership`` ``(B, R, num_classes)``,
  ``station_index`` ``(B,)``, ``lr_perm`` ``(B, R)`` (:mod:`nxp2seg.data.targets`,
  :mod:`nxp2seg.data.regions`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytorch_lightning as pl
from monai.data import CacheDataset, DataLoader

from nxp2seg.config_utils import packaged_defaults
from nxp2seg.config_utils import to_plain as _plain
from nxp2seg.data.cohort import Cohort
from nxp2seg.data.pipelines import Augmentation, Sampling, eval_transforms, train_transforms
from nxp2seg.data.preprocessing import (
    PlanOptions,
    Preprocessing,
    fingerprint_cohort,
    plan_canvas,
    plan_preprocessing,
)
from nxp2seg.data.regions import n_region_slots
from nxp2seg.data.schema import STATIONS, STRUCTURES, GradeScale, LabelSchema
from nxp2seg.data.split import hidden_masks, split_by_subject
from nxp2seg.data.targets import GradeTargets, is_graded
from nxp2seg.data.verify import verify_cohort

__all__ = ["CohortDataModule", "CohortSource"]

log = logging.getLogger(__name__)


class CohortSource(Protocol):
    """A cohort that is prepared on demand (e.g. :class:`nxp2seg.phantom.cache.PhantomCohort`)."""

    @property
    def cohort_dir(self) -> Path: ...

    def prepare(self) -> Path: ...

    def describe(self) -> dict[str, Any]: ...


class CohortDataModule(pl.LightningDataModule):
    """Train/val/test data of one cohort for the segmenter.

    Args:
        cohort: cohort folder; ``None`` reads the cohort of ``phantom``.
        phantom: a :class:`CohortSource` (``data=phantom`` instantiates
            :class:`nxp2seg.phantom.cache.PhantomCohort` from the ``data.phantom``
            block: preset, subjects, seed, cache_dir, overrides), used when
            ``cohort`` is ``None``; :meth:`prepare_data` generates it if missing.
        split: ``{val_fraction, seed, holdout}``, see :func:`split_by_subject`; and
            ``mask_fraction`` (default 1): use the label maps of only this share of
            the training subjects (drawn with ``seed``), as if the others had none
            (to study training with few masks; validation keeps its masks).
        preprocessing: the ``data.preprocessing`` block
            (:class:`~nxp2seg.data.preprocessing.PlanOptions`); or pass a planned
            :class:`Preprocessing` to reuse one (e.g. from a bundle).
        sampling: :class:`~nxp2seg.data.transforms.Sampling` block.
        augmentation: :class:`~nxp2seg.data.transforms.Augmentation` block.
        loader: ``{batch_size, num_workers, cache_rate, cache_num_workers,
            pin_memory, verify, verify_images}``.
        grading: serve the readers' grade targets and keep graded cases without
            masks (``None`` = off; ``train`` turns it on with the grading head).
    """

    def __init__(
        self,
        cohort: str | os.PathLike | None = None,
        phantom: CohortSource | None = None,
        split: Mapping[str, Any] | None = None,
        preprocessing: Mapping[str, Any] | Preprocessing | None = None,
        sampling: Mapping[str, Any] | None = None,
        augmentation: Mapping[str, Any] | None = None,
        loader: Mapping[str, Any] | None = None,
        grading: bool | None = None,
    ):
        super().__init__()
        if cohort is None and (phantom is None or not hasattr(phantom, "prepare")):
            raise ValueError(
                "give data.cohort=DIR (a cohort folder) or a data.phantom cohort source (use data=phantom)"
            )
        self.source: CohortSource | None = phantom if cohort is None else None
        #: the phantom's settings (plain values), ``None`` for a cohort folder
        self.phantom = self.source.describe() if self.source is not None else None
        if cohort is not None:
            self.cohort_dir = Path(os.path.expanduser(str(cohort)))
        else:
            self.cohort_dir = Path(self.source.cohort_dir)
        self.split_cfg = {**packaged_defaults("data/phantom.yaml", "split"), **dict(_plain(split) or {})}
        if not 0.0 < float(self.split_cfg["mask_fraction"]) <= 1.0:
            raise ValueError(
                f"data.split.mask_fraction must be in (0, 1], got {self.split_cfg['mask_fraction']}"
            )
        preprocessing = _plain(preprocessing)
        self._fixed_prep = preprocessing if isinstance(preprocessing, Preprocessing) else None
        self.plan_options = PlanOptions.from_mapping(None if self._fixed_prep else preprocessing)
        self.sampling = Sampling.from_mapping(_plain(sampling))
        self.grading = bool(grading)
        self.mode = self.sampling.resolve(self.grading)
        if self.grading and self.mode != "whole":
            raise ValueError(
                "the grading head trains on whole cases: set data.sampling.mode=whole (or auto), "
                f"not {self.sampling.mode!r}"
            )
        self.augmentation = Augmentation.from_mapping(_plain(augmentation))
        self.loader = {**packaged_defaults("data/phantom.yaml", "loader"), **dict(_plain(loader) or {})}
        self.cohort: Cohort | None = None
        self.preprocessing: Preprocessing | None = None
        self.splits: dict[str, list[str]] = {}
        #: every case of each split before cases are left out (no mask, no grades)
        self.subject_splits: dict[str, list[str]] = {}
        self.excluded: dict[str, list[str]] = {}
        self._grade_targets: GradeTargets | None = None
        self.hidden_masks: set[str] = set()
        self._datasets: dict[str, Any] = {}

    def use_preprocessing(self, prep: Preprocessing) -> None:
        """See the data as a trained model did (fine-tuning): ``prep`` instead of a new plan.
        Call before :meth:`setup`."""
        if self.preprocessing is not None:
            raise RuntimeError("use_preprocessing() must come before setup()")
        self._fixed_prep = prep

    # -- cohort ----------------------------------------------------------------
    def prepare_data(self) -> None:
        """Prepare the cohort source (generate the phantom into its cache folder) if it is missing.

        Lightning calls this on rank 0 only; a cohort folder needs nothing.
        """
        if self.source is not None:
            self.source.prepare()

    def _open(self) -> Cohort:
        if self.cohort is None:
            if self.loader["verify"]:
                verify_cohort(
                    self.cohort_dir, check_images=bool(self.loader["verify_images"])
                ).raise_if_errors()
            self.cohort = Cohort.open(self.cohort_dir)
        return self.cohort

    @property
    def schema(self) -> LabelSchema:
        return self._open().dataset.schema

    @property
    def num_classes(self) -> int:
        """Network output channels: one per label value ``0..max_label``."""
        return self.schema.max_label + 1

    @property
    def in_channels(self) -> int:
        self._plan()
        assert self.preprocessing is not None
        return self.preprocessing.in_channels

    @property
    def grade_scale(self) -> GradeScale:
        """The cohort's edema grade scale (``dataset.json`` ``grade_scale``)."""
        return self._open().dataset.grade_scale

    @property
    def n_regions(self) -> int:
        """Graded region slots per station (6 in the default schemas)."""
        return n_region_slots(self.schema)

    def region_labels(self) -> dict[str, list[int]]:
        """Regions scored in validation: the graded regions, then subcutaneous tissue and bone."""
        schema = self.schema
        out = {name: list(r.labels) for name, r in schema.regions.items()}
        for name in STRUCTURES:
            if name in schema.labels:
                out[name] = [schema.labels[name]]
        return out

    def has_mask(self, case_id: str) -> bool:
        """Whether the case's label map is used (it exists and ``mask_fraction`` keeps it)."""
        return case_id not in self.hidden_masks and self._open().has_label(case_id)

    def allowed_labels(self, station: str) -> np.ndarray:
        """Bool ``(num_classes,)``: label values a case of ``station`` may hold."""
        mask = np.zeros(self.num_classes, dtype=bool)
        mask[sorted(self.schema.station_labels(station))] = True
        return mask

    # -- setup -------------------------------------------------------------------
    def _plan(self) -> None:
        if self.preprocessing is not None:
            return
        cohort = self._open()
        cases = cohort.cases
        bad = sorted(set(cases["station"].dropna().astype(str)) - set(STATIONS)) + (
            ["(blank)"] if cases["station"].isna().any() else []
        )
        if bad:
            raise ValueError(
                f"{cohort.root / 'cases.csv'}: station must be one of {STATIONS}; found {bad}"
            )
        self.splits = split_by_subject(
            cases,
            float(self.split_cfg["val_fraction"]),
            int(self.split_cfg["seed"]),
            tuple(self.split_cfg["holdout"]),
        )
        self.subject_splits = {k: list(v) for k, v in self.splits.items()}
        self.hidden_masks = hidden_masks(
            cases,
            [c for c in self.splits["train"] if cohort.has_label(c)],
            float(self.split_cfg["mask_fraction"]),
            int(self.split_cfg["seed"]),
        )
        unlabelled = {c for c in cohort.case_ids if not self.has_mask(c)}
        if self.grading:
            self.grade_targets()
            ungraded = {c for c in unlabelled if not is_graded(self.targets[c])}
            self.excluded = {"no_label_no_grades": sorted(ungraded)}
            drop = ungraded
        else:
            self.excluded = {"no_label": sorted(unlabelled)}
            drop = unlabelled
        self.splits = {k: [c for c in v if c not in drop] for k, v in self.splits.items()}
        if not any(self.has_mask(c) for c in self.splits["train"]):
            raise ValueError(
                f"{cohort.root}: no labelled training case outside the test split; add label maps to labelsTr/"
            )
        if not self.splits["val"]:
            log.warning(
                "%s: no validation subject: training runs the fixed schedule and keeps the last "
                "weights (mark split=val rows in cases.csv to validate and keep the best)",
                cohort.root,
            )
        if unlabelled and not self.grading:
            log.info(
                "%d cases have no label map and are left out of segmentation training",
                len(unlabelled),
            )
        elif unlabelled:
            log.info(
                "%d cases have no label map: they train the grading head only (%d without grades "
                "are left out)",
                len(unlabelled) - len(drop),
                len(drop),
            )
        if self._fixed_prep is not None:
            prep = self._fixed_prep
            if self.mode == "whole" and prep.canvas_size is None:
                prep = dataclasses.replace(prep, canvas_size=prep.patch_size)
            self.preprocessing = prep
        else:
            fp = fingerprint_cohort(cohort, self.splits["train"], self.plan_options.orientation)
            prep = plan_preprocessing(fp, self.plan_options)
            if self.mode == "whole":
                canvas = self.plan_options.canvas_size or plan_canvas(
                    fp, prep.target_spacing, self.plan_options.patch_divisor
                )
                # the network is planned for (and trained on) the canvas: patch = canvas
                prep = dataclasses.replace(
                    prep, patch_size=tuple(canvas), canvas_size=tuple(canvas)
                )
            self.preprocessing = dataclasses.replace(prep, channels=self._channels(cohort))

    @staticmethod
    def _channels(cohort: Cohort) -> tuple[str, ...]:
        """The cohort's channel names in channel order (``T1, STIR`` or ``FAT, WATER``)."""
        names = cohort.dataset.channel_names
        return tuple(names[k] for k in sorted(names, key=int))

    def grade_targets(self) -> dict[str, dict[str, Any]]:
        """The readers' targets of every case (:func:`~nxp2seg.grading.tables.case_targets`), once."""
        if self._grade_targets is None:
            self._grade_targets = GradeTargets(self._open())
        return self._grade_targets.all()

    @property
    def targets(self) -> dict[str, dict[str, Any]]:
        """:meth:`grade_targets` (read on first use)."""
        return self.grade_targets()

    def graded_cases(self, stage: str) -> list[str]:
        """Cases of split ``stage`` that the readers graded, with or without a mask (table order).

        Unlike :attr:`splits` this does not depend on ``grading``: a segmentation-only
        run (patch sampling) leaves unlabelled cases out of ``splits``, but a grading
        stage after it (:mod:`nxp2seg.models.grading_stage`) learns from them.
        """
        self._plan()
        targets = self.grade_targets()
        return [c for c in self.subject_splits.get(stage, []) if is_graded(targets[c])]

    def grading_items(self, stage: str) -> list[dict[str, Any]]:
        """Whole-case items of :meth:`graded_cases` with their targets and region slots.

        The items of :meth:`_items` with grading on: ``t1``, ``stir``, ``label``
        (only where :meth:`has_mask`), ``case_id``, ``subject_id``, ``station``,
        ``allowed_labels``, the readers' targets, ``region_membership``,
        ``subcut_membership``, ``station_index``, ``lr_perm``. Feed them to
        :func:`~nxp2seg.data.transforms.preprocess_transforms` (or
        :func:`~nxp2seg.data.transforms.eval_transforms` with ``optional_label``).
        """
        return self._items(self.graded_cases(stage), grading=True)

    def _items(self, case_ids: Sequence[str], grading: bool | None = None) -> list[dict[str, Any]]:
        grading = self.grading if grading is None else bool(grading)
        cohort = self._open()
        table = cohort.cases.set_index(cohort.cases["case_id"].astype(str))
        items = []
        for cid in case_ids:
            station = str(table.at[cid, "station"])
            item: dict[str, Any] = {
                "t1": str(cohort.t1_path(cid)),
                "stir": str(cohort.stir_path(cid)),
                "label": str(cohort.label_path(cid)),
                "case_id": cid,
                "subject_id": str(table.at[cid, "subject_id"]),
                "station": station,
                "allowed_labels": self.allowed_labels(station),
            }
            if (self.mode == "whole" or grading) and not self.has_mask(cid):
                del item["label"]  # EnsureLabeld gives it an empty one and has_label 0
            if grading:
                self.grade_targets()
                assert self._grade_targets is not None
                item.update(self._grade_targets.item(cid, station, self.num_classes))
            items.append(item)
        return items

    def _dataset(self, stage: str) -> Any:
        if stage not in self._datasets:
            assert self.preprocessing is not None
            if stage == "train":
                tf = train_transforms(
                    self.preprocessing,
                    self.schema,
                    self.augmentation,
                    self.sampling,
                    mode=self.mode,
                )
            else:
                tf = eval_transforms(self.preprocessing, optional_label=self.grading)
            self._datasets[stage] = CacheDataset(
                self._items(self.splits[stage]),
                transform=tf,
                cache_rate=float(self.loader["cache_rate"]),
                num_workers=int(self.loader["cache_num_workers"]),
                progress=False,
            )
        return self._datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        """Open the cohort, split it and plan preprocessing (idempotent; datasets are built lazily)."""
        self._plan()

    # -- loaders -----------------------------------------------------------------
    def _loader(self, stage: str, batch_size: int, shuffle: bool) -> Any:
        workers = int(self.loader["num_workers"])
        return DataLoader(
            self._dataset(stage),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=bool(self.loader["pin_memory"]),
            persistent_workers=workers > 0,
        )

    def train_dataloader(self) -> Any:
        return self._loader("train", int(self.loader["batch_size"]), shuffle=True)

    def val_dataloader(self) -> Any:
        return self._loader("val", 1, shuffle=False)

    def test_dataloader(self) -> Any:
        return self._loader("test", 1, shuffle=False)

    def has_test_cases(self) -> bool:
        self._plan()
        return bool(self.splits.get("test"))

    def describe(self) -> dict[str, Any]:
        """Plain summary for logs and the bundle: cohort, case counts, subjects per split."""
        self._plan()
        cohort = self._open()
        subj = dict(
            zip(cohort.cases["case_id"].astype(str), cohort.cases["subject_id"].astype(str))
        )
        out = {
            "cohort": str(self.cohort_dir),
            "phantom": self.phantom,
            "sampling": self.mode,
            "n_cases": {k: len(v) for k, v in self.splits.items()},
            "n_subjects": {k: len({subj[c] for c in v}) for k, v in self.splits.items()},
            "excluded": {k: len(v) for k, v in self.excluded.items()},
            "split": dict(self.split_cfg),
        }
        if self.grading:
            out["n_labelled"] = {
                k: sum(self.has_mask(c) for c in v) for k, v in self.splits.items()
            }
            out["grade_scale"] = self.grade_scale.name
        return out
