"""``analyze`` from grades alone: seed paper 000's description and tables, paper 004's comparison.

Cohorts are the phantom's tables without images (``helpers_analysis``): the
truth's frequencies must come back exactly, the readers' analysis must keep the
phantom's signs, and the mixed model must recover the specified direction of
every muscle whose groups differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_analysis import fake_predictions, make_table_cohort

from nxp2seg.phantom.clinical import ClinicalConfig
from nxp2seg.phantom.disease import DiseaseConfig
from nxp2seg.phantom.muscles import specified_directions

GROUPS = {"DM": 11, "IMNM": 14}


def _analyze(*args) -> int:
    from nxp2seg.analyze import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def cohort48(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("c48") / "cohort"
    return root, make_table_cohort(root, 48)


@pytest.fixture(scope="module")
def cohort25(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("m25") / "cohort"
    return root, make_table_cohort(root, 25, muscle=True, groups=GROUPS, scale="extent4")


def test_the_truths_frequencies_come_back_exactly(cohort48, tmp_path):
    root, _ = cohort48
    out = tmp_path / "truth"
    assert _analyze(f"cohort={root}", f"output={out}", "source=truth", "figures=false") == 0
    inv = pd.read_csv(out / "involvement.csv").set_index(["station", "compartment"])
    truth = pd.read_csv(root / "truth" / "grades.csv")
    truth["compartment"] = truth["region"].str.split("_").str[1]
    for (station, comp), row in inv.iterrows():
        sel = truth[truth["station"] == station] if comp == "any" else \
            truth[(truth["station"] == station) & (truth["compartment"] == comp)]
        for finding, col in (("edema", "edema_grade"), ("fat", "fat_grade"),
                             ("fascial_edema", "fascial_edema"), ("subcutaneous_edema", "subcutaneous_edema")):
            expected = sel.assign(v=sel[col].astype(float) > 0).groupby("subject_id")["v"].any().sum()
            assert row[f"{finding}_n"] == expected, (station, comp, finding)
    pats = pd.read_csv(out / "pattern_counts.csv").set_index(["station", "pattern"])["n"]
    true_pats = pd.read_csv(root / "truth" / "patterns.csv").groupby(["station", "pattern"]).size()
    for key, n in true_pats.items():
        assert pats[key] == n
    scores = pd.read_csv(out / "scores_by_pattern.csv").set_index(["station", "pattern"])
    tp = pd.read_csv(root / "truth" / "patterns.csv")
    for (st, pat), grp in tp.groupby(["station", "pattern"]):
        assert scores.loc[(st, pat), "mean"] == pytest.approx(grp["station_score"].mean())
        assert scores.loc[(st, pat), "sd"] == pytest.approx(grp["station_score"].std(ddof=1), nan_ok=True)
    # PHANTOM.md's thigh scores: patchy 6.9 +- 4.9, mixed 17.9 +- 5.0, diffuse 24.6 +- 2.2 (48 subjects: loosely)
    for pat, mean in (("patchy", 6.9), ("mixed", 17.9), ("diffuse", 24.6)):
        assert abs(scores.loc[("thigh", pat), "mean"] - mean) < 3.0, pat


def test_readers_analysis_writes_the_seed_000_set(cohort48, tmp_path):
    root, _ = cohort48
    out = tmp_path / "readers"
    assert _analyze(f"cohort={root}", f"output={out}", "group_by=diffuse_lesion", "bootstrap=100",
                    "variable_figures=false") == 0
    for name in ("involvement", "pattern_counts", "scores_by_pattern", "symmetry", "thigh_vs_calf",
                 "reader_agreement", "normality", "correlations", "table1", "groups", "table2"):
        assert (out / f"{name}.csv").read_bytes().startswith("\ufeff".encode()), name
        assert (out / f"{name}.md").read_text().startswith("## "), name
    for fmt in ("svg", "pdf", "png"):
        assert (out / "figures" / f"heatmap.{fmt}").stat().st_size > 1000
    from PIL import Image

    assert round(Image.open(out / "figures" / "heatmap.png").info["dpi"][0]) == 300
    page = (out / "analysis.html").read_text()
    assert page.count("data:image/svg+xml;base64,") >= 1 and "Table 1" in page and "Table 2" in page
    assert "±" in (out / "table2.csv").read_text(encoding="utf-8-sig")
    # Table 1: the phantom's specified signs (PHANTOM.md, "Clinical table") from the readers' scores
    t1 = pd.read_csv(out / "correlations.csv").set_index("variable")["r"]
    expected = {"age": -1, **{k: np.sign(v) for k, v in ClinicalConfig().target_spearman.items() if v}}
    for var, sign in expected.items():
        assert np.sign(t1[var]) == sign, (var, t1[var])
    t2 = pd.read_csv(out / "table2.csv")
    assert list(t2.columns[1:3]) == [c for c in t2.columns if "(n = " in c]
    assert t2.columns[1].startswith("With diffuse lesion (n = ")  # 'with' first, as papers print it
    summary = json.loads((out / "summary.json").read_text())
    ra = {r["indicator"]: r for r in summary["describe"]["reader_agreement"]}
    assert set(ra) == {"edema", "fat", "fascial_edema", "subcutaneous_edema", "pattern"}
    assert 0.7 < ra["edema"]["kappa_quadratic"] < 0.95 and ra["edema"]["kappa_ci_low"] < ra["edema"]["kappa"]
    assert summary["source"] == "readers" and summary["n_subjects"] == 48
    tvc = {r["finding"]: r for r in summary["describe"]["thigh_vs_calf"]}
    assert tvc["fascial_edema"]["mcnemar_p"] is not None and tvc["fascial_edema"]["chi_square_p"] is not None


def test_two_groups_per_muscle_recover_the_specified_directions(cohort25, tmp_path):
    root, subjects = cohort25
    out = tmp_path / "compare"
    excluded = [s.subject_id for s in subjects[:3]]
    assert _analyze(f"cohort={root}", f"output={out}", "compare.by=diagnosis", "describe=false",
                    "compare.groups=[DM,IMNM]", f"compare.exclude=[{','.join(excluded)}]",
                    "variable_figures=false") == 0
    summary = json.loads((out / "summary.json").read_text())["compare"]
    assert summary["level"] == "muscle" and summary["primary"]["sizes"] == {"DM": 11, "IMNM": 14}
    directions = specified_directions(DiseaseConfig(groups=GROUPS), ("DM", "IMNM"))
    for part in ("primary", "secondary"):
        contrasts = {c["item"]: c for c in summary[part]["contrasts"]}
        assert len(contrasts) == 13
        for muscle, sign in directions.items():
            if sign:
                assert np.sign(contrasts[muscle]["estimate"]) == sign, (part, muscle)
                if part == "primary":  # 25 subjects: every specified difference significant
                    assert contrasts[muscle]["p_adjusted"] < 0.05, muscle
        pooled = summary[part]["pooled"]
        assert pooled["p"] is not None and pooled["se"] > 0 and pooled["ci_low"] < pooled["estimate"]
        assert summary[part]["diagnostics"]["converged"]
    assert summary["secondary"]["excluded"] == sorted(excluded)
    assert summary["secondary"]["sizes"]["DM"] + summary["secondary"]["sizes"]["IMNM"] == 22
    for name in ("compare", "mixed_model", "compare_secondary", "mixed_model_secondary"):
        assert (out / f"{name}.md").is_file()
    for fig in ("compare_boxplots", "mixed_diagnostics", "compare_boxplots_secondary"):
        assert (out / "figures" / f"{fig}.svg").is_file()
    md = (out / "compare.md").read_text()
    assert "DM (n = 11), median [IQR]" in md and "Semimembranosus (SM)" in md


def test_the_model_path_reads_predict_tables_and_rolls_muscles_up(cohort25, tmp_path):
    root, _ = cohort25
    pred = fake_predictions(root, tmp_path / "pred", scale="extent4", muscle=True, noise=0.3)
    out = tmp_path / "model"
    assert _analyze(f"predictions={pred}", f"cohort={root}", f"output={out}", "compare.by=diagnosis",
                    "figures=false", "bootstrap=0") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "model" and summary["graded_level"] == "muscle"
    assert "reader_agreement" not in summary["describe"]  # the readers' agreement is the readers'
    inv = pd.read_csv(out / "involvement.csv")
    assert set(inv["compartment"]) == {"anterior", "medial", "posterior", "lateral", "any"}
    assert (out / "involvement_muscles.csv").is_file()
    contrasts = {c["item"]: c for c in summary["compare"]["primary"]["contrasts"]}
    assert contrasts["semimembranosus"]["estimate"] > 0 and contrasts["vastus_lateralis"]["estimate"] < 0


def test_bad_requests_exit_2_and_leave_nothing(cohort48, tmp_path, capsys):
    root, _ = cohort48
    out = tmp_path / "bad"
    assert _analyze(f"cohort={root}", f"output={out}", "compare.by=diagnosis") == 2
    assert "compare.by=diagnosis" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".bad.partial-*"))
    assert _analyze(f"cohort={root}", f"output={out}", "compare.by=sex", "compare.level=muscle") == 2
    assert "muscle" in capsys.readouterr().err
    assert _analyze(f"output={out}") == 2
    assert "cohort" in capsys.readouterr().err
    assert _analyze(f"cohort={root}", f"output={out}", "source=model") == 2
    assert "predictions" in capsys.readouterr().err
    assert _analyze(f"cohort={root}", f"output={out}", "normality=ks") == 2
    assert not out.exists()
