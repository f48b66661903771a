"""The readers' agreement per indicator, from their grades alone (seed paper 000, supplementary table 1).

"We first evaluated the consistency of four main MRI indicators (subcutaneous
edema, fascia edema, muscle edema and fatty infiltration) between the
radiologist and the neurologist ... All kappa values were greater than 0.600."
For every pair of raters and every indicator (edema grade, fat grade, fascial
and subcutaneous edema, and the station pattern): Cohen's kappa on the items
both graded (regions; cases for the pattern) with

* its **asymptotic** standard error and 95% interval as SPSS's Crosstabs
  reports them ("Asymp. Std. Error"), from
  :func:`statsmodels.stats.inter_rater.cohens_kappa`;
* a 95% **bootstrap** interval resampled by subject
  (:func:`~nxp2seg.stats.bootstrap.subject_bootstrap`): the regions of one
  subject are not independent, so the asymptotic interval, which treats
  every region as a separate item, is too narrow for grades read per region;
* the quadratic-weighted kappa beside the unweighted one for the ordinal
  grades (the unweighted kappa is what SPSS prints by default).

No model is involved: this is the ceiling a model's agreement is judged against.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from statsmodels.stats.inter_rater import cohens_kappa as _sm_kappa

from nxp2seg.data.schema import FAT_SCALE, PATTERNS
from nxp2seg.stats.agreement import cohen_kappa
from nxp2seg.stats.bootstrap import subject_bootstrap

__all__ = ["AGREEMENT_COLUMNS", "kappa_with_se", "reader_agreement"]

AGREEMENT_COLUMNS = ["indicator", "raters", "n_items", "n_subjects", "exact_agreement", "kappa",
                     "kappa_se", "kappa_ci_low", "kappa_ci_high", "kappa_boot_low",
                     "kappa_boot_high", "kappa_quadratic", "kappa_quadratic_boot_low",
                     "kappa_quadratic_boot_high"]


def kappa_with_se(a, b, labels: Sequence, weights: str | None = None) -> dict:
    """Cohen's kappa with its asymptotic SE and 95% interval (statsmodels, as SPSS reports).

    ``labels`` is the full ordered category set (a category nobody used still
    counts in the weights). Returns ``kappa``, ``se``, ``ci_low``, ``ci_high``,
    ``n``; NaN where undefined (no pairs, one category only).
    """
    a, b = np.asarray(a, dtype=object), np.asarray(b, dtype=object)
    keep = ~(pd.isna(a) | pd.isna(b))
    a, b = a[keep], b[keep]
    out = {"kappa": math.nan, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan,
           "n": len(a)}
    if len(a) == 0:
        return out
    index = {v: i for i, v in enumerate(labels)}
    table = np.zeros((len(labels), len(labels)))
    for x, y in zip(a, b):
        table[index[x], index[y]] += 1
    if np.isnan(cohen_kappa(a, b, weights=weights, labels=list(labels))):
        return out
    res = _sm_kappa(table, wt=weights) if weights else _sm_kappa(table)
    out.update(kappa=float(res.kappa), se=float(res.std_kappa), ci_low=float(res.kappa_low),
               ci_high=float(res.kappa_upp))
    return out


def _pairs(df: pd.DataFrame, item: list[str], r1: str, r2: str, column: str) -> pd.DataFrame:
    one = df.loc[df["rater"] == r1, [*item, column, "subject_id"]].rename(columns={column: "a"})
    two = df.loc[df["rater"] == r2, [*item, column]].rename(columns={column: "b"})
    return one.merge(two, on=item, how="inner").dropna(subset=["a", "b"]).reset_index(drop=True)


def _row(indicator: str, pair: pd.DataFrame, raters: str, labels: Sequence, ordinal: bool,
         n_boot: int, seed: int) -> dict:
    row = dict.fromkeys(AGREEMENT_COLUMNS, math.nan)
    row.update(indicator=indicator, raters=raters, n_items=len(pair),
               n_subjects=int(pair["subject_id"].nunique()) if len(pair) else 0)
    if pair.empty:
        return row
    a, b = pair["a"].to_numpy(), pair["b"].to_numpy()
    k = kappa_with_se(a, b, labels)
    row.update(exact_agreement=float(np.mean(a == b)), kappa=k["kappa"], kappa_se=k["se"],
               kappa_ci_low=k["ci_low"], kappa_ci_high=k["ci_high"])

    def kappa_of(weights):
        return lambda d: cohen_kappa(d["a"], d["b"], weights=weights, labels=list(labels))
    if n_boot:
        _, lo, hi = subject_bootstrap(pair, kappa_of(None), n_boot=n_boot, seed=seed)
        row.update(kappa_boot_low=lo, kappa_boot_high=hi)
    if ordinal:
        row["kappa_quadratic"] = cohen_kappa(a, b, weights="quadratic", labels=list(labels))
        if n_boot:
            _, lo, hi = subject_bootstrap(pair, kappa_of("quadratic"), n_boot=n_boot, seed=seed)
            row.update(kappa_quadratic_boot_low=lo, kappa_quadratic_boot_high=hi)
    return row


def reader_agreement(grades: pd.DataFrame, patterns: pd.DataFrame | None, cases: pd.DataFrame,
                     max_grade: int, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Agreement between every pair of raters on each indicator.

    Parameters
    ----------
    grades : pandas.DataFrame
        The readers' ``grades.csv``: ``case_id``, ``rater``, ``region``,
        ``edema_grade``, ``fat_grade``, ``fascial_edema``, ``subcutaneous_edema``.
    patterns : pandas.DataFrame or None
        The readers' ``patterns.csv``: ``case_id``, ``rater``, ``pattern``.
    cases : pandas.DataFrame
        ``case_id``, ``subject_id`` (the bootstrap resamples subjects).
    max_grade : int
        Top of the edema scale (5 on beltrame6, 3 on extent4).
    n_boot : int
        Bootstrap resamples (0: no bootstrap interval).

    Returns
    -------
    pandas.DataFrame
        :data:`AGREEMENT_COLUMNS`, one row per indicator and pair of raters:
        items both read, subjects, exact agreement, kappa with asymptotic SE
        and interval and subject-bootstrap interval; the quadratic-weighted
        kappa for the two ordinal grades.
    """
    subject = cases.drop_duplicates("case_id").set_index("case_id")["subject_id"]
    g = grades.assign(subject_id=grades["case_id"].map(subject))
    raters = list(dict.fromkeys(g["rater"].dropna()))
    items = [("edema", "edema_grade", list(range(max_grade + 1)), True),
             ("fat", "fat_grade", list(range(FAT_SCALE.max_grade + 1)), True),
             ("fascial_edema", "fascial_edema", [0, 1], False),
             ("subcutaneous_edema", "subcutaneous_edema", [0, 1], False)]
    rows = []
    for r1, r2 in itertools.combinations(raters, 2):
        label = f"{r1} vs {r2}"
        for name, col, labels, ordinal in items:
            if col not in g:
                continue
            pair = _pairs(g.assign(**{col: pd.to_numeric(g[col], errors="coerce")}),
                          ["case_id", "region"], r1, r2, col)
            pair[["a", "b"]] = pair[["a", "b"]].astype(int)
            rows.append(_row(name, pair, label, labels, ordinal, n_boot, seed))
        if patterns is not None and len(patterns):
            p = patterns.assign(subject_id=patterns["case_id"].map(subject),
                                pattern=patterns["pattern"].where(patterns["pattern"].isin(PATTERNS)))
            pair = _pairs(p, ["case_id"], r1, r2, "pattern")
            rows.append(_row("pattern", pair, label, list(PATTERNS), False, n_boot, seed))
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)
