"""The trained model for inference: the segmentation network and its grader, without Lightning.

:class:`GradingNet` is what a bundle builds (:meth:`nxp2seg.models.bundle.Bundle.build_model`)
and what the grading stage trains the grader inside (:mod:`nxp2seg.models.grading_stage`):
the same :meth:`GradingNet.region_features` computes the head's inputs at
training and at prediction. Grades are read inside a given segmentation, the
sliding-window one ``nxp2seg.predict`` writes (:meth:`GradingNet.grade_probabilities`);
a grader that reads decoder features gets them from one whole-volume pass
(:meth:`GradingNet.decoder_features`, padded to the training canvas or to the
network's stride).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nxp2seg.data.schema import STATIONS, LabelSchema, get_grade_scale
from nxp2seg.models.grading import FeatureTap
from nxp2seg.models.segmenter import network_logits

__all__ = ["GradingNet", "pad_to_grid", "size_divisor_of"]


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
    multiple of ``divisor``).

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


class GradingNet(nn.Module):
    """The trained network and grader for inference (state-dict keys ``net.*``, ``grader.*``).

    Args:
        net: the segmentation network.
        grader: the :class:`~nxp2seg.models.grading.Grader`, or ``None`` (segmentation only).
        canvas_size, size_divisor: whole-volume padding (see :func:`pad_to_grid`).
        schema: the label schema (region slots).
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
        if grader is not None and float(grader.max_grade) != self.grade_scale.max_grade:
            raise ValueError(
                f"the grader's range 0..{grader.max_grade:g} does not match the grade scale "
                f"{self.grade_scale.name} (0..{self.grade_scale.max_grade})"
            )

    def forward(self, image: torch.Tensor, allowed_labels: torch.Tensor | None = None) -> dict[str, Any]:
        """Station-masked logits of one whole-volume pass (:func:`network_logits`)."""
        return network_logits(self.net, image, allowed_labels)

    @property
    def reads_decoder(self) -> bool:
        """Whether the grader pools the network's decoder features."""
        return self.grader is not None and bool(self.grader.features.feature_channels)

    @torch.no_grad()
    def decoder_features(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, D, X, Y, Z)``: the network's last decoder features of one whole-volume pass."""
        tap = FeatureTap(self.net)
        try:
            padded, crop = pad_to_grid(image, self.canvas_size, self.size_divisor)
            with tap.capture():
                self.net(padded)
            return tap.take(padded.shape[2:])[crop].float()
        finally:
            tap.remove()

    def _slots(self, stations: Sequence[str], c: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
        from nxp2seg.data.regions import region_membership, subcut_membership

        if self.schema is None:
            raise ValueError("GradingNet needs the label schema (schema=...) to grade")
        rm = np.stack([region_membership(self.schema, st, c) for st in stations])
        sm = np.stack([subcut_membership(self.schema, st, c) for st in stations])
        si = [STATIONS.index(st) for st in stations]
        return (torch.as_tensor(rm, device=dev), torch.as_tensor(sm, device=dev),
                torch.as_tensor(si, device=dev))

    @torch.no_grad()
    def region_features(self, probs: torch.Tensor, image: torch.Tensor, stations: Sequence[str],
                        network_input: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, R, F)``: the grader's region features inside ``probs`` (``(B, C, ...)`` on ``image``'s grid).

        ``network_input``: what the decoder features are computed from, when not ``image``
        (the grading stage's perturbed input of the cases the segmenter saw, so that their
        decoder features are as unfamiliar as those of new exams; intensities are always
        read from ``image``).
        """
        if self.grader is None:
            raise ValueError("this model has no grader")
        rm, sm, _ = self._slots(stations, probs.shape[1], probs.device)
        source = image if network_input is None else network_input
        decoder = self.decoder_features(source) if self.reads_decoder else None
        return self.grader.features(probs.float(), image, decoder, rm, sm)

    @torch.no_grad()
    def grade_probabilities(
        self, probs: torch.Tensor, image: torch.Tensor, stations: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Grades inside given class probabilities.

        Args:
            probs: ``(B, C, X, Y, Z)`` station-masked class probabilities on the grid of ``image``
                (e.g. the softmax of the sliding-window logits predict writes out).
            image: ``(B, 2+, X, Y, Z)`` preprocessed as the bundle preprocesses.
            stations: each case's station.

        Returns:
            :meth:`~nxp2seg.models.grading.Grader.calls`: continuous and integer grades,
            probabilities and flags ``(B, R)``, ``pattern_prob`` ``(B, 4)``,
            ``pattern_index`` ``(B,)``; regions in the order of ``schema.region_names(station)``
            (a station with fewer regions than ``R``: its first ones).
        """
        x = self.region_features(probs, image, stations)
        si = torch.as_tensor([STATIONS.index(st) for st in stations], device=x.device)
        return self.grader.calls(self.grader.head(x, si), si)

    @torch.no_grad()
    def predict(self, image: torch.Tensor, stations: Sequence[str]) -> dict[str, torch.Tensor]:
        """Segment whole volumes in one pass and grade inside that segmentation.

        Args:
            image: ``(B, 2+, X, Y, Z)`` preprocessed at the bundle's spacing.
            stations: each case's station (``thigh``/``calf``).

        Returns:
            ``logits`` ``(B, C, X, Y, Z)`` (station-masked, the input's grid) and, with a
            grader, :meth:`grade_probabilities`' outputs.
        """
        if self.schema is None:
            raise ValueError("GradingNet.predict needs the label schema (schema=...)")
        dev = image.device
        c = self.schema.max_label + 1
        allowed = torch.zeros(len(stations), c, dtype=torch.bool, device=dev)
        for i, st in enumerate(stations):
            allowed[i, sorted(self.schema.station_labels(st))] = True
        padded, crop = pad_to_grid(image, self.canvas_size, self.size_divisor)
        logits = self(padded, allowed)["logits"][crop]
        if self.grader is None:
            return {"logits": logits}
        return {"logits": logits, **self.grade_probabilities(torch.softmax(logits.float(), dim=1), image, stations)}
