"""``nxp2seg.evaluate``: a hand-built cohort and prediction folder with known values.

The cohort is ``helpers_cohort.make_tiny_cohort`` (6 subjects x thigh + calf,
readers A and B) with seeded random grades; the prediction folder is written
here: the readers' mean plus noise for the grades, the true label maps with a
known defect for the segmentations, one failed case and one case unknown to
the cohort. Figures are checked against scikit-learn, pingouin and numpy on
the same rows.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers_cohort import make_tiny_cohort

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.schema import PATTERNS
from nxp2seg.evaluation import contract_keys
from nxp2seg.evaluation.segmentation import hd95
from nxp2seg.io import make_nifti, save_nifti

SUBJECTS = tuple(f"S{i:02d}" for i in range(1, 7))
RATERS = ("A", "B")
FAILED = "S03_calf"
UNKNOWN = "<b>x</b>"
SCRIPT = "<script>alert(1)</script>"
N_BOOT = 40


def _evaluate(*args: str) -> int:
    from nxp2seg.evaluate import main

    return main([*args])


def _grades(cohort: Cohort, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    grades, patterns = [], []
    for case in cohort.cases.itertuples(index=False):
        for region in cohort.dataset.schema.region_names(case.station):
            a, fat = int(rng.integers(0, 6)), int(rng.integers(0, 5))
            b = int(np.clip(a + rng.choice([-1, 0, 0, 1, 2]), 0, 5))
            flags = rng.random(2) < 0.4
            for rater, edema, f in (("A", a, fat), ("B", b, int(np.clip(fat + rng.integers(-1, 2), 0, 4)))):
                flip = rng.random(2) < 0.15
                grades.append({"case_id": case.case_id, "rater": rater, "region": region,
                               "edema_grade": edema, "fat_grade": f,
                               "fascial_edema": int(flags[0] ^ flip[0]),
                               "subcutaneous_edema": int(flags[1] ^ flip[1])})
        pa = str(rng.choice(PATTERNS))
        pb = pa if rng.random() < 0.7 else str(rng.choice(PATTERNS))
        patterns += [{"case_id": case.case_id, "rater": "A", "pattern": pa},
                     {"case_id": case.case_id, "rater": "B", "pattern": pb}]
    return pd.DataFrame(grades), pd.DataFrame(patterns)


def _rater_mean(grades: pd.DataFrame) -> pd.DataFrame:
    """The readers' mean per region, computed here independently of nxp2seg."""
    m = grades.groupby(["case_id", "region"], as_index=False)[
        ["edema_grade", "fat_grade", "fascial_edema", "subcutaneous_edema"]].mean()
    m["edema_int"] = np.floor(m["edema_grade"] + 0.5).astype(int)
    m["fat_int"] = np.floor(m["fat_grade"] + 0.5).astype(int)
    return m


def _write_predictions(out: Path, cohort: Cohort, rng: np.random.Generator) -> pd.DataFrame:
    mean = _rater_mean(cohort.grades)
    mean = mean[mean["case_id"] != FAILED]
    edema = np.clip(mean["edema_grade"] + rng.normal(0, 0.6, len(mean)), 0, 5)
    fat = np.clip(mean["fat_int"] + rng.integers(-1, 2, len(mean)) * (rng.random(len(mean)) < 0.3), 0, 4)
    regions = pd.DataFrame({
        "case_id": mean["case_id"], "region": mean["region"], "edema_grade": edema,
        "edema_grade_int": np.floor(edema + 0.5).astype(int), "fat_grade": fat,
        "fascial_edema_prob": np.clip(mean["fascial_edema"] * 0.5 + rng.random(len(mean)) * 0.5, 0, 1),
        "subcutaneous_edema_prob": np.clip(mean["subcutaneous_edema"] * 0.5 + rng.random(len(mean)) * 0.5, 0, 1),
        "volume_ml": 1.0, "edema_fraction": 0.1,
        "fat_grade_continuous": np.clip(fat + rng.normal(0, 0.3, len(mean)), 0, 4)})
    rows = []
    for case in cohort.cases.itertuples(index=False):
        row = {"case_id": case.case_id, "subject_id": case.subject_id, "station": case.station}
        if case.case_id == FAILED:
            rows.append({**row, "status": "failed", "error": f"{SCRIPT} T1 could not be read"})
            continue
        rows.append({**row, "status": "ok", "error": "", "pattern": str(rng.choice(PATTERNS))})
        if cohort.has_label(case.case_id):
            img = nib.load(cohort.label_path(case.case_id))
            seg = np.asarray(img.dataobj).astype(np.uint8)
            if case.case_id == "S01_thigh":  # 3 voxels of thigh_anterior_right lost to background
                idx = np.argwhere(seg == 1)[:3]
                seg[tuple(idx.T)] = 0
            if case.case_id == "S02_thigh":  # anterior compartments swapped right <-> left
                seg = np.select([seg == 1, seg == 4], [np.uint8(4), np.uint8(1)], seg)
            save_nifti(make_nifti(seg, img.affine), out / case.case_id / "seg.nii.gz")
        (out / case.case_id).mkdir(parents=True, exist_ok=True)
        (out / case.case_id / "report.json").write_text(json.dumps(
            {"status": "ok", "model": {"bundle": None, "grading": True, "grade_scale": "beltrame6"}}))
    rows.append({"case_id": UNKNOWN, "subject_id": "X", "station": "thigh", "status": "ok", "error": ""})
    pd.DataFrame(rows).to_csv(out / "cases.csv", index=False)
    regions.to_csv(out / "regions.csv", index=False)
    return regions


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("evaluate")
    root = make_tiny_cohort(tmp / "cohort", subjects=SUBJECTS, raters=RATERS, unlabelled=("S06_calf",))
    rng = np.random.default_rng(0)
    grades, patterns = _grades(Cohort.open(root), rng)
    grades.to_csv(root / "grades.csv", index=False)
    patterns.to_csv(root / "patterns.csv", index=False)
    _write_predictions(tmp / "pred", Cohort.open(root), rng)
    out = tmp / "eval"
    assert _evaluate(f"predictions={tmp / 'pred'}", f"cohort={root}", f"output={out}",
                     f"bootstrap={N_BOOT}", "seed=0") == 0
    return {"cohort": root, "pred": tmp / "pred", "out": out, "tmp": tmp}


@pytest.fixture(scope="module")
def summary(folders) -> dict:
    return json.loads((folders["out"] / "summary.json").read_text())


def _get(d: dict, key) -> object:
    for part in key:
        d = d[part]
    return d


def _evaluated_rows(folders) -> pd.DataFrame:
    cohort = Cohort.open(folders["cohort"])
    mean = _rater_mean(cohort.grades)
    pred = pd.read_csv(folders["pred"] / "regions.csv")
    return pred.merge(mean, on=["case_id", "region"], suffixes=("_model", "_mean"))


def test_every_contract_key_and_its_interval(summary, folders):
    schema = Cohort.open(folders["cohort"]).dataset.schema
    keys = contract_keys(schema.region_names(), RATERS)
    assert len(keys) > 40
    no_ci = {"confusion", "lr_swaps", "n_cases", "n_subjects"}
    for key in keys:
        value = _get(summary, key)
        if key[:2] == ("edema", "noninferiority"):
            continue
        parent = _get(summary, key[:-1]) if len(key) > 1 else summary
        if key[-1] not in no_ci:
            assert value is not None, key
            ci = parent[f"{key[-1]}_ci"]
            assert len(ci) == 2 and ci[0] <= value + 1e-9 and value - 1e-9 <= ci[1], (key, value, ci)
    ni = summary["edema"]["noninferiority"]
    assert set(ni) >= {"difference", "ci_low", "ci_high", "margin", "passed"}
    assert summary["pattern"]["confusion"]["none"].keys() == set(PATTERNS)


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # pingouin on recent pandas
def test_kappa_icc_and_dice_match_independent_computations(summary, folders):
    from pingouin import intraclass_corr
    from sklearn.metrics import cohen_kappa_score

    rows = _evaluated_rows(folders)
    kq = cohen_kappa_score(rows["edema_int"], rows["edema_grade_int"], weights="quadratic", labels=range(6))
    assert summary["edema"]["kappa_quadratic"]["model_vs_mean"] == pytest.approx(kq, abs=1e-9)
    kl = cohen_kappa_score(rows["edema_int"], rows["edema_grade_int"], weights="linear", labels=range(6))
    assert summary["edema"]["kappa_linear"]["model_vs_mean"] == pytest.approx(kl, abs=1e-9)
    grades = Cohort.open(folders["cohort"]).grades
    wide = grades.pivot_table(index=["case_id", "region"], columns="rater", values="edema_grade").reset_index()
    wide = wide[wide["case_id"] != FAILED]
    krr = cohen_kappa_score(wide["A"], wide["B"], weights="quadratic", labels=range(6))
    assert summary["edema"]["kappa_quadratic"]["rater_vs_rater"] == pytest.approx(krr, abs=1e-9)
    long = pd.concat([
        pd.DataFrame({"target": rows.index, "rater": "model", "rating": rows["edema_grade_model"]}),
        pd.DataFrame({"target": rows.index, "rater": "mean", "rating": rows["edema_grade_mean"]})])
    ref = intraclass_corr(long, targets="target", raters="rater", ratings="rating").set_index("Type")
    assert summary["edema"]["icc"]["model_vs_mean"] == pytest.approx(ref.loc["ICC(A,1)", "ICC"], abs=1e-9)
    ni = summary["edema"]["noninferiority"]
    assert ni["difference"] == pytest.approx(kq - krr, abs=1e-9)
    assert ni["passed"] == (ni["ci_low"] > -ni["margin"])
    # Dice of thigh_anterior_right: by hand on the files, mean over the labelled thigh cases
    cohort = Cohort.open(folders["cohort"])
    per_case = []
    for cid in [f"{s}_thigh" for s in SUBJECTS]:
        p = np.asarray(nib.load(folders["pred"] / cid / "seg.nii.gz").dataobj) == 1
        t = np.asarray(nib.load(cohort.label_path(cid)).dataobj) == 1
        per_case.append(2 * (p & t).sum() / (p.sum() + t.sum()))
    n = int((np.asarray(nib.load(cohort.label_path("S01_thigh")).dataobj) == 1).sum())
    assert per_case[0] == pytest.approx(2 * (n - 3) / (2 * n - 3))
    assert per_case[1] == 0.0  # the swapped case
    assert summary["segmentation"]["dice"]["thigh_anterior_right"] == pytest.approx(np.mean(per_case), abs=1e-9)
    assert summary["segmentation"]["lr_swaps"] == 2
    assert summary["segmentation"]["lr_swap_cases"] == ["S02_thigh"]
    seg = pd.read_csv(folders["out"] / "segmentation.csv")
    assert "S06_calf" not in set(seg["case_id"])  # no label map: not scored


def test_failed_cases_are_excluded_and_counted(summary, folders):
    assert summary["n_failed"] == 1
    assert summary["failed_cases"][0]["case_id"] == FAILED
    assert summary["n_cases"] == 2 * len(SUBJECTS) - 1 and summary["n_subjects"] == len(SUBJECTS)
    regions = pd.read_csv(folders["out"] / "region_grades.csv")
    assert FAILED not in set(regions["case_id"]) and UNKNOWN not in set(regions["case_id"])
    assert any(UNKNOWN in n for n in summary["notes"]) and any(FAILED in n for n in summary["notes"])
    assert summary["total_score"]["n_subjects"] == len(SUBJECTS) - 1  # S03 lacks its calf


def test_report_embeds_figures_and_escapes_text(folders):
    page = (folders["out"] / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') >= 6
    assert UNKNOWN not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert SCRIPT not in page and "&lt;script&gt;" in page
    for name in ("agreement.csv", "agreement_by_region.csv", "region_grades.csv", "case_scores.csv",
                 "subject_scores.csv", "segmentation.csv", "confusion_edema.csv", "confusion_pattern.csv"):
        assert (folders["out"] / name).is_file(), name


def test_seeded_bootstrap_is_reproducible(folders, summary):
    args = [f"predictions={folders['pred']}", f"cohort={folders['cohort']}", f"bootstrap={N_BOOT}", "report=false"]
    again = folders["tmp"] / "again"
    other = folders["tmp"] / "other"
    assert _evaluate(*args, f"output={again}", "seed=0") == 0
    assert _evaluate(*args, f"output={other}", "seed=1") == 0
    a = json.loads((again / "summary.json").read_text())
    b = json.loads((other / "summary.json").read_text())
    q = summary["edema"]["kappa_quadratic"]
    assert a["edema"]["kappa_quadratic"] == q
    assert a["edema"]["noninferiority"] == summary["edema"]["noninferiority"]
    assert b["edema"]["kappa_quadratic"]["model_vs_mean"] == q["model_vs_mean"]
    assert b["edema"]["kappa_quadratic"]["model_vs_mean_ci"] != q["model_vs_mean_ci"]


def test_flag_sensitivity_is_that_of_the_reported_flag(folders, summary):
    """Sensitivity and specificity describe the flag predict reported (the bundle's operating point),
    not the probability at 0.5; a table without the flag column falls back to p >= 0.5."""
    rows = _evaluated_rows(folders)
    call = rows["fascial_edema"] > 0.5  # the readers' call: more than half of them
    at_half = rows["fascial_edema_prob"] >= 0.5
    assert summary["fascial_edema"]["sensitivity"] == pytest.approx((at_half & call).sum() / call.sum())
    pred = folders["tmp"] / "pred_flags"
    shutil.copytree(folders["pred"], pred)
    regions = pd.read_csv(pred / "regions.csv")
    flag = regions["fascial_edema_prob"] >= 0.3  # an operating point at 0.3
    regions["fascial_edema"] = flag
    regions.to_csv(pred / "regions.csv", index=False)
    out = folders["tmp"] / "eval_flags"
    assert _evaluate(f"predictions={pred}", f"cohort={folders['cohort']}", f"output={out}", "bootstrap=5",
                     "report=false") == 0
    s = json.loads((out / "summary.json").read_text())
    flagged = rows["fascial_edema_prob"] >= 0.3
    assert s["fascial_edema"]["sensitivity"] == pytest.approx((flagged & call).sum() / call.sum())
    assert s["fascial_edema"]["specificity"] == pytest.approx((~flagged & ~call).sum() / (~call).sum())
    assert s["fascial_edema"]["auc"] == pytest.approx(summary["fascial_edema"]["auc"])  # probabilities kept


def _labelled_cases(folders) -> int:
    cohort = Cohort.open(folders["cohort"])
    return sum(cohort.has_label(c) for c in cohort.case_ids if c != FAILED)


def test_without_grading_head_grading_keys_are_null(folders):
    """Segmentation only; a case whose seg is on another grid is skipped with a note."""
    pred = folders["tmp"] / "pred_nograde"
    shutil.copytree(folders["pred"], pred)
    regions = pd.read_csv(pred / "regions.csv")
    for col in ("edema_grade", "edema_grade_int", "fat_grade", "fat_grade_continuous",
                "fascial_edema_prob", "subcutaneous_edema_prob"):
        regions[col] = np.nan
    regions.to_csv(pred / "regions.csv", index=False)
    save_nifti(make_nifti(np.zeros((5, 5, 5), np.uint8), np.eye(4)), pred / "S04_thigh" / "seg.nii.gz")
    out = folders["tmp"] / "eval_nograde"
    assert _evaluate(f"predictions={pred}", f"cohort={folders['cohort']}", f"output={out}", "bootstrap=5") == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["edema"]["kappa_quadratic"]["model_vs_mean"] is None
    assert s["edema"]["kappa_quadratic"]["model_vs_mean_ci"] == [None, None]
    assert s["station_score"]["icc"] is None and s["pattern"]["kappa"] is None
    assert s["edema"]["noninferiority"]["passed"] is None
    assert any("grading head" in n for n in s["notes"])
    assert s["segmentation"]["dice_mean"] is not None
    assert any("S04_thigh" in n and "shape" in n for n in s["notes"])  # the other cases still count
    assert s["segmentation"]["n_cases"] == _labelled_cases(folders) - 1


def test_unusable_inputs_exit_2_with_the_file(folders, tmp_path, capsys):
    assert _evaluate("--help") == 0
    assert "predictions=DIR" in capsys.readouterr().out
    assert _evaluate(f"predictions={tmp_path / 'nope'}", f"cohort={folders['cohort']}",
                     f"output={tmp_path / 'o'}") == 2
    assert "nope" in capsys.readouterr().err
    empty = tmp_path / "empty_pred"
    empty.mkdir()
    assert _evaluate(f"predictions={empty}", f"cohort={folders['cohort']}", f"output={tmp_path / 'o'}") == 2
    assert "cases.csv" in capsys.readouterr().err
    assert _evaluate(f"predictions={folders['pred']}", f"cohort={folders['cohort']}",
                     f"output={tmp_path / 'o'}", "split=test") == 2
    assert "split=test" in capsys.readouterr().err
    assert _evaluate(f"predictions={folders['pred']}", f"cohort={folders['cohort']}",
                     f"output={folders['cohort'] / 'eval'}") == 2
    assert "inside the cohort" in capsys.readouterr().err
    assert _evaluate("predictions=x", "cohort=y", "output=z", "bogus=1") == 2


def test_hd95_matches_monai():
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for spacing in ((1.0, 1.0, 1.0), (1.3, 0.8, 4.0)):
        a = ndimage.binary_dilation(rng.random((30, 24, 10)) < 0.01, iterations=3)
        b = ndimage.binary_dilation(rng.random((30, 24, 10)) < 0.01, iterations=2) | (a & (rng.random(a.shape) < 0.9))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = compute_hausdorff_distance(torch.from_numpy(b[None, None]), torch.from_numpy(a[None, None]),
                                             include_background=True, percentile=95, spacing=list(spacing))
        assert hd95(b, a, spacing) == pytest.approx(float(ref.item()), rel=1e-5)
    assert np.isnan(hd95(np.zeros((3, 3, 3), bool), a[:3, :3, :3] | True, (1, 1, 1)))
