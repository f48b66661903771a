"""Grading losses that skip what the readers did not grade (the head's MLP: :mod:`nxp2seg.models.grading_fit`).

A target of NaN means *not graded* (no reader gave that grade, or the case
has no grades at all). Each loss averages over the graded entries only; the
NaN targets are replaced before any arithmetic, so neither the loss nor any
gradient sees them (a NaN times zero would still be NaN). With nothing
graded in the batch the loss is an exact zero that keeps the graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_regression", "soft_cross_entropy"]


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


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(B, K)`` logits against ``(B, K)`` soft labels (rows sum to 1),
    over the rows without NaN (cases whose pattern no reader gave)."""
    valid = torch.isfinite(target).all(dim=-1)
    t = torch.where(valid[:, None], target, torch.zeros_like(target)).to(logits.dtype)
    per = -(t * F.log_softmax(logits, dim=-1)).sum(dim=-1)
    return _masked_average(per, valid)
