"""Verify a cohort against the dataset contract and name every problem in one report.

::

    python -m nxp2seg.data.verify COHORT [--json OUT.json] [--no-images]
    nxp2seg-verify cohort=COHORT json=OUT.json check_images=false

:func:`verify_cohort` never stops at the first problem: a missing or unreadable
file, table or ``dataset.json`` becomes a :class:`Problem` (severity, case, file
relative to the cohort root, what is wrong, what to do) and the rest is checked
anyway, with the defaults of DESIGN.md standing in for a ``dataset.json`` that
cannot be read. Images are read one case at a time: headers for geometry, then
the data for the NaN/inf and label-value checks.

Exit codes of the command: 0 no errors (warnings allowed), 1 errors, 2 the
cohort folder cannot be opened at all. :data:`FIXES` lists every problem code;
``docs/dataset.md`` explains each.

One job per module: :mod:`.report` (the problem catalogue and the report),
:mod:`.tables` (``dataset.json`` and the CSV tables), :mod:`.files` (the
file layout), :mod:`.images` (headers, data, grids, label values),
:mod:`.cohort` (:func:`verify_cohort`: every check in order), :mod:`.cli`
(the command).
"""

from __future__ import annotations

from nxp2seg.data.verify.cli import main
from nxp2seg.data.verify.cohort import verify_cohort
from nxp2seg.data.verify.report import FIXES, Problem, VerifyReport
from nxp2seg.data.verify.tables import CASE_ID_PATTERN, is_safe_case_id

__all__ = [
    "CASE_ID_PATTERN",
    "FIXES",
    "Problem",
    "VerifyReport",
    "is_safe_case_id",
    "main",
    "verify_cohort",
]
