"""Per-station region slots: which label values make up each graded region, and the readers' targets.

The grading head works on the graded regions of one station in a fixed,
station-relative order, the schema's :meth:`LabelSchema.region_names`
(``station``) (default: right anterior, right medial/lateral, right posterior,
left anterior, left medial/lateral, left posterior). Everything here is a
plain array in that slot order, read from the label schema and the cohort's
tables; nothing re-types the schema:

* :func:`region_membership` ``(R, C)``: 1 where label value ``c`` belongs to
  region slot ``r`` (several per row for a muscle-level schema), so the soft
  region mask is ``probs`` summed over member labels;
* :func:`subcut_membership` ``(R, C)``: the subcutaneous label of each slot's side;
* :func:`lr_permutation` ``(R,)``: the slot of each region's other-side twin
  (a left-right mirror permutes per-region targets with it).

The readers' grades of every case as slot vectors are
:func:`nxp2seg.grading.tables.case_targets`.
"""

from __future__ import annotations

import numpy as np

from nxp2seg.data.schema import STATIONS, LabelSchema

__all__ = [
    "GRADE_TARGET_KEYS",
    "region_slots",
    "n_region_slots",
    "region_membership",
    "subcut_membership",
    "lr_permutation",
]

#: Item keys of the readers' targets (per-region vectors and the pattern).
GRADE_TARGET_KEYS: tuple[str, ...] = (
    "edema_target",
    "fat_target",
    "fascial_target",
    "subcut_target",
    "pattern_target",
    "pattern_index",
)


def region_slots(schema: LabelSchema, station: str) -> list[str]:
    """Region names of ``station`` in slot order (the schema's order)."""
    return schema.region_names(station)


def n_region_slots(schema: LabelSchema) -> int:
    """Number of region slots per station; the stations must agree.

    Raises:
        ValueError: when the stations have different numbers of graded regions.
    """
    counts = {st: len(schema.region_names(st)) for st in STATIONS}
    if len(set(counts.values())) != 1:
        raise ValueError(
            f"the grading head needs the same number of graded regions per station; dataset.json "
            f"'regions' gives {counts}"
        )
    return next(iter(counts.values()))


def region_membership(schema: LabelSchema, station: str, num_classes: int) -> np.ndarray:
    """``(R, C)`` float32: ``1`` where label value ``c`` belongs to region slot ``r``."""
    slots = region_slots(schema, station)
    m = np.zeros((len(slots), num_classes), dtype=np.float32)
    for r, name in enumerate(slots):
        m[r, list(schema.regions[name].labels)] = 1.0
    return m


def subcut_membership(schema: LabelSchema, station: str, num_classes: int) -> np.ndarray:
    """``(R, C)`` float32: row ``r`` marks ``subcutaneous_{side of slot r}`` (zeros if absent)."""
    slots = region_slots(schema, station)
    m = np.zeros((len(slots), num_classes), dtype=np.float32)
    for r, name in enumerate(slots):
        label = f"subcutaneous_{schema.regions[name].side}"
        if label in schema.labels:
            m[r, schema.labels[label]] = 1.0
    return m


def lr_permutation(schema: LabelSchema, station: str) -> np.ndarray:
    """``(R,)`` int64: for each slot, the slot of the same compartment on the other side.

    A slot whose twin is missing maps to itself.
    """
    slots = region_slots(schema, station)
    where = {
        (schema.regions[n].compartment, schema.regions[n].side): i for i, n in enumerate(slots)
    }
    perm = np.arange(len(slots), dtype=np.int64)
    for i, name in enumerate(slots):
        r = schema.regions[name]
        other = "left" if r.side == "right" else "right"
        perm[i] = where.get((r.compartment, other), i)
    return perm
