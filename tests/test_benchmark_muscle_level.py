"""scripts/benchmark_muscle_level.py: the commands it runs and what it gathers (hand-made outputs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark_muscle_level.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("benchmark_muscle_level", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stages_are_the_default_commands(bench, tmp_path):
    st = dict(bench.stages("python", tmp_path, []))
    # the training is the default command: only the cohort and the output folder
    assert st["train_m"] == ["python", "-m", "nxp2seg.train", f"data.cohort={tmp_path / 'p25'}",
                             f"output_dir={tmp_path / 'p25_model'}"]
    assert "label_level=muscle" in st["phantom_m"] and "label_level=compartment" in st["phantom_c"]
    assert "disease.groups={DM: 11, IMNM: 14}" in st["phantom_m"]
    # the muscle model is scored against both readers' cohorts, on the test subjects only
    assert f"cohort={tmp_path / 'p25c'}" in st["eval_m_test_vs_c"]
    assert "split=test" in st["eval_m_test"]
    # the readers' analysis needs no model; the model's reads the predictions
    assert not any(a.startswith("predictions=") for a in st["an_m_readers"])
    assert f"predictions={tmp_path / 'p25_pred'}" in st["an_m_model"]
    assert "compare.exclude=[P001,P002,P003]" in st["an_m_model"]
    assert "--phantom" in st["cmp_m"] and "--phantom" not in st["cmp_c"]
    names = [n for n, _ in bench.stages("python", tmp_path, ["trainer.max_epochs=2"])]
    assert names.index("cmp_m") < names.index("train_c")   # the muscle level finishes first
    assert dict(bench.stages("python", tmp_path, ["trainer.max_epochs=2"]))["train_c"][-1] == \
        "trainer.max_epochs=2"


def test_gather_reads_the_figures(bench, tmp_path):
    ev = tmp_path / "eval_m_test"
    ev.mkdir()
    summary = {"n_cases": 10, "n_subjects": 5, "edema": {"kappa_quadratic": {"model_vs_mean": 0.7}},
               "segmentation": {"dice_mean": 0.5, "dice": {
                   "thigh_anterior_right": 0.8, "thigh_anterior_left": 0.6,
                   "calf_tibialis_anterior_right": 0.1}}}   # a muscle: not a compartment
    (ev / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame({"region": ["thigh_gracilis_right", "thigh_gracilis_left", "thigh_gracilis"],
                  "n": [5, 5, 10], "dice_mean": [0.4, 0.6, 0.5],
                  "kappa_quadratic_model_vs_mean": [0.1, 0.2, 0.3]}).to_csv(
        ev / "agreement_by_region.csv", index=False)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "train_m.json").write_text(json.dumps({"wall_s": 10.0, "cpu_s": 15.0}))
    (tmp_path / "cmp_m.json").write_text(json.dumps({"primary": {"items": []}}))
    out = bench.gather(tmp_path, [])
    fig = out["muscle_model"]["test_vs_muscle_readers"]
    assert fig["edema.kappa_quadratic.model_vs_mean"] == 0.7 and fig["n_subjects"] == 5
    assert fig["compartment_dice_mean"] == pytest.approx(0.7) and fig["compartment_dice_n"] == 2
    assert fig["per_muscle"] == [{"region": "thigh_gracilis", "n": 10, "dice_mean": 0.5,
                                  "kappa_quadratic_model_vs_mean": 0.3,
                                  "kappa_quadratic_rater_vs_rater": None, "mean_grade_model": None,
                                  "mean_grade_readers": None}]
    assert out["training_time"]["m"]["cpu_s"] == 15.0 and "c" not in out["training_time"]
    assert out["cmp_m"] == {"primary": {"items": []}} and "compartment_model" not in out
