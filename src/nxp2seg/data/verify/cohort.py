"""Run every check of a cohort, in order, into one report."""

from __future__ import annotations

import os
from pathlib import Path

from nxp2seg.data.verify import files as file_checks
from nxp2seg.data.verify import images as image_checks
from nxp2seg.data.verify import tables as table_checks
from nxp2seg.data.verify.report import Collector, VerifyReport
from nxp2seg.data.verify.tables import is_safe_case_id

__all__ = ["verify_cohort"]


def verify_cohort(
    root: str | os.PathLike,
    *,
    check_images: bool = True,
    affine_tol_mm: float = 1e-3,
    affine_tol_vox: float = 0.05,
    spacing_rtol: float = 1e-3,
) -> VerifyReport:
    """Check a cohort against the dataset contract and report every problem.

    Args:
        root: the cohort folder.
        check_images: read every image (headers, then data, one case at a time);
            False checks tables and file names only.
        affine_tol_mm, affine_tol_vox: a label map matches its T1's affine when no
            voxel centre moves by more than ``max(affine_tol_mm, affine_tol_vox *
            smallest T1 voxel spacing)`` mm (default: 5% of a voxel).
        spacing_rtol: relative tolerance of label vs T1 voxel spacing.

    Returns:
        The report; ``report.ok`` is False when there is any error. A folder that
        cannot be opened gives ``opened=False`` and one ``cohort_missing`` error;
        this function does not raise for a bad cohort. T1 and STIR may differ in
        grid: only label maps must share the T1's.
    """
    root = Path(root)
    v = Collector(root, check_images, affine_tol_mm, affine_tol_vox, spacing_rtol)
    try:
        os.listdir(root)
    except OSError as e:
        v.report.opened = False
        v.add("cohort_missing", None, None, f"{root} is not a cohort folder ({e.strerror or e})")
        return v.report
    v.guard(table_checks.check_dataset_json, v, file="dataset.json")
    cases = v.guard(table_checks.check_cases, v, file="cases.csv")
    v.guard(table_checks.check_grades, v, file="grades.csv")
    v.guard(table_checks.check_patterns, v, file="patterns.csv")
    v.guard(table_checks.check_clinical, v, cases, file="clinical.csv")
    images, labels = v.guard(file_checks.scan_files, v) or ({}, {})
    if v.cases_read:
        listed = [c for c in dict.fromkeys(cases["case_id"].dropna()) if is_safe_case_id(c)]
    else:  # no usable cases.csv: still check the images that are there
        listed = sorted(c for c in images if is_safe_case_id(c))
    v.guard(file_checks.check_files, v, images, labels, listed)
    v.report.n_labelled = sum(1 for c in listed if c in labels)
    for cid in listed if check_images else ():
        if images.get(cid) or cid in labels:
            v.guard(image_checks.check_case_images, v, cid, images.get(cid, {}), labels.get(cid), case=cid)
    return v.report
