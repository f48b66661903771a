"""``nxp2seg.analyze``: p-values against SciPy on a hand-made table, the phantom's signs, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from nxp2seg.data.schema import default_compartment_schema, get_grade_scale
from nxp2seg.grading.tables import rater_mean_targets, scores_table

TOL = 1e-9


def _analyze(*args: str) -> int:
    from nxp2seg.analyze import main

    return main([*args])


@pytest.fixture
def tables(tmp_path) -> tuple[Path, Path]:
    """30 subjects: a normal score, a normal age, a skewed CK, sex F/M; one subject only in each table."""
    rng = np.random.default_rng(5)
    n = 30
    ids = [f"P{i:03d}" for i in range(n)]
    score = rng.normal(25, 8, n).round(1)
    scores = pd.DataFrame({"subject_id": ids + ["ONLY_SCORES"], "total_score": [*score, 10.0],
                           "thigh_score": [*(score / 2), 5.0], "calf_score": [*(score / 2), 5.0]})
    clinical = pd.DataFrame({
        "subject_id": ["ONLY_CLINICAL", *ids],
        "age": [50.0, *(45 - 0.4 * score + rng.normal(0, 6, n)).round(1)],
        "ck": [100.0, *np.exp(5 + 0.08 * score + rng.normal(0, 1.0, n)).round(0)],
        "sex": ["F", *rng.choice(["F", "M"], n)]})
    s, c = tmp_path / "scores.csv", tmp_path / "clinical.csv"
    scores.to_csv(s, index=False)
    clinical.to_csv(c, index=False)
    return s, c


def _joined(s: Path, c: Path) -> pd.DataFrame:
    return pd.read_csv(s).merge(pd.read_csv(c), on="subject_id")


def test_correlations_and_group_tests_match_scipy(tables, tmp_path):
    s, c = tables
    out = tmp_path / "out"
    assert _analyze(f"scores={s}", f"clinical={c}", f"output={out}", "group_by=sex") == 0
    data = _joined(s, c)
    corr = pd.read_csv(out / "correlations.csv").set_index("variable")
    assert set(corr["test"]) >= {"pearson", "spearman", "point-biserial"}
    for var, row in corr.iterrows():
        x = (data[var] == "M").astype(float) if var == "sex" else data[var]
        fn = sps.spearmanr if row["test"] == "spearman" else sps.pearsonr
        ref = fn(data["total_score"], x)
        assert row["r"] == pytest.approx(ref.statistic, abs=TOL), var
        assert row["p"] == pytest.approx(ref.pvalue, abs=TOL), var
        assert row["n"] == len(data)
    groups = pd.read_csv(out / "groups.csv").set_index("variable")
    assert set(groups["test"]) >= {"welch t-test", "mann-whitney u"}
    f, m = data[data["sex"] == "F"], data[data["sex"] == "M"]
    for var, row in groups.iterrows():
        if row["test"] == "welch t-test":
            ref = sps.ttest_ind(f[var], m[var], equal_var=False)
        else:
            ref = sps.mannwhitneyu(f[var], m[var], alternative="two-sided")
        assert row["p"] == pytest.approx(ref.pvalue, abs=TOL), var
    summary = json.loads((out / "summary.json").read_text())["clinical"]
    assert summary["n_subjects"] == 30 and summary["n_scores_only"] == 1 and summary["n_clinical_only"] == 1
    assert summary["group_by"]["sizes"] == {"sex=F": int((data["sex"] == "F").sum()),
                                            "sex=M": int((data["sex"] == "M").sum())}
    figures = json.loads((out / "summary.json").read_text())["figures"]
    assert len(figures) == 3 * 3 and all((out / f).is_file() for f in figures)  # svg, pdf, png
    for name in ("normality", "correlations", "groups"):
        assert "| variable |" in (out / f"{name}.md").read_text().lower()
    assert "Correlation of MRI total score" in (out / "analysis.md").read_text()
    assert "Table 2: clinical data by Sex" in (out / "analysis.md").read_text()
    assert (out / "correlations.csv").read_bytes().startswith("\ufeff".encode())  # Excel: UTF-8 BOM


def test_a_numeric_group_column_is_split_at_its_median(tables, tmp_path):
    s, c = tables
    out = tmp_path / "out"
    assert _analyze(f"scores={s}", f"clinical={c}", f"output={out}", "group_by=age", "figures=false") == 0
    summary = json.loads((out / "summary.json").read_text())["clinical"]
    g = summary["group_by"]
    assert g["groups_column"] == "age_above_median" and "median" in g["rule"]
    assert sum(g["sizes"].values()) == 30 and abs(np.subtract(*g["sizes"].values())) <= 1
    assert "age" not in [r["variable"] for r in g["comparison"]]


def test_unusable_inputs_exit_2_naming_file_column_rows(tables, tmp_path, capsys):
    s, c = tables
    out = f"output={tmp_path / 'out'}"
    assert _analyze("--help") == 0
    capsys.readouterr()
    assert _analyze(f"scores={tmp_path / 'missing.csv'}", f"clinical={c}", out) == 2
    assert "missing.csv" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    pd.DataFrame({"subject_id": ["Z1", "Z2"], "age": [1, 2]}).to_csv(other, index=False)
    assert _analyze(f"scores={s}", f"clinical={other}", out) == 2
    assert "no subject is in both" in capsys.readouterr().err
    bad = pd.read_csv(s)
    bad["total_score"] = bad["total_score"].astype(object)
    bad.loc[3, "total_score"] = "high"
    bad.to_csv(tmp_path / "bad_scores.csv", index=False)
    assert _analyze(f"scores={tmp_path / 'bad_scores.csv'}", f"clinical={c}", out) == 2
    err = capsys.readouterr().err
    assert "total_score" in err and "'high'" in err and "[3]" in err
    clin = pd.read_csv(c)
    clin["ck"] = clin["ck"].astype(object)
    clin.loc[7, "ck"] = ">1000"
    clin.to_csv(tmp_path / "bad_clinical.csv", index=False)
    assert _analyze(f"scores={s}", f"clinical={tmp_path / 'bad_clinical.csv'}", out) == 2
    err = capsys.readouterr().err
    assert "ck" in err and ">1000" in err and "[7]" in err and "bad_clinical.csv" in err
    assert _analyze(f"scores={s}", f"clinical={c}", out, "group_by=nothing") == 2
    assert "group_by=nothing" in capsys.readouterr().err
    assert _analyze(f"scores={s}", f"clinical={c}", out, "score=nope") == 2
    assert "nope" in capsys.readouterr().err


def test_phantom_readers_scores_recover_the_specified_signs(tmp_path):
    """PHANTOM.md "Clinical table": the signs of the Spearman targets, from the readers' total score."""
    from nxp2seg.phantom.clinical import ClinicalConfig, simulate_clinical
    from nxp2seg.phantom.disease import sample_subjects
    from nxp2seg.phantom.readers import simulate_readers

    subjects = sample_subjects(48, 0)
    grades, _ = simulate_readers(subjects, 0)
    clinical = simulate_clinical(subjects, 0)
    cases = pd.DataFrame([{"case_id": st.case_id, "subject_id": s.subject_id, "station": name}
                          for s in subjects for name, st in s.stations.items()])
    scale = get_grade_scale("beltrame6")
    targets = rater_mean_targets(grades, scale)
    _, readers = scores_table(targets, default_compartment_schema(), scale, cases=cases)
    readers.to_csv(tmp_path / "scores.csv", index=False)
    clinical.to_csv(tmp_path / "clinical.csv", index=False)
    out = tmp_path / "out"
    assert _analyze(f"scores={tmp_path / 'scores.csv'}", f"clinical={tmp_path / 'clinical.csv'}",
                    f"output={out}", "figures=false") == 0
    r = pd.read_csv(out / "correlations.csv").set_index("variable")["r"]
    expected = {"age": -1, **{k: np.sign(v) for k, v in ClinicalConfig().target_spearman.items() if v}}
    assert len(expected) >= 14
    for var, sign in expected.items():
        assert np.sign(r[var]) == sign, (var, r[var])
