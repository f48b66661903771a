"""The dataset contract: label schema, grade scales, cohort reading, writing and verification."""

from nxp2seg.data.cohort import Cohort, CohortError, CohortWriter, DatasetDescription
from nxp2seg.data.schema import (
    FAT_SCALE,
    GRADE_SCALES,
    GradeScale,
    LabelSchema,
    Region,
    default_compartment_schema,
    default_muscle_schema,
    get_grade_scale,
)

__all__ = [
    "Cohort",
    "CohortError",
    "CohortWriter",
    "DatasetDescription",
    "FAT_SCALE",
    "GRADE_SCALES",
    "GradeScale",
    "LabelSchema",
    "Region",
    "default_compartment_schema",
    "default_muscle_schema",
    "get_grade_scale",
]
