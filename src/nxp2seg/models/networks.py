"""Segmentation networks (MONAI), shaped from the voxel spacing and patch size.

:func:`plan_kernels_strides` applies nnU-Net's rules for anisotropic data: an
axis is downsampled only while its spacing is at most ``anisotropy_ratio``
times the finest spacing at that depth and the feature map stays at least
``min_feature_size`` voxels (and even); convolutions are ``3`` wide on an axis
only where its spacing is within that ratio, ``1`` otherwise. So a 2.5 x 2.5 x 6
mm axial stack gets ``3x3x1`` kernels and in-plane-only strides until the
in-plane spacing has caught up with the slice thickness.

Both builders take the same first four arguments (channels in and out,
spacing, patch size) so that the config can swap them; the rest is config.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

__all__ = ["plan_kernels_strides", "patch_divisor", "build_dynunet", "build_unet"]


def plan_kernels_strides(
    spacing: Sequence[float],
    patch_size: Sequence[int],
    n_levels: int,
    min_feature_size: int = 4,
    anisotropy_ratio: float = 2.0,
) -> tuple[list[list[int]], list[list[int]]]:
    """Kernel sizes and strides per resolution level.

    Args:
        spacing: voxel size in mm per axis at the input.
        patch_size: input size in voxels per axis.
        n_levels: resolution levels (the input level included); ``len(filters)``.
        min_feature_size: an axis is not downsampled below this many voxels.
        anisotropy_ratio: see the module docstring.

    Returns:
        ``(kernels, strides)``: ``n_levels`` lists of per-axis ints; ``strides[0]``
        is all ones.
    """
    cur_spacing = np.asarray(spacing, dtype=float)
    cur_size = np.asarray(patch_size, dtype=int)
    if len(cur_spacing) != len(cur_size):
        raise ValueError(
            f"spacing {tuple(spacing)} and patch_size {tuple(patch_size)} differ in length"
        )
    kernels: list[list[int]] = []
    strides: list[list[int]] = []
    for level in range(n_levels):
        stride = np.ones_like(cur_size)
        if level > 0:
            finest = cur_spacing.min()
            for ax in range(len(cur_size)):
                if (
                    cur_spacing[ax] <= anisotropy_ratio * finest
                    and cur_size[ax] % 2 == 0
                    and cur_size[ax] // 2 >= min_feature_size
                ):
                    stride[ax] = 2
            cur_spacing = cur_spacing * stride
            cur_size = cur_size // stride
        finest = cur_spacing.min()
        kernel = [3 if s <= anisotropy_ratio * finest else 1 for s in cur_spacing]
        kernels.append(kernel)
        strides.append([int(s) for s in stride])
    return kernels, strides


def patch_divisor(strides: Sequence[Sequence[int]]) -> list[int]:
    """Total downsampling per axis: a patch must be a multiple of this."""
    return [int(v) for v in np.prod(np.asarray(strides, dtype=int), axis=0)]


def build_dynunet(
    in_channels: int,
    out_channels: int,
    spacing: Sequence[float],
    patch_size: Sequence[int],
    filters: Sequence[int] = (16, 32, 64, 128),
    min_feature_size: int = 4,
    anisotropy_ratio: float = 2.0,
    norm_name: str = "instance",
    act_name: str = "leakyrelu",
    dropout: float | None = None,
    res_block: bool = False,
    deep_supervision: bool = False,
    deep_supr_num: int = 1,
) -> nn.Module:
    """MONAI ``DynUNet`` with kernels and strides from :func:`plan_kernels_strides`.

    Input ``(B, in_channels, X, Y, Z)``; output ``(B, out_channels, X, Y, Z)``
    logits (in training with ``deep_supervision``: ``(B, 1 + deep_supr_num,
    out_channels, X, Y, Z)``). ``X, Y, Z`` must be multiples of
    :func:`patch_divisor` of the strides.
    """
    from monai.networks.nets import DynUNet

    kernels, strides = plan_kernels_strides(
        spacing, patch_size, len(filters), min_feature_size, anisotropy_ratio
    )
    return DynUNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(filters),
        dropout=dropout,
        norm_name=norm_name,
        act_name=act_name,
        deep_supervision=deep_supervision,
        deep_supr_num=deep_supr_num,
        res_block=res_block,
    )


def build_unet(
    in_channels: int,
    out_channels: int,
    spacing: Sequence[float],
    patch_size: Sequence[int],
    filters: Sequence[int] = (16, 32, 64, 128),
    num_res_units: int = 1,
    min_feature_size: int = 4,
    anisotropy_ratio: float = 2.0,
    norm: str = "instance",
    act: str = "prelu",
    dropout: float = 0.0,
) -> nn.Module:
    """MONAI ``UNet`` (the light option) with per-level strides from :func:`plan_kernels_strides`.

    Kernels are 3 on every axis (MONAI's UNet has one kernel size for all levels).
    ``filters`` are MONAI's ``channels`` (named as for :func:`build_dynunet`, so
    configs can switch networks and keep their width).
    """
    from monai.networks.nets import UNet

    _, strides = plan_kernels_strides(
        spacing, patch_size, len(filters), min_feature_size, anisotropy_ratio
    )
    return UNet(
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=list(filters),
        strides=[tuple(s) for s in strides[1:]],
        num_res_units=num_res_units,
        norm=norm,
        act=act,
        dropout=dropout,
    )
