"""Right and left: the one home of the patient's sides.

Every consumer that needs to know which leg a label, a region or an array axis
belongs to asks this module; nothing parses ``_right``/``_left`` out of label
names.

* **Which label value is on which side**: the schema's graded regions carry
  their side (:attr:`~nxp2seg.data.schema.Region.side`) and the non-graded
  structures theirs (:data:`~nxp2seg.data.schema.STRUCTURE_SIDES`);
  :func:`label_sides`, :func:`side_lut` and :func:`lr_swap_lut` read them.
* **Which array axis runs left-right**: from the image's affine
  (:func:`world_lr_axis`, world x) or from the orientation codes a volume was
  reoriented to (:func:`orientation_lr_axis`); never assumed to be axis 0.

The tensor operations built on these rules (the laterality channel, the
left-right mirror with label swap) are in :mod:`nxp2seg.data.laterality`.
This module needs NumPy only, so the ``evaluate`` command reads sides without
loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from nxp2seg.data.schema import SIDES, STRUCTURE_SIDES, LabelSchema

__all__ = [
    "SIDE_CODES",
    "label_sides",
    "side_lut",
    "lr_swap_lut",
    "world_lr_axis",
    "orientation_lr_axis",
]

#: Integer code of each side in :func:`side_lut` (0: no side, e.g. background or bone).
SIDE_CODES: dict[str, int] = {"right": 1, "left": 2}


def _other(side: str) -> str:
    return SIDES[1 - SIDES.index(side)]


def label_sides(schema: LabelSchema) -> dict[int, str]:
    """``{label value: "right" | "left"}`` for every sided label value of ``schema``.

    Graded regions give their member labels the region's side; the structures
    of :data:`~nxp2seg.data.schema.STRUCTURE_SIDES` theirs. Values without a
    side (background, bone) are absent.

    Raises:
        ValueError: when one label value is given both sides.
    """
    out: dict[int, str] = {}

    def put(value: int, side: str, what: str) -> None:
        if out.setdefault(int(value), side) != side:
            raise ValueError(f"label value {value} ({what}) is declared both right and left")

    for region in schema.regions.values():
        for v in region.labels:
            put(v, region.side, f"region {region.name}")
    for name, (_, side) in STRUCTURE_SIDES.items():
        if side is not None and name in schema.labels:
            put(schema.labels[name], side, name)
    return out


def side_lut(schema: LabelSchema, size: int = 256) -> np.ndarray:
    """``(size,)`` int8: the :data:`SIDE_CODES` of every label value (0 = no side)."""
    lut = np.zeros(max(int(size), schema.max_label + 1), dtype=np.int8)
    for value, side in label_sides(schema).items():
        lut[value] = SIDE_CODES[side]
    return lut


def region_twins(schema: LabelSchema) -> dict[str, str | None]:
    """``{region: the same region of the other leg}`` (``None`` when the schema has no twin).

    A region's twin has the same station and compartment, the other side, and
    the same position among that side's regions of the compartment: the
    compartment itself at compartment level, the same muscle when a
    muscle-level schema grades one region per muscle (listed in the same
    order on both sides, as the default schemas do).
    """
    key: dict[str, tuple[str, str, str, int]] = {}
    seen: dict[tuple[str, str, str], int] = {}
    for name, r in schema.regions.items():
        k = seen.get((r.station, r.compartment, r.side), 0)
        seen[(r.station, r.compartment, r.side)] = k + 1
        key[name] = (r.station, r.compartment, r.side, k)
    where = {k: n for n, k in key.items()}
    return {n: where.get((st, comp, _other(side), k)) for n, (st, comp, side, k) in key.items()}


def lr_swap_lut(schema: LabelSchema) -> np.ndarray:
    """Lookup table mapping every right label value to its left twin and back.

    Twins are read from the schema, not from names: a graded region's twin is
    :func:`region_twins`', and their ``labels`` pair up in the order they are
    listed (the default schemas list a compartment's muscles in the same order
    on both sides); a sided structure's twin is the structure of the same kind
    on the other side (:data:`~nxp2seg.data.schema.STRUCTURE_SIDES`). Other
    values (background, bone, ...) map to themselves.

    Raises:
        ValueError: when a sided label has no twin (the schema cannot be mirrored).
    """
    lut = np.arange(schema.max_label + 1, dtype=np.int64)
    hint = "a left-right flip cannot keep sides correct: set data.augmentation.flip_lr_prob=0"
    for name, twin_name in region_twins(schema).items():
        region = schema.regions[name]
        if twin_name is None:
            raise ValueError(f"region {name!r} has no {_other(region.side)} twin; {hint}")
        twin = schema.regions[twin_name]
        if len(twin.labels) != len(region.labels):
            raise ValueError(
                f"regions {name!r} and {twin_name!r} list {len(region.labels)} and "
                f"{len(twin.labels)} labels; twins need one label for each; {hint}"
            )
        for a, b in zip(region.labels, twin.labels):
            lut[a] = b
    structures = {
        (kind, side): name for name, (kind, side) in STRUCTURE_SIDES.items() if name in schema.labels
    }
    for (kind, side), name in structures.items():
        if side is None:
            continue
        twin = structures.get((kind, _other(side)))
        if twin is None:
            raise ValueError(f"label {name!r} has no {_other(side)} twin; {hint}")
        lut[schema.labels[name]] = schema.labels[twin]
    return lut


def world_lr_axis(affine: Any) -> int:
    """Spatial array axis (0..2) that runs most nearly along world left-right (x)."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    cols = a / np.linalg.norm(a, axis=0, keepdims=True)
    return int(np.argmax(np.abs(cols[0])))


def orientation_lr_axis(axcodes: str | Sequence[str]) -> int:
    """Spatial array axis (0..2) of a volume reoriented to ``axcodes`` that runs left-right.

    ``"RAS"`` -> 0, ``"PLS"`` -> 1, ``"SPL"`` -> 2 (the axis whose code is L or R).
    """
    codes = [str(c).upper() for c in axcodes]
    hits = [i for i, c in enumerate(codes) if c in ("L", "R")]
    if len(codes) != 3 or len(hits) != 1:
        raise ValueError(f"orientation {''.join(codes)!r} must name three axes, one of them L or R")
    return hits[0]
