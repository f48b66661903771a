"""Benchmark a prediction folder against the readers and the label maps (``nxp2seg.evaluate``).

* :mod:`~nxp2seg.evaluation.inputs` -- read the prediction folder and the
  cohort, choose the cases, list the failed ones;
* :mod:`~nxp2seg.evaluation.tables` -- the paired tables (model, each reader,
  readers' mean) per region, case and subject;
* :mod:`~nxp2seg.evaluation.segmentation` -- Dice, HD95 and right/left swaps
  on the native T1 grid;
* :mod:`~nxp2seg.evaluation.agreement` -- which statistic of
  :mod:`nxp2seg.stats` compares which columns, bootstrapped by subject;
* :mod:`~nxp2seg.evaluation.summary` -- ``summary.json`` with every contract key;
* :mod:`~nxp2seg.evaluation.report` -- the figures of ``report.html``.

See ``docs/evaluation.md``.
"""

from __future__ import annotations

from nxp2seg.evaluation.agreement import CONTRACT_KEYS, contract_keys
from nxp2seg.evaluation.inputs import EvaluationError, EvaluationSet, load_evaluation_set
from nxp2seg.evaluation.tables import PairedTables, build_tables

__all__ = [
    "CONTRACT_KEYS",
    "EvaluationError",
    "EvaluationSet",
    "PairedTables",
    "build_tables",
    "contract_keys",
    "load_evaluation_set",
]
