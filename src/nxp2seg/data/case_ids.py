"""The case-id rule: one home for what a case id may be, used by ``verify`` and ``predict`` alike.

A case id names a folder and files (``{case_id}/seg.nii.gz``, ``imagesTr/{case_id}_0000.nii.gz``),
so it must be safe as a file name on every system: letters, digits, ``.``, ``_`` and ``-``,
starting with a letter or digit, and never ``..`` (no path separators, no way out of the folder).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["CASE_ID_PATTERN", "CASE_ID_RULE", "is_safe_case_id"]

#: A case id must be usable as a file name on every system.
CASE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: The rule in words, for messages.
CASE_ID_RULE = "letters, digits, '.', '_', '-'; no path separators or '..'; starting with a letter or digit"


def is_safe_case_id(case_id: Any) -> bool:
    """True for ids like ``S01_thigh``: safe as file names (no ``..``, no separators)."""
    return isinstance(case_id, str) and bool(CASE_ID_PATTERN.match(case_id)) and ".." not in case_id
