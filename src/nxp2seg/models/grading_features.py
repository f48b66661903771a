"""Cached grading inputs: the cohort's tissue statistics and every graded case's region features.

The grading stage (:mod:`nxp2seg.models.grading_stage`) never trains through
the segmenter: each graded case is preprocessed as the bundle preprocesses
(:func:`~nxp2seg.data.transforms.preprocess_transforms`), segmented once by the
frozen network exactly as ``nxp2seg.predict`` segments it (the sliding-window
inference, flip test-time augmentation included), and its region features are
computed inside that segmentation by the bundle's own model
(:meth:`~nxp2seg.models.myositis.GradingNet.region_features`: the same code at
training and at prediction). The result is a :class:`CaseFeatures`: a tensor
``(N, R, F)`` with the readers' targets, the head's whole training set.

Before that, :func:`cohort_scale` measures the training cohort's tissue
statistics on the training cases with label maps (:mod:`nxp2seg.models.grading_scale`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from nxp2seg.data.regions import GRADE_TARGET_KEYS
from nxp2seg.models.grading_scale import CohortScale, fit_cohort_scale, sample_case

__all__ = ["TARGET_KEYS", "CaseFeatures", "cohort_scale", "extract_features", "plain_tensor"]

log = logging.getLogger(__name__)

#: Per-case targets carried with the features (NaN / -1 = not graded).
TARGET_KEYS: tuple[str, ...] = GRADE_TARGET_KEYS

Segment = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class CaseFeatures:
    """The head's whole input for a set of cases, and the readers' targets.

    Attributes:
        x: ``(N, R, F)`` region feature vectors, no gradient.
        station_index: ``(N,)``.
        targets: :data:`TARGET_KEYS` -> ``(N, R)`` / ``(N, 4)`` / ``(N,)`` float tensors.
        case_ids, subject_ids: ``N`` each.
        has_mask: ``(N,)`` bool, cases whose label map the segmenter saw.
    """

    x: torch.Tensor
    station_index: torch.Tensor
    targets: dict[str, torch.Tensor]
    case_ids: list[str]
    subject_ids: list[str]
    has_mask: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: Sequence[int] | np.ndarray) -> CaseFeatures:
        """The cases at ``index``."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return CaseFeatures(
            x=self.x[idx],
            station_index=self.station_index[idx],
            targets={k: v[idx] for k, v in self.targets.items()},
            case_ids=[self.case_ids[i] for i in idx.tolist()],
            subject_ids=[self.subject_ids[i] for i in idx.tolist()],
            has_mask=self.has_mask[idx],
        )


def plain_tensor(x: Any) -> torch.Tensor:
    """A plain ``torch.Tensor`` (a ``MetaTensor`` would carry its metadata into every result)."""
    return torch.as_tensor(x.as_tensor() if hasattr(x, "as_tensor") else x)


def _loader(datamodule: Any, with_label: bool) -> Callable[[Mapping[str, Any]], Mapping[str, Any]]:
    from monai import transforms as mt

    from nxp2seg.data.pipelines import preprocess_transforms

    load = mt.Compose(preprocess_transforms(datamodule.preprocessing, with_label=with_label))
    keys = ("t1", "stir", "label") if with_label else ("t1", "stir")
    return lambda item: load({k: item[k] for k in keys})


def cohort_scale(datamodule: Any, reference: Any, clean_sd: tuple[float, float],
                 high_quantile: float) -> CohortScale:
    """The training cohort's tissue statistics, on its training cases with label maps.

    Args:
        datamodule: the set-up :class:`~nxp2seg.data.datamodule.CohortDataModule`.
        reference: the grader's reference estimator.
        clean_sd, high_quantile: of :func:`~nxp2seg.models.grading_scale.fit_cohort_scale`.
    """
    schema = datamodule.schema
    muscle = sorted({v for r in schema.regions.values() for v in r.labels})
    fat = [v for k, v in schema.labels.items() if k in ("subcutaneous_right", "subcutaneous_left")]
    load = _loader(datamodule, with_label=True)
    items = [i for i in datamodule.grading_items("train") if "label" in i]
    samples = []
    for item in items:
        d = load(item)
        samples.append(sample_case(plain_tensor(d["image"]), plain_tensor(d["label"]), muscle, fat,
                                   getattr(reference, "zero_percentile", 0.01)))
    return fit_cohort_scale(samples, reference, clean_sd, high_quantile)


@torch.no_grad()
def extract_features(
    model: Any,
    items: Sequence[Mapping[str, Any]],
    datamodule: Any,
    segment: Segment,
    what: str = "",
    perturb: float = 0.0,
    seed: int = 0,
) -> CaseFeatures:
    """Preprocess, segment and pool whole cases with the frozen network.

    Args:
        model: :class:`~nxp2seg.models.myositis.GradingNet` (network and grader, eval mode).
        items: :meth:`CohortDataModule.grading_items` of one split.
        datamodule: the data module (preprocessing plan, :meth:`has_mask`).
        segment: the sliding-window inference ``nxp2seg.predict`` segments with
            (:meth:`~nxp2seg.models.segmenter.Segmenter.infer`).
        what: a name for the log.
        perturb: the strength of the input perturbation while the cases with a mask pass
            through the network (segmentation and decoder features;
            :func:`~nxp2seg.models.perturbation.perturb_image`; intensities are read
            from the clean image); ``0``: none.
        seed: of the perturbations.
    """
    from nxp2seg.models.perturbation import perturb_image

    load = _loader(datamodule, with_label=False)
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(int(seed))
    rows: list[dict[str, Any]] = []
    xs: list[torch.Tensor] = []
    t0 = time.perf_counter()
    for i, item in enumerate(items):
        image = plain_tensor(load(item)["image"]).to(dev, torch.float32)[None]
        allowed = torch.as_tensor(np.asarray(item["allowed_labels"]), device=dev)[None]
        seen = bool(datamodule.has_mask(str(item["case_id"])))
        source = perturb_image(image.cpu(), perturb, gen).to(dev) if perturb > 0 and seen else image
        probs = torch.softmax(segment(source, allowed).float(), dim=1)
        xs.append(model.region_features(probs, image, [str(item["station"])], network_input=source).cpu())
        rows.append({
            **{k: np.asarray(item[k], dtype=np.float32) for k in TARGET_KEYS},
            "case_id": str(item["case_id"]),
            "subject_id": str(item["subject_id"]),
            "station_index": int(item["station_index"]),
            "has_mask": seen,
        })
        if (i + 1) % 10 == 0 or i + 1 == len(items):
            log.info("grading stage: %s features %d/%d cases (%.1f s)", what, i + 1, len(items),
                     time.perf_counter() - t0)
    if not rows:
        raise ValueError(f"grading stage: no graded {what} case to extract")
    return CaseFeatures(
        x=torch.cat(xs),
        station_index=torch.as_tensor([r["station_index"] for r in rows]),
        targets={k: torch.as_tensor(np.stack([r[k] for r in rows])) for k in TARGET_KEYS},
        case_ids=[r["case_id"] for r in rows],
        subject_ids=[r["subject_id"] for r in rows],
        has_mask=torch.as_tensor([r["has_mask"] for r in rows]),
    )
