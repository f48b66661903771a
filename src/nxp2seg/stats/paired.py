"""A finding at two sites of the same subjects (thigh vs calf): McNemar, and chi-square as papers report it.

The motivating study compared the incidence of fascial edema in the thigh and
the calf of the same 48 patients with a chi-square test (50.0% vs 22.9%,
p = 0.006): Pearson's chi-square on the 2 x 2 table *site x finding*, as if
the thigh and the calf were two independent groups of 48. They are not: the
same patients are counted twice, and the test for a paired proportion is
**McNemar's**, which reads only the discordant subjects (finding at one site
and not the other). Both are printed so that a reader can reproduce the paper
and see the right test beside it.

* :func:`mcnemar_test` -- McNemar's test from paired 0/1 values (statsmodels),
  exact binomial by default (as SPSS's Crosstabs does for a 2 x 2 table);
* :func:`two_proportions_chi_square` -- Pearson's chi-square of two counts out
  of two totals (SciPy), without Yates' continuity correction by default
  (it reproduces the paper's p = 0.006 and p = 0.052);
* :func:`paired_sites_table` -- both, per finding, for a subjects x sites table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar

from nxp2seg.stats.tables import count_percent

__all__ = ["PAIRED_SITES_COLUMNS", "mcnemar_test", "paired_sites_table",
           "two_proportions_chi_square"]

PAIRED_SITES_COLUMNS = ["finding", "n_subjects", "site_a", "site_b", "both", "a_only", "b_only",
                        "neither", "mcnemar_test", "mcnemar_statistic", "mcnemar_p",
                        "chi_square_statistic", "chi_square_p"]


def _binary(x, what: str) -> np.ndarray:
    v = np.asarray(x, dtype=float)
    bad = ~np.isnan(v) & (v != 0) & (v != 1)
    if bad.any():
        raise ValueError(f"{what}: values must be 0, 1 or missing, got {sorted(set(v[bad]))[:5]}")
    return v


def mcnemar_test(a, b, *, exact: bool = True, correction: bool = True) -> dict:
    """McNemar's test of paired binary findings (same subjects, two sites or readings).

    Parameters
    ----------
    a, b : array_like of 0/1
        The finding at each site, one entry per subject; pairs with a missing
        value are dropped.
    exact : bool
        Exact binomial test on the discordant pairs (default, as SPSS's
        Crosstabs); ``False`` gives the chi-square approximation.
    correction : bool
        Edwards' continuity correction of the chi-square approximation.

    Returns
    -------
    dict
        ``b`` (a only), ``c`` (b only), ``n`` (pairs), ``statistic`` (exact:
        the smaller discordant count; else the chi-square), ``p``, ``test``.
        NaN p when no pair is discordant.
    """
    x, y = _binary(a, "a"), _binary(b, "b")
    if len(x) != len(y):
        raise ValueError(f"mcnemar_test: paired inputs of lengths {len(x)} and {len(y)}")
    keep = ~np.isnan(x) & ~np.isnan(y)
    x, y = x[keep].astype(int), y[keep].astype(int)
    table = np.array([[np.sum((x == 1) & (y == 1)), np.sum((x == 1) & (y == 0))],
                      [np.sum((x == 0) & (y == 1)), np.sum((x == 0) & (y == 0))]])
    out = {"b": int(table[0, 1]), "c": int(table[1, 0]), "n": int(keep.sum()),
           "statistic": math.nan, "p": math.nan,
           "test": "mcnemar exact" if exact else "mcnemar chi-square"}
    if table[0, 1] + table[1, 0] == 0:
        return out
    res = mcnemar(table, exact=exact, correction=correction)
    out.update(statistic=float(res.statistic), p=float(res.pvalue))
    return out


def two_proportions_chi_square(count_a: int, n_a: int, count_b: int, n_b: int, *,
                               correction: bool = False) -> dict:
    """Pearson's chi-square of ``count_a / n_a`` against ``count_b / n_b`` (two independent groups).

    The 2 x 2 table is ``[[count_a, n_a - count_a], [count_b, n_b - count_b]]``;
    ``correction`` applies Yates' continuity correction (off by default: the
    papers' SPSS "Pearson Chi-Square" row is uncorrected). Fascial edema in the
    thigh 24/48 vs the calf 11/48 gives chi-square 7.60, p = 0.0058 (the
    motivating study's p = 0.006); subcutaneous 15/48 vs 7/48 gives p = 0.052.

    Returns
    -------
    dict
        ``statistic``, ``p``, ``min_expected`` (the smallest expected count; the
        approximation wants >= 5). NaN when a row or column of the table is empty.
    """
    table = np.array([[count_a, n_a - count_a], [count_b, n_b - count_b]], dtype=float)
    if (table < 0).any():
        raise ValueError(f"two_proportions_chi_square: counts larger than their totals: {table}")
    out = {"statistic": math.nan, "p": math.nan, "min_expected": math.nan}
    if (table.sum(0) == 0).any() or (table.sum(1) == 0).any():
        return out
    chi2, p, _, expected = sps.chi2_contingency(table, correction=correction)
    out.update(statistic=float(chi2), p=float(p), min_expected=float(expected.min()))
    return out


def paired_sites_table(findings: pd.DataFrame, pairs: Mapping[str, Sequence[str]],
                       decimals: int = 1) -> pd.DataFrame:
    """Per finding: subjects with it at each site, McNemar's test and the papers' chi-square.

    Parameters
    ----------
    findings : pandas.DataFrame
        One row per subject; 0/1 columns (NaN = site not imaged or not read).
    pairs : mapping
        ``{finding: (column at site a, column at site b)}``, e.g.
        ``{"fascial_edema": ("fascial_edema_thigh", "fascial_edema_calf")}``.
    decimals : int
        Decimals of the percentages.

    Returns
    -------
    pandas.DataFrame
        :data:`PAIRED_SITES_COLUMNS`: counts over the subjects with both sites
        read (``site_a``/``site_b`` as ``"n (x%)"``), McNemar's exact test and
        Pearson's chi-square of site a's proportion against site b's.
    """
    rows = []
    for name, (col_a, col_b) in pairs.items():
        a = _binary(findings[col_a], col_a)
        b = _binary(findings[col_b], col_b)
        keep = ~np.isnan(a) & ~np.isnan(b)
        a, b = a[keep], b[keep]
        n = int(keep.sum())
        mc = mcnemar_test(a, b)
        chi = two_proportions_chi_square(int(a.sum()), n, int(b.sum()), n)
        rows.append({
            "finding": name, "n_subjects": n,
            "site_a": count_percent(int(a.sum()), n, decimals),
            "site_b": count_percent(int(b.sum()), n, decimals),
            "both": int(((a == 1) & (b == 1)).sum()), "a_only": mc["b"], "b_only": mc["c"],
            "neither": int(((a == 0) & (b == 0)).sum()),
            "mcnemar_test": mc["test"], "mcnemar_statistic": mc["statistic"], "mcnemar_p": mc["p"],
            "chi_square_statistic": chi["statistic"], "chi_square_p": chi["p"]})
    return pd.DataFrame(rows, columns=PAIRED_SITES_COLUMNS)
