"""Agreement statistics and the subject bootstrap, checked against references.

References: scikit-learn, SciPy and pingouin on random data (to 1e-6), and
published worked examples (Shrout & Fleiss 1979; Agresti 1990 via R vcd;
the SAS PROC FREQ kappa example; a hand-computed 2x2 table).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score

from nxp2seg.stats import (
    COPY_COL,
    bland_altman,
    cohen_kappa,
    confusion,
    icc,
    icc_table,
    macro_f1,
    mae,
    noninferiority,
    paired_difference,
    pearson,
    resample_subjects,
    roc_auc,
    sensitivity_specificity,
    spearman,
    subject_bootstrap,
    subject_bootstrap_many,
)

TOL = 1e-6


def table_to_pairs(table) -> tuple[np.ndarray, np.ndarray]:
    """Expand a rater-A (rows) x rater-B (columns) count table into paired ratings."""
    table = np.asarray(table)
    rows, cols = np.indices(table.shape)
    return np.repeat(rows.ravel(), table.ravel()), np.repeat(cols.ravel(), table.ravel())


# --------------------------------------------------------------------------- kappa


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kappa_matches_sklearn_with_labels(weights, seed):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, 80)  # grades 4 and 5 of a 0-5 scale never used
    other = np.clip(truth + rng.integers(-1, 2, 80), 0, 4)
    labels = np.arange(6)
    expected = cohen_kappa_score(truth, other, labels=labels, weights=weights)
    assert cohen_kappa(truth, other, weights=weights, labels=labels) == pytest.approx(
        expected, abs=TOL
    )


def test_kappa_default_labels_fill_integer_gaps():
    a, b = np.array([0, 0, 3, 3, 1, 3]), np.array([0, 1, 3, 1, 1, 0])  # grade 2 unused
    expected = cohen_kappa_score(a, b, labels=[0, 1, 2, 3], weights="linear")
    assert cohen_kappa(a, b, weights="linear") == pytest.approx(expected, abs=TOL)


def test_kappa_string_labels_and_missing_pairs():
    a = ["none", "patchy", "diffuse", None, "mixed", "patchy", "none"]
    b = ["none", "mixed", "diffuse", "none", "mixed", "patchy", np.nan]
    kept_a, kept_b = (
        ["none", "patchy", "diffuse", "mixed", "patchy"],
        ["none", "mixed", "diffuse", "mixed", "patchy"],
    )
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(kept_a, kept_b), abs=TOL)


def test_kappa_published_agresti_sexual_fun():
    """Agresti (1990), Hout et al. (1987) data, 91 couples, 4 ordered categories.

    R ``vcd::Kappa(SexualFun)`` prints Unweighted 0.1293 and Weighted
    (equal-spacing = linear weights) 0.2374.
    """
    a, b = table_to_pairs([[7, 7, 2, 3], [2, 8, 3, 7], [1, 5, 4, 9], [2, 8, 9, 14]])
    assert len(a) == 91
    assert cohen_kappa(a, b) == pytest.approx(0.1293, abs=5e-5)
    assert cohen_kappa(a, b, weights="linear") == pytest.approx(0.2374, abs=5e-5)


def test_kappa_published_sas_proc_freq_example():
    """SAS PROC FREQ AGREE example (3x3 table, as in statsmodels' tests).

    Simple kappa 0.4842; weighted kappa (Cicchetti-Allison = linear) 0.4701.
    """
    a, b = table_to_pairs([[0, 4, 1], [0, 8, 0], [0, 1, 5]])
    assert cohen_kappa(a, b) == pytest.approx(0.4842, abs=5e-5)
    assert cohen_kappa(a, b, weights="linear") == pytest.approx(0.4701, abs=5e-5)


def test_kappa_published_altman_xeromammograms():
    """Altman (1991), Practical Statistics for Medical Research: two radiologists
    grading 85 xeromammograms in 4 categories (Boyd et al. 1982), kappa = 0.47."""
    a, b = table_to_pairs([[21, 12, 0, 0], [4, 17, 1, 0], [3, 9, 15, 2], [0, 0, 0, 1]])
    assert cohen_kappa(a, b) == pytest.approx(0.47, abs=0.005)


def test_kappa_hand_computed_2x2():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4
    a, b = table_to_pairs([[20, 5], [10, 15]])
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    # with two categories every weighting gives the same kappa
    assert cohen_kappa(a, b, weights="quadratic") == pytest.approx(0.4, abs=1e-12)


def test_kappa_undefined_and_errors():
    assert np.isnan(cohen_kappa([2, 2, 2], [2, 2, 2]))
    assert cohen_kappa([0, 1, 1], [0, 1, 1], labels=range(6), weights="quadratic") == 1.0
    assert np.isnan(cohen_kappa([], []))
    with pytest.raises(ValueError, match=r"\[7\] are not in the label set"):
        cohen_kappa([0, 7], [0, 1], labels=range(6))
    with pytest.raises(ValueError, match="weights"):
        cohen_kappa([0, 1], [0, 1], weights="cubic")
    with pytest.raises(ValueError, match="same length"):
        cohen_kappa([0, 1], [0])


# --------------------------------------------------------------------------- ICC

SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
)


def test_icc_shrout_fleiss_1979_worked_example():
    """Shrout & Fleiss (1979), Table 2: 6 targets x 4 judges."""
    published = {"ICC(1,1)": 0.17, "ICC(2,1)": 0.29, "ICC(3,1)": 0.71,
                 "ICC(1,k)": 0.44, "ICC(2,k)": 0.62, "ICC(3,k)": 0.91}  # fmt: skip
    table = icc_table(SHROUT_FLEISS).set_index("kind")
    for kind, value in published.items():
        assert table.loc[kind, "icc"] == pytest.approx(value, abs=0.005), kind
    assert table.loc["ICC(2,1)", "df2"] == 15 and table.loc["ICC(1,1)", "df2"] == 18


@pytest.fixture
def pingouin_unrounded(monkeypatch):
    pg = pytest.importorskip("pingouin")
    monkeypatch.setitem(pg.options, "round", None)
    for key in [k for k in pg.options if k.startswith("round.")]:
        monkeypatch.delitem(pg.options, key)
    return pg


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # inside pingouin, with pandas 3
@pytest.mark.parametrize("seed", [0, 1])
def test_icc_matches_pingouin_all_forms(pingouin_unrounded, seed):
    pg = pingouin_unrounded
    rng = np.random.default_rng(seed)
    n, k = 25, 3
    wide = rng.normal(size=(n, 1)) * 2 + rng.normal(size=(n, k)) + np.array([0.0, 0.4, -0.2])
    long = pd.DataFrame(
        [(t, f"r{j}", wide[t, j]) for t in range(n) for j in range(k)],
        columns=["target", "rater", "y"],
    )
    ref = pg.intraclass_corr(long, targets="target", raters="rater", ratings="y").set_index("Type")
    ours = icc_table(long, "target", "rater", "y").set_index("kind")
    names = {"ICC(1,1)": "ICC(1,1)", "ICC(2,1)": "ICC(A,1)", "ICC(3,1)": "ICC(C,1)",
             "ICC(1,k)": "ICC(1,k)", "ICC(2,k)": "ICC(A,k)", "ICC(3,k)": "ICC(C,k)"}  # fmt: skip
    for kind, pg_kind in names.items():
        row, expected = ours.loc[kind], ref.loc[pg_kind]
        assert row["icc"] == pytest.approx(expected["ICC"], abs=TOL), kind
        assert row["F"] == pytest.approx(expected["F"], abs=TOL), kind
        assert row["p"] == pytest.approx(expected["pval"], abs=TOL), kind
        assert row["df2"] == expected["df2"], kind
        low, high = expected["CI95"]
        assert row["ci_low"] == pytest.approx(low, abs=TOL), kind
        assert row["ci_high"] == pytest.approx(high, abs=TOL), kind


def test_icc_default_is_absolute_agreement_single_and_aliases():
    result = icc(SHROUT_FLEISS)
    assert result["kind"] == "ICC(2,1)" and result["icc"] == pytest.approx(0.2898, abs=1e-4)
    for alias in ("ICC2", "A,1", "ICC(A,1)", "icc(2,1)"):
        assert icc(SHROUT_FLEISS, kind=alias)["icc"] == result["icc"]
    assert icc(SHROUT_FLEISS, kind="ICC3k")["kind"] == "ICC(3,k)"
    assert icc(SHROUT_FLEISS, kind="ICC(3,4)")["kind"] == "ICC(3,k)"
    with pytest.raises(ValueError, match="names 5 raters"):
        icc(SHROUT_FLEISS, kind="ICC(3,5)")
    with pytest.raises(ValueError, match="unknown ICC kind"):
        icc(SHROUT_FLEISS, kind="ICC4")


def test_icc_long_equals_wide_drops_incomplete_and_rejects_duplicates():
    wide = pd.DataFrame(SHROUT_FLEISS.astype(float), columns=list("ABCD"))
    wide.loc[6] = [1.0, np.nan, 3.0, 4.0]  # incomplete target: dropped listwise
    long = wide.rename_axis("target").reset_index().melt("target", var_name="judge", value_name="y")
    assert icc(long, "target", "judge", "y")["icc"] == pytest.approx(
        icc(SHROUT_FLEISS)["icc"], abs=1e-12
    )
    assert icc(wide)["n_targets"] == 6
    with pytest.raises(ValueError, match="repeat a \\(target, rater\\) pair"):
        icc(pd.concat([long, long.iloc[:1]]), "target", "judge", "y")


def test_icc_without_interval_is_the_same_point():
    with_ci, without = icc(SHROUT_FLEISS), icc(SHROUT_FLEISS, ci=None)
    assert without["icc"] == with_ci["icc"] and without["p"] == with_ci["p"]
    assert np.isnan(without["ci_low"]) and np.isnan(without["ci_high"])


def test_icc_degenerate_cases_are_nan_or_one():
    assert np.isnan(icc([[1.0, 2.0]])["icc"])  # one target
    perfect = np.column_stack([np.arange(8.0), np.arange(8.0)])
    assert icc(perfect)["icc"] == pytest.approx(1.0)
    assert icc(perfect, kind="ICC(3,1)")["ci_low"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- correlation, BA


def test_pearson_spearman_match_scipy_and_drop_missing():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=40), rng.normal(size=40)
    y = y + 0.5 * x
    x[5], y[9] = np.nan, np.nan
    keep = ~(np.isnan(x) | np.isnan(y))
    for ours, ref in ((pearson, sps.pearsonr), (spearman, sps.spearmanr)):
        res, expected = ours(x, y), ref(x[keep], y[keep])
        assert res["n"] == 38
        assert res["r"] == pytest.approx(expected.statistic, abs=TOL)
        assert res["p"] == pytest.approx(expected.pvalue, abs=TOL)


def test_correlation_undefined_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(pearson([1, 1, 1, 1], [1, 2, 3, 4])["r"])
        assert np.isnan(spearman([1, 2], [2, 1])["p"])


def test_bland_altman_and_mae_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0, np.nan], [0.0, 2.0, 2.0, 5.0, 1.0]
    # differences 1, 0, 1, -1: mean 0.25; squared deviations 0.5625 + 0.0625 + 0.5625 + 1.5625 = 2.75
    sd = np.sqrt(2.75 / 3)
    res = bland_altman(a, b)
    assert res["n"] == 4 and res["bias"] == pytest.approx(0.25)
    assert res["sd"] == pytest.approx(sd)
    assert res["loa_low"] == pytest.approx(0.25 - 1.96 * sd)
    assert res["loa_high"] == pytest.approx(0.25 + 1.96 * sd)
    assert mae(a, b) == pytest.approx(0.75)


# --------------------------------------------------------------------------- binary and categorical


def test_sensitivity_specificity_by_hand():
    truth = [1, 1, 1, 1, 0, 0, 0, 0, 0, 1]
    pred = [1, 1, 1, 0, 0, 0, 0, 1, 0, 1]
    res = sensitivity_specificity(truth, pred)
    assert (res["tp"], res["fn"], res["tn"], res["fp"]) == (4, 1, 4, 1)
    assert res["sensitivity"] == pytest.approx(0.8) and res["specificity"] == pytest.approx(0.8)
    assert np.isnan(sensitivity_specificity([0, 0], [1, 0])["sensitivity"])


def test_roc_auc_matches_sklearn_and_one_class_is_nan():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 2, 60)
    score = rng.normal(size=60) + truth
    assert roc_auc(truth, score) == pytest.approx(roc_auc_score(truth, score), abs=TOL)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))


def test_macro_f1_and_confusion_match_sklearn():
    rng = np.random.default_rng(5)
    labels = ["none", "patchy", "mixed", "diffuse", "other"]  # "other" never occurs
    truth = rng.choice(labels[:4], 50)
    pred = np.where(rng.random(50) < 0.6, truth, rng.choice(labels[:4], 50))
    expected = f1_score(truth, pred, labels=labels, average="macro", zero_division=np.nan)
    assert macro_f1(truth, pred, labels) == pytest.approx(expected, abs=TOL)
    table = confusion(truth, pred, labels)
    np.testing.assert_array_equal(table.to_numpy(), confusion_matrix(truth, pred, labels=labels))
    nested = confusion(truth, pred, labels, as_dict=True)
    assert nested["none"]["none"] == table.loc["none", "none"]
    json.dumps(confusion([0, 1, 2], [0, 2, 2], as_dict=True))  # numpy keys become Python ints


# --------------------------------------------------------------------------- bootstrap


@pytest.fixture
def graded() -> pd.DataFrame:
    """20 subjects x 6 regions: two readers and a model grading 0-5."""
    rng = np.random.default_rng(6)
    n_subj, n_reg = 20, 6
    truth = rng.integers(0, 6, (n_subj, n_reg))

    def noisy() -> np.ndarray:
        return np.clip(truth + rng.choice([-1, 0, 0, 0, 1], truth.shape), 0, 5).ravel()

    return pd.DataFrame(
        {
            "subject_id": np.repeat([f"S{i:02d}" for i in range(n_subj)], n_reg),
            "region": np.tile(np.arange(n_reg), n_subj),
            "reader1": noisy(),
            "reader2": noisy(),
        }
    )


def test_bootstrap_is_deterministic_and_covers_estimate(graded):
    def stat(d):
        return cohen_kappa(d.reader1, d.reader2, "quadratic", range(6))

    first = subject_bootstrap(graded, stat, n_boot=200, seed=11)
    again = subject_bootstrap(graded, stat, n_boot=200, seed=11)
    other = subject_bootstrap(graded, stat, n_boot=200, seed=12)
    assert tuple(first) == tuple(again)
    np.testing.assert_array_equal(first.replicates, again.replicates)
    assert tuple(first) != tuple(other)
    est, low, high = first
    assert est == stat(graded) and low <= est <= high and low < high
    assert first.n_valid == 200 and first.n_skipped == 0
    json.dumps(first.as_dict())
    assert first.as_items("kappa") == {"kappa": est, "kappa_ci": [low, high]}


def test_bootstrap_draws_whole_subjects(graded):
    rows_per_subject = graded.groupby("subject_id").size()
    n_subjects = len(rows_per_subject)

    def whole_subjects(d: pd.DataFrame) -> float:
        if COPY_COL not in d:  # the estimate on the original table
            return 1.0
        copies = d.groupby(COPY_COL)
        one_subject_per_copy = (copies["subject_id"].nunique() == 1).all()
        complete = (
            copies.size() == rows_per_subject[copies["subject_id"].first()].to_numpy()
        ).all()
        regions_complete = (copies["region"].nunique() == 6).all()
        ok = (
            one_subject_per_copy
            and complete
            and regions_complete
            and d[COPY_COL].nunique() == n_subjects
        )
        return float(ok)

    res = subject_bootstrap_many(
        graded,
        {"whole": whole_subjects, "distinct": lambda d: d["subject_id"].nunique()},
        n_boot=50,
        seed=0,
    )
    assert np.all(res["whole"].replicates == 1.0)
    distinct = res["distinct"].replicates
    assert distinct.max() < n_subjects  # drawn with replacement: duplicates, some subjects missing
    assert 0.5 * n_subjects < distinct.mean() < 0.75 * n_subjects  # E ~ (1 - 1/e) n = 0.63 n


def test_resamples_do_not_depend_on_row_order(graded):
    shuffled = graded.sample(frac=1.0, random_state=1)
    for a, b in zip(
        resample_subjects(graded, n_boot=5, seed=3), resample_subjects(shuffled, n_boot=5, seed=3)
    ):
        assert sorted(a["subject_id"]) == sorted(b["subject_id"])


def test_bootstrap_skips_undefined_draws(graded):
    def undefined_without_s00(d):
        return np.nan if "S00" not in set(d["subject_id"]) else d["reader1"].mean()

    res = subject_bootstrap(graded, undefined_without_s00, n_boot=200, seed=0)
    assert 0 < res.n_valid < 200 and res.n_skipped == 200 - res.n_valid
    assert np.isfinite(res.low) and np.isfinite(res.high)


def test_bootstrap_errors_are_clear(graded):
    with pytest.raises(KeyError, match="patient"):
        subject_bootstrap(graded, len, subject_col="patient", n_boot=5)
    with pytest.raises(ZeroDivisionError) as info:
        subject_bootstrap(graded, lambda d: 1 / 0 if COPY_COL in d else 0.0, n_boot=5)
    assert "bootstrap draw 0" in "".join(info.value.__notes__)


def test_noninferiority_model_equal_to_reader_passes(graded):
    data = graded.assign(model=graded["reader2"])

    def kappa(a, b):
        return lambda d: cohen_kappa(d[a], d[b], "quadratic", range(6))

    res = noninferiority(
        kappa("model", "reader1"), kappa("reader2", "reader1"), data=data, n_boot=200
    )
    assert res["difference"] == 0.0 and res["ci_low"] == 0.0 and res["ci_high"] == 0.0
    assert res["passed"] is True and res["margin"] == 0.10
    json.dumps(res)


def test_noninferiority_is_paired(graded):
    rng = np.random.default_rng(8)
    model = graded["reader2"].to_numpy().copy()
    flip = rng.random(len(model)) < 0.1
    model[flip] = np.clip(model[flip] + 1, 0, 5)
    data = graded.assign(model=model)
    stats = {
        "mvr": lambda d: cohen_kappa(d["model"], d["reader1"], "quadratic", range(6)),
        "rvr": lambda d: cohen_kappa(d["reader2"], d["reader1"], "quadratic", range(6)),
    }
    res = subject_bootstrap_many(data, stats, n_boot=300, seed=0)
    via_results = noninferiority(res["mvr"], res["rvr"])
    via_callables = noninferiority(stats["mvr"], stats["rvr"], data=data, n_boot=300, seed=0)
    assert via_results == via_callables
    assert abs(via_results["difference"]) < 0.05 and via_results["passed"]
    # the paired interval is much narrower than the spread of either agreement
    paired_width = via_results["ci_high"] - via_results["ci_low"]
    assert paired_width < 0.5 * (res["rvr"].high - res["rvr"].low)
    strict = noninferiority(res["mvr"], res["rvr"], margin=0.0)
    assert strict["passed"] is bool(strict["ci_low"] > 0.0)


def test_paired_difference_refuses_unpaired_results(graded):
    a = subject_bootstrap(graded, lambda d: d["reader1"].mean(), n_boot=20, seed=0)
    b = subject_bootstrap(graded, lambda d: d["reader2"].mean(), n_boot=20, seed=1)
    with pytest.raises(ValueError, match="same resamples"):
        paired_difference(a, b)
    same = subject_bootstrap(graded, lambda d: d["reader2"].mean(), n_boot=20, seed=0)
    assert paired_difference(a, same).estimate == pytest.approx(a.estimate - same.estimate)
