"""Muscle-graded cohorts downstream of the model: predict's rows, evaluate per muscle, analyze."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers_analysis import fake_predictions
from sklearn.metrics import cohen_kappa_score

from nxp2seg.data.cohort import Cohort
from nxp2seg.data.schema import MUSCLES, default_muscle_schema, get_grade_scale
from nxp2seg.evaluation.segmentation import muscle_segmentation
from nxp2seg.inference.writers import REGION_COLUMNS, compartment_rows
from nxp2seg.phantom.generate import generate_cohort


def test_compartment_rows_roll_the_muscles_up():
    schema, scale = default_muscle_schema("muscle"), get_grade_scale("extent4")
    names = schema.region_names("thigh")
    rows = [{"case_id": "c", "region": n, "edema_grade": 3.0 if "vastus" in n else 0.0,
             "fat_grade_continuous": 1.0, "fascial_edema_prob": 0.7 if n.endswith("sartorius_left") else 0.1,
             "subcutaneous_edema_prob": 0.0, "fascial_edema": n.endswith("sartorius_left"),
             "subcutaneous_edema": False, "volume_ml": 10.0, "edema_fraction": 0.5} for n in names]
    comp = {r["region"]: r for r in compartment_rows(rows, schema, scale)}
    assert list(comp) == schema.compartment_schema().region_names("thigh")
    ant = comp["thigh_anterior_right"]  # 3 vasti of 5 anterior muscles at 3
    assert ant["edema_grade"] == pytest.approx(9 / 5) and ant["edema_grade_int"] == 2
    assert ant["level"] == "compartment" and ant["volume_ml"] == 50 and ant["fat_grade"] == 1
    assert comp["thigh_anterior_left"]["fascial_edema"] is True
    assert comp["thigh_anterior_left"]["fascial_edema_prob"] == pytest.approx(0.7)
    assert comp["thigh_medial_right"]["fascial_edema"] is False
    assert set(comp["thigh_medial_right"]) <= set(REGION_COLUMNS)
    assert compartment_rows(rows, default_muscle_schema(), scale) == []  # compartment-graded: none


def test_muscle_dice_on_hand_made_maps():
    schema = default_muscle_schema("muscle")
    truth = np.zeros((6, 4, 1), np.uint8)
    sm, st = schema.labels["semimembranosus_right"], schema.labels["semitendinosus_right"]
    truth[:3, :, 0], truth[3:, :, 0] = sm, st  # 12 voxels each
    pred = truth.copy()
    pred[2, :, 0] = st  # 4 semimembranosus voxels called semitendinosus
    rows = {r["region"]: r for r in muscle_segmentation(pred, truth, "thigh", schema, schema,
                                                        (1.0, 1.0, 1.0), graded=True)}
    assert rows["thigh_semimembranosus_right"]["dice"] == pytest.approx(2 * 8 / (8 + 12))
    assert rows["thigh_semitendinosus_right"]["dice"] == pytest.approx(2 * 12 / (16 + 12))
    assert np.isnan(rows["thigh_gracilis_left"]["dice"])  # absent from both: not scored
    assert len(rows) == 2 * sum(len(m) for m in MUSCLES["thigh"].values())


@pytest.fixture(scope="module")
def muscle_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("mus") / "cohort"
    return generate_cohort(root, subjects=4, preset="tiny", seed=2, workers=1, label_level="muscle",
                           grade_scale="extent4", disease={"groups": {"DM": 1, "IMNM": 1}})


def test_evaluate_scores_every_muscle(muscle_cohort, tmp_path):
    from nxp2seg.evaluate import main

    pred = fake_predictions(muscle_cohort, tmp_path / "pred", rater="A", scale="extent4", muscle=True)
    cohort = Cohort.open(muscle_cohort)
    for cid in cohort.case_ids:  # a perfect segmentation: the truth itself
        shutil.copy(cohort.label_path(cid), pred / cid / "seg.nii.gz")
    out = tmp_path / "eval"
    assert main([f"predictions={pred}", f"cohort={muscle_cohort}", f"output={out}", "bootstrap=50",
                 "report=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    dice = summary["segmentation"]["dice"]
    assert dice["thigh_semimembranosus_right"] == pytest.approx(1.0)
    assert dice["thigh_anterior_right"] == pytest.approx(1.0)  # the compartments beside them
    seg = pd.read_csv(out / "segmentation.csv")
    assert seg.loc[seg["graded"], "region"].str.contains("semimembranosus").any()
    assert not seg.loc[seg["graded"], "region"].isin(["thigh_anterior_right"]).any()
    by_region = pd.read_csv(out / "agreement_by_region.csv").set_index("region")
    assert "thigh_semimembranosus_right" in by_region.index
    # each muscle also with both sides together: its rows of region_grades.csv, pooled
    grades = pd.read_csv(out / "region_grades.csv")
    both = grades[grades["region"].isin(["thigh_semimembranosus_right", "thigh_semimembranosus_left"])]
    sm = by_region.loc["thigh_semimembranosus"]
    assert sm["n"] == len(both) == by_region.loc["thigh_semimembranosus_right", "n"] * 2
    assert sm["kappa_quadratic_model_vs_mean"] == pytest.approx(cohen_kappa_score(
        both["edema_grade_int_model"], both["edema_grade_int_mean"], weights="quadratic", labels=[0, 1, 2, 3]))
    assert sm["mean_grade_model"] == pytest.approx(both["edema_grade_model"].mean())
    thighs = sum(c.endswith("_thigh") for c in cohort.case_ids)
    assert sm["dice_mean"] == pytest.approx(1.0) and sm["n_segmented"] == 2 * thighs
    # the 'model' is reader A: its kappa with the readers' mean is high but below 1
    assert 0.5 < summary["edema"]["kappa_quadratic"]["model_vs_mean"] <= 1.0
    assert summary["station_score"]["n_cases"] == len(cohort.case_ids)
