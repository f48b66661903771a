"""scripts/benchmark_nnunet_realdata.py without nnU-Net: folds, budgets, and the shared scoring
of another tool's segmentation (no ``report.json``) on the tiny synthetic cohort."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nxp2seg.data.cohort import Cohort

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def loso():
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location("benchmark_nnunet_realdata",
                                                      SCRIPTS / "benchmark_nnunet_realdata.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(SCRIPTS))
    return mod


def test_dataset_ids_one_per_fold(loso):
    assert loso.dataset_of("001") == (541, "Dataset541_HuashanLOSO001")
    assert loso.dataset_of("003") == (543, "Dataset543_HuashanLOSO003")


def test_fold_splits_hold_out_one_case_and_train_on_the_rest(loso):
    cases = ["H001_thigh", "H002_thigh", "H003_thigh"]
    assert loso.fold_splits(cases, "H002_thigh") == {"train": ["H001_thigh", "H003_thigh"], "val": [],
                                                     "test": ["H002_thigh"]}
    with pytest.raises(ValueError, match="H004_thigh"):
        loso.fold_splits(cases, "H004_thigh")
    # nnU-Net's fold 0 validates on its training cases (its "all" fold): two subjects leave none out
    assert loso.all_fold(["a", "b"]) == [{"train": ["a", "b"], "val": ["a", "b"]}]


def test_fold_budget_is_k_times_nxp2seg_less_planning_and_at_least_one_second(loso):
    assert loso.fold_budget(1, 600.0, 50.0) == pytest.approx(550.0)
    assert loso.fold_budget(4, 600.0, 50.0) == pytest.approx(2350.0)
    assert loso.fold_budget(0.01, 600.0, 50.0) == 1.0


def _thigh_case(cohort: Cohort) -> str:
    return next(c for c in cohort.cases["case_id"] if c.endswith("thigh") and cohort.has_label(c))


def _seg_folder(root: Path, cohort: Cohort, case: str, swap: bool = False) -> Path:
    lab = nib.load(cohort.label_path(case))
    seg = np.asarray(lab.dataobj).astype(np.uint8)
    if swap:  # every thigh compartment given to the other leg's twin
        names = cohort.dataset.schema.labels
        out = seg.copy()
        for side, other in (("_right", "_left"), ("_left", "_right")):
            for comp in ("anterior", "medial", "posterior"):
                out[seg == names[f"thigh_{comp}{side}"]] = names[f"thigh_{comp}{other}"]
        seg = out
    (root / case).mkdir(parents=True)
    nib.save(nib.Nifti1Image(seg, lab.affine), root / case / "seg.nii.gz")
    return root


def test_score_case_reads_a_segmentation_without_a_report(loso, synthetic_cohort, tmp_path):
    cohort = Cohort.open(synthetic_cohort)
    case = _thigh_case(cohort)
    row = loso.br.score_case(_seg_folder(tmp_path / "same", cohort, case), synthetic_cohort, case)
    dice = [v for k, v in row.items() if k.startswith("dice/")]
    assert len(dice) == 6 and np.allclose(dice, 1.0)
    assert row["lr_swaps"] == 0 and row["ood_score"] is None and row["warnings"] == ""
    swapped = loso.br.score_case(_seg_folder(tmp_path / "swap", cohort, case, swap=True), synthetic_cohort, case)
    assert swapped["lr_swaps"] == 6
    assert np.allclose([v for k, v in swapped.items() if k.startswith("dice/")], 0.0)


def test_fat_fraction_is_read_inside_the_predicted_segmentation(loso, synthetic_cohort, tmp_path):
    cohort = Cohort.open(synthetic_cohort)
    case = next(c for c in cohort.cases["case_id"] if c.endswith("thigh") and cohort.has_label(c)
                and nib.load(cohort.image_path(c, 0)).shape == nib.load(cohort.image_path(c, 1)).shape)
    same = loso.br.fat_fraction_rows(_seg_folder(tmp_path / "p", cohort, case), synthetic_cohort, case,
                                     from_seg=True)
    assert len(same) == 6
    for r in same:
        assert np.isfinite(r["fat_fraction_truth"])
        assert r["fat_fraction_predicted"] == pytest.approx(r["fat_fraction_truth"])
    # a segmentation with the legs swapped reads each region where its twin is
    swapped = {r["region"]: r for r in loso.br.fat_fraction_rows(
        _seg_folder(tmp_path / "s", cohort, case, swap=True), synthetic_cohort, case, from_seg=True)}
    for name, r in swapped.items():
        twin = name.replace("_right", "_LEFT").replace("_left", "_right").replace("_LEFT", "_left")
        assert r["fat_fraction_predicted"] == pytest.approx(swapped[twin]["fat_fraction_truth"])
