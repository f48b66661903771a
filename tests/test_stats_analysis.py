"""Statistics of the papers' analyses against reference values.

Lilliefors (statsmodels), the papers' own chi-square p-values, McNemar by hand,
MixedLM against lme4's published fit of ``dietox`` and a balanced design checked
by hand, kappa's asymptotic SE by the Fleiss-Cohen-Everitt formula, and the
descriptive counts on a table small enough to count by eye.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels
from scipy import stats as sps
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.diagnostic import lilliefors as sm_lilliefors
from statsmodels.stats.multitest import multipletests

from nxp2seg.stats.cohort import normality_table
from nxp2seg.stats.describe import (
    involvement_table,
    pattern_counts,
    score_by_pattern,
    site_findings,
    symmetry_table,
)
from nxp2seg.stats.mixed import compare_groups_mixed, fit_mixed
from nxp2seg.stats.paired import mcnemar_test, paired_sites_table, two_proportions_chi_square
from nxp2seg.stats.reader_agreement import kappa_with_se, reader_agreement
from nxp2seg.stats.tables import median_iqr
from nxp2seg.stats.variables import lilliefors, normality

TOL = 1e-9


# --------------------------------------------------------------------------- normality


def test_lilliefors_is_statsmodels_and_prints_as_spss():
    rng = np.random.default_rng(1)
    for x in (rng.normal(size=40), rng.exponential(size=40), rng.normal(size=12)):
        d, p = sm_lilliefors(x, dist="norm", pvalmethod="table")
        res = lilliefors(x)
        assert res["D"] == pytest.approx(d, abs=TOL) and res["p"] == pytest.approx(min(p, 1.0), abs=TOL)
        assert res["p_spss"] == ("0.200*" if p >= 0.2 else ("<0.001" if p < 0.001 else f"{p:.3f}"))
    assert math.isnan(lilliefors([1.0, 2.0, 3.0])["p"])
    skewed = np.exp(np.random.default_rng(2).normal(size=60))
    assert not normality(skewed, test="lilliefors")["normal"]
    with pytest.raises(ValueError, match="normality test"):
        normality(skewed, test="ks")


def test_normality_table_reports_both_tests_and_decides_by_the_chosen_one():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"a": rng.normal(size=30), "b": np.exp(rng.normal(size=30)), "s": ["x", "y"] * 15})
    t = normality_table(df, test="lilliefors").set_index("variable")
    assert t.loc["a", "test"] == "lilliefors"
    assert t.loc["a", "shapiro_p"] == pytest.approx(sps.shapiro(df["a"]).pvalue, abs=TOL)
    assert t.loc["b", "ks_D"] == pytest.approx(sm_lilliefors(df["b"], pvalmethod="table")[0], abs=TOL)
    assert t.loc["a", "p"] == t.loc["a", "ks_p"] and t.loc["s", "normal"] is None


def test_median_iqr_styles_and_spss_quantiles():
    v = [1, 2, 3, 4, 5, 6, 7, 8]
    assert median_iqr(v, 2) == "4.50 (2.75–6.25)"  # R type 7
    assert median_iqr(v, 2, brackets=True, method="weibull") == "4.50 [2.25–6.75]"  # (n + 1) p


# --------------------------------------------------------------------------- paired proportions


def test_chi_square_reproduces_the_papers_p_values():
    """Seed paper 000: fascial edema thigh 24/48 vs calf 11/48, p = 0.006; subcutaneous 15 vs 7, 0.052."""
    fascial = two_proportions_chi_square(24, 48, 11, 48)
    assert round(fascial["p"], 3) == 0.006
    ref = sps.chi2_contingency([[24, 24], [11, 37]], correction=False)
    assert fascial["statistic"] == pytest.approx(ref[0], abs=TOL) and fascial["p"] == pytest.approx(ref[1], abs=TOL)
    assert round(two_proportions_chi_square(15, 48, 7, 48)["p"], 3) == 0.052
    yates = two_proportions_chi_square(24, 48, 11, 48, correction=True)
    assert yates["p"] == pytest.approx(sps.chi2_contingency([[24, 24], [11, 37]])[1], abs=TOL)


def test_mcnemar_by_hand_and_against_statsmodels():
    # 10 both, 14 thigh only, 1 calf only, 23 neither: exact p = 2 * P(X <= 1 | 15, 1/2) = 32 / 2**15
    a = np.r_[np.ones(10), np.ones(14), np.zeros(1), np.zeros(23)]
    b = np.r_[np.ones(10), np.zeros(14), np.ones(1), np.zeros(23)]
    res = mcnemar_test(a, b)
    assert (res["b"], res["c"], res["n"]) == (14, 1, 48)
    assert res["p"] == pytest.approx(32 / 2**15, abs=TOL)
    approx = mcnemar_test(a, b, exact=False)
    assert approx["p"] == pytest.approx(mcnemar([[10, 14], [1, 23]], exact=False).pvalue, abs=TOL)
    assert approx["statistic"] == pytest.approx((abs(14 - 1) - 1) ** 2 / 15, abs=TOL)
    assert math.isnan(mcnemar_test([1, 0, np.nan], [1, 0, 1])["p"])  # no discordant pair
    table = paired_sites_table(pd.DataFrame({"t": a, "c": b}), {"fascial_edema": ("t", "c")})
    row = table.iloc[0]
    assert row["site_a"] == "24 (50.0%)" and row["site_b"] == "11 (22.9%)"
    assert row["mcnemar_p"] == pytest.approx(res["p"]) and round(row["chi_square_p"], 3) == 0.006


# --------------------------------------------------------------------------- mixed models


def _dietox() -> pd.DataFrame:
    path = Path(statsmodels.__file__).parent / "regression" / "tests" / "results" / "dietox.csv"
    if not path.exists():
        pytest.skip("statsmodels' test data (dietox.csv) are not installed")
    return pd.read_csv(path)


def test_fit_mixed_reproduces_lme4_on_dietox():
    """R: lmer(Weight ~ Time + (1 | Pig), data = dietox) (values from statsmodels' test suite)."""
    fit = fit_mixed(_dietox(), "Weight ~ Time", "Pig")
    assert fit.fixed.to_numpy() == pytest.approx([15.723523, 6.942505], rel=1e-5)
    assert fit.result.bse_fe.to_numpy() == pytest.approx([0.78805374, 0.03338727], rel=1e-4)
    d = fit.diagnostics()
    assert d["residual_variance"] == pytest.approx(11.36692, rel=1e-5)
    assert d["subject_variance"] == pytest.approx(40.39395, rel=1e-4)
    assert d["log_likelihood"] == pytest.approx(-2404.775, rel=1e-5)
    assert d["converged"] and d["n_subjects"] == 72 and d["method"] == "REML"
    c = fit.contrast(pd.Series({"Time": 1.0}))
    assert c["z"] == pytest.approx(6.942505 / 0.03338727, rel=1e-4) and c["p"] < 1e-300 + 1e-12


def _balanced(seed: int = 0, n: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    shift = {"a": 1.5, "b": -1.5, "c": 0.0, "d": 1.0}
    rows = []
    for s in range(2 * n):
        g, u = ("X" if s < n else "Y"), rng.normal(0, 0.5)
        for item, d in shift.items():
            rows.append({"subject_id": f"S{s}", "group": g, "muscle": item,
                         "grade": 1.5 + u + (d if g == "Y" else 0.0) + rng.normal(0, 0.6)})
    return pd.DataFrame(rows)


def test_mixed_contrasts_in_a_balanced_design_by_hand():
    """Balanced, complete: each contrast is the difference of cell means, with
    SE sqrt((s_u^2 + s^2)(1/n1 + 1/n2)); the pooled effect is the difference of subject means
    with SE sqrt((s_u^2 + s^2 / M)(1/n1 + 1/n2))."""
    df = _balanced()
    res = compare_groups_mixed(df, groups=("X", "Y"), correction="holm")
    cells = df.groupby(["muscle", "group"])["grade"].mean().unstack()
    c = res.contrasts.set_index("item")
    assert c["estimate"].to_numpy() == pytest.approx((cells["Y"] - cells["X"]).to_numpy(), abs=1e-6)
    d = res.diagnostics
    se = math.sqrt((d["subject_variance"] + d["residual_variance"]) * (2 / 12))
    assert c["se"].to_numpy() == pytest.approx(se, rel=1e-5)
    assert c.loc["a", "p"] == pytest.approx(2 * sps.norm.sf(abs(c.loc["a", "estimate"]) / se), rel=1e-4)
    assert c["p_adjusted"].to_numpy() == pytest.approx(multipletests(c["p"], method="holm")[1])
    assert list(c["higher_in"]) == ["Y", "X", "X", "Y"]
    subj = df.groupby(["subject_id", "group"])["grade"].mean().groupby("group").mean()
    assert res.pooled["estimate"] == pytest.approx(subj["Y"] - subj["X"], abs=1e-6)
    pd_ = res.pooled_diagnostics
    pooled_se = math.sqrt((pd_["subject_variance"] + pd_["residual_variance"] / 4) * (2 / 12))
    assert res.pooled["se"] == pytest.approx(pooled_se, rel=1e-5)
    assert res.interaction["df"] == 3 and res.interaction["p"] < 1e-6
    assert len(res.residuals) == len(df) and len(res.subject_effects) == 24


def test_mixed_handles_a_boundary_fit_and_refuses_bad_input():
    rng = np.random.default_rng(4)
    df = pd.DataFrame({"subject_id": np.repeat([f"S{i}" for i in range(20)], 3),
                       "group": np.repeat(["X", "Y"], 30), "muscle": list("abc") * 20,
                       "grade": rng.normal(size=60)})  # no subject effect at all
    res = compare_groups_mixed(df)
    assert res.diagnostics["converged"] and res.diagnostics["subject_variance"] < 0.05
    with pytest.raises(ValueError, match="two groups"):
        compare_groups_mixed(df.assign(group="X"))
    with pytest.raises(ValueError, match="correction"):
        compare_groups_mixed(df, correction="sidak-ish")
    one_sided = compare_groups_mixed(df[~((df["muscle"] == "c") & (df["group"] == "Y"))])
    assert math.isnan(one_sided.contrasts.set_index("item").loc["c", "p"])


# --------------------------------------------------------------------------- readers' kappa


def _fce_se(table: np.ndarray) -> float:
    """Fleiss, Cohen & Everitt (1969): large-sample SE of unweighted kappa (not under the null)."""
    n = table.sum()
    p = table / n
    r, c = p.sum(1), p.sum(0)
    po, pe = np.trace(p), float(r @ c)
    k = (po - pe) / (1 - pe)
    a = sum(p[i, i] * (1 - (r[i] + c[i]) * (1 - k)) ** 2 for i in range(len(p)))
    b = (1 - k) ** 2 * sum(p[i, j] * (c[i] + r[j]) ** 2 for i in range(len(p)) for j in range(len(p)) if i != j)
    return math.sqrt((a + b - (k - pe * (1 - k)) ** 2) / (n * (1 - pe) ** 2))


def test_kappa_with_asymptotic_se():
    a = np.r_[np.zeros(20), np.zeros(5), np.ones(10), np.ones(15)]
    b = np.r_[np.zeros(20), np.ones(5), np.zeros(10), np.ones(15)]
    res = kappa_with_se(a, b, [0, 1])
    assert res["kappa"] == pytest.approx(0.4, abs=TOL)  # hand: po .7, pe .5
    assert res["se"] == pytest.approx(_fce_se(np.array([[20, 5], [10, 15]], float)), rel=1e-9)
    assert res["ci_low"] == pytest.approx(0.4 - 1.959963984540054 * res["se"], rel=1e-6)
    rng = np.random.default_rng(5)
    x = rng.integers(0, 4, 80)
    y = np.clip(x + rng.integers(-1, 2, 80), 0, 3)
    q = kappa_with_se(x, y, [0, 1, 2, 3], weights="quadratic")
    assert q["kappa"] == pytest.approx(cohen_kappa_score(x, y, weights="quadratic"), abs=TOL)


def test_reader_agreement_per_indicator_from_the_grades_alone():
    rng = np.random.default_rng(6)
    cases = pd.DataFrame({"case_id": [f"c{i}" for i in range(30)],
                          "subject_id": [f"s{i // 2}" for i in range(30)]})
    rows = []
    for cid in cases["case_id"]:
        for region in ("r1", "r2", "r3"):
            g, f = int(rng.integers(0, 6)), int(rng.integers(0, 5))
            fl = int(rng.random() < 0.3)
            for rater in ("A", "B"):
                move = int(rng.random() < 0.3)
                rows.append({"case_id": cid, "rater": rater, "region": region,
                             "edema_grade": int(np.clip(g + move, 0, 5)), "fat_grade": f,
                             "fascial_edema": fl, "subcutaneous_edema": fl ^ move})
    grades = pd.DataFrame(rows)
    pats = pd.DataFrame({"case_id": np.repeat(cases["case_id"], 2), "rater": ["A", "B"] * 30,
                         "pattern": rng.choice(["patchy", "mixed"], 60)})
    t = reader_agreement(grades, pats, cases, 5, n_boot=200).set_index("indicator")
    assert list(t.index) == ["edema", "fat", "fascial_edema", "subcutaneous_edema", "pattern"]
    a, b = grades[grades["rater"] == "A"], grades[grades["rater"] == "B"]
    assert t.loc["edema", "kappa"] == pytest.approx(
        cohen_kappa_score(a["edema_grade"], b["edema_grade"], labels=range(6)), abs=TOL)
    assert t.loc["edema", "kappa_quadratic"] == pytest.approx(
        cohen_kappa_score(a["edema_grade"], b["edema_grade"], labels=range(6), weights="quadratic"), abs=TOL)
    assert t.loc["fat", "kappa"] == pytest.approx(1.0) and t.loc["fascial_edema", "exact_agreement"] == 1.0
    assert t.loc["edema", "n_items"] == 90 and t.loc["edema", "n_subjects"] == 15
    assert t.loc["edema", "kappa_boot_low"] < t.loc["edema", "kappa"] < t.loc["edema", "kappa_boot_high"]
    assert t.loc["pattern", "n_items"] == 30 and t.loc["edema", "raters"] == "A vs B"


# --------------------------------------------------------------------------- descriptive tables


@pytest.fixture
def tiny_regions() -> tuple[pd.DataFrame, pd.DataFrame]:
    """3 subjects; thigh only for s3. Counted by eye below."""
    rows = []
    grades = {  # (subject, station): {(compartment, side): (edema, fat, fascial, subcut)}
        ("s1", "thigh"): {("anterior", "right"): (2, 0, 1, 0), ("anterior", "left"): (2, 1, 1, 0),
                          ("medial", "right"): (0, 0, 0, 0), ("medial", "left"): (1, 0, 0, 0),
                          ("posterior", "right"): (0, 2, 0, 0), ("posterior", "left"): (0, 0, 0, 0)},
        ("s2", "thigh"): {("anterior", "right"): (3, 0, 0, 1), ("anterior", "left"): (1, 0, 0, 0),
                          ("medial", "right"): (0, 0, 0, 0), ("medial", "left"): (0, 0, 0, 0),
                          ("posterior", "right"): (0, 0, 0, 0), ("posterior", "left"): (0, 0, 0, 0)},
        ("s3", "thigh"): {(c, s): (0, 0, 0, 0) for c in ("anterior", "medial", "posterior")
                          for s in ("right", "left")},
        ("s1", "calf"): {(c, s): (1, 0, 0, 0) for c in ("anterior", "lateral", "posterior")
                         for s in ("right", "left")},
        ("s2", "calf"): {(c, s): (0, 0, 1, 0) for c in ("anterior", "lateral", "posterior")
                         for s in ("right", "left")},
    }
    for (subj, station), regs in grades.items():
        for (comp, side), (e, f, fa, sc) in regs.items():
            rows.append({"subject_id": subj, "case_id": f"{subj}_{station}", "station": station,
                         "compartment": comp, "side": side, "edema_grade": float(e),
                         "edema_grade_int": e, "edema_present": int(e > 0),
                         "fat_present": int(f > 0), "fascial_edema": fa,
                         "subcutaneous_edema": sc})
    cases = pd.DataFrame({"subject_id": ["s1", "s2", "s3", "s1", "s2"],
                          "station": ["thigh", "thigh", "thigh", "calf", "calf"],
                          "pattern": ["patchy", "mixed", "none", "patchy", "none"],
                          "station_score": [7, 4, 0, 6, 0]})
    return pd.DataFrame(rows), cases


def test_descriptive_counts_on_a_hand_made_table(tiny_regions):
    regions, cases = tiny_regions
    inv = involvement_table(regions).set_index(["station", "compartment"])
    assert inv.loc[("thigh", "anterior"), "edema"] == "2 (66.7%)"
    assert inv.loc[("thigh", "medial"), "edema"] == "1 (33.3%)"
    assert inv.loc[("thigh", "posterior"), "edema_n"] == 0 and inv.loc[("thigh", "posterior"), "fat_n"] == 1
    assert inv.loc[("thigh", "any"), "edema"] == "2 (66.7%)" and inv.loc[("thigh", "any"), "fat_n"] == 1
    assert inv.loc[("calf", "any"), "edema"] == "1 (50.0%)" and inv.loc[("calf", "lateral"), "fascial_edema_n"] == 1
    assert list(inv.index.get_level_values(1)[:4]) == ["anterior", "medial", "posterior", "any"]
    pc = pattern_counts(cases).set_index(["station", "pattern"])
    assert pc.loc[("thigh", "patchy"), "n_percent"] == "1 (33.3%)" and pc.loc[("calf", "diffuse"), "n"] == 0
    sp = score_by_pattern(cases).set_index(["station", "pattern"])
    assert sp.loc[("thigh", "mixed"), "mean_sd"] == "4.00 ± –" and sp.loc[("thigh", "diffuse"), "n"] == 0
    sym = symmetry_table(regions).set_index("station")
    # thigh: s1 medial one-sided (location asymmetric), grades differ by 1; s2 anterior 3 vs 1
    assert sym.loc["thigh", "n_subjects"] == 2 and sym.loc["thigh", "symmetric_location_n"] == 1
    assert sym.loc["thigh", "one_grade_apart_n"] == 1 and sym.loc["thigh", "more_apart_n"] == 1
    assert sym.loc["calf", "equal_grades"] == "1 (100.0%)"
    sites = site_findings(regions).set_index("subject_id")
    assert sites.loc["s1", "edema_thigh"] == 1 and sites.loc["s2", "edema_calf"] == 0
    assert math.isnan(sites.loc["s3", "edema_calf"]) and sites.loc["s2", "fascial_edema_calf"] == 1
