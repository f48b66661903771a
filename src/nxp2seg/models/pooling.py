"""Pooling inside soft regions (pure functions): region masks, masked means, box filters.

Shapes: ``B`` cases, ``C`` label values, ``R`` region slots, ``X, Y, Z`` voxels,
``F`` feature channels. Everything is batched over cases and regions: a soft
region mask is one einsum of the class probabilities with a ``(B, R, C)``
membership matrix, a pooled mean one more; no Python loop over regions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["box_mean", "kernel_voxels", "masked_mean", "pool_regions", "region_masks", "weighted_quantiles"]




def region_masks(probs: torch.Tensor, membership: torch.Tensor) -> torch.Tensor:
    """Soft region masks: the probability of each region, summed over its member labels.

    Args:
        probs: ``(B, C, X, Y, Z)`` class probabilities (softmax of station-masked logits).
        membership: ``(B, R, C)`` (or ``(R, C)``, shared): 1 where label ``c`` belongs to region ``r``.

    Returns:
        ``(B, R, X, Y, Z)``, ``w[b, r] = sum_c membership[b, r, c] * probs[b, c]``.
    """
    m = membership.to(device=probs.device, dtype=probs.dtype)
    if m.ndim == 2:
        m = m.expand(probs.shape[0], *m.shape)
    return torch.einsum("bcxyz,brc->brxyz", probs, m)


def masked_mean(weights: torch.Tensor, features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Weighted mean of every feature channel under every weight map (one batched matmul).

    Args:
        weights: ``(B, R, X, Y, Z)`` non-negative weights (soft masks).
        features: ``(B, F, X, Y, Z)``.
        eps: added to the weight sums (an empty region pools to ~0, not NaN).

    Returns:
        ``(B, R, F)``: ``sum(w * f) / (sum(w) + eps)`` over the voxels.
    """
    num = torch.einsum("brxyz,bfxyz->brf", weights, features.to(weights.dtype))
    den = weights.sum(dim=(2, 3, 4)).unsqueeze(-1)
    return num / (den + eps)


def pool_regions(
    probs: torch.Tensor, membership: torch.Tensor, features: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Mean of each feature channel inside each soft region: ``(B, C, ...)``, ``(B, R, C)``,
    ``(B, F, ...)`` -> ``(B, R, F)``. :func:`region_masks` then :func:`masked_mean`."""
    return masked_mean(region_masks(probs, membership), features, eps)


def kernel_voxels(mm: float, spacing: float) -> int:
    """Odd box-filter width in voxels covering about ``mm`` millimetres (at least 1)."""
    return 2 * max(0, round(mm / (2.0 * float(spacing)))) + 1


def _box_mean_cumsum(x: torch.Tensor, dim: int, half: int) -> torch.Tensor:
    """Mean over ``[i - half, i + half]`` clipped to the axis ``dim``, by cumulative sums."""
    c = torch.cumsum(x, dim=dim)
    c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)  # c[i] = sum x[:i]
    lo, hi = _window(x, dim, half)
    return (c.index_select(dim, hi) - c.index_select(dim, lo)) / _count(x, dim, lo, hi)


def _window(x: torch.Tensor, dim: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last index of ``[i - half, i + half]`` clipped to the axis ``dim``."""
    i = torch.arange(x.shape[dim], device=x.device)
    return (i - half).clamp(min=0), (i + half + 1).clamp(max=x.shape[dim])


def _count(x: torch.Tensor, dim: int, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Voxels per clipped window, shaped to broadcast along ``dim`` of ``x``."""
    shape = [1] * x.ndim
    shape[dim] = x.shape[dim]
    return (hi - lo).to(x.dtype).view(shape)


def _box_mean_shifts(x: torch.Tensor, dim: int, half: int) -> torch.Tensor:
    """Mean over ``[i - half, i + half]`` clipped to the axis ``dim``, by ``2 * half`` shifted adds
    (5-10x faster than ``avg_pool3d`` or cumulative sums for narrow windows on CPU)."""
    n = x.shape[dim]
    out = x.clone()
    for s in range(1, min(half, n - 1) + 1):
        out.narrow(dim, s, n - s).add_(x.narrow(dim, 0, n - s))
        out.narrow(dim, 0, n - s).add_(x.narrow(dim, s, n - s))
    return out.div_(_count(x, dim, *_window(x, dim, half)))


def box_mean(x: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """Separable moving average over the spatial axes (zero-free at borders).

    Args:
        x: ``(B, K, X, Y, Z)``.
        kernel: odd widths per spatial axis (1 = untouched).

    Returns:
        Same shape; each voxel the mean over the window inside the volume.
    """
    out = x
    for axis, k in enumerate(kernel):
        k = int(k)
        if k <= 1:
            continue
        if k > 15:  # wide windows: cumulative sums are O(1) per voxel
            out = _box_mean_cumsum(out, 2 + axis, k // 2)
        else:  # narrow ones: a few shifted adds
            out = _box_mean_shifts(out, 2 + axis, k // 2)
    return out


def weighted_quantiles(values: torch.Tensor, weights: torch.Tensor, quantiles: Sequence[float]) -> torch.Tensor:
    """Quantiles of one value map under every weight map (a weighted distribution per region).

    One sort per case; the regions' cumulative weights in that order are one
    ``cumsum`` and the quantiles one ``searchsorted``, batched over regions.
    Only voxels where some weight is above ``1e-3`` take part.

    Args:
        values: ``(B, 1, X, Y, Z)`` (or ``(B, X, Y, Z)``).
        weights: ``(B, R, X, Y, Z)`` non-negative.
        quantiles: levels in ``[0, 1]``.

    Returns:
        ``(B, R, Q)``: the smallest value whose cumulative weight reaches each level
        (0 for a region without weight).
    """
    b, r = weights.shape[:2]
    v = values.reshape(b, -1)
    w = weights.reshape(b, r, -1)
    qs = torch.as_tensor(list(quantiles), dtype=w.dtype, device=w.device)
    out = w.new_zeros(b, r, qs.numel())
    for i in range(b):  # cases, not regions
        keep = (w[i] > 1e-3).any(dim=0)
        if not bool(keep.any()):
            continue
        vi, wi = v[i][keep], w[i][:, keep]
        order = vi.argsort()
        vs, ws = vi[order], wi[:, order]
        cw = ws.cumsum(dim=-1)
        total = cw[:, -1:]
        target = (qs[None, :] * total).contiguous()
        idx = torch.searchsorted(cw.contiguous(), target).clamp(max=vs.numel() - 1)
        out[i] = torch.where(total > 0, vs[idx], torch.zeros_like(target))
    return out
