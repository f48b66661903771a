"""Muscle-level phantom: diagnosis groups, per-muscle truth and readers, the muscle-graded schema."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.schema import (
    MUSCLES,
    LabelSchema,
    default_compartment_schema,
    default_muscle_schema,
)
from nxp2seg.data.verify import verify_cohort
from nxp2seg.grading import rollup_regions, scores_table
from nxp2seg.phantom.disease import DiseaseConfig, extent4_grade
from nxp2seg.phantom.generate import generate_cohort
from nxp2seg.phantom.muscles import (
    assign_groups,
    muscle_truth_table,
    sample_subjects_by_muscle,
    specified_directions,
)
from nxp2seg.phantom.readers import simulate_readers
from nxp2seg.stats import cohen_kappa

GROUPS = {"DM": 11, "IMNM": 14}


@pytest.fixture(scope="module")
def two_groups():
    return sample_subjects_by_muscle(25, 0, DiseaseConfig(groups=GROUPS))


def test_groups_are_dealt_exactly_and_reproducibly():
    g = assign_groups(25, 0, GROUPS)
    assert g.count("DM") == 11 and g.count("IMNM") == 14
    assert g == assign_groups(25, 0, GROUPS) and g != assign_groups(25, 1, GROUPS)
    assert assign_groups(10, 0, {"a": 1, "b": 1, "c": 1}).count("a") in (3, 4)
    assert assign_groups(3, 0, {}) == [None, None, None]


def test_muscle_truth_is_consistent_with_its_fractions_and_compartments(two_groups):
    t = muscle_truth_table(two_groups)
    assert len(t) == 25 * 2 * sum(len(m) for st in MUSCLES.values() for m in st.values())
    assert (t["edema_grade_extent4"] == [extent4_grade(f) for f in t["edema_fraction"]]).all()
    for subj in two_groups[:5]:
        for st in subj.stations.values():
            for comp in st.regions.values():
                members = [m for m in st.muscles.values()
                           if f"{st.station}_{m.compartment}_{m.side}" == comp.region]
                assert comp.edema_fraction == pytest.approx(np.mean([m.edema_fraction for m in members]))
                assert comp.muscle_fractions == tuple(m.edema_fraction for m in members)
                assert all(m.fat_grade == comp.fat_grade for m in members)


def test_the_groups_differ_in_the_specified_direction(two_groups):
    """The truth itself: per thigh muscle, the group with the larger shift has the higher mean grade."""
    t = muscle_truth_table(two_groups)
    t["group"] = t["subject_id"].map({s.subject_id: s.group for s in two_groups})
    means = t[t["station"] == "thigh"].groupby(["muscle", "group"])["edema_grade_extent4"].mean().unstack()
    directions = specified_directions(DiseaseConfig(groups=GROUPS), ("DM", "IMNM"))
    assert directions["rectus_femoris"] == 0 and directions["semimembranosus"] == 1
    assert directions["vastus_lateralis"] == -1
    for muscle, sign in directions.items():
        if sign:
            assert np.sign(means.loc[muscle, "IMNM"] - means.loc[muscle, "DM"]) == sign, muscle


def test_muscle_readers_grade_every_muscle_on_extent4(two_groups):
    grades, patterns = simulate_readers(two_groups, 0, grade_scale="extent4", level="muscle")
    schema = default_muscle_schema("muscle")
    assert set(grades["region"]) == set(schema.region_names())
    assert grades["edema_grade"].between(0, 3).all() and set(grades["rater"]) == {"A", "B"}
    assert len(patterns) == 2 * 2 * 25
    a, b = (grades[grades["rater"] == r].reset_index(drop=True) for r in ("A", "B"))
    assert 0.75 < cohen_kappa(a["edema_grade"], b["edema_grade"], "quadratic") < 0.97
    with pytest.raises(ValueError, match="no muscle truth"):
        from nxp2seg.phantom.disease import sample_subjects

        simulate_readers(sample_subjects(2, 0), 0, level="muscle")


def test_muscle_graded_schema_round_trips_and_rolls_up():
    m = default_muscle_schema("muscle")
    assert m.graded_level == "muscle" and default_muscle_schema().graded_level == "compartment"
    back = LabelSchema.from_dataset_json(json.loads(json.dumps(m.to_dataset_json())))
    assert back == m and back.regions["thigh_semimembranosus_left"].muscle == "semimembranosus"
    comp = m.compartment_schema()
    assert comp.region_names() == default_compartment_schema().region_names()
    assert set(comp.regions["thigh_posterior_right"].labels) == {
        m.labels[f"{x}_right"] for x in MUSCLES["thigh"]["posterior"]}


def test_rollup_and_scores_of_muscle_grades_by_hand():
    m = default_muscle_schema("muscle")
    ant = [f"thigh_{x}_right" for x in MUSCLES["thigh"]["anterior"]]  # 5 muscles
    rows = pd.DataFrame({"case_id": "c1", "region": ant, "edema_grade": [3, 0, 0, 1, 1],
                         "volume_ml": [10, 10, 20, 30, 30], "edema_fraction": [1.0, 0, 0, 0.2, 0.2],
                         "fascial_edema_prob": [0.1, 0.9, 0.2, 0.0, 0.3]})
    up = rollup_regions(rows, m, "extent4").set_index("region").loc["thigh_anterior_right"]
    assert up["edema_grade"] == pytest.approx(1.0) and up["edema_grade_int"] == 1
    assert up["volume_ml"] == 100 and up["fascial_edema_prob"] == pytest.approx(0.9)
    assert up["edema_fraction"] == pytest.approx((10 * 1.0 + 30 * 0.2 + 30 * 0.2) / 100)
    # a full thigh: the station score sums the six compartment means, not the 26 muscles
    full = pd.DataFrame({"case_id": "c1", "subject_id": "s1", "region": m.region_names("thigh"),
                         "edema_grade": 2.0})
    full.loc[full["region"].str.endswith("_left"), "edema_grade"] = 1.0
    cases, _ = scores_table(full, m, "extent4")
    assert cases.loc[0, "station_score"] == pytest.approx(3 * 2.0 + 3 * 1.0)
    assert cases.loc[0, "asymmetry"] == pytest.approx(3.0)
    assert cases.loc[0, "pattern_rule"] == "patchy"


def test_a_tiny_muscle_graded_two_group_cohort(tmp_path):
    root = generate_cohort(tmp_path / "m", subjects=4, preset="tiny", seed=1, workers=1,
                           label_level="muscle", grade_scale="extent4",
                           disease={"groups": {"DM": 1, "IMNM": 1}})
    assert verify_cohort(root).ok
    cohort = Cohort.open(root)
    schema = cohort.dataset.schema
    assert schema.graded_level == "muscle" and cohort.dataset.grade_scale.name == "extent4"
    assert set(cohort.grades["region"]) == set(schema.region_names())
    assert sorted(cohort.clinical["diagnosis"]) == ["DM", "DM", "IMNM", "IMNM"]
    truth = pd.read_csv(root / "truth" / "grades_muscle.csv")
    involved = truth[truth["edema_fraction"] > 0]
    assert (involved["measured_edema_fraction"] - involved["edema_fraction"]).abs().median() < 0.05
    assert "group" in pd.read_csv(root / "truth" / "subjects.csv").columns
    with pytest.raises(ValueError, match="needs label_level=muscle"):
        generate_cohort(tmp_path / "x", subjects=1, preset="tiny", grade_level="muscle")
