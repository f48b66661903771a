"""The readers' targets of a cohort's cases, read once, and what a graded case's sample carries.

:class:`GradeTargets` turns the cohort's ``grades.csv`` and ``patterns.csv``
into per-case slot vectors (:func:`nxp2seg.grading.tables.case_targets`: rater
means, NaN = not graded) and adds the station's region slots
(:mod:`nxp2seg.data.regions`) that the grading head pools over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.regions import lr_permutation, n_region_slots, region_membership, subcut_membership
from nxp2seg.data.schema import STATIONS
from nxp2seg.grading.tables import case_targets

__all__ = ["GradeTargets", "is_graded"]


def is_graded(targets: Mapping[str, Any]) -> bool:
    """Whether any reader grade, flag or pattern exists among a case's targets."""
    return any(
        np.isfinite(np.asarray(v, dtype=float)).any()
        for k, v in targets.items()
        if k != "pattern_index"
    )


class GradeTargets:
    """The readers' targets of every case of ``cohort`` (read on first use).

    Args:
        cohort: an open cohort (its schema, grade scale, cases, grades and patterns).
    """

    def __init__(self, cohort: Cohort):
        self.cohort = cohort
        self._targets: dict[str, dict[str, Any]] = {}

    def all(self) -> dict[str, dict[str, Any]]:
        """``{case_id: targets}`` (:func:`~nxp2seg.grading.tables.case_targets`), computed once."""
        if not self._targets:
            cohort = self.cohort
            cases = cohort.cases
            stations = dict(zip(cases["case_id"].astype(str), cases["station"].astype(str)))
            n_region_slots(cohort.dataset.schema)  # both stations must have the same slots
            self._targets = case_targets(
                cohort.grades,
                cohort.patterns,
                cohort.dataset.schema,
                cohort.dataset.grade_scale,
                stations,
            )
        return self._targets

    def is_graded(self, case_id: str) -> bool:
        return is_graded(self.all()[case_id])

    def item(self, case_id: str, station: str, num_classes: int) -> dict[str, Any]:
        """A graded case's targets (copied) and its station's region slots.

        Keys: the targets of :meth:`all`, ``region_membership`` and
        ``subcut_membership`` ``(R, num_classes)``, ``station_index``, ``lr_perm`` ``(R,)``.
        """
        schema = self.cohort.dataset.schema
        t = self.all()[case_id]
        return {
            **{k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in t.items()},
            "region_membership": region_membership(schema, station, num_classes),
            "subcut_membership": subcut_membership(schema, station, num_classes),
            "station_index": STATIONS.index(station),
            "lr_perm": lr_permutation(schema, station),
        }
