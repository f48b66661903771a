"""Cohort tables: variable kinds, normality, correlation table, group comparison.

Every p-value of the tables is recomputed independently: by the textbook
formula (Welch, Mann-Whitney normal approximation, Pearson chi-square, the
hypergeometric sum of Fisher's test) and/or with pingouin and SciPy directly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from nxp2seg.stats import (
    correlation_table,
    group_comparison,
    normality,
    normality_table,
    to_markdown,
    variable_type,
)

TOL = 1e-6


@pytest.fixture
def cohort() -> pd.DataFrame:
    """60 subjects: a normal score, normal and skewed labs, binaries, a category."""
    rng = np.random.default_rng(0)
    n = 60
    latent = rng.normal(size=n)
    score = 30 + 6 * latent
    df = pd.DataFrame(
        {
            "subject_id": [f"S{i:03d}" for i in range(n)],
            "total_score": score,
            "albumin": 36 - 2 * latent + rng.normal(0, 3, n),  # normal
            "ck": np.exp(7 + 0.6 * latent + rng.normal(0, 0.8, n)),  # log-normal
            "vas": np.clip(np.round(4 + latent + rng.normal(0, 1, n)), 1, 7),  # ordinal, ties
            "sex": rng.choice(["F", "M"], n),
            "dysphagia": (latent + rng.normal(0, 1, n) > 0.3).astype(int),
            "rare": (rng.random(n) < 0.08).astype(int),  # small expected counts
            "pattern": rng.choice(["none", "patchy", "mixed", "diffuse"], n),
        }
    )
    df["diffuse"] = (latent > 0.4).astype(int)
    df.loc[[4, 11], "ck"] = np.nan
    return df


# --------------------------------------------------------------------------- variables


def test_normality_matches_scipy_shapiro(cohort):
    for col in ("albumin", "ck"):
        values = cohort[col].dropna()
        res, ref = normality(cohort[col]), sps.shapiro(values)
        assert res["test"] == "shapiro" and res["n"] == len(values)
        assert res["W"] == pytest.approx(ref.statistic, abs=TOL)
        assert res["p"] == pytest.approx(ref.pvalue, abs=TOL)
        assert res["normal"] == (ref.pvalue >= 0.05)
    assert normality(cohort["albumin"])["normal"] and not normality(cohort["ck"])["normal"]
    assert not normality([1.0, 1.0, 1.0, 1.0])["normal"]
    assert np.isnan(normality([1.0, 2.0])["p"])


def test_variable_types(cohort):
    kinds = {c: variable_type(cohort[c]) for c in cohort.columns if c != "subject_id"}
    assert kinds == {
        "total_score": "continuous",
        "albumin": "continuous",
        "ck": "continuous",
        "vas": "continuous",
        "sex": "binary",
        "dysphagia": "binary",
        "rare": "binary",
        "pattern": "categorical",
        "diffuse": "binary",
    }
    assert variable_type(pd.Series([True, False, None])) == "binary"
    assert variable_type(pd.Series(["1.5", " 2", "3"])) == "continuous"
    assert variable_type(pd.Series([2, 2, np.nan])) == "constant"
    assert variable_type(pd.Series([np.nan, np.nan])) == "empty"


def test_variable_type_names_non_numeric_values():
    ck = pd.Series(["120", "340", "95", "n/a", "1100", "87", "400", ">1000"], name="ck")
    expected = "ck: non-numeric values ['n/a', '>1000'] in rows [3, 7]; clean or drop them"
    with pytest.raises(ValueError) as info:
        variable_type(ck)
    assert str(info.value) == expected
    with pytest.raises(ValueError, match="distinct text values"):
        variable_type(pd.Series([f"note {i}" for i in range(30)], name="comment"))


# --------------------------------------------------------------------------- correlation table


def test_correlation_table_picks_test_and_matches_scipy(cohort):
    table = correlation_table(cohort, "total_score").set_index("variable")
    assert "subject_id" not in table.index and "total_score" not in table.index
    assert table.attrs["score_normality"]["normal"]
    score = cohort["total_score"]

    row = table.loc["albumin"]  # both normal: Pearson
    ref = sps.pearsonr(score, cohort["albumin"])
    assert row["test"] == "pearson" and row["n"] == 60
    assert row["r"] == pytest.approx(ref.statistic, abs=TOL) and row["p"] == pytest.approx(
        ref.pvalue, abs=TOL
    )

    row = table.loc["ck"]  # skewed: Spearman, on complete pairs
    keep = cohort["ck"].notna()
    ref = sps.spearmanr(score[keep], cohort.loc[keep, "ck"])
    assert row["test"] == "spearman" and row["n"] == 58
    assert row["r"] == pytest.approx(ref.statistic, abs=TOL) and row["p"] == pytest.approx(
        ref.pvalue, abs=TOL
    )
    assert row["r"] > 0 and table.loc["albumin", "r"] < 0  # the simulated signs

    row = table.loc["sex"]  # binary with a normal score: point-biserial, M coded 1
    male = (cohort["sex"] == "M").astype(float)
    ref = sps.pointbiserialr(male, score)
    student = sps.ttest_ind(score[male == 1], score[male == 0], equal_var=True)
    assert row["test"] == "point-biserial" and row["coding"] == "M vs F"
    assert row["r"] == pytest.approx(ref.statistic, abs=TOL)
    assert row["p"] == pytest.approx(ref.pvalue, abs=TOL)
    assert row["p"] == pytest.approx(student.pvalue, abs=TOL)

    row = table.loc["pattern"]  # categorical: Kruskal-Wallis, no r
    groups = [score[cohort["pattern"] == lv] for lv in sorted(cohort["pattern"].unique())]
    assert row["test"] == "kruskal-wallis" and np.isnan(row["r"])
    assert row["p"] == pytest.approx(sps.kruskal(*groups).pvalue, abs=TOL)


def test_correlation_table_non_normal_score_uses_spearman(cohort):
    skewed = cohort.assign(total_score=np.exp(cohort["total_score"] / 5))
    table = correlation_table(skewed, "total_score", ["albumin", "dysphagia"]).set_index("variable")
    assert list(table["test"]) == ["spearman", "spearman"]
    ref = sps.spearmanr(skewed["total_score"], skewed["dysphagia"])
    assert table.loc["dysphagia", "r"] == pytest.approx(ref.statistic, abs=TOL)
    assert table.loc["dysphagia", "p"] == pytest.approx(ref.pvalue, abs=TOL)


def test_correlation_table_type_override_and_errors(cohort):
    table = correlation_table(cohort, "total_score", ["vas"], types={"vas": "categorical"})
    assert table.loc[0, "test"] == "kruskal-wallis"
    with pytest.raises(KeyError, match="nope"):
        correlation_table(cohort, "nope")
    bad = cohort.assign(ck=cohort["ck"].astype(object))
    bad.loc[7, "ck"] = ">1000"
    with pytest.raises(ValueError, match=r"ck: non-numeric values \['>1000'\] in rows \[7\]"):
        correlation_table(bad, "total_score")


# --------------------------------------------------------------------------- group comparison


def welch_p(a: np.ndarray, b: np.ndarray) -> float:
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * sps.t.sf(abs(t), df)


def mann_whitney_p(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """U of ``a`` and the normal-approximation p with tie and continuity correction."""
    n1, n2 = len(a), len(b)
    ranks = sps.rankdata(np.concatenate([a, b]))
    u = ranks[:n1].sum() - n1 * (n1 + 1) / 2
    n = n1 + n2
    _, ties = np.unique(np.concatenate([a, b]), return_counts=True)
    sigma = np.sqrt(n1 * n2 / 12 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1))))
    z = (abs(u - n1 * n2 / 2) - 0.5) / sigma
    return u, 2 * sps.norm.sf(z)


def pearson_chi2_p(table: np.ndarray) -> float:
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    return sps.chi2.sf(chi2, (table.shape[0] - 1) * (table.shape[1] - 1))


def fisher_p(table: np.ndarray) -> float:
    """Two-sided Fisher: sum of hypergeometric tables no more likely than the observed."""
    (a, b), (c, d) = table
    dist = sps.hypergeom(a + b + c + d, a + b, a + c)
    support = np.arange(max(0, (a + c) - (c + d)), min(a + b, a + c) + 1)
    probs = dist.pmf(support)
    return min(1.0, probs[probs <= dist.pmf(a) * (1 + 1e-7)].sum())


def test_group_comparison_tests_and_p_values(cohort):
    pg = pytest.importorskip("pingouin")
    table = group_comparison(cohort, "diffuse").set_index("variable")
    assert table.attrs["groups"] == {"diffuse=0": int((cohort.diffuse == 0).sum()),
                                     "diffuse=1": int((cohort.diffuse == 1).sum())}  # fmt: skip
    g0, g1 = cohort[cohort.diffuse == 0], cohort[cohort.diffuse == 1]

    row = table.loc["albumin"]  # normal in both groups: Welch
    a, b = g0["albumin"].to_numpy(), g1["albumin"].to_numpy()
    assert row["test"] == "welch t-test"
    assert row["p"] == pytest.approx(welch_p(a, b), abs=TOL)
    assert row["p"] == pytest.approx(pg.ttest(a, b, correction=True)["p_val"].iloc[0], abs=TOL)
    assert row["diffuse=0"] == f"{a.mean():.1f} ± {a.std(ddof=1):.1f}"

    row = table.loc["vas"]  # ordinal with ties: Mann-Whitney, normal approximation
    a, b = g0["vas"].to_numpy(), g1["vas"].to_numpy()
    u, p = mann_whitney_p(a, b)
    assert row["test"] == "mann-whitney u" and row["statistic"] == pytest.approx(u)
    assert row["p"] == pytest.approx(p, abs=TOL)
    assert row["p"] == pytest.approx(pg.mwu(a, b)["p_val"].iloc[0], abs=TOL)
    q1, med, q3 = np.quantile(b, [0.25, 0.5, 0.75])
    assert row["diffuse=1"] == f"{med:.1f} ({q1:.1f}–{q3:.1f})"

    row = table.loc["ck"]  # skewed, missing values left out
    assert row["test"] == "mann-whitney u" and row["n"] == 58

    row = table.loc["sex"]  # 2x2, large expected counts: chi-square without Yates
    counts = pd.crosstab(cohort["diffuse"], cohort["sex"]).to_numpy()
    assert row["test"] == "chi-square" and row["level"] == "M"
    assert row["p"] == pytest.approx(pearson_chi2_p(counts), abs=TOL)
    n_male = int((g1["sex"] == "M").sum())
    assert row["diffuse=1"] == f"{n_male} ({100 * n_male / len(g1):.1f}%)"

    row = table.loc["rare"]  # 2x2 with an expected count < 5: Fisher's exact
    counts = pd.crosstab(cohort["diffuse"], cohort["rare"]).to_numpy()
    assert row["test"] == "fisher exact"
    assert row["p"] == pytest.approx(fisher_p(counts), abs=TOL)

    row = table.loc["pattern"]  # 2x4: chi-square
    counts = pd.crosstab(cohort["diffuse"], cohort["pattern"]).to_numpy()
    assert row["test"] == "chi-square"
    assert row["p"] == pytest.approx(pearson_chi2_p(counts), abs=TOL)


def test_group_comparison_unequal_variances_welch_not_student():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 40), rng.normal(0.8, 4, 12)
    df = pd.DataFrame({"group": ["a"] * 40 + ["b"] * 12, "x": np.concatenate([a, b])})
    row = group_comparison(df, "group").iloc[0]
    assert row["test"] == "welch t-test"
    assert row["p"] == pytest.approx(welch_p(a, b), abs=TOL)
    assert row["p"] != pytest.approx(sps.ttest_ind(a, b).pvalue, abs=1e-3)


def test_group_comparison_needs_a_binary_split(cohort):
    with pytest.raises(
        ValueError, match="group_by=pattern: a binary split needs exactly two values"
    ):
        group_comparison(cohort, "pattern")


# --------------------------------------------------------------------------- tables


def test_normality_table(cohort):
    table = normality_table(cohort).set_index("variable")
    assert table.loc["ck", "test"] == "shapiro" and table.loc["ck", "n"] == 58
    assert table.loc["ck", "p"] == pytest.approx(sps.shapiro(cohort["ck"].dropna()).pvalue, abs=TOL)
    assert table.loc["sex", "normal"] is None and np.isnan(table.loc["sex", "p"])


def test_to_markdown_formats_numbers_p_and_missing():
    df = pd.DataFrame(
        {
            "variable": ["ck", "a|b"],
            "r": [0.41234, np.nan],
            "p": [0.0004, 0.2],
            "n": [48, 47],
            "ok": [True, False],
        }
    )
    assert to_markdown(df, decimals=2) == (
        "| variable | r | p | n | ok |\n"
        "| --- | ---: | ---: | ---: | --- |\n"
        "| ck | 0.41 | <0.001 | 48 | yes |\n"
        "| a\\|b | – | 0.200 | 47 | no |\n"
    )
