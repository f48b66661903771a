"""Statistics: agreement with readers (with subject bootstrap) and cohort tables.

* :mod:`~nxp2seg.stats.agreement` -- kappa, ICC, correlation, Bland-Altman,
  MAE, sensitivity/specificity, AUC, macro-F1, confusion, non-inferiority;
* :mod:`~nxp2seg.stats.bootstrap` -- percentile intervals resampled by subject;
* :mod:`~nxp2seg.stats.cohort` -- normality, variable kinds, the correlation
  table and the group comparison of the clinical papers, Markdown output.

See ``docs/statistics.md`` for the choices and how to read each figure.
"""

from __future__ import annotations

from nxp2seg.stats.agreement import (
    ICC_KINDS,
    bland_altman,
    cohen_kappa,
    confusion,
    icc,
    icc_table,
    macro_f1,
    mae,
    noninferiority,
    pearson,
    roc_auc,
    sensitivity_specificity,
    spearman,
)
from nxp2seg.stats.bootstrap import (
    COPY_COL,
    BootstrapResult,
    paired_difference,
    resample_subjects,
    subject_bootstrap,
    subject_bootstrap_many,
)
from nxp2seg.stats.cohort import (
    correlation_table,
    group_comparison,
    normality,
    normality_table,
    to_markdown,
    variable_type,
)

__all__ = [
    "COPY_COL",
    "ICC_KINDS",
    "BootstrapResult",
    "bland_altman",
    "cohen_kappa",
    "confusion",
    "correlation_table",
    "group_comparison",
    "icc",
    "icc_table",
    "macro_f1",
    "mae",
    "noninferiority",
    "normality",
    "normality_table",
    "paired_difference",
    "pearson",
    "resample_subjects",
    "roc_auc",
    "sensitivity_specificity",
    "spearman",
    "subject_bootstrap",
    "subject_bootstrap_many",
    "to_markdown",
    "variable_type",
]
