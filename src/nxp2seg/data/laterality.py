"""The laterality channel and the left-right mirror: tensor operations on the patient's sides.

* :func:`laterality_map` / :class:`AddLateralityd`: the signed distance from
  the body midline along world x, positive on the patient's right (an input
  channel that tells the network which leg a voxel is in);
* :func:`flip_swap_lr` / :class:`RandFlipSwapLRd`: mirror the world
  left-right axis and swap every sided label with its twin, so the mirrored
  patient's right leg carries right labels again.

The rules they apply (which label is on which side, which axis runs
left-right) are :mod:`nxp2seg.data.sides`'; the body mask is
:func:`nxp2seg.data.intensity.body_mask`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai import transforms as mt
from monai.config import KeysCollection
from monai.data import MetaTensor

from nxp2seg.data.intensity import body_mask
from nxp2seg.data.schema import LabelSchema
from nxp2seg.data.sides import lr_swap_lut, world_lr_axis

__all__ = ["body_midline", "laterality_map", "AddLateralityd", "flip_swap_lr", "RandFlipSwapLRd"]


def body_midline(mask: torch.Tensor, axis: int) -> float:
    """Array index (along ``axis``) of the plane between the two legs.

    Start from the median of the body voxels' positions (the legs have similar
    volumes), then move to the emptiest plane of the body profile within
    +-20% of the body's extent around it (the gap, or the narrowest contact,
    between the legs).
    """
    dims = [d for d in range(mask.ndim) if d != axis]
    profile = mask.float().sum(dim=dims)
    n = profile.sum()
    if n <= 0:
        return (mask.shape[axis] - 1) / 2.0
    cum = torch.cumsum(profile, 0)
    median = int(torch.searchsorted(cum, n / 2))
    occupied = torch.nonzero(profile > 0).flatten()
    extent = int(occupied[-1] - occupied[0] + 1)
    half = max(1, int(0.2 * extent))
    lo, hi = max(0, median - half), min(len(profile), median + half + 1)
    window = profile[lo:hi]
    low = torch.nonzero(window <= window.min() + 1e-6).flatten().float()
    return float(lo + low.mean())


def laterality_map(image: torch.Tensor, affine: Any, scale_mm: float = 100.0) -> torch.Tensor:
    """Signed distance from the body midline along world x, positive on the patient's right.

    Args:
        image: ``(C, X, Y, Z)``; channel 0 is the T1 (for the body mask).
        affine: voxel-to-world (RAS+) affine of ``image``.
        scale_mm: distance unit (the map is ``mm / scale_mm``, clipped to +-3).

    Returns:
        ``(1, X, Y, Z)`` float32.
    """
    a = np.asarray(affine, dtype=float)
    axis = world_lr_axis(a)
    mid = body_midline(body_mask(image[0]), axis)
    step = float(a[0, axis])  # world x per voxel along that axis (+: towards the right)
    n = image.shape[axis + 1]
    coord = (torch.arange(n, dtype=torch.float32) - mid) * step / scale_mm
    shape = [1, 1, 1]
    shape[axis] = n
    lat = coord.reshape(shape).expand(*image.shape[1:])
    return lat.clamp(-3.0, 3.0)[None].contiguous()


class AddLateralityd(mt.MapTransform):
    """Append the :func:`laterality_map` channel to ``keys`` (whole volumes, before cropping)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            affine = img.affine if isinstance(img, MetaTensor) else torch.eye(4)
            lat = laterality_map(torch.as_tensor(img), affine).to(torch.as_tensor(img).dtype)
            out = torch.cat([torch.as_tensor(img), lat], dim=0)
            d[key] = MetaTensor(out, meta=img.meta) if isinstance(img, MetaTensor) else out
        return d


def flip_swap_lr(
    image: torch.Tensor | None,
    label: torch.Tensor | None,
    axis: int,
    lut: torch.Tensor | np.ndarray,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Mirror ``(C, X, Y, Z)`` arrays along spatial ``axis``; swap sided label values with ``lut``.

    The affine is left as it is: the result is a mirrored patient in the same
    world frame, so the tissue now on the world right is the former left leg and
    carries right labels again. Either input may be ``None``.
    """
    if image is not None:
        image = torch.flip(image, dims=(axis + 1,))
    if label is not None:
        flipped = torch.flip(label, dims=(axis + 1,))
        table = torch.as_tensor(lut, device=flipped.device)
        label = flipped.clone()
        label[...] = table[torch.as_tensor(flipped).long()].to(flipped.dtype)
    return image, label


class RandFlipSwapLRd(mt.RandomizableTransform, mt.MapTransform):
    """Randomly mirror the world left-right axis, swapping right and left labels.

    The flipped axis is read from the affine of the first image key (a
    ``MetaTensor``), never assumed from array order; every key is flipped, and
    the ``label_keys`` among them are remapped with :func:`lr_swap_lut`.

    Per-region vectors (grade targets, ``region_keys``) describe the legs, so
    they follow them: after the mirror the former left leg is the right one,
    and ``d[k]`` becomes ``d[k][d[perm_key]]``, where ``d[perm_key]`` gives, for
    each region slot, the slot of its other-side twin.

    Args:
        keys: image and label keys to flip together.
        label_keys: the keys holding label maps (remapped); others are only flipped.
        schema: the label schema (its right/left twins, :func:`~nxp2seg.data.sides.lr_swap_lut`).
        prob: probability of flipping a sample.
        region_keys: keys of per-region vectors (last axis = region slots) to permute;
            those absent from a sample are skipped.
        perm_key: key of the right/left slot permutation (``(R,)`` ints).
        laterality_channel: channel of the image keys holding the laterality map
            (:class:`AddLateralityd`); it is negated after the mirror, so the
            mirrored patient's right (the former left leg) is positive again.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_keys: KeysCollection,
        schema: LabelSchema,
        prob: float = 0.5,
        allow_missing_keys: bool = False,
        region_keys: Sequence[str] = (),
        perm_key: str = "lr_perm",
        laterality_channel: int | None = None,
    ):
        mt.MapTransform.__init__(self, keys, allow_missing_keys)
        mt.RandomizableTransform.__init__(self, prob)
        self.label_keys = set([label_keys] if isinstance(label_keys, str) else label_keys)
        self.lut = torch.as_tensor(lr_swap_lut(schema))
        self.region_keys = tuple(region_keys)
        self.perm_key = perm_key
        self.laterality_channel = laterality_channel

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        ref = d[keys[0]]
        if not isinstance(ref, MetaTensor):
            raise TypeError(
                "RandFlipSwapLRd needs MetaTensors with an affine (use it before EnsureTyped(track_meta=False))"
            )
        axis = world_lr_axis(ref.affine)
        for key in keys:
            if key in self.label_keys:
                _, d[key] = flip_swap_lr(None, d[key], axis, self.lut)
            else:
                d[key], _ = flip_swap_lr(d[key], None, axis, self.lut)
                c = self.laterality_channel
                if c is not None and d[key].shape[0] > c:
                    d[key][c] = -d[key][c]
        present = [k for k in self.region_keys if k in d]
        if present:
            if self.perm_key not in d:
                raise KeyError(
                    f"RandFlipSwapLRd: the sample has region targets {present} but no {self.perm_key!r} "
                    "(the right/left slot permutation); the grade targets cannot follow the mirror"
                )
            perm = np.asarray(d[self.perm_key], dtype=np.int64)
            for key in present:
                d[key] = d[key][..., perm]
        return d
