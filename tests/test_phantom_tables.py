"""The phantom's tables: disease truth, simulated readers and the clinical table (fast, tabular)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from nxp2seg.data.schema import (
    COMPARTMENTS,
    FAT_SCALE,
    PATTERNS,
    STATIONS,
    default_compartment_schema,
    get_grade_scale,
)
from nxp2seg.phantom.clinical import ClinicalConfig, latent_correlation, simulate_clinical
from nxp2seg.phantom.disease import (
    REGION_COLUMNS,
    STATION_COLUMNS,
    SUBJECT_COLUMNS,
    DiseaseConfig,
    extent4_grade,
    pattern_rule,
    sample_subjects,
    truth_tables,
)
from nxp2seg.phantom.readers import GRADE_COLUMNS, PATTERN_COLUMNS, simulate_readers

SPEC_THIGH = {"patchy": (6.9, 4.9), "mixed": (17.9, 5.0), "diffuse": (24.6, 2.2)}
CLINICAL_COLUMNS = ["subject_id", "age", "sex", "bmi", "vas", "mmt8", "ck", "ldh", "ast",
                    "ferritin", "d_dimer", "nse", "platelets", "albumin", "nk_cells", "dysphagia",
                    "ild", "relapse", "death"]


def _kappa(grades: pd.DataFrame, column: str = "edema_grade") -> float:
    a = grades[grades.rater == "A"][column].to_numpy()
    b = grades[grades.rater == "B"][column].to_numpy()
    return float(cohen_kappa_score(a, b, weights="quadratic"))


@pytest.fixture(scope="module")
def cohort48():
    subjects = sample_subjects(48, 0)
    region_df, station_df, subject_df = truth_tables(subjects)
    grades, patterns = simulate_readers(subjects, 0)
    clinical = simulate_clinical(subjects, 0)
    return subjects, region_df, station_df, subject_df, grades, patterns, clinical


@pytest.fixture(scope="module")
def cohort_mc():
    subjects = sample_subjects(2000, 12345)
    region_df, station_df, subject_df = truth_tables(subjects)
    grades, _ = simulate_readers(subjects, 7)
    clinical = simulate_clinical(subjects, 7)
    return subjects, region_df, station_df, subject_df, grades, clinical


# -- pattern rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("grades", "expected"),
    [
        ([0, 0, 0, 0, 0, 0], "none"),
        ([1, 0, 0, 0, 0, 0], "patchy"),
        ([1, 2, 4, 2, 1, 0], "patchy"),
        ([3, 5, 3, 5, 3, 3], "diffuse"),
        ([0, 0, 5, 0, 0, 0], "diffuse"),
        ([1, 3, 0, 0, 0, 0], "mixed"),
        ([4, 5, 0, 4, 5, 0], "mixed"),
        ([2, 3, 2, 2, 2, 2], "mixed"),
    ],
)
def test_pattern_rule_beltrame6(grades, expected):
    assert pattern_rule(grades, get_grade_scale("beltrame6")) == expected
    assert pattern_rule(grades, "beltrame6") == expected


@pytest.mark.parametrize(
    ("grades", "expected"),
    [([0, 0, 0, 0, 0, 0], "none"), ([1, 2, 0, 2, 1, 0], "patchy"), ([3, 3, 0, 0, 3, 0], "diffuse"),
     ([1, 3, 0, 0, 0, 0], "mixed"), ([2, 3, 3, 3, 3, 3], "mixed")],
)
def test_pattern_rule_extent4(grades, expected):
    assert pattern_rule(grades, get_grade_scale("extent4")) == expected


def test_pattern_rule_vectorised_matches_scalar():
    rng = np.random.default_rng(0)
    for name, top in (("beltrame6", 5), ("extent4", 3)):
        g = rng.integers(0, top + 1, size=(200, 6)) * (rng.random((200, 6)) < 0.6)
        many = pattern_rule(g, name)
        assert many.shape == (200,)
        assert list(many) == [pattern_rule(row, name) for row in g]


def test_extent4_grade_thresholds():
    fractions = (0.0, 0.05, 0.29, 0.30, 0.75, 0.76, 1.0)
    assert [extent4_grade(f) for f in fractions] == [0, 1, 1, 2, 2, 3, 3]


# -- determinism ------------------------------------------------------------------------


def test_same_seed_same_tables():
    a, b = sample_subjects(6, 3), sample_subjects(6, 3)
    for x, y in zip(truth_tables(a), truth_tables(b)):
        pd.testing.assert_frame_equal(x, y)
    for x, y in zip(simulate_readers(a, 3), simulate_readers(b, 3)):
        pd.testing.assert_frame_equal(x, y)
    pd.testing.assert_frame_equal(simulate_clinical(a, 3), simulate_clinical(b, 3))
    other = truth_tables(sample_subjects(6, 4))[0]
    assert not other["edema_grade"].equals(truth_tables(a)[0]["edema_grade"])


def test_subjects_are_prefix_stable():
    small, large = truth_tables(sample_subjects(5, 9))[0], truth_tables(sample_subjects(9, 9))[0]
    pd.testing.assert_frame_equal(small, large.iloc[: len(small)])


def test_empty_cohort():
    region_df, station_df, subject_df = truth_tables([])
    assert list(region_df.columns) == REGION_COLUMNS and region_df.empty
    grades, patterns = simulate_readers([], 0)
    assert list(grades.columns) == GRADE_COLUMNS and grades.empty


# -- truth consistency ------------------------------------------------------------------------


def test_truth_is_consistent(cohort_mc):
    subjects, region_df, station_df, subject_df, _, _ = cohort_mc
    assert list(region_df.columns) == REGION_COLUMNS
    assert list(station_df.columns) == STATION_COLUMNS
    assert list(subject_df.columns) == SUBJECT_COLUMNS
    scale = get_grade_scale("beltrame6")
    schema = default_compartment_schema()
    cfg = DiseaseConfig()
    for subj in subjects[:300]:
        assert list(subj.stations) == list(STATIONS)
        assert subj.total_score == sum(st.station_score for st in subj.stations.values())
        assert subj.sex in ("F", "M") and 18 <= subj.age <= 67 and 18 <= subj.bmi <= 38
        for station, st in subj.stations.items():
            assert st.case_id == f"{subj.subject_id}_{station}"
            assert list(st.regions) == schema.region_names(station)
            grades = [r.edema_grade for r in st.regions.values()]
            assert st.pattern == st.drawn_pattern == pattern_rule(grades, scale)
            assert st.station_score == sum(grades)
            if station == "thigh":
                assert st.pattern != "none"
            for r in st.regions.values():
                assert r.edema_extent == scale.extent[r.edema_grade]
                assert r.edema_intensity == scale.intensity[r.edema_grade]
                if r.edema_grade == 0:
                    assert r.edema_fraction == 0 and r.n_foci == 0
                else:
                    lo, hi = cfg.edema_fraction[r.edema_extent]
                    assert lo <= r.edema_fraction <= hi
                    assert 1 <= r.n_foci <= (3 if r.edema_extent == "focal" else 1)
                assert 0 <= r.fat_grade <= FAT_SCALE.max_grade
                if r.fat_grade == 0:
                    assert r.fat_fraction == 0
                else:
                    lo, hi = cfg.fat_fraction[r.fat_grade - 1]
                    assert lo <= r.fat_fraction <= hi
    ext = region_df[region_df.edema_grade > 0]
    assert (ext.edema_grade_extent4 == ext.edema_fraction.map(extent4_grade)).all()
    assert (region_df.edema_grade_extent4 == 0).equals(region_df.edema_grade == 0)


# -- the study cohort: 48 subjects, seed 0 ------------------------------------------------


def test_readers_tables(cohort48):
    subjects, region_df, station_df, _, grades, patterns, _ = cohort48
    assert list(grades.columns) == GRADE_COLUMNS and list(patterns.columns) == PATTERN_COLUMNS
    assert len(grades) == 2 * len(region_df) and len(patterns) == 2 * len(station_df)
    for col in GRADE_COLUMNS[3:]:
        assert pd.api.types.is_integer_dtype(grades[col]), col
    assert grades.edema_grade.between(0, 5).all() and grades.fat_grade.between(0, 4).all()
    assert set(grades.fascial_edema) <= {0, 1} and set(grades.subcutaneous_edema) <= {0, 1}
    assert set(patterns.pattern) <= set(PATTERNS)
    assert (grades.groupby(["case_id", "rater"]).size() == 6).all()
    ext4, _ = simulate_readers(subjects, 0, grade_scale="extent4")
    assert ext4.edema_grade.between(0, 3).all() and ext4.edema_grade.max() == 3


def test_inter_reader_kappa_48(cohort48):
    assert 0.75 <= _kappa(cohort48[4]) <= 0.85


def test_readers_agree_with_truth_about_75_percent(cohort48):
    region_df, grades = cohort48[1], cohort48[4]
    truth = region_df.edema_grade.to_numpy()
    for rater in ("A", "B"):
        read = grades[grades.rater == rater].edema_grade.to_numpy()
        assert 0.66 <= np.mean(read == truth) <= 0.82
        assert np.mean(np.abs(read - truth) <= 1) >= 0.8
    b_minus_a = (grades[grades.rater == "B"].edema_grade.to_numpy()
                 - grades[grades.rater == "A"].edema_grade.to_numpy())
    assert b_minus_a.mean() > 0  # reader B upgrades


def test_thigh_scores_by_true_pattern_48(cohort48):
    thigh = cohort48[2][cohort48[2].station == "thigh"]
    for pattern, (mean, sd) in SPEC_THIGH.items():
        scores = thigh[thigh.pattern == pattern].station_score
        assert len(scores) >= 5, pattern
        assert abs(scores.mean() - mean) <= sd, (pattern, scores.mean())


def test_clinical_table_48(cohort48):
    subjects, _, _, subject_df, _, _, clinical = cohort48
    assert list(clinical.columns) == CLINICAL_COLUMNS
    assert clinical.subject_id.tolist() == [s.subject_id for s in subjects]
    assert clinical.age.tolist() == [s.age for s in subjects]
    assert clinical.sex.tolist() == [s.sex for s in subjects]
    assert clinical.vas.between(1, 7).all() and clinical.mmt8.between(0, 80).all()
    for col in ("dysphagia", "ild", "relapse", "death"):
        assert set(clinical[col]) <= {0, 1}
    labs = ["ck", "ldh", "ast", "ferritin", "d_dimer", "nse", "nk_cells"]
    assert (clinical[labs] > 0).all().all()
    total = subject_df.total_score
    targets = {"age": -0.35, **ClinicalConfig().target_spearman}
    for col, target in targets.items():
        if abs(target) >= 0.3:
            r = clinical[col].corr(total, method="spearman")
            assert np.sign(r) == np.sign(target), (col, r)


def test_frequencies_48(cohort48):
    _, region_df, station_df, subject_df, _, _, _ = cohort48
    assert 0.4 <= (subject_df.sex == "F").mean() <= 0.8
    thigh = station_df[station_df.station == "thigh"].pattern.value_counts(normalize=True)
    assert 0.3 <= thigh.get("patchy", 0) <= 0.7
    calf_none = (station_df[station_df.station == "calf"].pattern == "none").mean()
    assert 0.03 <= calf_none <= 0.3


# -- Monte Carlo calibration (2000 subjects, tabular so fast) -----------------------------


def _any_per_station(region_df: pd.DataFrame, column: str) -> pd.Series:
    per_station = region_df.groupby(["subject_id", "station"])[column].max().gt(0)
    return per_station.groupby("station").mean()


def test_calibration_thigh_scores(cohort_mc):
    thigh = cohort_mc[2][cohort_mc[2].station == "thigh"]
    for pattern, (mean, sd) in SPEC_THIGH.items():
        scores = thigh[thigh.pattern == pattern].station_score
        assert abs(scores.mean() - mean) <= 1.0, (pattern, scores.mean())
        assert abs(scores.std() - sd) <= 0.8, (pattern, scores.std())


def test_calibration_kappa(cohort_mc):
    region_df, grades = cohort_mc[1], cohort_mc[4]
    assert 0.77 <= _kappa(grades) <= 0.83
    read = grades[grades.rater == "A"].edema_grade.to_numpy()
    exact = np.mean(read == region_df.edema_grade.to_numpy())
    assert 0.71 <= exact <= 0.79


def test_calibration_frequencies(cohort_mc):
    _, region_df, station_df, subject_df, _, _ = cohort_mc
    cfg = DiseaseConfig()
    pats = station_df.groupby("station").pattern.value_counts(normalize=True)
    for p, f in cfg.pattern_probs["thigh"].items():
        assert abs(pats["thigh"][p] - f) < 0.035, p
    calf_inv = 1 - pats["calf"]["none"]
    assert abs(calf_inv - 0.85) < 0.025
    for p, f in cfg.pattern_probs["calf"].items():
        assert abs(pats["calf"][p] / calf_inv - f) < 0.035, p
    comp = region_df.assign(compartment=region_df.region.str.split("_").str[1])
    involved = comp.groupby(["subject_id", "station", "compartment"]).edema_grade.max().gt(0)
    for station in STATIONS:
        denom = 1.0 if station == "thigh" else calf_inv
        for c in COMPARTMENTS[station]:
            f = involved.xs((station, c), level=("station", "compartment")).mean() / denom
            assert abs(f - cfg.involvement[station][c]) < 0.035, (station, c, f)
    for column, spec in (("fat_grade", cfg.fat_prevalence), ("fascial_edema", cfg.fascial_edema),
                         ("subcutaneous_edema", cfg.subcutaneous_edema)):
        got = _any_per_station(region_df, column)
        for station in STATIONS:
            assert abs(got[station] - spec[station]) < 0.035, (column, station, got[station])
    fat = comp[comp.fat_grade > 0].groupby(["station", "compartment"]).subject_id.nunique()
    assert fat["thigh"]["posterior"] > fat["thigh"]["medial"] > fat["thigh"]["anterior"]
    assert fat["calf"]["posterior"] > fat["calf"]["lateral"] > fat["calf"]["anterior"]
    assert comp[comp.fat_grade > 0].fat_grade.between(1, 3).mean() > 0.85
    assert abs((subject_df.sex == "F").mean() - 0.6) < 0.035
    # a one-grade side difference in about a third of thigh stations
    sides = comp.assign(side=comp.region.str.split("_").str[2])
    wide = sides[sides.station == "thigh"].pivot_table(
        index=["case_id", "compartment"], columns="side", values="edema_grade")
    one = ((wide.right - wide.left).abs() == 1) & (wide.right > 0) & (wide.left > 0)
    assert abs(one.groupby("case_id").any().mean() - 1 / 3) < 0.05


def test_calibration_clinical(cohort_mc):
    subject_df, clinical = cohort_mc[3], cohort_mc[5]
    total = subject_df.total_score
    targets = {"age": -0.35, **ClinicalConfig().target_spearman}
    for col, target in targets.items():
        r = clinical[col].corr(total, method="spearman")
        loose = col in ("age", "dysphagia", "ild", "relapse", "death")
        assert abs(r - target) < (0.06 if loose else 0.04), (col, r)
    assert clinical.mmt8.between(50, 80).mean() > 0.75
    assert abs(clinical.dysphagia.mean() - 0.35) < 0.03


def test_latent_correlation_inflates_for_binaries():
    assert latent_correlation(0.3) == pytest.approx(2 * np.sin(np.pi * 0.3 / 6))
    assert latent_correlation(0.3, (0.7, 0.3)) > 0.36
    assert latent_correlation(0.0, (0.94, 0.06)) == pytest.approx(0.0, abs=1e-6)
