"""Make the segmenter's training cases look unseen to the grading head.

The grading stage trains the head on region features of the training cases,
read inside the *segmenter's* soft regions. The segmenter has seen those cases'
masks: it segments them better than it will segment new exams (on the
phantom, Dice 0.92 on its training cases against 0.89 on the validation
subjects, at the model's grid). A head trained inside near-perfect regions
learns to trust them and grades worse inside the imperfect ones of new exams
(on the phantom's held-out subjects, edema kappa 0.77 against 0.80-0.83 once
this is corrected).

The correction: for the cases whose masks the segmenter trained on, the
*network's input* is perturbed while it segments them (each image channel
scaled by a factor drawn from ``U(1 - 0.3 s, 1 + 0.3 s)`` and Gaussian noise
of SD ``0.15 s`` added, in normalised units), and the region features are
then read from the clean image inside those regions. The strength ``s`` is
calibrated (:func:`calibrate_strength`) so that the segmenter is about as good
on perturbed training cases as it is on the validation cases it never saw.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from nxp2seg.argmax import channel_argmax
from nxp2seg.stats.segmentation import dice

__all__ = ["STRENGTHS", "calibrate_strength", "perturb_image", "region_dice"]

log = logging.getLogger(__name__)

#: Strengths tried by :func:`calibrate_strength`.
STRENGTHS: tuple[float, ...] = (0.0, 1.0, 2.0, 3.0, 4.0)
_SCALE, _NOISE = 0.3, 0.15


def perturb_image(image: torch.Tensor, strength: float, generator: torch.Generator, channels: int = 2) -> torch.Tensor:
    """A copy of ``image`` (``(B, K, X, Y, Z)``) with its first ``channels`` scaled and noised.

    Each channel of each case is multiplied by ``U(1 - 0.3 s, 1 + 0.3 s)`` and
    gets Gaussian noise of SD ``0.15 s`` (normalised units); further channels
    (laterality) are left alone. ``strength`` 0 returns ``image`` itself.
    """
    s = float(strength)
    if s <= 0:
        return image
    out = image.clone()
    b = image.shape[0]
    for c in range(min(channels, image.shape[1])):
        factor = 1.0 + _SCALE * s * (2.0 * torch.rand(b, generator=generator) - 1.0)
        noise = torch.randn(out[:, c].shape, generator=generator)
        out[:, c] = out[:, c] * factor.to(out).view(-1, 1, 1, 1) + _NOISE * s * noise.to(out)
    return out


def region_dice(labels: torch.Tensor, truth: torch.Tensor, values: Sequence[int]) -> dict[int, float]:
    """Dice per label value present in either ``(X, Y, Z)`` integer map (absent from both: left out)."""
    p, t = labels.cpu().numpy(), truth.cpu().numpy()
    scores = {int(v): dice(p == v, t == v) for v in values}
    return {v: d for v, d in scores.items() if np.isfinite(d)}


def _mean_over_regions(per_case: Sequence[Mapping[int, float]]) -> float:
    """Each label's mean over the cases that hold it, then the mean over labels (as ``val/dice_mean``)."""
    pooled: dict[int, list[float]] = {}
    for scores in per_case:
        for v, d in scores.items():
            pooled.setdefault(v, []).append(d)
    return float(np.mean([np.mean(x) for x in pooled.values()])) if pooled else float("nan")


def calibrate_strength(
    segment: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    seen: Sequence[Mapping[str, Any]],
    unseen: Sequence[Mapping[str, Any]],
    load: Callable[[Mapping[str, Any]], Mapping[str, Any]],
    values_of: Callable[[str], Sequence[int]],
    device: torch.device,
    strengths: Sequence[float] = STRENGTHS,
    seed: int = 0,
    target: float | None = None,
) -> tuple[float, dict[str, Any]]:
    """The perturbation strength at which seen cases segment about as well as unseen ones.

    Args:
        segment: the sliding-window inference, ``(image, allowed) -> logits``.
        seen: items (with ``label``) of cases the segmenter trained on.
        unseen: items (with ``label``) of cases it did not (validation); not read when
            ``target`` is given.
        load: item -> ``{"image", "label"}`` preprocessed (the bundle's transforms, with label).
        values_of: station -> the label values scored.
        device: where the network runs.
        strengths: increasing strengths to try (the first should be 0).
        seed: of the perturbations.
        target: the unseen cases' Dice when already known (e.g. the fit's
            ``val/dice_mean``, over every validation case).

    Dice is each label's mean over the cases that hold it, then the mean over
    labels (the definition of ``val/dice_mean``).

    Returns:
        ``(strength, report)``: the strength where the seen cases' mean Dice,
        interpolated linearly between the tried strengths, falls to the unseen
        cases' (0 when it never was above; the largest tried when it stays
        above), and ``{"unseen_dice", "seen_dice": {strength: dice}, "strength"}``.
        Strengths are tried in increasing order up to the first whose Dice is at or
        below the target (``seen_dice`` holds those tried); each case is
        preprocessed once.
    """

    seen_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # seen cases: preprocessed once

    def prepared(i: int, item: Mapping[str, Any], cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if cache and i in seen_cache:
            return seen_cache[i]
        d = load(item)
        image = torch.as_tensor(np.asarray(d["image"]), dtype=torch.float32)[None]
        out = image, torch.as_tensor(np.asarray(d["label"]))[0].round().long()
        if cache:
            seen_cache[i] = out
        return out

    def mean_dice(items: Sequence[Mapping[str, Any]], strength: float, cache: bool = True) -> float:
        gen = torch.Generator().manual_seed(int(seed))
        scores: list[dict[int, float]] = []
        for i, item in enumerate(items):
            image, truth = prepared(i, item, cache)
            image = perturb_image(image, strength, gen).to(device)
            allowed = torch.as_tensor(np.asarray(item["allowed_labels"]), device=device)[None]
            labels = channel_argmax(segment(image, allowed), dim=1)[0]
            scores.append(region_dice(labels, truth, values_of(str(item["station"]))))
        return _mean_over_regions(scores)

    if target is None or not np.isfinite(float(target)):
        target = mean_dice(unseen, 0.0, cache=False)  # read once: not cached
    # increasing strengths until the seen cases' Dice falls to the target: the stronger
    # ones would not change the interpolated strength
    curve: dict[float, float] = {}
    for s in sorted(float(x) for x in strengths):
        curve[s] = mean_dice(seen, s)
        if not np.isfinite(target) or curve[s] <= target:
            break
    seen_cache.clear()
    xs = sorted(curve)
    strength = 0.0
    if np.isfinite(target) and curve[xs[0]] > target:
        strength = xs[-1]
        for lo, hi in zip(xs, xs[1:]):
            if curve[hi] <= target:  # the curve crosses the target between lo and hi
                span = curve[lo] - curve[hi]
                strength = hi if span <= 0 else lo + (hi - lo) * (curve[lo] - target) / span
                break
    report = {"unseen_dice": float(target), "seen_dice": {f"{k:g}": v for k, v in curve.items()},
              "strength": float(strength), "n_seen": len(seen), "n_unseen": len(unseen)}
    log.info("grading stage: perturbation strength %.2f (seen Dice %s, unseen %.4f)", strength,
             {k: round(v, 4) for k, v in report["seen_dice"].items()}, target)
    return float(strength), report
