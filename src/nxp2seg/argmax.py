"""Argmax over the class channels, exactly as ``torch.argmax``, without its slow CPU path.

On CPU, ``x.argmax(dim)`` over a leading (outer) dimension of a contiguous
tensor reduces along a strided axis and runs about 10x slower than a running
maximum over the few class channels (0.12 s against 0.01 s for 9 classes of a
175 x 131 x 24 volume on 2 cores). Ties go to the first channel, as in
``torch.argmax``.
"""

from __future__ import annotations

import torch

__all__ = ["channel_argmax"]


def channel_argmax(x: torch.Tensor, dim: int = 0, keepdim: bool = False) -> torch.Tensor:
    """``x.argmax(dim, keepdim)`` (``int64``) by a running maximum over the channels of ``dim``.

    Args:
        x: a floating tensor without NaN (class scores: logits or probabilities).
        dim: the channel dimension.
        keepdim: keep ``dim`` with size 1, as ``torch.argmax``.
    """
    if x.device.type != "cpu" or x.shape[dim] > 64:
        return x.argmax(dim=dim, keepdim=keepdim)
    channels = x.unbind(dim)
    best = channels[0].clone()
    index = torch.zeros(best.shape, dtype=torch.int64, device=x.device)
    for k, c in enumerate(channels[1:], start=1):
        better = c > best
        index.masked_fill_(better, k)
        torch.maximum(best, c, out=best)
    return index.unsqueeze(dim) if keepdim else index
