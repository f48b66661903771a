"""Cohort tables of the clinical papers: MRI score against clinical variables.

Three tables, each a DataFrame with one row per clinical column:

* :func:`normality_table` -- kind of each variable and its Shapiro-Wilk test;
* :func:`correlation_table` -- the MRI score's correlation with each column
  (Pearson or Spearman by the rules below), r, p, n;
* :func:`group_comparison` -- every column compared between the two groups of
  a binary split (Welch t-test, Mann-Whitney U, chi-square or Fisher's exact),
  with mean ± SD, median (IQR) or n (%) per group.

Rules (see ``docs/statistics.md``): a continuous variable is treated as
normal when Shapiro-Wilk gives p >= 0.05; parametric tests are used only when
every variable involved is normal; otherwise the rank-based test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

from nxp2seg.stats.tables import count_percent, mean_sd, median_iqr, to_markdown
from nxp2seg.stats.variables import (
    VARIABLE_TYPES,
    binary_codes,
    lilliefors,
    normality,
    numeric_values,
    variable_type,
)

__all__ = [
    "correlation_table",
    "group_comparison",
    "normality",
    "normality_table",
    "to_markdown",
    "variable_type",
]

ID_COLUMNS = ("subject_id",)
#: Choices of the test of a continuous variable between two groups ("auto": by normality).
CONTINUOUS_TESTS = ("auto", "welch", "student", "mann-whitney")
#: Choices of the test of a categorical variable between two groups ("auto": by expected counts).
CATEGORICAL_TESTS = ("auto", "chi-square", "fisher")
#: Choices of the correlation of the score with a variable ("auto": by normality).
CORRELATIONS = ("auto", "pearson", "spearman")


def _choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what}={value!r}: use one of {allowed}")
    return value


def _columns(df: pd.DataFrame, columns: Iterable[str] | None, skip: Iterable[str]) -> list[str]:
    if columns is None:
        skip = set(skip)
        return [c for c in df.columns if c not in skip]
    columns = list(columns)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} not in the table; columns: {list(df.columns)}")
    return columns


def _type_of(df: pd.DataFrame, column: str, types: Mapping[str, str] | None) -> str:
    kind = (types or {}).get(column) or variable_type(df[column])
    if kind not in VARIABLE_TYPES:
        raise ValueError(f"{column}: unknown variable type {kind!r}; use one of {VARIABLE_TYPES}")
    return kind


def normality_table(
    df: pd.DataFrame,
    columns: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = ID_COLUMNS,
    types: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    test: str = "shapiro",
) -> pd.DataFrame:
    """Kind of every column, and Shapiro-Wilk beside Kolmogorov-Smirnov (Lilliefors).

    Parameters
    ----------
    test : {"shapiro", "lilliefors"}
        The test that decides ``normal`` (and so the parametric or rank-based
        tests of the other tables); both are reported.

    Returns
    -------
    pandas.DataFrame
        ``variable``, ``type``, ``n`` (non-missing), ``test`` (the deciding
        test), ``W`` and ``p`` (its statistic and p), ``normal``, then both
        tests: ``shapiro_W``, ``shapiro_p``, ``ks_D``, ``ks_p`` (Lilliefors-
        corrected, :func:`~nxp2seg.stats.variables.lilliefors`) and
        ``ks_p_spss`` (as SPSS prints it: ``0.200*`` when p >= 0.2). Test
        columns are empty (NaN / None) for variables that are not continuous.
    """
    columns_out = ["variable", "type", "n", "test", "W", "p", "normal", "shapiro_W", "shapiro_p",
                   "ks_D", "ks_p", "ks_p_spss"]
    rows = []
    for col in _columns(df, columns, exclude):
        kind = _type_of(df, col, types)
        row = dict.fromkeys(columns_out[3:], math.nan)
        row.update(variable=col, type=kind, n=int(df[col].notna().sum()), test="", normal=None,
                   ks_p_spss="")
        if kind == "continuous":
            x = numeric_values(df[col])
            sw, ks = normality(x, alpha), lilliefors(x)
            chosen = normality(x, alpha, test) if test != "shapiro" else sw
            row.update(test=chosen["test"], W=chosen["W"], p=chosen["p"], normal=chosen["normal"],
                       n=sw["n"], shapiro_W=sw["W"], shapiro_p=sw["p"], ks_D=ks["D"], ks_p=ks["p"],
                       ks_p_spss=ks["p_spss"])
        rows.append(row)
    return pd.DataFrame(rows, columns=columns_out)


def correlation_table(
    df: pd.DataFrame,
    score_col: str,
    columns: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = ID_COLUMNS,
    types: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    normality_test: str = "shapiro",
    method: str = "auto",
) -> pd.DataFrame:
    """Correlation of the MRI score with every clinical column.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per subject: the score and the clinical columns.
    score_col : str
        The MRI score (e.g. ``total_score``); must be numeric.
    columns : iterable of str, optional
        Columns to correlate (default: all but ``score_col`` and ``exclude``).
    exclude : iterable of str
        Identifier columns skipped by default.
    types : mapping, optional
        Override of :func:`variable_type` per column.
    alpha : float
        Level of the normality tests.
    normality_test : {"shapiro", "lilliefors"}
        The normality test that chooses Pearson or Spearman.
    method : {"auto", "pearson", "spearman"}
        ``auto`` chooses by normality (below); ``pearson`` or ``spearman``
        forces one for every continuous and binary variable.

    Returns
    -------
    pandas.DataFrame
        ``variable``, ``type``, ``coding`` (binary: ``"M vs F"``, the first
        level coded 1), ``normal`` (Shapiro-Wilk of the variable; None when
        not continuous), ``test``, ``r``, ``p``, ``n`` (complete pairs).
        ``attrs["score_normality"]`` holds the score's normality test.

    Notes
    -----
    Test per column:

    * continuous: **Pearson** if the score and the variable both pass
      Shapiro-Wilk (p >= ``alpha``, each on all its available values), else
      **Spearman** (clinical lab values are usually skewed, so Spearman is
      the common case).
    * binary (coded 0/1, the sorted second level = 1): **point-biserial**
      (Pearson on the 0/1 code; its p equals Student's t-test p) if the score
      is normal, else **Spearman** on the 0/1 code (a rank-biserial
      correlation). r > 0 means higher scores go with the level coded 1.
    * categorical (3+ text levels): no correlation is defined; ``r`` is NaN
      and ``p`` is the **Kruskal-Wallis** test of the score across levels.
    * constant / empty: nothing to test (NaN).

    Read r as the strength of the (monotone) association, p as its evidence
    against r = 0 without correction for the number of columns tested.
    """
    if score_col not in df.columns:
        raise KeyError(f"score column {score_col!r} not in the table; columns: {list(df.columns)}")
    _choice(method, CORRELATIONS, "correlation")
    score = numeric_values(df[score_col])
    score_norm = normality(score, alpha, normality_test)
    rows = []
    for col in _columns(df, columns, [score_col, *exclude]):
        kind = _type_of(df, col, types)
        row = {
            "variable": col,
            "type": kind,
            "coding": "",
            "normal": None,
            "test": "",
            "r": math.nan,
            "p": math.nan,
            "n": 0,
        }
        if kind in ("continuous", "binary"):
            if kind == "continuous":
                x = numeric_values(df[col])
                row["normal"] = normality(x, alpha, normality_test)["normal"]
                parametric = score_norm["normal"] and row["normal"]
                if method != "auto":
                    parametric = method == "pearson"
                row["test"] = "pearson" if parametric else "spearman"
            else:
                x, (lo, hi) = binary_codes(df[col])
                row["coding"] = f"{hi} vs {lo}"
                parametric = score_norm["normal"] if method == "auto" else method == "pearson"
                row["test"] = "point-biserial" if parametric else "spearman"
            keep = score.notna() & x.notna()
            row["n"] = int(keep.sum())
            if row["n"] >= 3 and x[keep].nunique() > 1 and score[keep].nunique() > 1:
                fn = sps.spearmanr if row["test"] == "spearman" else sps.pearsonr
                res = fn(score[keep], x[keep])
                row.update(r=float(res.statistic), p=float(res.pvalue))
        elif kind == "categorical":
            keys = df[col].astype(str).str.strip().where(df[col].notna())
            keep = score.notna() & keys.notna()
            groups = [
                score[keep & (keys == level)].to_numpy() for level in sorted(keys[keep].unique())
            ]
            row.update(test="kruskal-wallis", n=int(keep.sum()))
            if len(groups) > 1 and score[keep].nunique() > 1:
                row["p"] = float(sps.kruskal(*groups).pvalue)
        else:
            row["n"] = int((score.notna() & df[col].notna()).sum())
        rows.append(row)
    out = pd.DataFrame(
        rows, columns=["variable", "type", "coding", "normal", "test", "r", "p", "n"]
    )
    out.attrs["score_normality"] = score_norm
    return out


def _group_masks(df: pd.DataFrame, group_col: str) -> tuple[pd.Series, pd.Series, str, str]:
    if group_col not in df.columns:
        raise KeyError(f"group column {group_col!r} not in the table; columns: {list(df.columns)}")
    try:
        codes, (lo, hi) = binary_codes(df[group_col])
    except ValueError as err:
        levels = sorted(map(str, df[group_col].dropna().unique()))[:10]
        raise ValueError(
            f"group_by={group_col}: a binary split needs exactly two values, got {levels}"
        ) from err
    return codes == 0, codes == 1, f"{group_col}={lo}", f"{group_col}={hi}"


def _compare_continuous(x: pd.Series, in_a, in_b, alpha: float, decimals: int,
                        normality_test: str = "shapiro", method: str = "auto") -> dict:
    a, b = x[in_a].dropna().to_numpy(), x[in_b].dropna().to_numpy()
    if method == "auto":
        normal = (normality(a, alpha, normality_test)["normal"]
                  and normality(b, alpha, normality_test)["normal"])
        method = "welch" if normal else "mann-whitney"
    row = {"n": len(a) + len(b), "statistic": math.nan, "p": math.nan}
    if method in ("welch", "student"):
        row.update(
            test="welch t-test" if method == "welch" else "student t-test",
            summary_a=mean_sd(a, decimals), summary_b=mean_sd(b, decimals)
        )
        if len(a) > 1 and len(b) > 1:
            res = sps.ttest_ind(a, b, equal_var=method == "student")
            row.update(statistic=float(res.statistic), p=float(res.pvalue))
    else:
        row.update(
            test="mann-whitney u",
            summary_a=median_iqr(a, decimals),
            summary_b=median_iqr(b, decimals),
        )
        if len(a) and len(b) and np.ptp(np.concatenate([a, b])) > 0:
            res = sps.mannwhitneyu(a, b, alternative="two-sided")
            row.update(statistic=float(res.statistic), p=float(res.pvalue))
    return row


def _compare_categories(keys: pd.Series, in_a, in_b, levels: list, decimals: int,
                        method: str = "auto", percent_decimals: int | None = None) -> dict:
    table = np.array([[int(((keys == lv) & m).sum()) for lv in levels] for m in (in_a, in_b)])
    n_a, n_b = table.sum(axis=1)
    decimals = decimals if percent_decimals is None else percent_decimals
    row = {"n": int(table.sum()), "statistic": math.nan, "p": math.nan, "note": ""}
    if len(levels) == 2:
        # one row per binary variable: the level coded 1 (the sorted second one)
        row.update(
            summary_a=count_percent(table[0, 1], n_a, decimals),
            summary_b=count_percent(table[1, 1], n_b, decimals),
        )
    else:
        row.update(
            summary_a="; ".join(
                f"{lv}: {count_percent(c, n_a, decimals)}" for lv, c in zip(levels, table[0])
            ),
            summary_b="; ".join(
                f"{lv}: {count_percent(c, n_b, decimals)}" for lv, c in zip(levels, table[1])
            ),
        )
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        row.update(test="chi-square", note="a group or a level has no subject; not testable")
        return row
    expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.sum()
    fisher = method == "fisher" or (method == "auto" and (expected < 5).any())
    if table.shape == (2, 2) and fisher:
        res = sps.fisher_exact(table, alternative="two-sided")
        row.update(test="fisher exact", statistic=float(res.statistic), p=float(res.pvalue))
    else:
        chi2, p, _, _ = sps.chi2_contingency(table, correction=False)
        row.update(test="chi-square", statistic=float(chi2), p=float(p))
        if (expected < 5).any():
            row["note"] = f"{int((expected < 5).sum())} cells with expected count < 5"
    return row


def group_comparison(
    df: pd.DataFrame,
    group_col: str,
    columns: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = ID_COLUMNS,
    types: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    decimals: int = 1,
    normality_test: str = "shapiro",
    continuous_test: str = "auto",
    categorical_test: str = "auto",
    percent_decimals: int | None = None,
) -> pd.DataFrame:
    """Compare every column between the two groups of a binary split.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per subject.
    group_col : str
        Two-valued column defining the groups (e.g. ``diffuse`` 0/1); rows
        where it is missing are left out.
    columns, exclude, types, alpha
        As in :func:`correlation_table`.
    decimals : int
        Decimals of the summaries.
    percent_decimals : int, optional
        Decimals of the percentages of ``n (%)`` (default: ``decimals``).
    normality_test : {"shapiro", "lilliefors"}
        The normality test that chooses between the t-test and Mann-Whitney.
    continuous_test : {"auto", "welch", "student", "mann-whitney"}
        ``auto`` chooses by normality (below); the others force one test
        (``student``: the pooled-variance t-test SPSS prints first).
    categorical_test : {"auto", "chi-square", "fisher"}
        ``auto``: chi-square, Fisher's exact for a 2x2 table with an expected
        count < 5; ``fisher`` forces Fisher's exact test on 2x2 tables,
        ``chi-square`` forces Pearson's chi-square.

    Returns
    -------
    pandas.DataFrame
        ``variable``, ``type``, ``level`` (binary: the level counted),
        ``test``, one summary column per group named ``"{group_col}={level}"``
        (groups in sorted order), ``statistic``, ``p``, ``n``, ``note``.
        ``attrs["groups"]`` maps the two group labels to their sizes.

    Notes
    -----
    * continuous, normal in **both** groups (Shapiro-Wilk p >= ``alpha``):
      **Welch's t-test**, summaries mean ± SD. Welch rather than Student:
      it does not assume equal variances, loses almost nothing when they are
      equal, and keeps its error rate when they are not and the groups
      differ in size (the usual case for a split such as diffuse vs not).
    * continuous otherwise: **Mann-Whitney U** (two-sided; SciPy's exact
      distribution for small samples without ties, else the normal
      approximation with tie and continuity correction), summaries
      median (Q1–Q3).
    * binary / categorical: **Pearson's chi-square** on the groups x levels
      table, without Yates' correction (which is over-conservative); for a
      2x2 table with any expected count < 5, **Fisher's exact test**
      instead. Larger tables with small expected counts keep chi-square and
      say so in ``note``. Summaries n (%) of the non-missing values per
      group; for binary variables, of the level coded 1 (``level``).

    p-values are two-sided and not corrected for multiple testing.
    """
    _choice(continuous_test, CONTINUOUS_TESTS, "continuous_test")
    _choice(categorical_test, CATEGORICAL_TESTS, "categorical_test")
    in_a, in_b, label_a, label_b = _group_masks(df, group_col)
    rows = []
    for col in _columns(df, columns, [group_col, *exclude]):
        kind = _type_of(df, col, types)
        row = {
            "variable": col,
            "type": kind,
            "level": "",
            "test": "",
            "summary_a": "",
            "summary_b": "",
            "statistic": math.nan,
            "p": math.nan,
            "n": 0,
            "note": "",
        }
        if kind == "continuous":
            row.update(_compare_continuous(numeric_values(df[col]), in_a, in_b, alpha, decimals,
                                           normality_test, continuous_test))
        elif kind in ("binary", "categorical"):
            if kind == "binary":
                codes, (_, hi) = binary_codes(df[col])
                keys, levels, row["level"] = codes, [0.0, 1.0], str(hi)
            else:
                keys = df[col].astype(str).str.strip().where(df[col].notna())
                levels = sorted(keys.dropna().unique())
            row.update(_compare_categories(keys, in_a, in_b, levels, decimals, categorical_test,
                                           percent_decimals))
        else:
            row["n"] = int((df[col].notna() & (in_a | in_b)).sum())
            row["note"] = f"{kind}: not testable"
        rows.append(row)
    out = pd.DataFrame(
        rows,
        columns=[
            "variable",
            "type",
            "level",
            "test",
            "summary_a",
            "summary_b",
            "statistic",
            "p",
            "n",
            "note",
        ],
    )
    out = out.rename(columns={"summary_a": label_a, "summary_b": label_b})
    out.attrs["groups"] = {label_a: int(in_a.sum()), label_b: int(in_b.sum())}
    return out
