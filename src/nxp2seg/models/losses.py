"""Grading losses that skip what the readers did not grade.

A target of NaN means *not graded* (no reader gave that grade, or the case
has no grades at all). Each loss averages over the graded entries only; the
NaN targets are replaced before any arithmetic, so neither the loss nor any
gradient sees them (a NaN times zero would still be NaN). With nothing
graded in the batch the loss is an exact zero that keeps the graph.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "grading_losses",
    "masked_bce",
    "masked_regression",
    "readers_call",
    "soft_cross_entropy",
]

#: Weights of the loss terms (``model.grading_loss.weights``).
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {
    "segmentation": 1.0,
    "edema": 1.0,
    "fat": 0.5,
    "fascial": 0.5,
    "subcutaneous": 0.5,
    "pattern": 0.5,
}


def _masked_average(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    values = torch.where(valid, values, torch.zeros_like(values))
    return values.sum() / valid.sum().clamp(min=1)


def masked_regression(
    pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1", beta: float = 0.5
) -> torch.Tensor:
    """Mean SmoothL1 (``kind="smooth_l1"``, Huber with ``beta``) or squared error (``"mse"``)
    of ``pred`` against ``target`` over the non-NaN targets (same shapes)."""
    valid = torch.isfinite(target)
    t = torch.where(valid, target, pred.detach()).to(pred.dtype)
    if kind == "smooth_l1":
        per = F.smooth_l1_loss(pred, t, reduction="none", beta=float(beta))
    elif kind == "mse":
        per = (pred - t) ** 2
    else:
        raise ValueError(f"grading regression loss {kind!r}: choose smooth_l1 or mse")
    return _masked_average(per, valid)


def masked_bce(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits against targets in ``[0, 1]`` (0/1 calls, or soft
    shares), over the non-NaN targets."""
    valid = torch.isfinite(target)
    t = torch.where(valid, target, torch.zeros_like(target)).to(logit.dtype)
    per = F.binary_cross_entropy_with_logits(logit, t, reduction="none")
    return _masked_average(per, valid)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(B, K)`` logits against ``(B, K)`` soft labels (rows sum to 1),
    over the rows without NaN (cases whose pattern no reader gave)."""
    valid = torch.isfinite(target).all(dim=-1)
    t = torch.where(valid[:, None], target, torch.zeros_like(target)).to(logits.dtype)
    per = -(t * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    return _masked_average(per, valid)


def readers_call(share: torch.Tensor) -> torch.Tensor:
    """The readers' call on a finding from the share who saw it: 1 where more than half
    did (:func:`nxp2seg.grading.readers_flag`), NaN stays NaN."""
    return torch.where(torch.isfinite(share), (share > 0.5).to(share.dtype), share)


def grading_losses(
    outputs: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    regression: str = "smooth_l1",
    beta: float = 0.5,
) -> dict[str, torch.Tensor]:
    """The grading loss terms of a batch: ``edema``, ``fat``, ``fascial``, ``subcutaneous``, ``pattern``.

    Args:
        outputs: the model's ``edema``, ``fat`` ``(B, R)`` grades, ``fascial_logit``,
            ``subcut_logit`` ``(B, R)``, ``pattern_logits`` ``(B, 4)``.
        batch: ``edema_target``, ``fat_target``, ``fascial_target``,
            ``subcut_target`` ``(B, R)``, ``pattern_target`` ``(B, 4)`` (NaN = not graded).
            The flags' targets are the shares of readers who saw the finding; the
            loss is against the readers' call (:func:`readers_call`), the reference
            the flags are scored against.
        regression: ``smooth_l1`` or ``mse`` for the grades (in grade units).
        beta: SmoothL1's quadratic zone, in grades.
    """
    dev = outputs["edema"].device

    def tgt(key: str) -> torch.Tensor:
        return torch.as_tensor(batch[key], device=dev).float()

    def out(key: str) -> torch.Tensor:  # float32 even under mixed precision
        return outputs[key].float()

    return {
        "edema": masked_regression(out("edema"), tgt("edema_target"), regression, beta),
        "fat": masked_regression(out("fat"), tgt("fat_target"), regression, beta),
        "fascial": masked_bce(out("fascial_logit"), readers_call(tgt("fascial_target"))),
        "subcutaneous": masked_bce(out("subcut_logit"), readers_call(tgt("subcut_target"))),
        "pattern": soft_cross_entropy(out("pattern_logits"), tgt("pattern_target")),
    }
