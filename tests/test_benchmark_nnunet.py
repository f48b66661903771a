"""scripts/benchmark_nnunet.py without nnU-Net: the raw-dataset export and the shared scoring.

nnU-Net itself is a benchmark dependency in a venv of its own and never a test
dependency; what the benchmark computes on nxp2seg's side is checked here on the
tiny synthetic cohort (RAS and LPS cases, STIR on a coarser grid of its own).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.datamodule import split_by_subject

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_nnunet.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmark_nnunet", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def exported(bench, synthetic_cohort, tmp_path_factory):
    cohort = Cohort.open(synthetic_cohort)
    splits = split_by_subject(cohort.cases)
    raw = tmp_path_factory.mktemp("raw")
    return cohort, splits, bench.export_nnunet_raw(synthetic_cohort, raw, splits)


def test_export_layout_dataset_json_and_splits(exported):
    cohort, splits, res = exported
    out = Path(res["dataset"])
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "T1", "1": "STIR"}  # the cohort's own names
    assert ds["labels"] == cohort.dataset.schema.labels
    assert sorted(ds["labels"].values()) == list(range(16))
    assert ds["file_ending"] == ".nii.gz"
    training = splits["train"] + splits["val"]
    assert ds["numTraining"] == len(training) == res["train"]
    names = {p.name for p in (out / "imagesTr").iterdir()}
    assert names == {f"{c}_{i:04d}.nii.gz" for c in training for i in (0, 1)}
    assert {p.name for p in (out / "labelsTr").iterdir()} == {f"{c}.nii.gz" for c in training}
    assert {p.name for p in (out / "imagesTs").iterdir()} == {
        f"{c}_{i:04d}.nii.gz" for c in splits["test"] for i in (0, 1)}
    assert set(res["seconds"]) == set(splits["test"])
    # fold 0 is nxp2seg's own split: both systems learn from the same cases
    assert res["splits_final"] == [{"train": splits["train"], "val": splits["val"]}]
    assert not set(splits["test"]) & set(training)


def test_export_keeps_t1_and_labels_and_puts_stir_on_the_t1_grid(exported):
    cohort, splits, res = exported
    out = Path(res["dataset"])
    coarse = 0
    for case in splits["train"] + splits["val"]:
        t1 = nib.load(cohort.t1_path(case))
        assert (out / "imagesTr" / f"{case}_0000.nii.gz").read_bytes() == cohort.t1_path(case).read_bytes()
        stir_src = nib.load(cohort.stir_path(case))
        stir = nib.load(out / "imagesTr" / f"{case}_0001.nii.gz")
        assert stir.shape == t1.shape and np.allclose(stir.affine, t1.affine)
        lab = nib.load(out / "labelsTr" / f"{case}.nii.gz")
        truth = np.asarray(nib.load(cohort.label_path(case)).dataobj)
        assert lab.get_data_dtype() == np.uint8 and np.allclose(lab.affine, t1.affine)
        assert np.array_equal(np.asarray(lab.dataobj), truth)
        s = stir.get_fdata()
        if stir_src.shape == t1.shape and np.allclose(stir_src.affine, t1.affine):
            assert np.allclose(s, stir_src.get_fdata(), atol=1e-3)  # the same grid: copied, not interpolated
            continue
        coarse += 1
        # a STIR of its own grid shows the same anatomy once on the T1's: bright muscle, dark fat
        # and bone (the synthetic contrast), so it follows the label map closely
        expected = np.where((truth >= 1) & (truth <= 12), 1.0, np.where(truth > 12, 0.2, 0.0))
        assert np.corrcoef(s.ravel(), expected.ravel())[0, 1] > 0.8
        mirrored = np.corrcoef(s[::-1].ravel(), expected.ravel())[0, 1]
        assert np.corrcoef(s.ravel(), expected.ravel())[0, 1] > mirrored + 0.05
    assert coarse, "the synthetic cohort should have a STIR on a grid of its own"


def test_export_refuses_unlabelled_training_cases(bench, synthetic_cohort, tmp_path):
    cohort = Cohort.open(synthetic_cohort)
    splits = split_by_subject(cohort.cases)
    copy = tmp_path / "cohort"
    shutil.copytree(synthetic_cohort, copy)
    victim = splits["train"][0]
    Cohort.open(copy).label_path(victim).unlink()
    with pytest.raises(ValueError, match="no label map"):
        bench.export_nnunet_raw(copy, tmp_path / "raw", splits)


def test_lr_axis_in_simpleitk_order(bench, tmp_path):
    data = np.zeros((4, 5, 6), np.float32)
    ras = tmp_path / "ras.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.0, 4.0, 1.0])), ras)
    assert bench.lr_axis(ras) == 2  # voxel axis 0 = x = SimpleITK's last axis
    permuted = np.array([[0, -1.0, 0, 0], [1.0, 0, 0, 0], [0, 0, 4.0, 0], [0, 0, 0, 1]])
    swapped = tmp_path / "swapped.nii.gz"
    nib.save(nib.Nifti1Image(data, permuted), swapped)
    assert bench.lr_axis(swapped) == 1  # voxel axis 1 runs along world x


def _prediction_folder(root: Path, cohort: Cohort, cases: list[str], swap: str | None = None) -> Path:
    """A folder in the layout the nnU-Net runner writes: seg per case, cases.csv, header-only regions.csv."""
    lut = np.arange(16)
    labels = cohort.dataset.schema.labels
    for name, v in labels.items():
        if name.endswith("_right"):
            lut[v], lut[labels[name[:-6] + "_left"]] = labels[name[:-6] + "_left"], v
    for case in cases:
        img = nib.load(cohort.label_path(case))
        seg = np.asarray(img.dataobj).astype(np.uint8)
        if case == swap:
            seg = lut[seg].astype(np.uint8)
        (root / case).mkdir(parents=True)
        nib.save(nib.Nifti1Image(seg, img.affine), root / case / "seg.nii.gz")
    (root / "cases.csv").write_text("case_id,status\n" + "".join(f"{c},ok\n" for c in cases))
    (root / "regions.csv").write_text("case_id,region,edema_grade\n")
    return root


def test_score_reads_the_runner_layout_and_counts_swaps(bench, synthetic_cohort, tmp_path):
    cohort = Cohort.open(synthetic_cohort)
    test = split_by_subject(cohort.cases)["test"]
    perfect = bench.score(_prediction_folder(tmp_path / "a", cohort, test), synthetic_cohort)
    assert perfect["n_cases"] == len(test) and perfect["dice_mean"] == pytest.approx(1.0)
    assert perfect["hd95_mm_mean"] == pytest.approx(0.0) and perfect["lr_swaps"] == 0
    swapped = bench.score(_prediction_folder(tmp_path / "b", cohort, test, swap=test[0]), synthetic_cohort)
    assert swapped["lr_swaps"] == 6 and swapped["lr_swap_cases"] == [test[0]]
    # that case's six regions score 0, the other case's six score 1
    assert swapped["dice_mean"] == pytest.approx(6 / 12)


def test_seconds_per_exam_sums_the_stations_of_a_subject(bench, synthetic_cohort):
    cohort = Cohort.open(synthetic_cohort)
    test = split_by_subject(cohort.cases)["test"]
    res = bench.seconds_per_exam({c: 1.5 for c in test}, synthetic_cohort)
    assert res == {"mean": 3.0, "min": 3.0, "max": 3.0, "n_exams": 1}


def test_budget_clock_is_cpu_seconds_on_cpu_and_wall_seconds_on_a_gpu(bench):
    assert bench.budget_clock("cpu") == "cpu"
    assert bench.budget_clock("cuda") == "wall"


def test_plan_command_uses_the_console_script_or_the_entry_point(bench, tmp_path):
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").touch()
    bare = bench.plan_command(str(venv_bin / "python"))  # installed without console scripts
    assert bare[:2] == [str(venv_bin / "python"), "-c"] and "plan_and_preprocess_entry()" in bare[2]
    compile(bare[2], "<plan>", "exec")  # the one-liner is valid Python
    (venv_bin / "nnUNetv2_plan_and_preprocess").touch()
    assert bench.plan_command(str(venv_bin / "python")) == [str(venv_bin / "nnUNetv2_plan_and_preprocess")]
