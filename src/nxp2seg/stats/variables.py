"""Clinical variables: what kind each column is, and whether it looks normal."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["NORMALITY_TESTS", "VARIABLE_TYPES", "binary_codes", "lilliefors", "normality",
           "numeric_values", "variable_type"]

#: Values of :func:`variable_type`; the last two cannot be analysed.
VARIABLE_TYPES = ("binary", "categorical", "continuous", "constant", "empty")

SHAPIRO_MAX_N = 5000
#: Normality tests :func:`normality` offers (``shapiro`` is the default).
NORMALITY_TESTS = ("shapiro", "lilliefors")
#: SPSS prints the Lilliefors-corrected p as ``.200*`` ("a lower bound of the true significance")
#: whenever it is at least 0.2.
SPSS_LILLIEFORS_CAP = 0.2


def _name(series: pd.Series) -> str:
    return str(series.name) if series.name is not None else "values"


def _text_mask(series: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Non-missing values, and which of them do not parse as numbers."""
    s = series.dropna()
    if s.dtype.kind in "biuf":
        return s, pd.Series(False, index=s.index)
    coerced = pd.to_numeric(s.astype(str).str.strip(), errors="coerce")
    return s, coerced.isna()


def numeric_values(series: pd.Series) -> pd.Series:
    """The column as floats (missing stay NaN); ``ValueError`` naming non-numeric entries.

    The message names the column, the offending values and their row labels,
    e.g. ``"ck: non-numeric values ['n/a', '>1000'] in rows [3, 7]; clean or drop them"``.
    """
    if series.dtype.kind == "b":
        return series.astype(float)
    if series.dtype.kind in "iuf":
        return series.astype(float)
    s, text = _text_mask(series)
    if text.any():
        bad = s[text]
        values = list(dict.fromkeys(str(v) for v in bad))[:10]
        rows = bad.index.tolist()[:20]
        raise ValueError(
            f"{_name(series)}: non-numeric values {values} in rows {rows}; clean or drop them"
        )
    stripped = series.map(lambda v: v.strip() if isinstance(v, str) else v)
    return pd.to_numeric(stripped, errors="coerce").astype(float)


def variable_type(series: pd.Series, max_levels: int = 10) -> str:
    """Kind of a clinical column: ``binary``, ``categorical`` or ``continuous``.

    Parameters
    ----------
    series : pandas.Series
        One column (its ``name`` is used in error messages).
    max_levels : int
        Most distinct text values accepted as categories.

    Returns
    -------
    str
        ``"binary"``: exactly two distinct values (0/1, True/False, F/M...);
        ``"continuous"``: numbers with three or more distinct values
        (measurements, and ordinal scores such as VAS or MMT8, which the
        rank-based tests handle); ``"categorical"``: text with three to
        ``max_levels`` distinct values; ``"constant"`` (one distinct value)
        or ``"empty"`` (all missing): nothing to test.

    Raises
    ------
    ValueError
        When a numeric column holds some text (``"n/a"``, ``">1000"``): the
        message names the column, the values and their rows. Also for text
        with more than ``max_levels`` distinct values (free text or ids).

    Notes
    -----
    Numbers coding categories (1 = white, 2 = ...) cannot be told from
    measurements; pass ``types={"column": "categorical"}`` to the table
    functions for them.
    """
    s, text = _text_mask(series)
    if s.empty:
        return "empty"
    if text.all():
        levels = s.astype(str).str.strip().unique()
        if len(levels) > max_levels:
            raise ValueError(
                f"{_name(series)}: {len(levels)} distinct text values (e.g. {sorted(levels)[:5]}); "
                f"not a category (at most {max_levels} levels) nor a number; drop the column"
            )
        return {1: "constant", 2: "binary"}.get(len(levels), "categorical")
    values = numeric_values(series).dropna()
    return {1: "constant", 2: "binary"}.get(values.nunique(), "continuous")


def binary_codes(series: pd.Series) -> tuple[pd.Series, tuple]:
    """0/1 floats of a two-level column (NaN kept) and its ``(level0, level1)``.

    Levels are sorted (0 < 1, False < True, "F" < "M"); the larger is coded 1.
    """
    s = series.dropna()
    if s.dtype.kind in "biuf":
        levels = tuple(sorted(pd.unique(s)))
        keys = series
    else:
        keys = series.astype(str).str.strip().where(series.notna())
        levels = tuple(sorted(keys.dropna().unique()))
    if len(levels) != 2:
        raise ValueError(
            f"{_name(series)}: a binary column needs exactly two levels, got {list(levels)}"
        )
    codes = pd.Series(np.where(keys == levels[1], 1.0, 0.0), index=series.index).where(
        series.notna()
    )
    return codes, tuple(_plain(v) for v in levels)


def _plain(v):
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def lilliefors(series) -> dict:
    """Kolmogorov-Smirnov test of normality with the Lilliefors correction, as SPSS reports it.

    SPSS's *Explore > Normality plots with tests* prints "Kolmogorov-Smirnov(a)
    ... a. Lilliefors Significance Correction" next to Shapiro-Wilk: the KS
    distance ``D`` between the data's empirical distribution and the normal
    with the data's own mean and SD, and a p-value that allows for those two
    being estimated (the plain KS p-value would be far too large). This is
    :func:`statsmodels.stats.diagnostic.lilliefors` (``pvalmethod="table"``,
    Dallal-Wilkinson's approximation below 0.1 and Lilliefors' table above).

    Returns
    -------
    dict
        ``D``, ``p`` (statsmodels' value), ``p_spss`` (text as SPSS prints it:
        ``0.200*`` when p >= 0.2, the lower bound SPSS reports, else the p
        rounded to 3 decimals), ``n``. NaN with fewer than 4 values or a
        constant column.
    """
    from statsmodels.stats.diagnostic import lilliefors as _lilliefors

    values = np.asarray(numeric_values(pd.Series(series)).dropna(), dtype=float)
    out = {"D": math.nan, "p": math.nan, "p_spss": "", "n": len(values)}
    if len(values) < 4 or np.ptp(values) == 0:
        return out
    d, p = _lilliefors(values, dist="norm", pvalmethod="table")
    p = float(min(max(p, 0.0), 1.0))
    spss = "0.200*" if p >= SPSS_LILLIEFORS_CAP else ("<0.001" if p < 0.001 else f"{p:.3f}")
    out.update(D=float(d), p=p, p_spss=spss)
    return out


def normality(series, alpha: float = 0.05, test: str = "shapiro") -> dict:
    """Normality test of a continuous variable: Shapiro-Wilk (default) or Lilliefors-KS.

    Parameters
    ----------
    series : array_like or pandas.Series
        Numeric values; missing values are dropped.
    alpha : float
        Level below which normality is rejected.
    test : {"shapiro", "lilliefors"}
        ``lilliefors`` is the Kolmogorov-Smirnov test with the Lilliefors
        correction that SPSS reports (:func:`lilliefors`); the motivating
        study chose its tests with it.

    Returns
    -------
    dict
        ``test`` (``"shapiro"``, ``"dagostino"`` above 5000 values, or
        ``"lilliefors"``), ``W`` (the statistic: Shapiro's W, or the KS
        distance D), ``p``, ``normal`` (``p >= alpha``), ``n``.
        With too few values (3 for Shapiro, 4 for Lilliefors) or a constant
        column, ``W`` and ``p`` are NaN and ``normal`` is False (a parametric
        test is not justified).

    Notes
    -----
    Shapiro-Wilk is the default: it has the best power of the usual tests at
    the sample sizes of clinical cohorts (tens to hundreds). The one-sample KS
    test needs the normal's mean and SD given in advance; estimating them from
    the data makes it conservative unless the Lilliefors correction is used,
    and even corrected it is weak in the tails where lab values are skewed,
    so it calls more skewed variables "normal" than Shapiro-Wilk does. It is
    offered because SPSS users report it. SciPy's Shapiro-Wilk p-value is
    accurate up to n = 5000; above that the D'Agostino-Pearson K^2 test is
    used instead (reported as ``test``). How to read: p < 0.05 means the data
    are unlikely to be normal, so rank-based statistics are used; p >= 0.05
    does not prove normality (small samples rarely reject), it only allows the
    parametric test.
    """
    if test not in NORMALITY_TESTS:
        raise ValueError(f"normality test {test!r}: use one of {NORMALITY_TESTS}")
    if test == "lilliefors":
        res = lilliefors(series)
        return {"test": "lilliefors", "W": res["D"], "p": res["p"],
                "normal": bool(res["p"] >= alpha) if not math.isnan(res["p"]) else False,
                "n": res["n"]}
    values = np.asarray(numeric_values(pd.Series(series)).dropna(), dtype=float)
    n = len(values)
    out = {
        "test": "shapiro" if n <= SHAPIRO_MAX_N else "dagostino",
        "W": math.nan,
        "p": math.nan,
        "normal": False,
        "n": n,
    }
    if n < 3 or np.ptp(values) == 0:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.shapiro(values) if n <= SHAPIRO_MAX_N else sps.normaltest(values)
    out.update(W=float(res.statistic), p=float(res.pvalue), normal=bool(res.pvalue >= alpha))
    return out
