"""Partial labels: masks that delineate only some structures of the schema.

A cohort's ``dataset.json`` may list ``"annotated": [label names]``. In its
masks the structures not listed are *unknown*, not background: a voxel
labelled 0 is background **or** one of them (real masks cover the muscles,
rarely the subcutaneous fat or the bone). The loss therefore marginalises: the
network's probabilities of the unannotated labels are added to the
background's before the loss sees them (the "marginal loss" of Shi et al.,
Medical Image Analysis 2021, for partially labelled multi-organ data), so
predicting subcutaneous fat where the mask says 0 costs nothing and predicting
it inside an annotated muscle costs what any error costs. Metrics leave the
unannotated structures out (their Dice would compare against nothing).
The list is read and checked by :class:`nxp2seg.data.cohort.DatasetDescription`
(``unannotated_values()``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["merge_unannotated"]

#: Log-probability given to the merged-away labels (finite: safe in fp16/bf16; exp() == 0).
_MERGED = -1.0e4


def merge_unannotated(logits: torch.Tensor, unannotated: Sequence[int]) -> torch.Tensor:
    """Log-probabilities with the unannotated labels' mass moved into the background.

    Args:
        logits: ``(B, C, ...)``.
        unannotated: label values (channels) the masks do not delineate.

    Returns:
        ``(B, C, ...)`` log-probabilities: channel 0 is ``log(p_0 + sum_u p_u)``,
        the unannotated channels a large negative constant, the others
        ``log p_c``. Their softmax is the merged distribution, so a loss built
        for logits (``DiceCELoss(softmax=True)``) takes them unchanged.
    """
    u = [int(v) for v in unannotated if 0 < int(v) < logits.shape[1]]
    if not u:
        return logits
    logp = torch.log_softmax(logits.float(), dim=1)
    index = torch.as_tensor([0, *u], device=logits.device)
    background = torch.logsumexp(logp.index_select(1, index), dim=1, keepdim=True)
    merged = torch.ones(logits.shape[1], dtype=torch.bool, device=logits.device)
    merged[u] = False
    shape = (1, -1) + (1,) * (logits.ndim - 2)
    out = torch.where(merged.reshape(shape), logp, torch.full_like(logp, _MERGED))
    return torch.cat([background, out[:, 1:]], dim=1).to(logits.dtype)
