"""Intraclass correlation (Shrout & Fleiss 1979; McGraw & Wong 1996).

All six forms come from the mean squares of one two-way ANOVA without
replication (targets x raters) on a complete targets x raters matrix.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["ICC_KINDS", "icc", "icc_table"]

#: Canonical names (Shrout & Fleiss), in the order of :func:`icc_table`.
ICC_KINDS = ("ICC(1,1)", "ICC(2,1)", "ICC(3,1)", "ICC(1,k)", "ICC(2,k)", "ICC(3,k)")

_DESCRIPTION = {
    "ICC(1,1)": "one-way random, single rater",
    "ICC(2,1)": "two-way random, absolute agreement, single rater (McGraw-Wong A,1)",
    "ICC(3,1)": "two-way mixed, consistency, single rater (McGraw-Wong C,1)",
    "ICC(1,k)": "one-way random, mean of k raters",
    "ICC(2,k)": "two-way random, absolute agreement, mean of k raters (McGraw-Wong A,k)",
    "ICC(3,k)": "two-way mixed, consistency, mean of k raters (McGraw-Wong C,k)",
}


class _Undefined(Exception):
    """Fewer than 2 complete targets or 2 raters: every form is NaN."""


def _canonical_kind(kind: str, n_raters: int | None = None) -> str:
    """Map 'ICC2', 'ICC(A,1)', 'A,1', 'ICC2k', 'ICC(2,4)', ... to a name of :data:`ICC_KINDS`."""
    s = re.sub(r"\s+", "", str(kind)).upper()
    s = s.removeprefix("ICC").strip("()")
    m = re.fullmatch(r"([123AC]),?(K|\d+)?", s)
    if m is None:
        raise ValueError(
            f"unknown ICC kind {kind!r}; use one of {ICC_KINDS} (or ICC2, A,1, C,k, ...)"
        )
    model = {"A": "2", "C": "3"}.get(m.group(1), m.group(1))
    raters = m.group(2) or "1"
    if raters not in ("1", "K"):
        if n_raters is not None and int(raters) != n_raters:
            raise ValueError(
                f"ICC kind {kind!r} names {raters} raters but the data have {n_raters}"
            )
        raters = "K"
    return f"ICC({model},{'1' if raters == '1' else 'k'})"


def _wide_matrix(data, targets: str | None, raters: str | None, ratings: str | None) -> np.ndarray:
    """Complete targets x raters matrix; targets with any missing rating are dropped."""
    long_args = (targets, raters, ratings)
    if any(a is not None for a in long_args):
        if not all(a is not None for a in long_args):
            raise ValueError("long format needs all of targets=, raters= and ratings=")
        if not isinstance(data, pd.DataFrame):
            raise TypeError("long-format ICC needs a DataFrame")
        missing = [c for c in long_args if c not in data.columns]
        if missing:
            raise KeyError(f"columns {missing} not in the table; columns: {list(data.columns)}")
        dup = data.duplicated([targets, raters], keep=False)
        if dup.any():
            first = data.loc[dup, [targets, raters]].iloc[0].tolist()
            raise ValueError(
                f"{int(dup.sum())} rows repeat a (target, rater) pair, e.g. {first}; each target needs "
                "one rating per rater (in a bootstrap resample, key targets on 'subject_copy')"
            )
        wide = data.pivot(index=targets, columns=raters, values=ratings)
        matrix = wide.to_numpy(dtype=float)
    else:
        matrix = np.asarray(
            data.to_numpy() if isinstance(data, pd.DataFrame) else data, dtype=float
        )
    if matrix.ndim != 2:
        raise ValueError(f"wide ICC data must be 2-D (targets x raters), got shape {matrix.shape}")
    return matrix[np.isfinite(matrix).all(axis=1)]


def _limit(f_bound: float, k: float) -> float:
    """(F - 1) / (F + k - 1), written so that F = inf gives 1."""
    if math.isinf(f_bound):
        return 1.0
    return (f_bound - 1.0) / (f_bound + k - 1.0)


def _all_forms(y: np.ndarray, ci: float | None) -> list[dict]:
    n, k = y.shape
    if n < 2 or k < 2:
        raise _Undefined
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_err = max(((y - grand) ** 2).sum() - ss_rows - ss_cols, 0.0)
    df_rows, df_cols, df_err, df_within = n - 1, k - 1, (n - 1) * (k - 1), n * (k - 1)
    msr, msc, mse = ss_rows / df_rows, ss_cols / df_cols, ss_err / df_err
    msw = (ss_cols + ss_err) / df_within

    def f_quantile(d1: float, d2: float) -> float:  # upper alpha/2 quantile; skipped without ci
        return math.nan if ci is None else sps.f.ppf(1.0 - (1.0 - ci) / 2.0, d1, d2)

    with np.errstate(divide="ignore", invalid="ignore"):
        icc1 = (msr - msw) / (msr + (k - 1) * msw)
        icc2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
        icc3 = (msr - mse) / (msr + (k - 1) * mse)
        icc1k = (msr - msw) / msr
        icc2k = (msr - mse) / (msr + (msc - mse) / n)
        icc3k = (msr - mse) / msr
        f1 = np.float64(msr) / msw
        f3 = np.float64(msr) / mse
        p1 = sps.f.sf(f1, df_rows, df_within)
        p3 = sps.f.sf(f3, df_rows, df_err)
        # One-way and consistency forms: exact F limits (Shrout & Fleiss 1979, Table 4).
        f1l = f1 / f_quantile(df_rows, df_within)
        f1u = f1 * f_quantile(df_within, df_rows)
        f3l = f3 / f_quantile(df_rows, df_err)
        f3u = f3 * f_quantile(df_err, df_rows)
        # Absolute agreement: Satterthwaite df (McGraw & Wong 1996, Table 7, case 2A).
        fj = np.float64(msc) / mse
        vn = df_err * (k * icc2 * fj + n * (1 + (k - 1) * icc2) - k * icc2) ** 2
        vd = df_rows * k**2 * icc2**2 * fj**2 + (n * (1 + (k - 1) * icc2) - k * icc2) ** 2
        v = vn / vd
        f2u = f_quantile(df_rows, v)
        f2l = f_quantile(v, df_rows)
        l2 = n * (msr - f2u * mse) / (f2u * (k * msc + (k * n - k - n) * mse) + n * msr)
        u2 = n * (f2l * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f2l * msr)
        l2k = l2 * k / (1 + l2 * (k - 1))
        u2k = u2 * k / (1 + u2 * (k - 1))
        avg = [1 - 1 / f1l, 1 - 1 / f1u, 1 - 1 / f3l, 1 - 1 / f3u]
    rows = [
        ("ICC(1,1)", icc1, f1, df_within, p1, _limit(f1l, k), _limit(f1u, k)),
        ("ICC(2,1)", icc2, f3, df_err, p3, l2, u2),
        ("ICC(3,1)", icc3, f3, df_err, p3, _limit(f3l, k), _limit(f3u, k)),
        ("ICC(1,k)", icc1k, f1, df_within, p1, avg[0], avg[1]),
        ("ICC(2,k)", icc2k, f3, df_err, p3, l2k, u2k),
        ("ICC(3,k)", icc3k, f3, df_err, p3, avg[2], avg[3]),
    ]
    return [
        {
            "kind": name,
            "description": _DESCRIPTION[name],
            "icc": float(value),
            "ci_low": float(low),
            "ci_high": float(high),
            "F": float(f_stat),
            "df1": df_rows,
            "df2": df2,
            "p": float(p),
            "n_targets": n,
            "n_raters": k,
        }
        for name, value, f_stat, df2, p, low, high in rows
    ]


def _undefined_forms(n: int, k: int) -> list[dict]:
    nan = math.nan
    return [
        {
            "kind": name,
            "description": _DESCRIPTION[name],
            "icc": nan,
            "ci_low": nan,
            "ci_high": nan,
            "F": nan,
            "df1": max(n - 1, 0),
            "df2": nan,
            "p": nan,
            "n_targets": n,
            "n_raters": k,
        }
        for name in ICC_KINDS
    ]


def icc_table(
    data, targets=None, raters=None, ratings=None, *, ci: float | None = 0.95
) -> pd.DataFrame:
    """All six Shrout & Fleiss ICC forms, with F tests and F-based confidence intervals.

    Parameters
    ----------
    data : pandas.DataFrame or array_like
        Long format (with ``targets``, ``raters`` and ``ratings`` column names)
        or wide format: a (targets x raters) matrix or DataFrame whose
        columns are the raters.
    targets, raters, ratings : str, optional
        Column names of the long format.
    ci : float or None
        Confidence level of the intervals; ``None`` skips them (NaN), which
        is faster inside a bootstrap.

    Returns
    -------
    pandas.DataFrame
        One row per form of :data:`ICC_KINDS`, with columns ``kind``,
        ``description``, ``icc``, ``ci_low``, ``ci_high``, ``F``, ``df1``,
        ``df2``, ``p``, ``n_targets``, ``n_raters``.

    Notes
    -----
    Targets with a missing rating are dropped (listwise). ``p`` tests
    ICC = 0. See :func:`icc` for which form to report.
    """
    y = _wide_matrix(data, targets, raters, ratings)
    try:
        forms = _all_forms(y, ci)
    except _Undefined:
        forms = _undefined_forms(*y.shape)
    return pd.DataFrame(forms)


def icc(
    data,
    targets=None,
    raters=None,
    ratings=None,
    *,
    kind: str = "ICC(2,1)",
    ci: float | None = 0.95,
) -> dict:
    """Intraclass correlation coefficient of one form, with its F-based interval.

    Parameters
    ----------
    data : pandas.DataFrame or array_like
        Long format (give ``targets``, ``raters``, ``ratings``) or a wide
        (targets x raters) matrix / DataFrame whose columns are the raters.
    targets, raters, ratings : str, optional
        Column names of the long format. Each (target, rater) pair must occur
        once.
    kind : str
        ``"ICC(2,1)"`` (default), or any of :data:`ICC_KINDS`; aliases such as
        ``"ICC2"``, ``"A,1"``, ``"ICC(C,1)"``, ``"ICC3k"`` are accepted.
    ci : float or None
        Confidence level; ``None`` skips the F-based interval (NaN), e.g.
        inside a bootstrap that computes its own interval.

    Returns
    -------
    dict
        ``kind``, ``description``, ``icc``, ``ci_low``, ``ci_high``, ``F``,
        ``df1``, ``df2``, ``p`` (test of ICC = 0), ``n_targets``, ``n_raters``.
        NaN values when fewer than 2 complete targets or 2 raters.

    Notes
    -----
    Which form: to compare the model with the readers, put the model and the
    readers' mean side by side as two "raters" of each target and report the
    default **ICC(2,1)**: two-way random effects, *absolute agreement*,
    *single rater* (pingouin ``ICC2``, McGraw & Wong ``A,1``).

    * Absolute agreement, not consistency: a model that grades every region
      one grade too high is consistent (ICC(3,1) stays high) but does not
      agree; its scores cannot replace a reader's. ICC(2,1) charges the
      systematic offset between raters (the rater mean square) as error.
    * Two-way random: the model and the readers stand for the population of
      possible graders, the subjects for the population of patients.
    * Single rater: the question is whether one model output can stand in
      for one reading. The average-measures forms ICC(2,k)/ICC(3,k) describe
      the reliability of the *mean* of the k columns, which nobody uses.
    * ICC(1,1) (one-way) is for designs where each target has different
      raters; ICC(3,1) when a fixed set of raters is studied and a constant
      offset does not matter.

    How to read: the share of the variance of a single rating that is
    between-target (true) variance, 0 (no agreement) to 1 (perfect); values
    can be negative when within-target disagreement exceeds the between-target
    spread. Koo & Li (2016): < 0.5 poor, 0.5-0.75 moderate, 0.75-0.9 good,
    > 0.9 excellent; judge by the interval, not the point. The F-based
    interval assumes normal ratings; when the residual variance is 0 (e.g.
    identical raters) the ICC(2,·) interval is undefined (NaN), use a
    bootstrap interval then.

    The mean squares are those of the two-way ANOVA without replication:
    MSR (targets), MSC (raters), MSE (residual), and MSW = within-target
    (one-way). ICC(2,1) = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n).
    Reproduces Shrout & Fleiss (1979, Table 2) and ``pingouin.intraclass_corr``.
    """
    y = _wide_matrix(data, targets, raters, ratings)
    name = _canonical_kind(kind, y.shape[1])
    try:
        forms = _all_forms(y, ci)
    except _Undefined:
        forms = _undefined_forms(*y.shape)
    return next(f for f in forms if f["kind"] == name)
