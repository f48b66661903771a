"""Segmentation and grading in one model: the multi-task LightningModule and its inference twin.

:class:`MyositisModel` is :class:`~nxp2seg.models.segmenter.Segmenter` plus an
optional grader (:mod:`nxp2seg.models.grading`, injected from ``model.grading``).
Without a grader it *is* the segmenter. With one:

* ``forward`` also returns ``edema``, ``fat``, ``fascial_logit``,
  ``subcut_logit`` ``(B, R)`` and ``pattern_logits`` ``(B, 4)``;
* the loss is the segmentation loss over the samples that have a mask plus
  the weighted grading losses over what the readers graded
  (:func:`nxp2seg.models.losses.grading_losses`);
* validation and test run each whole volume in one forward pass (padded to the
  training canvas, or to the next multiple of the network's stride when
  larger), score Dice on the labelled cases and log the agreement with the
  readers (:func:`nxp2seg.models.metrics.grading_metrics`) every epoch.

:class:`GradingNet` is the same forward without Lightning, for inference
(:meth:`nxp2seg.models.bundle.Bundle.build_model`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nxp2seg.data.schema import STATIONS, LabelSchema, get_grade_scale
from nxp2seg.models.grading import FeatureTap
from nxp2seg.models.losses import DEFAULT_LOSS_WEIGHTS, grading_losses
from nxp2seg.models.segmenter import Segmenter, network_logits

__all__ = [
    "MyositisModel",
    "GradingNet",
    "grade_forward",
    "pad_to_grid",
    "size_divisor_of",
]


# ---------------------------------------------------------------------------
# shared forward helpers (pure)
# ---------------------------------------------------------------------------


def size_divisor_of(net: nn.Module) -> list[int] | None:
    """Total stride per axis of a MONAI DynUNet/UNet (``net.strides``), or ``None`` if unknown."""
    from nxp2seg.models.networks import patch_divisor

    strides = getattr(net, "strides", None)
    if not strides:
        return None
    try:
        return patch_divisor(
            [list(s) if isinstance(s, (list, tuple)) else [s] * 3 for s in strides]
        )
    except (TypeError, ValueError):
        return None


def pad_to_grid(
    image: torch.Tensor,
    canvas: Sequence[int] | None = None,
    divisor: Sequence[int] | None = None,
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad ``(B, K, X, Y, Z)`` symmetrically with zeros to the canvas (or beyond it, to a
    multiple of ``divisor``), as training pads whole cases.

    Returns:
        ``(padded, crop)`` with ``padded[crop]`` the input again.
    """
    shape = list(image.shape[2:])
    div = [int(d) for d in (divisor or [1, 1, 1])]
    target = []
    for a, n in enumerate(shape):
        t = int(math.ceil(n / div[a]) * div[a])
        if canvas is not None:
            t = max(t, int(canvas[a]))
        target.append(t)
    before = [(t - n) // 2 for t, n in zip(target, shape)]
    pad: list[int] = []
    for a in reversed(range(len(shape))):  # F.pad: last axis first
        pad += [before[a], target[a] - shape[a] - before[a]]
    padded = torch.nn.functional.pad(image, pad, mode="constant", value=0.0) if any(pad) else image
    crop = (slice(None), slice(None)) + tuple(slice(b, b + n) for b, n in zip(before, shape))
    return padded, crop


def grade_forward(
    segment: Callable[[torch.Tensor, torch.Tensor | None], dict[str, Any]],
    tap: FeatureTap,
    grader: nn.Module,
    image: torch.Tensor,
    allowed_labels: torch.Tensor | None,
    region_membership: torch.Tensor,
    subcut_membership: torch.Tensor,
    station_index: torch.Tensor,
) -> dict[str, Any]:
    """One forward pass: station-masked logits, then grades from the same pass.

    Args:
        segment: ``(image, allowed) -> {"logits": ..., ...}`` (e.g. :func:`network_logits`).
        tap: reads the decoder features of that pass.
        grader: :class:`~nxp2seg.models.grading.Grader`.
        image: ``(B, 2, X, Y, Z)``.
        allowed_labels: ``(B, C)`` bool or ``None``.
        region_membership, subcut_membership: ``(B, R, C)``.
        station_index: ``(B,)``.

    Returns:
        The segmentation outputs plus :data:`~nxp2seg.models.grading.GRADING_OUTPUTS`.
    """
    with tap.capture():
        out = segment(image, allowed_labels)
    decoder = tap.take(image.shape[2:])
    probs = torch.softmax(out["logits"].float(), dim=1)
    out.update(grader(probs, image, decoder, region_membership, subcut_membership, station_index))
    return out


def _as_tensor(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.as_tensor(x, device=device, dtype=dtype)


# ---------------------------------------------------------------------------
# the LightningModule
# ---------------------------------------------------------------------------


class MyositisModel(Segmenter):
    """Segmenter with an optional grading head (one network, one pass).

    Args:
        grading: the grader (:func:`nxp2seg.models.grading.build_grader`), or
            ``None`` for segmentation only.
        grading_loss: ``{weights: {segmentation, edema, fat, fascial,
            subcutaneous, pattern}, regression: smooth_l1 | mse, beta}``
            (defaults :data:`~nxp2seg.models.losses.DEFAULT_LOSS_WEIGHTS`,
            ``smooth_l1``, ``0.5``).
        grade_scale: the cohort's edema scale name (kappa labels; the head's range).
        canvas_size: the training canvas (voxels); whole-volume evaluation pads to it.
        size_divisor: the network's total stride per axis (default: read from the net).
        **segmenter_kwargs: :class:`~nxp2seg.models.segmenter.Segmenter`'s arguments.
    """

    _hparams_ignore = (*Segmenter._hparams_ignore, "grading")

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        grading: nn.Module | None = None,
        grading_loss: Mapping[str, Any] | None = None,
        grade_scale: str = "beltrame6",
        canvas_size: Sequence[int] | None = None,
        size_divisor: Sequence[int] | None = None,
        **segmenter_kwargs: Any,
    ):
        super().__init__(net=net, loss=loss, optimizer=optimizer, **segmenter_kwargs)
        self.grader = grading
        cfg = dict(grading_loss or {})
        unknown = sorted(set(cfg) - {"weights", "regression", "beta"})
        if unknown:
            raise ValueError(
                f"model.grading_loss has unknown keys {unknown}; known: weights, regression, beta"
            )
        weights = {**DEFAULT_LOSS_WEIGHTS, **dict(cfg.get("weights") or {})}
        bad = sorted(set(weights) - set(DEFAULT_LOSS_WEIGHTS))
        if bad:
            raise ValueError(
                f"model.grading_loss.weights has unknown terms {bad}; known: {sorted(DEFAULT_LOSS_WEIGHTS)}"
            )
        self.loss_weights = {k: float(v) for k, v in weights.items()}
        self.regression = str(cfg.get("regression", "smooth_l1"))
        self.beta = float(cfg.get("beta", 0.5))
        self.grade_scale = get_grade_scale(grade_scale)
        self.canvas_size = None if canvas_size is None else [int(c) for c in canvas_size]
        self.size_divisor = (
            [int(d) for d in size_divisor] if size_divisor is not None else size_divisor_of(net)
        )
        self._tap = FeatureTap(net) if grading is not None else None
        top = getattr(grading, "max_grade", self.grade_scale.max_grade)
        if grading is not None and float(top) != self.grade_scale.max_grade:
            raise ValueError(
                f"the grader's range 0..{grading.max_grade} does not match the grade scale "
                f"{self.grade_scale.name} (0..{self.grade_scale.max_grade})"
            )
        self._rows: list[dict[str, torch.Tensor]] = []

    @property
    def grading_enabled(self) -> bool:
        return self.grader is not None

    def attach_grader(self, grader: nn.Module) -> None:
        """Add a grader trained apart from this module (the frozen-feature grading stage,
        :mod:`nxp2seg.models.grading_stage`), so that ``forward`` grades and the state
        dict holds it under ``grader.*`` as a jointly trained one would."""
        top = float(getattr(grader, "max_grade", self.grade_scale.max_grade))
        if top != self.grade_scale.max_grade:
            raise ValueError(
                f"the grader's range 0..{top:g} does not match the grade scale "
                f"{self.grade_scale.name} (0..{self.grade_scale.max_grade})"
            )
        if self._tap is not None:
            self._tap.remove()
        self.grader = grader
        self._tap = FeatureTap(self.net)

    # -- model ---------------------------------------------------------------------
    def forward(
        self,
        image: torch.Tensor,
        allowed_labels: torch.Tensor | None = None,
        region_membership: torch.Tensor | None = None,
        subcut_membership: torch.Tensor | None = None,
        station_index: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """Logits (station-masked) and, with a grader and the station's region slots, grades.

        Returns:
            ``{"logits", ["deep_logits"]}`` as :meth:`Segmenter.forward`, plus
            ``edema``, ``fat``, ``fascial_logit``, ``subcut_logit`` ``(B, R)`` and
            ``pattern_logits`` ``(B, 4)`` when graded.
        """
        if self.grader is None or region_membership is None:
            return super().forward(image, allowed_labels)
        dev = image.device
        return grade_forward(
            lambda x, a: network_logits(self.net, x, a),
            self._tap,
            self.grader,
            image,
            allowed_labels,
            _as_tensor(region_membership, dev, torch.float32),
            _as_tensor(subcut_membership, dev, torch.float32),
            _as_tensor(station_index, dev, torch.long),
        )

    def _batch_forward(self, batch: Mapping[str, Any], image: torch.Tensor) -> dict[str, Any]:
        return self(
            image,
            batch.get("allowed_labels"),
            batch["region_membership"],
            batch["subcut_membership"],
            batch["station_index"],
        )

    # -- training ------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        if self.grader is None:
            return super().training_step(batch, batch_idx)
        out = self._batch_forward(batch, batch["image"])
        terms = {"segmentation": self.segmentation_loss(out, batch)}
        terms.update(grading_losses(out, batch, self.regression, self.beta))
        loss = sum(self.loss_weights[k] * v for k, v in terms.items())
        n = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log_dict(
            {f"train/loss_{k}": v.detach() for k, v in terms.items()},
            on_step=False,
            on_epoch=True,
            batch_size=n,
        )
        return loss

    # -- evaluation ----------------------------------------------------------------
    @torch.no_grad()
    def grade_whole(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Whole volumes in one pass: pad to the canvas, forward, crop the logits back."""
        padded, crop = pad_to_grid(batch["image"], self.canvas_size, self.size_divisor)
        out = self._batch_forward(batch, padded)
        out.pop("deep_logits", None)
        out["logits"] = out["logits"][crop]
        return out

    def _eval_step(self, batch: Mapping[str, Any]) -> None:
        if self.grader is None:
            return super()._eval_step(batch)
        out = self.grade_whole(batch)
        self._score_segmentation(out["logits"], batch)
        dev = out["edema"].device

        def t(key: str) -> torch.Tensor:
            return _as_tensor(batch[key], dev).float().reshape(out["edema"].shape[0], -1)

        self._rows.append(
            {
                "edema": out["edema"].float(),
                "edema_target": t("edema_target"),
                "fat": out["fat"].float(),
                "fat_target": t("fat_target"),
                "fascial_prob": torch.sigmoid(out["fascial_logit"].float()),
                "fascial_target": t("fascial_target"),
                "subcut_prob": torch.sigmoid(out["subcut_logit"].float()),
                "subcut_target": t("subcut_target"),
                "pattern_prob": torch.softmax(out["pattern_logits"].float(), dim=-1),
                "pattern_index": t("pattern_index"),
            }
        )

    def _gather_rows(self) -> dict[str, np.ndarray] | None:
        if not self._rows:
            return None
        out = {}
        for key in self._rows[0]:
            local = torch.cat([r[key] for r in self._rows])
            if self._trainer is not None and self.trainer.world_size > 1:
                local = self.all_gather(local).reshape(-1, local.shape[1])
            out[key] = local.cpu().numpy()
        return out

    def _eval_epoch_end(self, stage: str) -> None:
        if self.grader is not None:
            from nxp2seg.models.metrics import grading_metrics

            rows = self._gather_rows()
            if rows is not None:
                rows["pattern_index"] = rows["pattern_index"][:, 0]
                metrics = grading_metrics(self.grade_scale, **rows)
                self.log_dict(
                    {f"{stage}/{k}": v for k, v in metrics.items()},
                    sync_dist=False,
                    rank_zero_only=False,
                )
        super()._eval_epoch_end(stage)

    def _reset_scores(self) -> None:
        super()._reset_scores()
        self._rows = []


# ---------------------------------------------------------------------------
# inference twin
# ---------------------------------------------------------------------------


class GradingNet(nn.Module):
    """The trained network and grader for inference (no Lightning), same state-dict keys
    (``net.*``, ``grader.*``) as :class:`MyositisModel`.

    Args:
        net: the segmentation network.
        grader: the grader, or ``None`` (segmentation only).
        canvas_size, size_divisor: whole-volume padding (see :func:`pad_to_grid`).
        schema: the label schema (region slots for :meth:`predict`).
        grade_scale: the edema scale name.
    """

    def __init__(
        self,
        net: nn.Module,
        grader: nn.Module | None = None,
        canvas_size: Sequence[int] | None = None,
        size_divisor: Sequence[int] | None = None,
        schema: LabelSchema | None = None,
        grade_scale: str = "beltrame6",
    ):
        super().__init__()
        self.net = net
        self.grader = grader
        self.canvas_size = None if canvas_size is None else [int(c) for c in canvas_size]
        self.size_divisor = (
            [int(d) for d in size_divisor] if size_divisor is not None else size_divisor_of(net)
        )
        self.schema = schema
        self.grade_scale = get_grade_scale(grade_scale)
        self._tap = FeatureTap(net) if grader is not None else None

    def forward(
        self,
        image: torch.Tensor,
        allowed_labels: torch.Tensor | None = None,
        region_membership: torch.Tensor | None = None,
        subcut_membership: torch.Tensor | None = None,
        station_index: torch.Tensor | None = None,
    ) -> dict[str, Any]:
        """As :meth:`MyositisModel.forward`."""
        if self.grader is None or region_membership is None:
            return network_logits(self.net, image, allowed_labels)
        return grade_forward(
            lambda x, a: network_logits(self.net, x, a),
            self._tap,
            self.grader,
            image,
            allowed_labels,
            region_membership,
            subcut_membership,
            station_index,
        )

    @property
    def grades_from_probabilities(self) -> bool:
        """The grader reads only class probabilities and the image (no decoder features):
        :meth:`grade_probabilities` grades inside any segmentation, e.g. the sliding-window one."""
        return self.grader is not None and not self.grader.features.feature_channels

    @torch.no_grad()
    def grade_probabilities(
        self, probs: torch.Tensor, image: torch.Tensor, stations: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Grades inside given class probabilities (no network pass).

        Args:
            probs: ``(B, C, X, Y, Z)`` station-masked class probabilities on the grid of ``image``.
            image: ``(B, 2+, X, Y, Z)`` preprocessed as the bundle preprocesses.
            stations: each case's station.

        Returns:
            As :meth:`predict`, without ``logits``.
        """
        if not self.grades_from_probabilities:
            raise ValueError("this grader reads decoder features: use GradingNet.predict")
        rm, sm, si = self._slots(stations, probs.shape[1], probs.device)
        out = self.grader(probs.float(), image, None, rm, sm, si)
        return self._grade_outputs(out)

    def _slots(self, stations: Sequence[str], c: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
        from nxp2seg.data.regions import region_membership, subcut_membership

        rm = np.stack([region_membership(self.schema, st, c) for st in stations])
        sm = np.stack([subcut_membership(self.schema, st, c) for st in stations])
        si = [STATIONS.index(st) for st in stations]
        return (torch.as_tensor(rm, device=dev), torch.as_tensor(sm, device=dev),
                torch.as_tensor(si, device=dev))

    @staticmethod
    def _grade_outputs(out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "edema": out["edema"],
            "fat": out["fat"],
            "fascial_prob": torch.sigmoid(out["fascial_logit"]),
            "subcut_prob": torch.sigmoid(out["subcut_logit"]),
            "pattern_prob": torch.softmax(out["pattern_logits"], dim=-1),
        }

    @torch.no_grad()
    def predict(self, image: torch.Tensor, stations: Sequence[str]) -> dict[str, torch.Tensor]:
        """Segment and grade preprocessed whole volumes in one pass.

        Args:
            image: ``(B, 2, X, Y, Z)`` normalised T1, STIR at the bundle's spacing.
            stations: each case's station (``thigh``/``calf``).

        Returns:
            ``logits`` ``(B, C, X, Y, Z)`` (station-masked, the input's grid) and,
            with a grader, ``edema``, ``fat`` ``(B, R)`` grades, ``fascial_prob``,
            ``subcut_prob`` ``(B, R)``, ``pattern_prob`` ``(B, 4)``; regions in the
            order of ``schema.region_names(station)``.
        """
        if self.schema is None:
            raise ValueError("GradingNet.predict needs the label schema (schema=...)")
        dev = image.device
        c = self.schema.max_label + 1
        allowed = torch.zeros(len(stations), c, dtype=torch.bool, device=dev)
        for i, st in enumerate(stations):
            allowed[i, sorted(self.schema.station_labels(st))] = True
        padded, crop = pad_to_grid(image, self.canvas_size, self.size_divisor)
        if self.grader is None:
            return {"logits": self(padded, allowed)["logits"][crop]}
        out = self(padded, allowed, *self._slots(stations, c, dev))
        return {"logits": out["logits"][crop], **self._grade_outputs(out)}
