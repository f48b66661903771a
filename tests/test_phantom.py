"""The phantom generator's images: contract, determinism, geometry, labels, contrast."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.schema import default_compartment_schema, default_muscle_schema
from nxp2seg.data.verify import verify_cohort
from nxp2seg.phantom import generate_cohort
from nxp2seg.phantom.__main__ import main as phantom_main
from nxp2seg.phantom.__main__ import parse_overrides
from nxp2seg.phantom.config import make_config

SCHEMA = default_compartment_schema()


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantom") / "tiny"
    generate_cohort(root, subjects=4, preset="tiny", seed=3, workers=1)
    return root


@pytest.fixture(scope="module")
def small1(tmp_path_factory) -> Path:
    """One subject at the demo resolution, STIR on the T1 grid (for contrast checks)."""
    root = tmp_path_factory.mktemp("phantom") / "small1"
    generate_cohort(
        root, subjects=2, preset="small", seed=4,
        acquisition={"stir_coarse_probability": 0.0, "stir_shift_probability": 0.0, "stir_own_axcodes_probability": 0.0},
    )
    return root


def test_tiny_cohort_is_complete_and_verifies(tiny):
    report = verify_cohort(tiny)
    assert report.ok, report.to_dataframe().to_string()
    cohort = Cohort.open(tiny)
    assert len(cohort.cases) == 8
    assert set(cohort.cases["station"]) == {"thigh", "calf"}
    assert cohort.cases.groupby("subject_id")["station"].nunique().eq(2).all()
    assert cohort.dataset.raters == ["A", "B"]
    for cid in cohort.case_ids:
        assert cohort.t1_path(cid).exists() and cohort.stir_path(cid).exists() and cohort.has_label(cid)
        for sub in ("edema", "fat_percent", "labels_muscle"):
            assert (tiny / "truth" / sub / f"{cid}.nii.gz").exists()
    # every region of each case graded by both readers, one pattern per reader
    assert len(cohort.grades) == 8 * 6 * 2
    assert len(cohort.patterns) == 8 * 2
    assert cohort.clinical is not None and len(cohort.clinical) == 4
    for name in ("grades.csv", "patterns.csv", "subjects.csv", "acquisition.csv", "config.json"):
        assert (tiny / "truth" / name).exists()


def test_every_label_present_in_every_case(tiny):
    cohort = Cohort.open(tiny)
    for cid in cohort.case_ids:
        station = cohort.station_of(cid)
        lab = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
        assert set(np.unique(lab)) == SCHEMA.station_labels(station), cid


def test_images_are_valid_nifti_with_qform_and_sform(tiny):
    cohort = Cohort.open(tiny)
    cid = cohort.case_ids[0]
    for path in (cohort.t1_path(cid), cohort.stir_path(cid), cohort.label_path(cid)):
        img = nib.load(path)
        assert img.ndim == 3
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
        np.testing.assert_allclose(img.get_qform(), img.get_sform(), atol=1e-4)
    assert nib.load(cohort.t1_path(cid)).get_data_dtype() == np.int16
    assert nib.load(cohort.label_path(cid)).get_data_dtype() == np.uint8


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    a = generate_cohort(tmp_path / "a", subjects=2, preset="tiny", seed=11, workers=1)
    b = generate_cohort(tmp_path / "b", subjects=2, preset="tiny", seed=11, workers=2)
    c = generate_cohort(tmp_path / "c", subjects=2, preset="tiny", seed=12, workers=1)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert ha == hb and len(ha) > 10
    assert ha["imagesTr/P001_thigh_0000.nii.gz"] != hc["imagesTr/P001_thigh_0000.nii.gz"]


def _side_centroid_x(label_img: nib.Nifti1Image, values: list[int]) -> float:
    lab = np.asarray(label_img.dataobj)
    ijk = np.argwhere(np.isin(lab, values))
    return float(nib.affines.apply_affine(label_img.affine, ijk)[:, 0].mean())


@pytest.mark.parametrize("lps", [0.0, 1.0])
def test_right_is_patient_right_in_world_space(tmp_path, lps):
    root = generate_cohort(
        tmp_path / "c", subjects=2, preset="tiny", seed=5, workers=1,
        acquisition={"lps_probability": lps, "oblique_probability": 1.0},
    )
    cohort = Cohort.open(root)
    want = ("L", "P", "S") if lps else ("R", "A", "S")
    for cid in cohort.case_ids:
        img = nib.load(cohort.label_path(cid))
        assert nib.aff2axcodes(img.affine) == want
        station = cohort.station_of(cid)
        right = [SCHEMA.labels[n] for n in SCHEMA.region_names(station) if n.endswith("_right")]
        left = [SCHEMA.labels[n] for n in SCHEMA.region_names(station) if n.endswith("_left")]
        # RAS+ world: the patient's right has the larger x
        assert _side_centroid_x(img, right) > _side_centroid_x(img, left) + 40
        assert _side_centroid_x(img, [SCHEMA.labels["subcutaneous_right"]]) > _side_centroid_x(
            img, [SCHEMA.labels["subcutaneous_left"]]
        )


def test_medial_compartments_face_the_midline(tiny):
    cohort = Cohort.open(tiny)
    for cid in cohort.case_ids:
        if cohort.station_of(cid) != "thigh":
            continue
        img = nib.load(cohort.label_path(cid))
        L = SCHEMA.labels
        xr_ant = _side_centroid_x(img, [L["thigh_anterior_right"]])
        xr_med = _side_centroid_x(img, [L["thigh_medial_right"]])
        xl_ant = _side_centroid_x(img, [L["thigh_anterior_left"]])
        xl_med = _side_centroid_x(img, [L["thigh_medial_left"]])
        assert xr_med < xr_ant and xl_med > xl_ant  # medial = towards x of the other leg


def test_stir_can_have_its_own_grid(tmp_path):
    root = generate_cohort(
        tmp_path / "c", subjects=1, preset="tiny", seed=2, workers=1,
        acquisition={"stir_coarse_probability": 1.0, "stir_shift_probability": 1.0},
    )
    cohort = Cohort.open(root)
    for cid in cohort.case_ids:
        t1, stir = nib.load(cohort.t1_path(cid)), nib.load(cohort.stir_path(cid))
        assert t1.shape != stir.shape or not np.allclose(t1.affine, stir.affine)
        assert np.all(np.array(stir.header.get_zooms()[:2]) > np.array(t1.header.get_zooms()[:2]))
    assert verify_cohort(root).ok


def test_contrast_follows_the_tissue_table(small1):
    """Subcutaneous fat bright on T1 and dark on STIR; air dark."""
    cohort = Cohort.open(small1)
    L = SCHEMA.labels
    for cid in cohort.case_ids:
        t1 = np.asarray(nib.load(cohort.t1_path(cid)).dataobj).astype(float)
        stir = np.asarray(nib.load(cohort.stir_path(cid)).dataobj).astype(float)
        lab = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
        sub = np.isin(lab, [L["subcutaneous_right"], L["subcutaneous_left"]])
        muscle = np.isin(lab, [L[n] for n in SCHEMA.region_names(cohort.station_of(cid))])
        assert np.median(t1[sub]) > 1.8 * np.median(t1[muscle]), cid
        assert np.median(stir[sub]) < 0.6 * np.median(stir[muscle]), cid
        assert np.median(t1[lab == 0]) < 0.3 * np.median(t1[muscle]), cid


def test_edema_is_bright_on_stir(small1):
    root = small1
    cohort = Cohort.open(root)
    ratios = []
    for cid in cohort.case_ids:
        stir = np.asarray(nib.load(cohort.stir_path(cid)).dataobj).astype(float)
        lab = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
        ed = np.asarray(nib.load(root / "truth" / "edema" / f"{cid}.nii.gz").dataobj) > 0
        muscle = np.isin(lab, [SCHEMA.labels[n] for n in SCHEMA.region_names(cohort.station_of(cid))])
        if (ed & muscle).sum() > 5 and (~ed & muscle).sum() > 5:
            ratios.append(np.median(stir[ed & muscle]) / np.median(stir[~ed & muscle]))
    assert ratios and np.median(ratios) > 1.3


def test_muscle_labels_roll_up_to_the_compartments(tiny):
    lut = default_muscle_schema().rollup_lut()
    cohort = Cohort.open(tiny)
    for cid in cohort.case_ids:
        comp = np.asarray(nib.load(cohort.label_path(cid)).dataobj)
        mus = np.asarray(nib.load(tiny / "truth" / "labels_muscle" / f"{cid}.nii.gz").dataobj)
        assert (lut[mus] == comp).mean() > 0.97


def test_muscle_level_option_writes_the_muscle_schema(tmp_path):
    root = generate_cohort(tmp_path / "m", subjects=1, preset="tiny", seed=1, workers=1, label_level="muscle")
    cohort = Cohort.open(root)
    assert cohort.dataset.schema.level == "muscle"
    assert verify_cohort(root).ok
    lab = np.asarray(nib.load(cohort.label_path(cohort.case_ids[0])).dataobj)
    assert lab.max() > 15


@pytest.mark.parametrize("which", ["tiny", "small1"])
def test_measured_fractions_match_the_truth(which, request):
    t = pd.read_csv(request.getfixturevalue(which) / "truth" / "grades.csv")
    atol = 0.12 if which == "tiny" else 0.05
    involved = t[t["edema_fraction"] > 0]
    assert len(involved) > 3
    assert np.allclose(involved["measured_edema_fraction"], involved["edema_fraction"], atol=atol)
    fatty = t[t["fat_fraction"] > 0]
    assert np.allclose(fatty["measured_fat_fraction"], fatty["fat_fraction"], atol=atol)


def test_refuses_to_overwrite_an_existing_cohort(tiny):
    before = _hashes(tiny)
    with pytest.raises(Exception, match="already holds a cohort"):
        generate_cohort(tiny, subjects=1, preset="tiny", seed=0)
    assert _hashes(tiny) == before


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert phantom_main([f"out={out}", "subjects=1", "preset=tiny", "seed=0", "workers=1"]) == 0
    assert str(out) in capsys.readouterr().out
    assert (out / "dataset.json").exists()
    assert phantom_main([f"out={tmp_path / 'x'}", "preset=huge"]) == 2
    assert phantom_main(["subjects"]) == 2
    assert phantom_main([f"out={tmp_path / 'y'}", "acquisition.nonsense=1"]) == 2
    assert phantom_main([f"out={out}", "subjects=1", "preset=tiny"]) == 1  # exists


def test_overrides_parse_to_nested_config():
    cfg = make_config(parse_overrides(["preset=tiny", "acquisition.snr=[8,15]", "seed=4"]))
    assert cfg.acquisition.snr == (8.0, 15.0)
    assert cfg.acquisition.matrix == (48, 32)
    assert cfg.seed == 4


def test_nested_dict_overrides_merge():
    base = make_config({})
    key = next(iter(base.disease.involvement))
    inner = base.disease.involvement[key]
    sub = next(iter(inner)) if isinstance(inner, dict) else None
    if sub is None:
        pytest.skip("involvement is not nested")
    cfg = make_config({"disease": {"involvement": {key: {sub: 0.5}}}})
    assert cfg.disease.involvement[key][sub] == 0.5
    assert set(cfg.disease.involvement) == set(base.disease.involvement)
    assert set(cfg.disease.involvement[key]) == set(inner)


@pytest.mark.slow
def test_small_48_subject_cohort_matches_the_study(tmp_path):
    """The default demo cohort, as written to disk: verify, reader kappa, scores, clinical signs."""
    from scipy.stats import spearmanr
    from sklearn.metrics import cohen_kappa_score

    root = generate_cohort(tmp_path / "c48", subjects=48, preset="small", seed=0)
    report = verify_cohort(root)
    assert report.ok, report.to_dataframe().to_string()
    cohort = Cohort.open(root)
    wide = cohort.grades.pivot_table(index=["case_id", "region"], columns="rater", values="edema_grade")
    kappa = cohen_kappa_score(wide["A"].astype(int), wide["B"].astype(int), weights="quadratic")
    assert 0.75 <= kappa <= 0.85
    truth = pd.read_csv(root / "truth" / "patterns.csv")
    thigh = truth[truth["station"] == "thigh"]
    spec = {"patchy": (6.9, 4.9), "mixed": (17.9, 5.0), "diffuse": (24.6, 2.2)}
    for pattern, (mean, sd) in spec.items():
        scores = thigh.loc[thigh["pattern"] == pattern, "station_score"]
        assert len(scores) >= 5
        assert abs(scores.mean() - mean) <= sd, pattern
    subjects = pd.read_csv(root / "truth" / "subjects.csv", dtype={"subject_id": str})
    clinical = cohort.clinical.merge(subjects[["subject_id", "total_score"]], on="subject_id")
    signs = {"age": -1, "vas": 1, "mmt8": -1, "ck": 1, "ldh": 1, "ast": 1, "ferritin": 1, "d_dimer": 1,
             "nse": 1, "platelets": -1, "albumin": -1, "nk_cells": -1, "dysphagia": 1, "ild": 1}
    for col, sign in signs.items():
        rho = spearmanr(clinical[col].astype(float), clinical["total_score"]).statistic
        assert np.sign(rho) == sign, (col, rho)
