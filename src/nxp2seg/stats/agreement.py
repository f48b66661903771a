"""Agreement between the model and human readers.

Pure functions: numpy/pandas in, plain floats and dicts out. Every function
drops pairs with a missing value and returns NaN (never raises, never warns)
where the statistic is undefined, so that it can be bootstrapped
(:mod:`nxp2seg.stats.bootstrap`).

=============================  ==========================================================
statistic                      use it for
=============================  ==========================================================
:func:`cohen_kappa`            integer grades and patterns (quadratic / linear / none)
:func:`icc`                    continuous grades and scores, model vs reader mean
:func:`pearson`, spearman      linear / monotone association (not agreement)
:func:`bland_altman`, mae      bias and limits of agreement of scores, mean error
sensitivity_specificity, AUC   presence of edema, fascial / subcutaneous flags
macro_f1, confusion            edema pattern
:func:`noninferiority`         is model-reader agreement as good as reader-reader?
=============================  ==========================================================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats as sps

from nxp2seg.stats._common import label_codes, paired_labels, paired_numeric, resolve_labels
from nxp2seg.stats.bootstrap import BootstrapResult, paired_difference, subject_bootstrap_many
from nxp2seg.stats.classification import confusion, macro_f1, roc_auc, sensitivity_specificity
from nxp2seg.stats.icc import ICC_KINDS, icc, icc_table

__all__ = [
    "ICC_KINDS",
    "bland_altman",
    "cohen_kappa",
    "confusion",
    "icc",
    "icc_table",
    "macro_f1",
    "mae",
    "noninferiority",
    "pearson",
    "roc_auc",
    "sensitivity_specificity",
    "spearman",
]

_KAPPA_WEIGHTS = (None, "linear", "quadratic")


def cohen_kappa(a, b, weights: str | None = None, labels=None) -> float:
    """Cohen's kappa of two raters, unweighted or with linear / quadratic weights.

    Parameters
    ----------
    a, b : array_like
        Paired ratings of the same items by two raters (e.g. the model's
        integer edema grade and a reader's). Pairs with a missing value are
        dropped. Labels may be numbers or strings (unweighted for strings).
    weights : {None, "linear", "quadratic"}
        Disagreement weights ``|i - j|`` or ``(i - j)**2`` on the positions
        ``i, j`` of the two ratings in ``labels``.
    labels : sequence, optional
        The full, ordered category set of the scale: pass
        ``np.arange(scale.n_levels)``. Default: for integer ratings every
        integer between the smallest and largest observed, otherwise the
        observed values sorted. Ratings outside ``labels`` raise ``ValueError``.

    Returns
    -------
    float
        Kappa, 1 for perfect agreement, 0 for chance level, negative below
        chance; NaN when undefined (no pairs, or chance disagreement is 0,
        e.g. both raters gave one and the same grade throughout).

    Notes
    -----
    Which variant: for ordinal grades (edema 0-5, fat 0-4) report the
    **quadratic** weighted kappa as the headline: a two-grade miss costs four
    times a one-grade miss, and it approximates the ICC of the grades
    (Fleiss & Cohen 1973), which makes it comparable across studies. Report
    the **linear** kappa next to it (each grade step costs the same). Use
    the **unweighted** kappa for nominal categories, such as the edema pattern
    when its categories are not treated as ordered.

    How to read (Landis & Koch 1977, a convention, not a law): < 0.2 slight,
    0.21-0.40 fair, 0.41-0.60 moderate, 0.61-0.80 substantial, > 0.80 almost
    perfect. Kappa depends on the prevalence of the categories: compare
    model-reader with reader-reader kappa on the same cases (see
    :func:`noninferiority`), not with kappas from other cohorts.

    ``labels`` matters for weighted kappa: a grade nobody used still sits
    between its neighbours. Computed as
    ``1 - sum(w * observed) / sum(w * expected)`` on the confusion matrix,
    identical to ``sklearn.metrics.cohen_kappa_score`` given the same labels.
    """
    if weights not in _KAPPA_WEIGHTS:
        raise ValueError(f"weights must be one of {_KAPPA_WEIGHTS}, got {weights!r}")
    a, b = paired_labels(a, b)
    labels = resolve_labels(labels, a, b, integer_range=True)
    k = len(labels)
    if len(a) == 0 or k == 0:
        return math.nan
    ca = label_codes(a, labels, "first rater")
    cb = label_codes(b, labels, "second rater")
    observed = np.bincount(ca * k + cb, minlength=k * k).reshape(k, k).astype(float)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / observed.sum()
    i, j = np.indices((k, k))
    if weights is None:
        w = (i != j).astype(float)
    elif weights == "linear":
        w = np.abs(i - j).astype(float)
    else:
        w = ((i - j) ** 2).astype(float)
    chance = float((w * expected).sum())
    if chance == 0.0:
        return math.nan
    return float(1.0 - (w * observed).sum() / chance)


def _correlation(fn, x, y) -> dict:
    x, y = paired_numeric(x, y)
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"r": math.nan, "p": math.nan, "n": n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fn(x, y)
    return {"r": float(res.statistic), "p": float(res.pvalue), "n": n}


def pearson(x, y) -> dict:
    """Pearson correlation with its two-sided p-value.

    Returns
    -------
    dict
        ``r``, ``p`` (test of r = 0, ``scipy.stats.pearsonr``), ``n`` (pairs
        used). NaN for fewer than 3 pairs or a constant input.

    Notes
    -----
    Linear association, not agreement: a model whose scores are all doubled
    has r = 1. Report it next to ICC and Bland-Altman; prefer
    :func:`spearman` for skewed scores or ordinal grades.
    """
    return _correlation(sps.pearsonr, x, y)


def spearman(x, y) -> dict:
    """Spearman rank correlation with its two-sided p-value.

    Returns
    -------
    dict
        ``r`` (rho), ``p`` (``scipy.stats.spearmanr``), ``n``. NaN for fewer
        than 3 pairs or a constant input.

    Notes
    -----
    Monotone association on ranks (ties get mid-ranks): robust to outliers
    and skew, the usual choice for scores that pile up at 0. Like Pearson, it
    says nothing about bias.
    """
    return _correlation(sps.spearmanr, x, y)


def bland_altman(a, b) -> dict:
    """Bland-Altman bias and 95% limits of agreement of ``a - b``.

    Parameters
    ----------
    a, b : array_like of float
        Paired measurements; put the model in ``a`` and the reference (reader
        mean) in ``b`` so that a positive bias means the model scores higher.

    Returns
    -------
    dict
        ``bias`` (mean difference), ``sd`` (SD of the differences, ddof=1),
        ``loa_low`` / ``loa_high`` = bias -/+ 1.96 SD, ``n``.

    Notes
    -----
    The limits say where 95% of individual differences fall if differences
    are roughly normal and do not grow with the magnitude (check the plot of
    difference against mean). Judge them against a clinically acceptable
    difference, e.g. one grade or a few score points.
    """
    a, b = paired_numeric(a, b)
    n = len(a)
    diff = a - b
    bias = float(diff.mean()) if n else math.nan
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    return {
        "bias": bias,
        "sd": sd,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "n": n,
    }


def mae(a, b) -> float:
    """Mean absolute error ``mean(|a - b|)`` over complete pairs (NaN if none).

    Notes
    -----
    In the units of the scale (grades, score points): the typical size of a
    miss, whatever its sign. Use with the Bland-Altman bias, which shows the sign.
    """
    a, b = paired_numeric(a, b)
    return float(np.abs(a - b).mean()) if len(a) else math.nan


Agreement = Callable[[pd.DataFrame], float]


def noninferiority(
    model_vs_reader: Agreement | BootstrapResult,
    reader_vs_reader: Agreement | BootstrapResult,
    margin: float = 0.10,
    *,
    data: pd.DataFrame | None = None,
    subject_col: str = "subject_id",
    n_boot: int = 2000,
    seed: int | None = 0,
    ci: float = 0.95,
) -> dict:
    """Non-inferiority of model-reader agreement to reader-reader agreement.

    Parameters
    ----------
    model_vs_reader, reader_vs_reader : callable or BootstrapResult
        Either two functions DataFrame -> agreement (e.g. quadratic kappa of
        the model against the readers, and of reader 1 against reader 2),
        bootstrapped here on ``data`` on the same subject resamples; or two
        results of one :func:`~nxp2seg.stats.bootstrap.subject_bootstrap_many`
        call (same resamples), used as they are.
    margin : float
        Largest loss of agreement accepted as "as good as a reader" (default
        0.10, in the units of the agreement statistic).
    data : pandas.DataFrame, optional
        Table the callables read; required with callables.
    subject_col, n_boot, seed, ci
        Bootstrap settings, as in :func:`~nxp2seg.stats.bootstrap.subject_bootstrap`.

    Returns
    -------
    dict
        ``difference`` (model_vs_reader - reader_vs_reader on the full data),
        ``ci_low``, ``ci_high`` (paired percentile interval), ``margin``,
        ``passed`` (``ci_low > -margin``), ``model_vs_reader`` and
        ``reader_vs_reader`` (the two estimates), ``ci_level``, ``n_boot``,
        ``n_valid``.

    Notes
    -----
    The model passes when even the pessimistic end of the interval of the
    difference loses less than ``margin``: with a 95% two-sided interval this
    is a one-sided test at the 2.5% level. Both agreements are computed on
    the same resampled subjects in every draw, so the interval is that of
    the paired difference; readers and model see the same hard cases.
    Passing does not mean "better": a positive difference only means the
    model agrees with the readers more than they agree with each other (it
    may have learned their mean). Fix the margin before looking at the data.
    """
    if isinstance(model_vs_reader, BootstrapResult) and isinstance(
        reader_vs_reader, BootstrapResult
    ):
        mvr, rvr = model_vs_reader, reader_vs_reader
    elif callable(model_vs_reader) and callable(reader_vs_reader):
        if data is None:
            raise ValueError(
                "noninferiority with agreement functions needs data= (the table they read)"
            )
        res = subject_bootstrap_many(
            data, {"mvr": model_vs_reader, "rvr": reader_vs_reader}, subject_col, n_boot, seed, ci
        )
        mvr, rvr = res["mvr"], res["rvr"]
    else:
        raise TypeError(
            "give two callables (with data=) or two BootstrapResults from the same resamples"
        )
    diff = paired_difference(mvr, rvr)
    return {
        "difference": diff.estimate,
        "ci_low": diff.low,
        "ci_high": diff.high,
        "margin": float(margin),
        "passed": bool(diff.low > -margin),
        "model_vs_reader": mvr.estimate,
        "reader_vs_reader": rvr.estimate,
        "ci_level": diff.ci,
        "n_boot": diff.n_boot,
        "n_valid": diff.n_valid,
    }
