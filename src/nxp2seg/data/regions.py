"""Per-station region slots: which label values make up each graded region, and the readers' targets.

The grading head works on the graded regions of one station in a fixed,
station-relative order, the schema's :meth:`LabelSchema.region_names`
(``station``) (default: right anterior, right medial/lateral, right posterior,
left anterior, left medial/lateral, left posterior; at muscle level one region
per muscle and side). Stations may have different numbers of graded regions
(a muscle-level schema: 26 thigh muscles, 22 calf muscles): every array has
``R = n_region_slots(schema)`` slots, the largest station's count, and a
station with fewer regions leaves its last slots empty (zero membership, NaN
targets; :func:`slot_counts` says how many are real). Everything here is a
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
    "slot_counts",
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


def slot_counts(schema: LabelSchema) -> tuple[int, ...]:
    """Graded regions of each station, in :data:`~nxp2seg.data.schema.STATIONS` order."""
    return tuple(len(schema.region_names(st)) for st in STATIONS)


def n_region_slots(schema: LabelSchema) -> int:
    """Region slots per station: the largest station's number of graded regions.

    Raises:
        ValueError: when the schema has no graded region at all.
    """
    n = max(slot_counts(schema))
    if n == 0:
        raise ValueError("dataset.json 'regions' lists no graded region; the grading head has nothing to grade")
    return n


def region_membership(schema: LabelSchema, station: str, num_classes: int) -> np.ndarray:
    """``(R, C)`` float32: ``1`` where label value ``c`` belongs to region slot ``r``
    (rows of empty slots are zero)."""
    slots = region_slots(schema, station)
    m = np.zeros((n_region_slots(schema), num_classes), dtype=np.float32)
    for r, name in enumerate(slots):
        m[r, list(schema.regions[name].labels)] = 1.0
    return m


def subcut_membership(schema: LabelSchema, station: str, num_classes: int) -> np.ndarray:
    """``(R, C)`` float32: row ``r`` marks ``subcutaneous_{side of slot r}`` (zeros if absent
    or an empty slot)."""
    slots = region_slots(schema, station)
    m = np.zeros((n_region_slots(schema), num_classes), dtype=np.float32)
    for r, name in enumerate(slots):
        label = f"subcutaneous_{schema.regions[name].side}"
        if label in schema.labels:
            m[r, schema.labels[label]] = 1.0
    return m


def lr_permutation(schema: LabelSchema, station: str) -> np.ndarray:
    """``(R,)`` int64: for each slot, the slot of the same region on the other side.

    The twin of a region is the region of the other side in the same compartment
    at the same position among that side's regions of the compartment (the
    compartment itself at compartment level, the same muscle at muscle level).
    A slot whose twin is missing, and an empty slot, maps to itself.
    """
    slots = region_slots(schema, station)
    key: dict[str, tuple[str, str, int]] = {}
    seen: dict[tuple[str, str], int] = {}
    for name in slots:
        r = schema.regions[name]
        k = seen.get((r.compartment, r.side), 0)
        seen[(r.compartment, r.side)] = k + 1
        key[name] = (r.compartment, r.side, k)
    where = {key[n]: i for i, n in enumerate(slots)}
    perm = np.arange(n_region_slots(schema), dtype=np.int64)
    for i, name in enumerate(slots):
        comp, side, k = key[name]
        other = "left" if side == "right" else "right"
        perm[i] = where.get((comp, other, k), i)
    return perm
