"""Grading rules: regional grades -> integer grades, patterns, scores and asymmetry.

Pure functions, one home for the domain rules of DESIGN.md (docs/grading.md
says what each output means in the readers' terms):

* :mod:`~nxp2seg.grading.rules`: arrays (numpy or pandas), last axis = the
  regions of one station: :func:`integer_grade`, :func:`pattern_rule`,
  :func:`station_score`, :func:`total_score`, :func:`asymmetry`,
  :func:`readers_flag`;
* :mod:`~nxp2seg.grading.tables`: long tables, for the model's and the
  readers' grades alike: :func:`scores_table`, :func:`rater_mean_targets`,
  :func:`pattern_targets`, :func:`rollup_regions`.
"""

from __future__ import annotations

from nxp2seg.grading.rollup import rollup_regions
from nxp2seg.grading.rules import (
    as_scale,
    asymmetry,
    integer_grade,
    max_station_score,
    max_total_score,
    pattern_rule,
    readers_flag,
    station_score,
    total_score,
)
from nxp2seg.grading.tables import (
    CASE_SCORE_COLUMNS,
    PATTERN_TARGET_COLUMNS,
    SUBJECT_SCORE_COLUMNS,
    TARGET_COLUMNS,
    case_targets,
    pattern_targets,
    rater_mean_targets,
    scores_table,
    subject_scores,
)

__all__ = [
    "as_scale",
    "integer_grade",
    "pattern_rule",
    "station_score",
    "total_score",
    "asymmetry",
    "max_station_score",
    "max_total_score",
    "readers_flag",
    "rollup_regions",
    "scores_table",
    "subject_scores",
    "case_targets",
    "rater_mean_targets",
    "pattern_targets",
    "CASE_SCORE_COLUMNS",
    "SUBJECT_SCORE_COLUMNS",
    "TARGET_COLUMNS",
    "PATTERN_TARGET_COLUMNS",
]
