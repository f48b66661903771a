"""scripts/compare_analyses.py on two hand-made analyze summaries (figures checkable by hand)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_analyses.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("compare_analyses", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _summary(folder: Path, estimates: dict[str, tuple[float, float]], pooled: float) -> Path:
    contrasts = [{"item": k, "estimate": e, "p_adjusted": p} for k, (e, p) in estimates.items()]
    part = {"groups": ["DM", "IMNM"], "contrasts": contrasts,
            "pooled": {"estimate": pooled, "ci_low": pooled - 0.2, "ci_high": pooled + 0.2, "p": 0.5}}
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"compare": {"primary": part}}))
    return folder


def _phantom(folder: Path) -> Path:
    shift = {"DM": {"vastus_lateralis": 1.5, "semimembranosus": -1.5, "rectus_femoris": 0.8},
             "IMNM": {"vastus_lateralis": -1.0, "semimembranosus": 1.8, "rectus_femoris": 0.8}}
    (folder / "truth").mkdir(parents=True)
    (folder / "truth" / "config.json").write_text(json.dumps(
        {"disease": {"groups": {"DM": 11, "IMNM": 14}, "group_muscle_shift": shift}}))
    return folder


def test_directions_calls_and_specified_directions(script, tmp_path):
    readers = _summary(tmp_path / "r", {"vastus_lateralis": (-1.9, 0.001), "semimembranosus": (2.3, 0.0005),
                                        "rectus_femoris": (-0.7, 0.02)}, -0.1)
    model = _summary(tmp_path / "m", {"vastus_lateralis": (-1.0, 0.01), "semimembranosus": (-0.2, 0.6),
                                      "rectus_femoris": (0.1, 0.9)}, 0.3)
    out, js = tmp_path / "cmp.md", tmp_path / "cmp.json"
    assert script.main([str(readers), str(model), "--out", str(out), "--json", str(js),
                        "--phantom", str(_phantom(tmp_path / "cohort"))]) == 0
    rec = json.loads(js.read_text())["primary"]
    items = {r["item"]: r for r in rec["items"]}
    # by hand: VL same sign, same call; SM opposite signs, calls differ; RF opposite signs, calls differ
    assert rec["same_direction"] == 1 and rec["same_call"] == 1 and rec["n_items"] == 3
    assert rec["mean_abs_difference"] == pytest.approx((0.9 + 2.5 + 0.8) / 3)
    # the shifts: VL DM 1.5 > IMNM -1.0 -> DM higher (-1); SM IMNM higher (+1); RF equal (0)
    assert [items[m]["specified"] for m in ("vastus_lateralis", "semimembranosus", "rectus_femoris")] == [-1, 1, 0]
    assert items["vastus_lateralis"]["model_recover"] and not items["semimembranosus"]["model_recover"]
    assert items["semimembranosus"]["readers_recover"] and "model_recover" not in items["rectus_femoris"]
    text = out.read_text()
    assert "the readers recover the direction of 2, the model of 1 (1 with adjusted p < 0.05)" in text
    assert "| semimembranosus | 2.30 (<0.001) | -0.20 (0.600) | NO | NO | IMNM higher | yes | NO |" in text


def test_phantom_without_the_analysis_groups_is_a_clear_error(script, tmp_path):
    readers = _summary(tmp_path / "r", {"vastus_lateralis": (-1.9, 0.001)}, 0.0)
    cohort = _phantom(tmp_path / "cohort")
    cfg = json.loads((cohort / "truth" / "config.json").read_text())
    del cfg["disease"]["group_muscle_shift"]["IMNM"]
    (cohort / "truth" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match="group_muscle_shift has no"):
        script.main([str(readers), str(readers), "--phantom", str(cohort)])
