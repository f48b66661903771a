"""Domain rules of nxp2seg.grading, on examples small enough to check by hand (both scales)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from nxp2seg.data.schema import LabelSchema, default_compartment_schema, get_grade_scale
from nxp2seg.grading import (
    CASE_SCORE_COLUMNS,
    SUBJECT_SCORE_COLUMNS,
    TARGET_COLUMNS,
    asymmetry,
    integer_grade,
    max_station_score,
    max_total_score,
    pattern_rule,
    pattern_targets,
    rater_mean_targets,
    scores_table,
    station_score,
    total_score,
)

NAN = np.nan
SCHEMA = default_compartment_schema()
THIGH = SCHEMA.region_names("thigh")  # anterior, medial, posterior right; then left
CALF = SCHEMA.region_names("calf")


def _regions(names, schema=SCHEMA):
    return [schema.regions[n] for n in names]


def _reordered_schema() -> LabelSchema:
    """The default schema with its regions in another order: left first, posterior first."""
    order = sorted(SCHEMA.regions, key=lambda n: (SCHEMA.regions[n].station,
                                                  SCHEMA.regions[n].side != "left",
                                                  -len(SCHEMA.regions[n].compartment), n))
    return LabelSchema(labels=dict(SCHEMA.labels), regions={n: SCHEMA.regions[n] for n in order})


# -- integer grade --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scale", "grades", "expected"),
    [
        ("beltrame6", [0.0, 0.49, 0.5, 1.5, 2.5, 4.4, 5.0, 5.6, -0.3], [0, 0, 1, 2, 3, 4, 5, 5, 0]),
        ("extent4", [0.0, 0.5, 1.49, 2.5, 3.0, 4.2], [0, 1, 1, 3, 3, 3]),
    ],
)
def test_integer_grade_rounds_half_up_and_clips(scale, grades, expected):
    out = integer_grade(np.array(grades), scale)
    assert out.dtype.kind == "i"
    assert out.tolist() == expected


def test_integer_grade_nan_scalar_and_pandas():
    out = integer_grade([2.5, NAN], get_grade_scale("beltrame6"))
    assert out[0] == 3 and np.isnan(out[1])
    assert integer_grade(2.5, "beltrame6") == 3
    s = pd.Series([1.5, 2.49], index=["x", "y"], name="edema_grade")
    got = integer_grade(s, "extent4")
    assert got.index.tolist() == ["x", "y"] and got.tolist() == [2, 2] and got.name == "edema_grade"


# -- pattern rule -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grades", "expected"),
    [
        ([0, 0, 0, 0, 0, 0], "none"),
        ([1, 2, 4, 0, 0, 0], "patchy"),  # focal, segmented, segmented (moderate)
        ([3, 5, 0, 0, 0, 0], "diffuse"),  # global mild, global moderate
        ([1, 3, 0, 0, 0, 0], "mixed"),
        ([4, 5, 0, 4, 5, 0], "mixed"),
        ([0, 0, 0, 0, 0, 2], "patchy"),
    ],
)
def test_pattern_rule_beltrame6(grades, expected):
    assert pattern_rule(grades, "beltrame6") == expected
    assert pattern_rule(np.array(grades, dtype=float), get_grade_scale("beltrame6")) == expected


@pytest.mark.parametrize(
    ("grades", "expected"),
    [([0] * 6, "none"), ([1, 2, 0, 0, 0, 0], "patchy"), ([3, 3, 0, 0, 3, 3], "diffuse"),
     ([1, 3, 0, 0, 0, 0], "mixed"), ([2, 2, 2, 2, 2, 3], "mixed")],
)
def test_pattern_rule_extent4(grades, expected):
    assert pattern_rule(grades, "extent4") == expected


def test_pattern_rule_reads_the_scale():
    # 3 is global on both scales, 4 is segmented on beltrame6 and clipped to 3 (global) on extent4
    assert pattern_rule([3, 4, 0, 0, 0, 0], "beltrame6") == "mixed"
    assert pattern_rule([3, 4, 0, 0, 0, 0], "extent4") == "diffuse"


def test_pattern_rule_continuous_grades_are_made_integer_first():
    # rater means: 2.5 -> 3 (global), 0.4 -> 0 (not involved), 1.5 -> 2 (segmented)
    assert pattern_rule([2.5, 0.4, 0, 0, 0, 0], "beltrame6") == "diffuse"
    assert pattern_rule([2.5, 1.5, 0, 0, 0, 0], "beltrame6") == "mixed"
    assert pattern_rule([0.4, 0.2, 0, 0, 0, 0], "beltrame6") == "none"


def test_pattern_rule_nan_regions_are_ignored():
    assert pattern_rule([3, NAN, NAN, 5, 0, 0], "beltrame6") == "diffuse"
    assert pattern_rule([0, NAN, 0, 0, 0, 0], "beltrame6") == "none"
    assert pattern_rule([NAN] * 6, "beltrame6") is None


def test_pattern_rule_batched_shapes_and_pandas():
    g = np.array([[[1, 2, 4, 0, 0, 0], [3, 5, 0, 0, 0, 0], [1, 3, 0, 0, 0, 0]],
                  [[0] * 6, [NAN] * 6, [2, 2, 0, 0, 0, 0]]])
    out = pattern_rule(g, "beltrame6")
    assert out.shape == (2, 3)
    assert out.tolist() == [["patchy", "diffuse", "mixed"], ["none", None, "patchy"]]
    df = pd.DataFrame(g[0], index=["a", "b", "c"], columns=THIGH)
    s = pattern_rule(df, "beltrame6")
    assert s.index.tolist() == ["a", "b", "c"] and s.tolist() == ["patchy", "diffuse", "mixed"]
    assert pattern_rule(df.loc["b"], "beltrame6") == "diffuse"


# -- scores ----------------------------------------------------------------------------------


def test_station_score_sums_and_ranges():
    assert station_score([1, 2, 3, 4, 5, 0]) == 15
    assert station_score([5] * 6) == 30 == max_station_score("beltrame6")
    assert station_score([3] * 6) == 18 == max_station_score("extent4")
    assert station_score([2.5, 0.5, 0, 0, 0, 1]) == pytest.approx(4.0)
    out = station_score(np.array([[1, 1, 1, 0, 0, 0], [5, 5, 5, 5, 5, 5]]))
    assert out.dtype.kind == "i" and out.tolist() == [3, 30]


def test_station_score_missing_policy():
    assert np.isnan(station_score([1, 2, NAN, 0, 0, 0]))
    # prorated: mean of the 5 graded regions (3 / 5) times 6
    assert station_score([1, 2, NAN, 0, 0, 0], allow_missing=True) == pytest.approx(3.6)
    assert station_score([1, 2, 3, 0, 0, 0], allow_missing=True) == pytest.approx(6.0)
    assert np.isnan(station_score([NAN] * 6, allow_missing=True))


def test_station_score_pandas():
    df = pd.DataFrame([[1, 2, 3, 0, 0, 0], [0, 0, 0, 0, 0, 3]], index=["a", "b"], columns=CALF)
    got = station_score(df)
    assert got.index.tolist() == ["a", "b"] and got.tolist() == [6, 3]
    assert station_score(df.loc["a"]) == 6


def test_total_score():
    assert total_score(30, 30) == 60 == max_total_score("beltrame6")
    assert max_total_score("extent4") == 36
    assert total_score(np.array([7, 12.5]), np.array([8, 0])).tolist() == [15, 12.5]
    assert np.isnan(total_score(7, NAN))
    s = total_score(pd.Series([7, 3], index=["P1", "P2"]), pd.Series([8, NAN], index=["P1", "P2"]))
    assert s.name == "total_score" and s["P1"] == 15 and np.isnan(s["P2"])


# -- asymmetry ---------------------------------------------------------------------------------


def test_asymmetry_right_minus_left_default_order():
    # thigh: anterior, medial, posterior right, then left
    out = asymmetry([3, 2, 1, 0, 1, 1], _regions(THIGH))
    assert out == {"asymmetry": 4, "asymmetry_anterior": 3, "asymmetry_medial": 1,
                   "asymmetry_posterior": 0}
    out = asymmetry([0, 0, 0, 4, 5, 0], _regions(THIGH))  # left worse: negative
    assert out["asymmetry"] == -9 and out["asymmetry_anterior"] == -4
    calf = asymmetry([0, 2, 0, 0, 0, 0], _regions(CALF))
    assert list(calf) == ["asymmetry", "asymmetry_anterior", "asymmetry_lateral",
                          "asymmetry_posterior"]
    assert calf["asymmetry_lateral"] == 2


def test_asymmetry_pairs_by_schema_not_position():
    schema = _reordered_schema()
    names = schema.region_names("thigh")
    assert names != THIGH and names[0].endswith("_left")
    truth = dict(zip(THIGH, [3, 2, 1, 0, 1, 1]))  # same grades as above, by region name
    grades = [truth[n] for n in names]
    out = asymmetry(grades, _regions(names, schema))
    assert out == {"asymmetry": 4, "asymmetry_anterior": 3, "asymmetry_medial": 1,
                   "asymmetry_posterior": 0}
    # pandas, looked up by column name in the schema, columns in yet another order
    df = pd.DataFrame([grades], columns=names, index=["c1"])[list(reversed(names))]
    got = pd.DataFrame(asymmetry(df, schema))
    assert got.loc["c1"].tolist() == [4, 3, 1, 0]


def test_asymmetry_batched_missing_and_errors():
    g = np.array([[2.5, 0, 0, 1, 0, 0], [1, NAN, 0, 0, 0, 0]])
    out = asymmetry(g, _regions(THIGH))
    assert out["asymmetry_anterior"].tolist() == [1.5, 1.0]
    assert out["asymmetry"][0] == 1.5 and np.isnan(out["asymmetry"][1])
    assert np.isnan(out["asymmetry_medial"][1])
    prorated = asymmetry(g, _regions(THIGH), allow_missing=True)
    assert prorated["asymmetry"][1] == pytest.approx(1.5)  # mean of (1, 0) times 3
    with pytest.raises(ValueError, match="one station"):
        asymmetry([0] * 7, _regions(THIGH + CALF[:1]))
    with pytest.raises(ValueError, match="one right and one left"):
        asymmetry([0] * 5, _regions(THIGH[:5]))
    with pytest.raises(ValueError, match="6 regions given"):
        asymmetry([0] * 5, _regions(THIGH))


# -- tables -------------------------------------------------------------------------------------


def _long(case_id, subject_id, names, grades):
    return pd.DataFrame({"case_id": case_id, "subject_id": subject_id, "region": names,
                         "edema_grade": grades})


@pytest.fixture
def regions_df():
    return pd.concat([
        _long("P1_thigh", "P1", THIGH, [1, 2, 4, 0, 0, 0]),  # patchy, 7, right +7
        _long("P1_calf", "P1", CALF, [3, 5, 0, 3, 3, 0]),  # diffuse, 14, ant 0, lat +2
        _long("P2_thigh", "P2", THIGH, [1, 3, 0, 1, 3, 2.5]),  # mixed, 10.5, post -2.5
    ], ignore_index=True)


def test_scores_table_beltrame6(regions_df):
    cases, subjects = scores_table(regions_df, SCHEMA, "beltrame6")
    assert list(cases.columns) == CASE_SCORE_COLUMNS
    c = cases.set_index("case_id")
    assert c.station.tolist() == ["thigh", "calf", "thigh"]
    assert c.pattern_rule.tolist() == ["patchy", "diffuse", "mixed"]
    assert c.station_score.tolist() == [7, 14, 10.5]
    assert c.asymmetry.tolist() == [7, 2, -2.5]
    assert c.loc["P1_calf", "asymmetry_lateral"] == 2 and np.isnan(c.loc["P1_calf", "asymmetry_medial"])
    assert c.loc["P2_thigh", "asymmetry_posterior"] == -2.5
    assert list(subjects.columns) == SUBJECT_SCORE_COLUMNS
    s = subjects.set_index("subject_id")
    assert s.loc["P1"].tolist() == [7, 14, 21]
    assert s.loc["P2", "thigh_score"] == 10.5 and np.isnan(s.loc["P2", "calf_score"])
    assert np.isnan(s.loc["P2", "total_score"])


def test_scores_table_integer_missing_and_cases(regions_df):
    gone = (regions_df.case_id == "P2_thigh") & (regions_df.region == "thigh_medial_left")
    df = regions_df[~gone].drop(columns="subject_id")
    cases_csv = pd.DataFrame({"case_id": ["P1_thigh", "P1_calf", "P2_thigh"],
                              "subject_id": ["S1", "S1", "S2"],
                              "station": ["thigh", "calf", "thigh"]})
    c, s = scores_table(df, SCHEMA, "beltrame6", cases=cases_csv)
    c = c.set_index("case_id")
    assert c.loc["P1_thigh", "station_score"] == 7
    assert np.isnan(c.loc["P2_thigh", "station_score"])  # a region is missing
    assert s.subject_id.tolist() == ["S1", "S2"]
    c2, _ = scores_table(df, SCHEMA, "beltrame6", cases=cases_csv, allow_missing=True,
                         integer=True)
    # integer grades 1, 3, 0, 1, (missing), 3 -> mean 8/5 times 6
    assert c2.set_index("case_id").loc["P2_thigh", "station_score"] == pytest.approx(9.6)


def test_scores_table_no_subjects_gives_an_empty_subject_table(regions_df):
    cases, subjects = scores_table(regions_df.drop(columns="subject_id"), SCHEMA, "beltrame6")
    assert "subject_id" not in cases.columns and len(cases) == 3
    assert list(subjects.columns) == SUBJECT_SCORE_COLUMNS and subjects.empty


def test_scores_table_extent4_and_errors(regions_df):
    e4 = pd.concat([_long("P1_thigh", "P1", THIGH, [1, 2, 0, 0, 0, 0]),
                    _long("P1_calf", "P1", CALF, [3, 3, 3, 3, 0, 3])], ignore_index=True)
    cases, subjects = scores_table(e4, SCHEMA, "extent4")
    assert cases.pattern_rule.tolist() == ["patchy", "diffuse"]
    assert cases.station_score.tolist() == [3, 15]
    assert subjects.total_score.tolist() == [18]
    with pytest.raises(ValueError, match="outside 0..3"):  # beltrame6 grades read as extent4
        scores_table(regions_df, SCHEMA, "extent4")
    bad = regions_df.copy()
    bad.loc[0, "region"] = "thigh_lateral_right"
    with pytest.raises(ValueError, match="thigh_lateral_right"):
        scores_table(bad, SCHEMA, "beltrame6")
    with pytest.raises(ValueError, match="unique"):
        scores_table(pd.concat([regions_df, regions_df.head(1)]), SCHEMA, "beltrame6")
    mixed = regions_df.copy()
    mixed.loc[0, "case_id"] = "P1_calf"  # a thigh region in a calf case
    with pytest.raises(ValueError, match="both stations"):
        scores_table(mixed, SCHEMA, "beltrame6")


@pytest.fixture
def grades_df():
    return pd.DataFrame({
        "case_id": ["c1"] * 6,
        "rater": ["A", "B", "A", "B", "A", "B"],
        "region": ["thigh_anterior_right"] * 2 + ["thigh_medial_right"] * 2
                  + ["thigh_posterior_right"] * 2,
        "edema_grade": [2, 3, 1, NAN, NAN, NAN],
        "fat_grade": [1, 2, 0, 0, NAN, 4],
        "fascial_edema": [1, 0, 1, 1, NAN, NAN],
        "subcutaneous_edema": [0, 0, NAN, NAN, 1, NAN],
    })


def test_rater_mean_targets(grades_df):
    t = rater_mean_targets(grades_df, "beltrame6")
    assert list(t.columns) == TARGET_COLUMNS
    t = t.set_index("region")
    ant, med, post = (t.loc[f"thigh_{c}_right"] for c in ("anterior", "medial", "posterior"))
    assert (ant.edema_grade, ant.edema_grade_int, ant.n_raters) == (2.5, 3, 2)
    assert (ant.fat_grade, ant.fat_grade_int, ant.fascial_edema) == (1.5, 2, 0.5)
    assert (med.edema_grade, med.n_raters, med.fascial_edema) == (1.0, 1, 1.0)
    assert np.isnan(med.subcutaneous_edema)
    assert np.isnan(post.edema_grade) and np.isnan(post.edema_grade_int) and post.n_raters == 0
    assert post.fat_grade == 4 and post.subcutaneous_edema == 1


def test_rater_mean_targets_optional_columns_and_errors(grades_df):
    t = rater_mean_targets(grades_df[["case_id", "rater", "region", "edema_grade"]], "extent4")
    assert t.fat_grade.isna().all() and t.fascial_edema.isna().all()
    bad = grades_df.copy()
    bad.loc[0, "edema_grade"] = 4  # fine on beltrame6, not on extent4
    rater_mean_targets(bad, "beltrame6")
    with pytest.raises(ValueError, match=r"integer 0\.\.3 \(extent4\).*rater=A"):
        rater_mean_targets(bad, "extent4")
    bad.loc[0, "edema_grade"] = 2.5
    with pytest.raises(ValueError, match="integer 0..5"):
        rater_mean_targets(bad, "beltrame6")
    bad = grades_df.copy()
    bad.loc[1, "fascial_edema"] = 2
    with pytest.raises(ValueError, match="fascial_edema must be 0, 1"):
        rater_mean_targets(bad, "beltrame6")
    with pytest.raises(ValueError, match="unique"):
        rater_mean_targets(pd.concat([grades_df, grades_df.head(1)]), "beltrame6")


def test_rater_means_score_like_the_model(grades_df):
    t = rater_mean_targets(grades_df, "beltrame6")
    cases, _ = scores_table(t, SCHEMA, "beltrame6", allow_missing=True)
    # graded: 2.5 and 1.0 of the six regions -> 3.5 / 2 * 6
    assert cases.station_score.tolist() == [pytest.approx(10.5)]
    assert cases.pattern_rule.tolist() == ["mixed"]  # 3 (global) and 1 (focal)


def test_pattern_targets_soft_labels_and_majority():
    p = pd.DataFrame({"case_id": ["a", "a", "a", "b", "b", "c", "d"],
                      "rater": ["A", "B", "C", "A", "B", "A", "A"],
                      "pattern": ["patchy", "patchy", "Mixed ", "diffuse", "diffuse", None, ""]})
    t = pattern_targets(p).set_index("case_id")
    assert t.loc["a", ["p_none", "p_patchy", "p_mixed", "p_diffuse"]].tolist() == \
        pytest.approx([0, 2 / 3, 1 / 3, 0])
    assert t.loc["a", "pattern"] == "patchy" and not t.loc["a", "tied"]
    assert t.loc["b", "pattern"] == "diffuse" and t.loc["b", "p_diffuse"] == 1
    assert t.n_raters.tolist() == [3, 2, 0, 0]
    assert pd.isna(t.loc["c", "pattern"]) and np.isnan(t.loc["c", "p_none"])
    with pytest.raises(ValueError, match="pattern must be one of"):
        pattern_targets(pd.DataFrame({"case_id": ["a"], "rater": ["A"], "pattern": ["focal"]}))


def test_pattern_targets_ties_break_towards_the_rule():
    p = pd.DataFrame({"case_id": ["t1", "t1", "t2", "t2", "t3", "t3"],
                      "rater": ["A", "B"] * 3,
                      "pattern": ["patchy", "mixed", "patchy", "mixed", "patchy", "diffuse"]})
    means = pd.concat([
        _long("t1", "S", THIGH, [1, 1, 0, 0, 0, 0]),  # rule: patchy (among the tied)
        _long("t2", "S", THIGH, [3, 3, 0, 3, 0, 0]),  # rule: diffuse -> nearest tied: mixed
        _long("t3", "S", THIGH, [1, 3, 0, 0, 0, 0]),  # rule: mixed; patchy and diffuse tied,
    ])                                                # equally near -> the lower, patchy
    t = pattern_targets(p, means, scale="beltrame6").set_index("case_id")
    assert t.tied.all()
    assert t.pattern_rule.tolist() == ["patchy", "diffuse", "mixed"]
    assert t.pattern.tolist() == ["patchy", "mixed", "patchy"]
    # without the readers' grades a tie goes to the lower pattern
    assert pattern_targets(p).pattern.tolist() == ["patchy", "patchy", "patchy"]
    p.loc[4, "pattern"] = "none"  # t3: none and diffuse tied; the rule's mixed is nearer diffuse
    assert pattern_targets(p, means, scale="beltrame6").pattern.tolist()[2] == "diffuse"
    with pytest.raises(ValueError, match="scale"):
        pattern_targets(p, means)


def test_phantom_truth_scores_match_the_phantom():
    from nxp2seg.phantom.disease import sample_subjects, truth_tables

    region_df, station_df, subject_df = truth_tables(sample_subjects(8, 1))
    cases, subjects = scores_table(region_df, SCHEMA, "beltrame6")
    assert cases.case_id.tolist() == station_df.case_id.tolist()
    assert cases.station_score.tolist() == station_df.station_score.tolist()
    assert cases.pattern_rule.tolist() == station_df.pattern.tolist()
    assert subjects.total_score.tolist() == subject_df.total_score.tolist()
    e4 = region_df.assign(edema_grade=region_df.edema_grade_extent4)
    assert scores_table(e4, SCHEMA, "extent4")[0].station_score.max() <= 18


def test_readers_flag_is_a_strict_majority():
    from nxp2seg.grading import readers_flag

    got = readers_flag([0.0, 0.5, 1.0, 2 / 3, 1 / 3, np.nan])
    assert np.array_equal(got[:5], [0.0, 0.0, 1.0, 1.0, 0.0]) and np.isnan(got[5])
    assert readers_flag(1.0) == 1.0 and isinstance(readers_flag(0.5), float)


def test_extent4_cutoffs_are_data_of_the_scale():
    """extent4's 30% / 75% cut-offs live in GradeScale; the phantom's extent4_grade reads them."""
    from nxp2seg.data.schema import SchemaError, GradeScale, get_grade_scale
    from nxp2seg.phantom.disease import extent4_grade

    ext = get_grade_scale("extent4")
    assert ext.fraction_cutoffs == (0.30, 0.75)
    fractions = [0.0, 0.01, 0.2999, 0.30, 0.75, 0.7501, 1.0]
    assert list(ext.grade_of_fraction(fractions)) == [0, 1, 1, 2, 2, 3, 3]
    assert [extent4_grade(f) for f in fractions] == [0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="does not grade the affected fraction"):
        get_grade_scale("beltrame6").grade_of_fraction(0.5)
    with pytest.raises(SchemaError, match="fraction_cutoffs"):
        GradeScale("x", ("a", "b", "c"), ("none", "focal", "global"), ("any",) * 3, (0.8, 0.2))
