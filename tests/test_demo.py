"""The README's main job, end to end on a tiny cohort."""

from __future__ import annotations

import json

import pytest

from nxp2seg.demo import main, run_demo


@pytest.mark.slow
def test_demo_runs_generate_verify_train(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out=out, subjects=4, preset="tiny", seed=1, train={"experiment": "smoke"})
    assert (out / "cohort" / "dataset.json").exists()
    assert result["figure"].exists()
    bundle = result["bundle"]
    assert (bundle / "weights.safetensors").exists()
    assert "test" in json.loads((bundle / "validation.json").read_text())
    cases = (result["predictions"] / "cases.csv").read_text().splitlines()
    assert len(cases) == 3 and all(",ok," in row for row in cases[1:])  # the test subject's 2 exams
    assert "2 ok" in result["predict_summary"]
    assert result["report"].exists() and result["summary"].exists()
    # a rerun reuses the cohort and the bundle
    again = run_demo(out=out, subjects=4, preset="tiny", seed=1, train={"experiment": "smoke"})
    assert again["bundle"] == bundle


def test_demo_rejects_unknown_options(capsys):
    assert main(["colour=blue"]) == 2
    assert "unknown demo options" in capsys.readouterr().err
