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
  (a left-right mirror permutes per-region targets with it);
* :func:`case_targets`: the readers' grades of every case as slot vectors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from nxp2seg.data.schema import PATTERNS, STATIONS, GradeScale, LabelSchema

__all__ = [
    "GRADE_TARGET_KEYS",
    "region_slots",
    "n_region_slots",
    "region_membership",
    "subcut_membership",
    "lr_permutation",
    "case_targets",
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


def case_targets(
    grades: pd.DataFrame,
    patterns: pd.DataFrame,
    schema: LabelSchema,
    scale: GradeScale,
    stations: Mapping[str, str],
    case_ids: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The readers' truth of each case as slot vectors (NaN = not graded: masked out of the loss).

    Per case: ``edema_target``, ``fat_target``, ``fascial_target``,
    ``subcut_target`` ``(R,)`` float32 rater means
    (:func:`nxp2seg.grading.rater_mean_targets`; a flag's mean is the share of
    raters who saw it); ``pattern_target`` ``(4,)`` float32, the share of raters
    per pattern (:data:`~nxp2seg.data.schema.PATTERNS` order; NaN without a
    rater) and ``pattern_index`` (the readers' majority pattern, ties broken by
    :func:`nxp2seg.grading.pattern_targets`; ``-1`` without a rater).

    Args:
        grades, patterns: the cohort's ``grades.csv`` and ``patterns.csv``.
        schema: the label schema (region slots per station).
        scale: the cohort's edema grade scale.
        stations: ``{case_id: station}``.
        case_ids: cases to return (default: every case of ``stations``).
    """
    from nxp2seg.grading import pattern_targets, rater_mean_targets

    ids = list(case_ids) if case_ids is not None else list(stations)
    n_slots = {st: len(region_slots(schema, st)) for st in STATIONS}
    out: dict[str, dict[str, Any]] = {}
    for cid in ids:
        r = n_slots[stations[cid]]
        out[cid] = {
            "edema_target": np.full(r, np.nan, np.float32),
            "fat_target": np.full(r, np.nan, np.float32),
            "fascial_target": np.full(r, np.nan, np.float32),
            "subcut_target": np.full(r, np.nan, np.float32),
            "pattern_target": np.full(len(PATTERNS), np.nan, np.float32),
            "pattern_index": -1,
        }
    wanted = set(ids)
    means = None
    if grades is not None and len(grades):
        g = grades[grades["case_id"].astype(str).isin(wanted)]
        if len(g):
            means = rater_mean_targets(g, scale)
            slot_of = {
                (st, name): i for st in STATIONS for i, name in enumerate(region_slots(schema, st))
            }
            columns = {
                "edema_target": "edema_grade",
                "fat_target": "fat_grade",
                "fascial_target": "fascial_edema",
                "subcut_target": "subcutaneous_edema",
            }
            for row in means.itertuples(index=False):
                cid = str(row.case_id)
                slot = slot_of.get((stations[cid], str(row.region)))
                if slot is None:  # the verifier reports regions of the other station
                    continue
                for key, col in columns.items():
                    out[cid][key][slot] = getattr(row, col)
    if patterns is not None and len(patterns):
        p = patterns[patterns["case_id"].astype(str).isin(wanted)]
        if len(p) and p["pattern"].notna().any():
            pt = pattern_targets(p, means, scale=scale if means is not None else None)
            for row in pt.itertuples(index=False):
                cid = str(row.case_id)
                if row.n_raters > 0:
                    out[cid]["pattern_target"] = np.asarray(
                        [getattr(row, f"p_{q}") for q in PATTERNS], dtype=np.float32
                    )
                    out[cid]["pattern_index"] = PATTERNS.index(row.pattern)
    return out
