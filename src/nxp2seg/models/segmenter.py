"""The segmentation LightningModule: forward, loss, sliding-window evaluation, metrics.

Thin by design: the network, the loss, the optimizer and the scheduler are
injected (from config); no file I/O, no grading rules. The grader is learned
after the fit, on the frozen network (:mod:`nxp2seg.models.grading_stage`).

Cases without a label map: a batch may carry ``has_label`` ``(B,)``; samples
with ``has_label == 0`` (graded cases with an empty stand-in label) are left
out of the segmentation loss and of the segmentation metrics.

Partial labels: with ``unannotated_labels`` (the cohort's ``dataset.json``
``annotated`` list leaves them out) the loss merges those labels' probability
into the background's (:func:`~nxp2seg.models.partial_labels.merge_unannotated`)
and the metrics skip the regions made only of them.

Station masking: every batch carries ``allowed_labels`` ``(B, C)``, the label
values the case's station may hold (from ``cases.csv``). Logits of the other
values are pushed to :data:`MASKED_LOGIT` before softmax and argmax, in training
and inference alike, so a thigh case can never be labelled as calf or the reverse.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from monai.inferers import sliding_window_inference
from monai.metrics import Cumulative, DiceMetric, compute_hausdorff_distance
from torch import nn

from nxp2seg.argmax import channel_argmax
from nxp2seg.config_utils import packaged_defaults
from nxp2seg.config_utils import to_plain as _plain
from nxp2seg.data.intensity import WINDOW_BODY, body_mask
from nxp2seg.models.partial_labels import merge_unannotated
from nxp2seg.stats.segmentation import lr_swaps

__all__ = ["MASKED_LOGIT", "SegmentationScores", "Segmenter", "body_box", "mask_logits", "network_logits"]

#: ``model.inference`` defaults, written once in configs/model/segmenter.yaml.
_INFERENCE_DEFAULTS = packaged_defaults("model/segmenter.yaml", "inference")
#: Logit given to labels a case's station cannot hold (finite: safe in fp16/bf16).
MASKED_LOGIT = -1.0e4


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Set logits of disallowed labels to :data:`MASKED_LOGIT`.

    Args:
        logits: ``(B, C, X, Y, Z)``.
        allowed: ``(B, C)`` bool, or ``None`` (no masking).
    """
    if allowed is None:
        return logits
    keep = allowed.to(device=logits.device, dtype=torch.bool).reshape(
        *allowed.shape, *([1] * (logits.ndim - 2))
    )
    return logits.masked_fill(~keep, MASKED_LOGIT)


def network_logits(
    net: nn.Module, image: torch.Tensor, allowed_labels: torch.Tensor | None = None
) -> dict[str, Any]:
    """Run ``net`` and mask its logits to the case's station (see :meth:`Segmenter.forward`)."""
    out = net(image)
    if isinstance(out, torch.Tensor) and out.ndim == image.ndim + 1:  # DynUNet deep supervision
        heads = [mask_logits(h, allowed_labels) for h in torch.unbind(out, dim=1)]
        return {"logits": heads[0], "deep_logits": heads[1:]}
    return {"logits": mask_logits(out, allowed_labels)}


def body_box(
    image: torch.Tensor, min_size: Sequence[int], margin: Sequence[int] = (4, 4, 0)
) -> tuple[slice, slice, slice]:
    """The box around the body on the T1 channel, grown by ``margin`` and to at least ``min_size``.

    The body is :func:`nxp2seg.data.intensity.body_mask` of the normalised T1
    (channel 0) with :data:`~nxp2seg.data.intensity.WINDOW_BODY`: above a tenth
    of the way from its minimum (air) to its 99th percentile, over all cases of
    the batch. The box is grown symmetrically to ``min_size`` (the sliding window) where the
    volume allows, so that no window needs padding. Everything outside is air.

    Args:
        image: ``(B, K, X, Y, Z)``.
        min_size: smallest box per axis (clipped to the volume).
        margin: voxels added on each side per axis.

    Returns:
        Slices of the three spatial axes (the whole volume when no voxel is body).
    """
    body = body_mask(image[:, 0], WINDOW_BODY).any(dim=0)
    shape = body.shape
    if not bool(body.any()):
        return tuple(slice(0, n) for n in shape)
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = torch.nonzero(body.any(dim=other)).flatten()
        a, b = int(hit[0]) - int(margin[axis]), int(hit[-1]) + 1 + int(margin[axis])
        need = min(int(min_size[axis]), shape[axis]) - (b - a)
        if need > 0:
            a -= need // 2
            b += need - need // 2
        shift = max(0, -a) - max(0, b - shape[axis])
        a, b = max(0, a + shift), min(shape[axis], b + shift)
        out.append(slice(a, b))
    return tuple(out)


class SegmentationScores(Cumulative):
    """Per-case validation scores, gathered over DDP ranks by MONAI's :class:`Cumulative`.

    Each :meth:`extend` adds a batch's ``dice`` and ``hd`` ``(B, R)`` (NaN: not
    scored) and ``swaps`` ``(B, 1)``; :meth:`aggregate` returns the three
    buffers of every rank's cases, on the CPU, or ``None`` before any case.
    """

    def aggregate(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        buffers = self.get_buffer()
        if not buffers:
            return None
        dice, hd, swaps = (b.float().cpu() for b in buffers)
        return dice, hd, swaps


class Segmenter(pl.LightningModule):
    """Segment T1 + STIR volumes into the label schema's values.

    Args:
        net: ``(B, in_channels, X, Y, Z) -> (B, num_classes, X, Y, Z)`` logits (a
            DynUNet with deep supervision may return ``(B, 1 + k, C, X, Y, Z)`` in training).
        loss: ``loss(logits, label)`` with ``label`` ``(B, 1, X, Y, Z)`` values, e.g.
            ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)``.
        optimizer: ``optimizer(params=...) -> Optimizer`` (a partial from config).
        scheduler: ``scheduler(optimizer=...) -> LRScheduler`` or ``None``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        region_labels: ``{region: [label values]}`` scored in validation and test.
        mean_regions: regions averaged into ``dice_mean`` (default: all of ``region_labels``).
        patch_size: sliding-window size (voxels) = training patch size.
        spacing: voxel size in mm of the volumes the metrics see (for HD95 in mm).
        inference: ``{sw_batch_size, overlap, mode}`` of ``sliding_window_inference``;
            ``crop_to_body``: slide only over the box around the body
            (:func:`body_box`), air elsewhere; ``flip_tta``: see ``lr_permutation``.
            Missing keys take the ``model.inference`` defaults of
            ``configs/model/segmenter.yaml`` (flip TTA and the body box on).
        hd_percentile: percentile of the Hausdorff distance (95), ``None`` skips it.
        deep_supervision_decay: weight ratio of successive deep-supervision heads.
        lr_permutation: for each output channel, the channel of its right/left twin
            (:func:`nxp2seg.data.sides.lr_swap_lut`; unsided labels map to
            themselves). With ``inference.flip_tta`` the volume is also predicted
            mirrored and the two predictions averaged (channels swapped back with
            this permutation).
        laterality_channel: input channel holding the laterality map (negated
            in the mirrored pass), ``None`` if there is none.
        lr_axis: the spatial axis of the (reoriented) volumes that runs
            left-right, :func:`nxp2seg.data.sides.orientation_lr_axis` of the
            preprocessing's orientation (0 for ``RAS``); the mirrored pass flips it.
        side_lut: side code of every label value (1 right, 2 left, 0 none;
            :func:`nxp2seg.data.sides.side_lut`) for counting right/left swaps
            (``lr_swaps``); ``None`` counts none.
        unannotated_labels: label values the training masks do not delineate
            (unknown, not background; see the module docstring).
    """

    #: ``__init__`` arguments kept out of the saved hyperparameters (modules, factories).
    _hparams_ignore: tuple[str, ...] = ("net", "loss", "optimizer", "scheduler")

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        region_labels: Mapping[str, Sequence[int]] | None = None,
        mean_regions: Sequence[str] | None = None,
        patch_size: Sequence[int] = (64, 64, 16),
        spacing: Sequence[float] = (1.0, 1.0, 1.0),
        inference: Mapping[str, Any] | None = None,
        hd_percentile: float | None = 95.0,
        deep_supervision_decay: float = 0.5,
        lr_permutation: Sequence[int] | None = None,
        laterality_channel: int | None = None,
        lr_axis: int = 0,
        side_lut: Sequence[int] | None = None,
        unannotated_labels: Sequence[int] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=list(self._hparams_ignore), logger=False)
        # only plain values go into checkpoints (so they load with weights_only=True)
        for k in list(self.hparams):
            self.hparams[k] = _plain(self.hparams[k])
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.region_labels = {
            str(k): [int(v) for v in vals] for k, vals in dict(_plain(region_labels) or {}).items()
        }
        self.mean_regions = (
            list(mean_regions) if mean_regions is not None else list(self.region_labels)
        )
        self.inference_cfg = {**_INFERENCE_DEFAULTS, **dict(_plain(inference) or {})}
        self._region_lut: torch.Tensor | None = None
        self._scores = SegmentationScores()
        self._dice_metric = DiceMetric(include_background=True, reduction="mean_batch", ignore_empty=True)
        self.unannotated = [int(v) for v in (unannotated_labels or [])]
        self._unscored = [  # regions made only of unannotated labels: no Dice, no HD
            r for r, vals in enumerate(self.region_labels.values()) if vals and set(vals) <= set(self.unannotated)
        ]

    # -- model ---------------------------------------------------------------------
    def forward(
        self, image: torch.Tensor, allowed_labels: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Logits of the network, masked to the case's station.

        Returns:
            ``{"logits": (B, C, X, Y, Z)}``, plus ``"deep_logits"`` (list, coarser
            heads upsampled to full size) when the net returns deep supervision.
        """
        return network_logits(self.net, image, allowed_labels)

    def compute_loss(self, outputs: Mapping[str, Any], label: torch.Tensor) -> torch.Tensor:
        heads = [outputs["logits"], *outputs.get("deep_logits", [])]
        if self.unannotated:
            heads = [merge_unannotated(h, self.unannotated) for h in heads]
        weights = [self.hparams.deep_supervision_decay**i for i in range(len(heads))]
        total = sum(w * self.loss(h, label) for w, h in zip(weights, heads))
        return total / sum(weights)

    def segmentation_loss(
        self, outputs: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> torch.Tensor:
        """:meth:`compute_loss` over the samples that have a label map (``has_label``).

        Without ``has_label`` in the batch every sample counts. With no labelled
        sample the loss is an exact zero that keeps the graph.
        """
        has = batch.get("has_label")
        if has is None:
            return self.compute_loss(outputs, batch["label"])
        keep = torch.as_tensor(has, device=outputs["logits"].device).reshape(-1) > 0.5
        if bool(keep.all()):
            return self.compute_loss(outputs, batch["label"])
        if not bool(keep.any()):
            return outputs["logits"].sum() * 0.0
        idx = keep.nonzero().squeeze(1)
        sub = {
            "logits": outputs["logits"][idx],
            "deep_logits": [h[idx] for h in outputs.get("deep_logits", [])],
        }
        return self.compute_loss(sub, batch["label"][idx.to(batch["label"].device)])

    @torch.no_grad()
    def infer(
        self, image: torch.Tensor, allowed_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sliding-window logits of whole volumes ``(B, 2, X, Y, Z) -> (B, C, X, Y, Z)``, station-masked."""
        cfg = self.inference_cfg

        def window(x: torch.Tensor) -> torch.Tensor:
            return sliding_window_inference(
                x,
                roi_size=list(self.hparams.patch_size),
                sw_batch_size=int(cfg["sw_batch_size"]),
                predictor=lambda v: self(v)["logits"],
                overlap=float(cfg["overlap"]),
                mode=str(cfg["mode"]),
            )

        box = (slice(None), slice(None))
        if cfg["crop_to_body"]:
            box = box + body_box(image, self.hparams.patch_size)
        crop = image[box]
        logits = window(crop)
        perm = self.hparams.get("lr_permutation")
        if cfg["flip_tta"] and perm is not None:
            logits = 0.5 * (logits + self._mirrored(window, crop, perm))
        if crop.shape != image.shape:  # outside the body box: certain background (label 0)
            full = logits.new_full((logits.shape[0], logits.shape[1], *image.shape[2:]), MASKED_LOGIT)
            full[:, 0] = 0.0
            full[box] = logits
            logits = full
        return mask_logits(logits, allowed_labels)

    def _mirrored(self, window: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, perm) -> torch.Tensor:
        """Logits of the left-right mirrored volume, mapped back to the original patient.

        The flipped axis is ``lr_axis`` (the left-right axis of the preprocessing's
        orientation). The mirror of a patient is a patient whose right leg is the
        former left one: the laterality channel is negated and the right/left
        output channels swapped.
        """
        dims = (2 + int(self.hparams.get("lr_axis", 0)),)
        flipped = torch.flip(image, dims=dims)
        lat = self.hparams.get("laterality_channel")
        if lat is not None and flipped.shape[1] > int(lat):
            flipped[:, int(lat)] = -flipped[:, int(lat)]
        out = torch.flip(window(flipped), dims=dims)
        index = torch.as_tensor(list(perm), device=out.device, dtype=torch.long)
        return out.index_select(1, index)

    # -- training ------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        out = self(batch["image"], batch.get("allowed_labels"))
        loss = self.segmentation_loss(out, batch)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["image"].shape[0],
        )
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.hparams.scheduler_interval,
                "frequency": 1,
            },
        }

    # -- evaluation ----------------------------------------------------------------
    def _regions_onehot(self, labels: torch.Tensor) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` label values -> ``(B, R, X, Y, Z)`` region masks (float)."""
        if self._region_lut is None or self._region_lut.device != labels.device:
            lut = torch.zeros(
                256, len(self.region_labels), dtype=torch.bool
            )  # label values are 0..255
            for r, vals in enumerate(self.region_labels.values()):
                lut[vals, r] = True
            self._region_lut = lut.to(labels.device)
        lab = labels[:, 0].long().clamp(0, 255)
        return self._region_lut[lab].permute(0, 4, 1, 2, 3).float()

    def _eval_step(self, batch: Mapping[str, Any]) -> None:
        logits = self.infer(batch["image"], batch.get("allowed_labels"))
        self._score_segmentation(logits, batch)

    def _score_segmentation(self, logits: torch.Tensor, batch: Mapping[str, Any]) -> None:
        """Accumulate Dice and HD of whole-volume ``logits`` ``(B, C, X, Y, Z)`` against
        ``batch["label"]`` (samples with ``has_label == 0`` are skipped)."""
        label = batch["label"]
        has = batch.get("has_label")
        if has is not None:
            keep = torch.as_tensor(has).reshape(-1) > 0.5
            n_skip = int((~keep).sum())
            if n_skip:  # NaN rows (ignored by the means): every DDP rank takes part in the gather
                empty = torch.full((n_skip, len(self.region_labels)), float("nan"), device=logits.device)
                self._scores.extend(empty, empty, torch.full((n_skip, 1), float("nan"), device=logits.device))
            if not bool(keep.any()):
                return
            if n_skip:
                idx = keep.nonzero().squeeze(1)
                logits, label = logits[idx.to(logits.device)], label[idx.to(label.device)]
        pred = channel_argmax(logits, dim=1, keepdim=True)
        p, g = self._regions_onehot(pred), self._regions_onehot(label)
        dice = self._dice_metric(p, g).detach()
        self._dice_metric.reset()
        hd = torch.full_like(dice, float("nan"))
        if self.hparams.hd_percentile is not None:
            spacing = [float(s) for s in self.hparams.spacing]
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # empty regions: NaN (absent in both) or inf (missed)
                hd = compute_hausdorff_distance(
                    p,
                    g,
                    include_background=True,
                    percentile=float(self.hparams.hd_percentile),
                    spacing=spacing,
                ).to(dice)
            diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(g.shape[2:], spacing)))
            hd = torch.where(torch.isinf(hd), torch.full_like(hd, diag), hd)
        swaps = self._count_lr_swaps(pred, label).to(dice)
        dice[:, self._unscored] = float("nan")
        hd[:, self._unscored] = float("nan")
        self._scores.extend(dice, hd, swaps)

    def _count_lr_swaps(self, pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """``(B, 1)``: per case, the true sided regions mostly predicted as the other side.

        ``pred``, ``label``: ``(B, 1, X, Y, Z)`` label values. The rule is
        :func:`nxp2seg.stats.segmentation.lr_swaps` (``evaluate``'s), with the
        sides of ``side_lut``; without one nothing is counted.
        """
        sides = self.hparams.get("side_lut")
        counts = torch.zeros(pred.shape[0], 1)
        if sides is None:
            return counts
        lut = np.asarray(sides, dtype=np.int8)
        p = pred[:, 0].detach().cpu().numpy().astype(np.intp)
        t = label[:, 0].detach().cpu().numpy().astype(np.intp)
        for b in range(pred.shape[0]):
            counts[b, 0] = sum(lr_swaps(p[b], t[b], lut, self.region_labels).values())
        return counts

    def _reset_scores(self) -> None:
        self._scores.reset()
        self._dice_metric.reset()

    def _eval_epoch_end(self, stage: str) -> None:
        metrics: dict[str, float] = {}
        names = list(self.region_labels)
        buffers = self._scores.aggregate()  # every DDP rank's cases
        if buffers is None:
            self._reset_scores()
            return
        dice, hd, swaps = buffers
        scored = (("dice", dice), ("hd95_mm", hd if self.hparams.hd_percentile is not None else None))
        for prefix, scores in scored:
            if scores is None:
                continue
            per_region = torch.nanmean(scores.float(), dim=0)
            for name, v in zip(names, per_region.tolist()):
                if not math.isnan(v):
                    metrics[f"{stage}/{prefix}/{name}"] = v
            sel = [names.index(r) for r in self.mean_regions if r in names]
            vals = per_region[sel]
            vals = vals[~torch.isnan(vals)]
            if len(vals):
                metrics[f"{stage}/{prefix}_mean"] = float(vals.mean())
        metrics[f"{stage}/lr_swaps"] = float(torch.nansum(swaps))
        if metrics:
            self.log_dict(metrics, sync_dist=False, rank_zero_only=False)
        self._reset_scores()

    def on_validation_epoch_start(self) -> None:
        self._reset_scores()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_start(self) -> None:
        self._reset_scores()

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
